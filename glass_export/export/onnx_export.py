"""Two-graph ONNX export: prefill.onnx + decode.onnx over one shared weights file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import torch

from glass_ops import native, onnx_ops

from ..models import model_info
from ..selection import SelectionConfig, ranks
from .graphs import DecodeGraph, PrefillGraph, graph_model
from .manifest import PRIORS_NAME, Step, kv_layout

PREFILL_FILE = "prefill.onnx"
DECODE_FILE = "decode.onnx"
WEIGHTS_FILE = "model.onnx.data"
INLINE_LIMIT = 1024  # bytes: smaller tensors stay inside the graph file, as onnx.save does


def _export(module, args, input_names, output_names, dynamic_shapes):
    program = torch.onnx.export(
        module,
        args,
        dynamo=True,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic_shapes,
        custom_translation_table=onnx_ops.translation_table(),
        # The onnxscript optimizer may constant-fold a reshaped or transposed copy of a weight
        # into a new initializer (stored twice); onnxruntime optimises the graph at load instead.
        optimize=False,
        verbose=False,
    )
    return program.model


def share_weights(models: dict[str, "object"], directory: Path, data_name: str) -> dict:
    """Move every initializer of the onnx_ir models into one external file, each distinct tensor once.

    Tensors are matched by content (dtype, shape, bytes), so a weight both graphs read is written once
    whatever its name. Returns statistics for the manifest.
    """
    import onnx_ir as ir

    offsets: dict[bytes, int] = {}
    written = 0
    referenced = 0
    with open(directory / data_name, "wb") as data:
        for model in models.values():
            for value in model.graph.initializers.values():
                tensor = value.const_value
                raw = tensor.tobytes()
                if len(raw) < INLINE_LIMIT:
                    continue
                referenced += len(raw)
                key = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode() + raw).digest()
                if key not in offsets:
                    align = 4096 if len(raw) >= 1 << 20 else 64
                    pad = (-data.tell()) % align
                    data.write(b"\0" * pad)
                    offsets[key] = data.tell()
                    data.write(raw)
                    written += len(raw)
                value.const_value = ir.ExternalTensor(
                    data_name, offsets[key], len(raw), tensor.dtype, shape=tensor.shape, name=value.name,
                    base_dir=directory,
                )
    return {"bytes_written": written, "bytes_referenced": referenced}


def export_onnx(model, config: SelectionConfig, priors, out: Path, max_seq_len: int, step: Step) -> dict:
    """Write prefill.onnx, decode.onnx and the shared weights file into `out` (an empty directory)."""
    import onnx_ir as ir

    info = model_info(model)
    m, num_layers = info.intermediate_size, info.num_layers
    global_rank = ranks(priors.tensor(config.prior_name)) if config.prior_name else None
    k = config.keep_count(m)

    step("preparing graphs")
    graph_lm, context = graph_model(model)
    prefill = PrefillGraph(graph_lm, context, config, global_rank, m).eval()
    decode = DecodeGraph(graph_lm, context, sparse=config.method != "dense").eval()
    kv = kv_layout(model)
    example_ids = torch.tensor([[1, 2, 3, 4, 5]]) % model.config.vocab_size
    with torch.no_grad():
        _, _, example_indices, *example_past = prefill(example_ids)

    step("exporting prefill graph")
    seq = torch.export.Dim.DYNAMIC
    prefill_outputs = ["logits", "glass_local_scores", "glass_indices", *kv["present_names"]]
    prefill_ir = _export(prefill, (example_ids,), ["input_ids"], prefill_outputs, ({1: seq},))

    step("exporting decode graph")
    decode_inputs = ["input_ids", "position_ids", "glass_indices", *kv["past_names"]]
    decode_ir = _export(
        decode,
        (example_ids[:, :1], torch.tensor([[example_ids.shape[1]]]), example_indices, tuple(example_past)),
        decode_inputs,
        ["logits", *kv["present_names"]],
        ({}, {}, {}, tuple({2: seq} for _ in example_past)),
    )

    step("writing shared weights")
    stats = share_weights({"prefill": prefill_ir, "decode": decode_ir}, out, WEIGHTS_FILE)
    for ir_model, name, fallback in ((prefill_ir, PREFILL_FILE, False), (decode_ir, DECODE_FILE, True)):
        proto = ir.serde.serialize_model(ir_model)
        for node in proto.graph.node:  # the exporter's per-node stack traces: megabytes of text
            del node.metadata_props[:]
        if fallback:
            onnx_ops.add_function_fallback(proto)
        onnx.save(proto, str(out / name))

    step("checking graphs")
    for name in (PREFILL_FILE, DECODE_FILE):
        onnx.checker.check_model(str(out / name), full_check=False)
    opset = next(e.version for e in onnx.load(str(out / DECODE_FILE), load_external_data=False).opset_import
                 if e.domain in ("", "ai.onnx"))

    if priors is not None:
        priors.save(out / PRIORS_NAME)
    graphs = {
        "prefill": {
            "file": PREFILL_FILE,
            "inputs": {"input_ids": "int64 [1, T]"},
            "outputs": {
                "logits": "float32 [1, T, vocab]",
                "glass_local_scores": f"float32 [{num_layers}, {m}]",
                "glass_indices": f"int64 [{num_layers}, {k}], ascending per layer",
                "present.N.key / present.N.value": "float32 [1, kv_heads, T, head_dim]",
            },
        },
        "decode": {
            "file": DECODE_FILE,
            "inputs": {
                "input_ids": "int64 [1, 1]",
                "position_ids": "int64 [1, 1] (= tokens already in the cache)",
                "glass_indices": f"int64 [{num_layers}, {k}] from prefill"
                + ("" if config.method != "dense" else " (unused by the dense FFN)"),
                "past_key_values.N.key / .value": "float32 [1, kv_heads, P, head_dim]",
            },
            "outputs": {"logits": "float32 [1, 1, vocab]", "present.N.key / .value": "float32 [1, kv_heads, P+1, head_dim]"},
        },
    }
    files = {"prefill": PREFILL_FILE, "decode": DECODE_FILE, "weights": WEIGHTS_FILE}
    return dict(
        target="onnx", info=info, config=config, k=k, max_seq_len=max_seq_len, kv=kv, graphs=graphs, files=files,
        priors=None if priors is None else {"file": PRIORS_NAME, "tokens": priors.tokens, "corpus": priors.corpus},
        extra={
            "onnx": {
                "opset": opset,
                "custom_op": {"domain": onnx_ops.DOMAIN, "op_type": onnx_ops.OP_TYPE, "version": onnx_ops.OPSET_VERSION},
                "native_library": native.ONNX_RUNTIME_LIB,
                "fallback": "model-local ONNX function (Gather + MatMul), used when the library is not registered",
                "weights_bytes": stats["bytes_written"],
                "weights_bytes_referenced_by_graphs": stats["bytes_referenced"],
            }
        },
    )
