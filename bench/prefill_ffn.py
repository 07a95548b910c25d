"""ExecuTorch int4 prefill FFN on a prompt of T tokens: XNNPACK's dense FFN against the GLASS
prefill's glass::ffn_up_q + glass::ffn_down_q over the same weights, side by side in one process.

    python bench/prefill_ffn.py [--shape 576x1536] [--tokens 16,50,128] [--layers 8] [--threads 2]
        [--group-size 32] [--rounds 20]

A GLASS artifact stores each FFN once, neuron-contiguous, and its prefill runs the whole FFN on those
rows with the glass kernels (the decode gathers from the same rows); the dense twin's prefill is
XNNPACK's 8da4w linears (torchao). For each prompt length T, three programs of L FFNs applied to the
same [1, T, d] input, y = x + the sum of FFN_l(x): the stock one, the glass one, and the glass one's
first half alone (ffn_up_q, whose [T, m] outputs are summed), so the time of each half shows. The
glass program's output is checked against the eager reference of the same kernels.

Prints microseconds a layer for each and the GLASS/dense ratio (lower is better). Needs the native
kernels (`bash runtime_ops/build.sh`).
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

from ffn_kernel import executorch_method  # noqa: E402  (bench/, the script's own directory)
from ffn_stream import (ACCURACY_LEVEL, SILU, DenseStack, parse_shape_and_counts,  # noqa: E402
                        quantized_ffn_buffers)


class PrefillStack(torch.nn.Module):
    """L GLASS prefill FFNs (glass::ffn_up_q then glass::ffn_down_q), or their first halves only."""

    def __init__(self, weights, bits: int, group_size: int, up_only: bool = False):
        super().__init__()
        self.bits, self.group_size, self.count, self.up_only = bits, group_size, len(weights), up_only
        for i, buffers in enumerate(quantized_ffn_buffers(weights, bits, group_size)):
            for name, tensor in buffers.items():
                self.register_buffer(f"{name}{i}", tensor)

    def forward(self, x):
        y = x
        for i in range(self.count):
            z = torch.ops.glass.ffn_up_q(x, getattr(self, f"gate_up_codes{i}"), getattr(self, f"gate_up_scales{i}"),
                                         SILU, self.bits, self.group_size, ACCURACY_LEVEL)
            if self.up_only:
                y = y + z.sum(-1, keepdim=True)
                continue
            y = y + torch.ops.glass.ffn_down_q(z, getattr(self, f"down_codes{i}"), getattr(self, f"down_scales{i}"),
                                               self.bits, self.group_size)
        return y


def bench_tokens(tokens: int, layers: int, d: int, m: int, group_size: int, rounds: int, workdir: Path) -> dict:
    from glass_export.quantization import QuantScheme, torchao_quantize

    gen = torch.Generator().manual_seed(tokens)
    weights = [(torch.randn(m, d, generator=gen) / d**0.5, torch.randn(m, d, generator=gen) / d**0.5,
                torch.randn(d, m, generator=gen) / m**0.5) for _ in range(layers)]
    x = torch.randn(1, tokens, d, generator=gen)

    glass = PrefillStack(weights, 4, group_size).eval()
    up_only = PrefillStack(weights, 4, group_size, up_only=True).eval()
    want = glass(x)  # eager: the reference implementation of the same quantised kernels
    dense = DenseStack(weights).eval()
    torchao_quantize(dense, QuantScheme("int4", group_size=group_size), include_ffn=True, embedding=False)
    del weights
    methods = {"dense": executorch_method(dense, (x,), workdir / f"dense{tokens}.pte"),
               "glass": executorch_method(glass, (x,), workdir / f"glass{tokens}.pte"),
               "glass up": executorch_method(up_only, (x,), workdir / f"up{tokens}.pte")}
    # the kernels' float sums differ from the reference's in their last bits, and a rounding step of an
    # int8 activation now and then moves one gate/up value by one step of its scale
    torch.testing.assert_close(methods["glass"].execute([x])[0], want, atol=1e-2, rtol=1e-3)

    times = {name: [] for name in methods}
    for method in methods.values():
        method.execute([x])
    for _ in range(rounds):  # alternating, so the machine's drift hits all alike
        for name, method in methods.items():
            start = time.perf_counter()
            method.execute([x])
            times[name].append((time.perf_counter() - start) * 1e6 / layers)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="576x1536", help="hidden x intermediate (default: SmolLM2-135M's)")
    parser.add_argument("--tokens", default="16,50,128", help="prompt lengths, comma separated")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    d, m, token_counts = parse_shape_and_counts(parser, args.shape, "--tokens", args.tokens)
    if d % args.group_size or min(token_counts) < 1 or args.layers < 1:
        parser.error("the group size must divide the hidden size, and tokens and layers be >= 1")

    print(f"native ExecuTorch kernels: {native.load_executorch_kernels()}")
    from executorch.extension.pybindings import _C as executorch_bindings

    executorch_bindings._unsafe_reset_threadpool(args.threads)
    torch.set_num_threads(1)  # the eager reference; ExecuTorch runs on its own pool
    print(f"{args.shape}, int4 group {args.group_size}, {args.layers} layers, {args.threads} threads; "
          f"medians of {args.rounds} alternating rounds, us a layer")
    header = f"{'T':>5} | {'XNNPACK dense':>13} | {'GLASS':>8} {'(up':>8} {'down)':>8} | {'GLASS / dense':>13}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in token_counts:
            us = bench_tokens(tokens, args.layers, d, m, args.group_size, args.rounds, Path(tmp))
            print(f"{tokens:>5} | {us['dense']:>13.1f} | {us['glass']:>8.1f} {us['glass up']:>8.1f} "
                  f"{us['glass'] - us['glass up']:>8.1f} | {us['glass'] / us['dense']:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
