"""ExecuTorch export: one model.pte with `prefill` and `decode` methods over a shared KV cache.

- The KV cache is a static mutable buffer per layer and kind, shared by both methods
  (MemoryPlanningPass(share_mutable_buffers=True)), so decode reads what prefill wrote. Attention
  is ExecuTorch's llama::custom_sdpa over a [1, max_seq_len, kv_heads, head_dim] cache written by
  llama::update_cache (as ExecuTorch's own LLM exports do); Gemma 2's soft-capped attention keeps
  transformers' attention over [1, kv_heads, max_seq_len, head_dim]. The rotary embedding is one
  glass::rope call per tensor (graphs.rope_through_glass), every RMSNorm one glass::rms_norm call
  (graphs.norms_through_glass).
- The FFN weights are stored neuron-contiguous and read by custom ops in both methods
  (glass::ffn_up / glass::ffn_down in prefill, glass::gather_ffn in decode; quantised, the decode's
  glass::norm_gather_ffn_q applies the layer's pre-FFN RMSNorm too, and glass::residual_norm_gather_ffn_q
  the residual add after it: fuse_ffn_residual); a tied embedding
  table is read by glass::linear_rows(_q) as the LM head (and glass::embedding_q as the quantised
  lookup); XNNPACK takes the rest (attention projections, an untied lm_head; in decode without the
  views, which stay aliases: decode_partitioner), and identical
  weights are stored once.
- Static shapes where possible: k is fixed, decode is fully static, prefill takes
  1 <= T <= max_seq_len tokens (an upper-bounded dynamic dimension).
"""

from __future__ import annotations

import torch

from glass_ops import native

from ..artifact import KV_HEADS_FIRST, KV_SEQ_FIRST, TARGET_FILES, KVLayout
from ..errors import GlassExportError
from ..quantization import TORCHAO_DESCRIPTION, QuantScheme, torchao_quantize
from . import ExportContext, RecipeOutput
from .graphs import DecodeGraph, PrefillGraph, StaticKV, graph_model, norms_through_glass, rope_through_glass

STEPS = ("preparing graphs", "exporting prefill graph", "exporting decode graph", "lowering to XNNPACK",
         "writing program")
WEIGHT_SCHEMES = ("fp32", "int8", "int4")
PTE_FILE = TARGET_FILES["executorch"]["program"]


def check_quant(quant: QuantScheme) -> None:
    if quant.quantized and quant.accuracy_level != 4:
        raise GlassExportError("--target executorch quantises with int8 activations only (XNNPACK's dynamic "
                               "quantisation): --accuracy-level 1 is not available there",
                               "drop --accuracy-level, or export --target onnx")


def export(ctx: ExportContext) -> RecipeOutput:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    model, config, max_seq_len = ctx.model, ctx.selection, ctx.max_seq_len
    m, num_layers = ctx.info.intermediate_size, ctx.info.num_layers
    k = config.keep_count(m)
    kv = KVLayout.of(model.config, "")

    ctx.step("preparing graphs")
    # Dense twins never gather: their FFNs stay the model's own linears, lowered to XNNPACK as stock ones.
    graph_lm, context = graph_model(model, ctx.quant, glass_ffn=config.sparse_decode)
    if ctx.quant.quantized:  # attention projections, LM head, embedding (and the dense twin's FFN)
        torchao_quantize(graph_lm, ctx.quant, include_ffn=not config.sparse_decode)
    static_kv = StaticKV(graph_lm, max_seq_len, kv.num_kv_heads, kv.head_dim)
    prefill = PrefillGraph(graph_lm, context, config, ctx.global_rank, m, kv=static_kv).eval()
    decode = DecodeGraph(graph_lm, context, sparse=config.sparse_decode, kv=static_kv).eval()
    example_ids = torch.tensor([[1, 2, 3, 4, 5]]) % model.config.vocab_size
    with torch.no_grad(), rope_through_glass(graph_lm), norms_through_glass(graph_lm):
        with native.native_log_silenced():  # llama::custom_sdpa's eager kernel logs to stderr
            _, _, example_indices = prefill(example_ids)
        ctx.step("exporting prefill graph")
        seq = torch.export.Dim("seq", min=1, max=max_seq_len)
        prefill_ep = torch.export.export(prefill, (example_ids,), dynamic_shapes=({1: seq},), strict=False)
        ctx.step("exporting decode graph")
        position = torch.tensor([[example_ids.shape[1]]])
        decode_ep = torch.export.export(decode, (example_ids[:, :1], position, example_indices), strict=False)
        fuse_ffn_residual(decode_ep)

    ctx.step("lowering to XNNPACK")
    constant_methods = {
        "get_max_seq_len": max_seq_len,
        "get_vocab_size": model.config.vocab_size,
        "get_n_layers": num_layers,
        "get_k": k,
        "get_m": m,
        "get_sparse_decode": config.sparse_decode,
    }
    edge = to_edge_transform_and_lower(
        {"prefill": prefill_ep, "decode": decode_ep},
        transform_passes={"decode": decode_passes()},
        partitioner={"prefill": [XnnpackPartitioner()], "decode": [decode_partitioner()]},
        constant_methods=constant_methods,
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    )
    program = edge.to_executorch(
        ExecutorchBackendConfig(
            memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True),
            emit_mutable_buffer_names=True,
            do_quant_fusion_and_const_prop=ctx.quant.quantized,  # torchao's embedding -> quantized embedding op
        )
    )
    ctx.step("writing program")
    (ctx.out / PTE_FILE).write_bytes(program.buffer)

    ops = custom_ops(program)
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    graphs = {
        "prefill": {
            "method": "prefill",
            "inputs": {"input_ids": f"int64 [1, T], 1 <= T <= {max_seq_len}"},
            "outputs": {
                "logits": "float32 [1, T, vocab]",
                "glass_local_scores": f"float32 [{num_layers}, {m}]",
                "glass_indices": f"int64 [{num_layers}, {k}], ascending per layer",
            },
            "state": "writes the KV cache buffers (positions 0..T-1)",
        },
        "decode": {
            "method": "decode",
            "inputs": {
                "input_ids": "int64 [1, 1]",
                "position_ids": "int64 [1, 1] (= tokens already in the cache)",
                "glass_indices": f"int64 [{num_layers}, {k}] from prefill"
                + ("" if config.sparse_decode else " (unused by the dense FFN)"),
            },
            "outputs": {"logits": "float32 [1, 1, vocab]"},
            "state": "reads the KV cache, writes position position_ids",
        },
    }
    runtime = {
        "runtime": "executorch (XNNPACK delegate + glass kernels)",
        "backend": "XNNPACK (CPU)",
        "custom_ops": ops,
        "attention": ("ExecuTorch's llama::custom_sdpa over a [1, max_seq_len, kv_heads, head_dim] cache written by "
                      "llama::update_cache (extension/llm/custom_ops)" if static_kv.fused else
                      "transformers' attention (attention-logit soft-capping), portable and XNNPACK ops"),
        "non_ffn_quantization": TORCHAO_DESCRIPTION if ctx.quant.quantized else "none (fp32)",
        **({"native_library": native.EXECUTORCH_LIB} if any(op.startswith("glass::") for op in ops) else {}),
        "constant_methods": sorted(constant_methods),
        "pte_bytes": len(program.buffer),
        "model_weight_bytes": weight_bytes,
        "npu_prompt_buckets": "decode is static; prefill would need fixed-length buckets for NPUs "
                              "(e.g. T in 32/64/128/256 with padding and an attention mask)",
    }
    return RecipeOutput(graphs, runtime, kv_storage="mutable buffers shared by both methods",
                        kv_layout=KV_SEQ_FIRST if static_kv.fused else KV_HEADS_FIRST)


