"""ExecuTorch int4 decode FFN, weights from cache and from DRAM: XNNPACK's dense FFN against
glass::norm_gather_ffn_q over the kept neurons, side by side in one process.

    python bench/ffn_stream.py [--shape 576x1536] [--density 0.5] [--layers 8,60] [--threads 2]
        [--group-size 32] [--rounds 40]

For each layer count L, two programs that run L FFNs, each behind its RMSNorm as in a decoder layer, one
after the other on one token, y = x + the sum of FFN_l(norm_l(x)) (a chain x <- x + FFN_l(norm_l(x)) of
random layers grows until the two implementations' int8 rounding parts, and the output check could not
hold): the stock one, lowered to XNNPACK with torchao's 8da4w quantisation (what a dense twin's FFN is),
and the GLASS one, whose norms and FFNs are glass::norm_gather_ffn_q over the same int4 group
quantisation, keeping round(rho x m) neurons. A small L keeps every weight
in the caches (the kernels' compute); a large one (60 layers of SmolLM2's shape: 90 MB dense, 45 MB
of kept rows) streams them from DRAM, as a whole model's decode step does.

Prints microseconds a layer, the weight bytes a layer reads, the rate they stream at, and the
GLASS/dense time ratio beside the byte ratio: were both to stream at one rate the two ratios would
meet, and the gap between them is what the GLASS op still loses per byte against XNNPACK
(docs/quantization.md). Needs the native kernels (`bash runtime_ops/build.sh`).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import torch  # noqa: E402

import glass_ops  # noqa: E402
from glass_ops import native  # noqa: E402
from glass_ops.torch_ops import rms_norm  # noqa: E402

from ffn_kernel import DenseFFN, executorch_method  # noqa: E402  (bench/, the script's own directory)

ACCURACY_LEVEL = 4  # int8 activations, as every quantised export
SILU = glass_ops.ACTIVATION_CODES["silu"]  # DenseFFN's F.silu


NORM_EPS = 1e-5


class DenseStack(torch.nn.Module):
    def __init__(self, weights: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], norms: torch.Tensor):
        super().__init__()
        self.layers = torch.nn.ModuleList(DenseFFN(gate, up, down) for gate, up, down in weights)
        for i, norm in enumerate(norms):
            self.register_buffer(f"norm{i}", norm.clone())

    def forward(self, x):
        y = x
        for i, ffn in enumerate(self.layers):
            y = y + ffn(rms_norm(x, getattr(self, f"norm{i}"), NORM_EPS))
        return y


def quantized_ffn_buffers(weights, bits: int, group_size: int) -> list[dict[str, torch.Tensor]]:
    """Each FFN's neuron-contiguous rows quantised as an artifact stores them: gate_up_codes,
    gate_up_scales, down_codes, down_scales (the glass ops' arguments)."""
    from glass_export.quantization import quantize_rows

    layers = []
    for gate, up, down in weights:
        w_gate_up, w_down_t = glass_ops.pack_ffn_weights(gate, up, down)
        buffers = {}
        for name, rows in (("gate_up", w_gate_up.reshape(-1, w_gate_up.shape[-1])), ("down", w_down_t)):
            q = quantize_rows(rows.numpy(), bits, group_size)
            buffers[f"{name}_codes"], buffers[f"{name}_scales"] = torch.from_numpy(q.blocked_codes()), torch.from_numpy(q.scales)
        layers.append(buffers)
    return layers


class GatherStack(torch.nn.Module):
    def __init__(self, weights, norms: torch.Tensor, bits: int, group_size: int):
        super().__init__()
        self.bits, self.group_size, self.count = bits, group_size, len(weights)
        for i, buffers in enumerate(quantized_ffn_buffers(weights, bits, group_size)):
            self.register_buffer(f"norm{i}", norms[i].clone())
            for name, tensor in buffers.items():
                self.register_buffer(f"{name}{i}", tensor)

    def ffn(self, i: int, x, idx):
        codes_and_scales = (getattr(self, f"{name}{i}") for name in ("gate_up_codes", "gate_up_scales", "down_codes",
                                                                      "down_scales"))
        # every layer keeps the same set here: row 0 of indices [1, k]
        return torch.ops.glass.norm_gather_ffn_q(x, getattr(self, f"norm{i}"), NORM_EPS, *codes_and_scales, idx, 0,
                                                 SILU, self.bits, self.group_size, ACCURACY_LEVEL)

    def forward(self, x, idx):
        y = x
        for i in range(self.count):
            y = y + self.ffn(i, x, idx)
        return y


def kept_row_bytes(d: int, k: int, bits: int, group_size: int) -> int:
    """What one decode step reads of a layer's kept neurons: the gate, up and down rows' codes and their
    float16 scales (the decode pack, runtime_ops/src/quant_decode.h)."""
    return 3 * k * (d * bits // 8 + d // group_size * 2)


def bench_layers(layers: int, d: int, m: int, density: float, group_size: int, rounds: int, workdir: Path) -> dict:
    from glass_export.quantization import QuantScheme, torchao_quantize
    from glass_export.selection import keep_count

    gen = torch.Generator().manual_seed(layers)
    weights = [(torch.randn(m, d, generator=gen) / d**0.5, torch.randn(m, d, generator=gen) / d**0.5,
                torch.randn(d, m, generator=gen) / m**0.5) for _ in range(layers)]
    k = keep_count(density, m)
    idx = torch.sort(torch.randperm(m, generator=gen)[:k]).values.reshape(1, k)
    x = torch.randn(1, 1, d, generator=gen)
    norms = 0.5 + torch.rand(layers, d, generator=gen)

    gather = GatherStack(weights, norms, 4, group_size).eval()
    want = gather(x, idx)  # eager: the reference implementation of the same quantised kernels
    dense = DenseStack(weights, norms).eval()
    torchao_quantize(dense, QuantScheme("int4", group_size=group_size), include_ffn=True, embedding=False)
    del weights
    sparse_method = executorch_method(gather, (x, idx), workdir / f"gather{layers}.pte")
    dense_method = executorch_method(dense, (x,), workdir / f"dense{layers}.pte")
    # atol 1e-2 over the sum of L FFNs: the kernel's float sums differ from the reference's in their last
    # bits, and now and then that moves one int8 down coefficient by a step (about 1e-3 in one output)
    torch.testing.assert_close(sparse_method.execute([x, idx])[0], want, atol=1e-2, rtol=1e-3)

    calls = {"dense": lambda: dense_method.execute([x]), "glass": lambda: sparse_method.execute([x, idx])}
    times = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(rounds):  # alternating, so the machine's drift hits both alike
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e6 / layers)
    us = {name: statistics.median(values) for name, values in times.items()}
    # the stock program holds nothing but the FFN weights, which XNNPACK reads whole every call
    dense_bytes = (workdir / f"dense{layers}.pte").stat().st_size / layers
    glass_bytes = kept_row_bytes(d, k, 4, group_size)
    return dict(layers=layers, k=k, dense_us=us["dense"], glass_us=us["glass"], dense_mb=dense_bytes / 1e6,
                glass_mb=glass_bytes / 1e6, dense_gbs=dense_bytes / us["dense"] / 1e3,
                glass_gbs=glass_bytes / us["glass"] / 1e3)


def parse_shape_and_counts(parser: argparse.ArgumentParser, shape: str, flag: str, counts: str):
    """--shape HIDDENxINTERMEDIATE and the comma-separated integers of `flag`, or the parser's error."""
    try:
        d, m = (int(v) for v in shape.lower().split("x"))
        return d, m, [int(v) for v in counts.split(",")]
    except ValueError:
        parser.error(f"--shape is HIDDENxINTERMEDIATE (e.g. 576x1536) and {flag} comma-separated integers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="576x1536", help="hidden x intermediate (default: SmolLM2-135M's)")
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--layers", default="8,60", help="layer counts, comma separated: small stays in the "
                                                         "caches, large streams from DRAM")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    d, m, layer_counts = parse_shape_and_counts(parser, args.shape, "--layers", args.layers)
    if d % args.group_size or not 0 < args.density <= 1 or min(layer_counts) < 1:
        parser.error("the group size must divide the hidden size, the density lie in (0, 1] and layers be >= 1")

    print(f"native ExecuTorch kernels: {native.load_executorch_kernels()}")
    from executorch.extension.pybindings import _C as executorch_bindings

    executorch_bindings._unsafe_reset_threadpool(args.threads)
    torch.set_num_threads(1)  # the eager reference; ExecuTorch runs on its own pool
    header = (f"{'layers':>6} {'k':>5} | {'dense us':>8} {'MB':>5} {'GB/s':>5} | "
              f"{'GLASS us':>8} {'MB':>5} {'GB/s':>5} | {'time ratio':>10} {'byte ratio':>10}")
    print(f"{args.shape}, rho {args.density}, int4 group {args.group_size}, {args.threads} threads; "
          f"medians of {args.rounds} alternating rounds, per layer")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for layers in layer_counts:
            row = bench_layers(layers, d, m, args.density, args.group_size, args.rounds, Path(tmp))
            print(f"{row['layers']:>6} {row['k']:>5} | {row['dense_us']:>8.1f} {row['dense_mb']:>5.2f} "
                  f"{row['dense_gbs']:>5.1f} | {row['glass_us']:>8.1f} {row['glass_mb']:>5.2f} "
                  f"{row['glass_gbs']:>5.1f} | {row['glass_us'] / row['dense_us']:>10.2f} "
                  f"{row['glass_mb'] / row['dense_mb']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