def fuse_ffn_residual(program: torch.export.ExportedProgram) -> None:
    """x + glass::norm_gather_ffn_q(x, ...) -> glass::residual_norm_gather_ffn_q(x, ...), in place: the layer's
    residual add (the same float sum) inside the op, where XNNPACK would run it as a delegate call of its own
    between the FFN and the next layer's norm. Inference-mode dropouts between the two (Phi-3's) are identities;
    families whose FFN output is normalised first (Gemma 2, 3) keep the add."""
    graph = program.graph_module.graph
    for ffn in [node for node in graph.nodes if node.target is torch.ops.glass.norm_gather_ffn_q.default]:
        chain = [ffn]  # the FFN, then each only user, through identity dropouts
        while len(chain[-1].users) == 1:
            (user,) = chain[-1].users
            chain.append(user)
            if user.target is not torch.ops.aten.dropout.default or user.args[2] is not False:
                break
        add = chain[-1]
        if add is ffn or add.target is not torch.ops.aten.add.Tensor or add.kwargs or \
                set(add.args) != {ffn.args[0], chain[-2]}:
            continue
        with graph.inserting_before(add):
            fused = graph.call_function(torch.ops.glass.residual_norm_gather_ffn_q.default, ffn.args, ffn.kwargs)
        fused.meta = dict(add.meta)
        add.replace_all_uses_with(fused)
        for node in reversed(chain):
            graph.erase_node(node)
    program.graph_module.recompile()


def decode_passes() -> list:
    """The decode graph's one token makes the transposes around the glass ops and llama::update_cache
    ([1, heads, 1, dim] <-> [1, 1, heads, dim]) byte-order no-ops: ExecuTorch's own pass turns them into views."""
    from executorch.backends.transforms.replace_nop_transpose_or_permute_with_view import (
        ReplaceNopTransposeOrPermuteWithViewPass,
    )

    return [ReplaceNopTransposeOrPermuteWithViewPass()]


def decode_partitioner():
    """XNNPACK for the decode graph, views left out: ExecuTorch's memory planning makes a static view an alias
    (no instruction), where XNNPACK would copy it, and a partition of views after glass::rope had split each
    layer's q/k and v projections into two delegate calls (one per layer and step fewer without it)."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS, ViewCopyConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return XnnpackPartitioner(configs=[config for config in ALL_PARTITIONER_CONFIGS if config is not ViewCopyConfig])


CUSTOM_NAMESPACES = ("glass", "llama")  # our kernels and ExecuTorch's LLM kernels, outside the portable set


def custom_ops(program) -> list[str]:
    """The non-portable kernels the program calls (outside the XNNPACK delegate), by method, as the
    runtime resolves them: e.g. glass::norm_gather_ffn_q.out."""
    names = set()
    for plan in program.executorch_program.execution_plan:
        for operator in plan.operators:
            if operator.name.split("::")[0] in CUSTOM_NAMESPACES:
                names.add(f"{operator.name}.{operator.overload}" if operator.overload else operator.name)
    return sorted(names)
