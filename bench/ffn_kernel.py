"""Decode-step FFN time: glass::gather_ffn against the dense FFN on the same runtime, side by side.

    python bench/ffn_kernel.py [--shapes 2048x8192,576x1536] [--densities 1.0,0.5,0.25] [--threads 2]

For each shape (hidden x intermediate), one token (T = 1), fp32:
  ExecuTorch: dense FFN lowered to XNNPACK  vs  the native glass::gather_ffn.out kernel
  ONNX Runtime: dense MatMul FFN            vs  the native glass.GatherFFN kernel
                                            and the GatherFFN function fallback (stock ORT)
Ratios are sparse / dense on the same runtime (lower is better). Needs `bash runtime_ops/build.sh`.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import glass_ops  # noqa: E402
from glass_ops import native, onnx_ops  # noqa: E402


class DenseFFN(torch.nn.Module):
    def __init__(self, gate, up, down):
        super().__init__()
        self.gate, self.up, self.down = (torch.nn.Linear(1, 1, bias=False) for _ in range(3))
        self.gate.weight, self.up.weight, self.down.weight = (torch.nn.Parameter(w, requires_grad=False) for w in (gate, up, down))

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GatherFFN(torch.nn.Module):
    def __init__(self, gate, up, down):
        super().__init__()
        w_gate_up, w_down_t = glass_ops.pack_ffn_weights(gate, up, down)
        self.register_buffer("w_gate_up", w_gate_up)
        self.register_buffer("w_down_t", w_down_t)

    def forward(self, x, idx):
        return torch.ops.glass.gather_ffn(x, self.w_gate_up, self.w_down_t, idx, 0)


def timed_side_by_side(fns: dict, warmup: int, repeats: int) -> dict:
    """Median milliseconds of each fn, measured in interleaved rounds so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def executorch_method(module, example, path: Path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    program = to_edge_transform_and_lower(torch.export.export(module, example), partitioner=[XnnpackPartitioner()])
    path.write_bytes(program.to_executorch().buffer)
    return Runtime.get().load_program(str(path)).load_method("forward")


def save_onnx(module, example, path: Path) -> Path:
    import onnx

    program = torch.onnx.export(module, example, dynamo=True, optimize=True, verbose=False,
                                custom_translation_table=onnx_ops.translation_table())
    model = onnx_ops.add_function_fallback(program.model_proto)
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def ort_session(path: Path, threads: int, native_library: Path | None = None):
    """A session over the saved model; with native_library the glass kernel replaces the function fallback."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting between runs: on 2 cores a spinning pool steals the other runtime's core.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if native_library is not None:
        options.register_custom_ops_library(str(native_library))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_shape(d: int, m: int, densities: list[float], threads: int, repeats: int, workdir: Path,
                ort_library: Path) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(m, d, generator=gen) / d**0.5, torch.randn(m, d, generator=gen) / d**0.5
    down = torch.randn(d, m, generator=gen) / m**0.5
    x = torch.randn(1, 1, d, generator=gen)
    rows = []
    dense_module, gather_module = DenseFFN(gate, up, down).eval(), GatherFFN(gate, up, down).eval()

    et_dense = executorch_method(dense_module, (x,), workdir / "dense.pte")
    ort_dense = ort_session(save_onnx(dense_module, (x,), workdir / "dense.onnx"), threads)
    for density in densities:
        k = max(1, round(density * m))
        idx = torch.sort(torch.randperm(m, generator=gen)[:k]).values
        et_sparse = executorch_method(gather_module, (x, idx), workdir / f"gather{k}.pte")
        want = glass_ops.torch_ops.reference(x, gather_module.w_gate_up, gather_module.w_down_t, idx, 0)
        torch.testing.assert_close(et_sparse.execute([x, idx])[0], want, atol=1e-3, rtol=1e-3)
        gather_onnx = save_onnx(gather_module, (x, idx), workdir / f"gather{k}.onnx")
        sess = ort_session(gather_onnx, threads)
        ort_native = ort_session(gather_onnx, threads, ort_library)
        names = [i.name for i in sess.get_inputs()]
        feeds = {names[0]: x.numpy(), names[1]: idx.numpy()}
        np.testing.assert_allclose(ort_native.run(None, feeds)[0], want.numpy(), atol=1e-3, rtol=1e-3)
        # Interleave dense and sparse within one runtime; runtimes are measured one after the
        # other, since two runtimes' thread pools on the same cores slow each other down.
        ms = timed_side_by_side(
            {"et_dense": lambda: et_dense.execute([x]), "et_native": lambda: et_sparse.execute([x, idx])},
            warmup=5,
            repeats=repeats,
        )
        ms |= timed_side_by_side(
            {"ort_dense": lambda: ort_dense.run(None, {"x": x.numpy()}), "ort_native": lambda: ort_native.run(None, feeds),
             "ort_function": lambda: sess.run(None, feeds)},
            warmup=5,
            repeats=repeats,
        )
        rows.append(dict(shape=f"{d}x{m}", density=density, k=k, **ms))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="2048x8192,576x1536", help="hidden x intermediate, comma separated")
    parser.add_argument("--densities", default="1.0,0.5,0.25")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    print(f"native ExecuTorch kernel: {native.load_executorch_kernels()}")
    ort_library = native.onnxruntime_ops_library()
    print(f"native ONNX Runtime kernel: {ort_library}")
    densities = [float(v) for v in args.densities.split(",")]
    header = (f"{'shape':>11} {'rho':>5} {'k':>6} | {'ET dense':>9} {'ET glass':>9} {'ratio':>6} | {'ORT dense':>9} "
              f"{'ORT glass':>9} {'ratio':>6} {'ORT func':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            d, m = (int(v) for v in shape.lower().split("x"))
            for row in bench_shape(d, m, densities, args.threads, args.repeats, Path(tmp), ort_library):
                print(f"{row['shape']:>11} {row['density']:>5.2f} {row['k']:>6} | "
                      f"{row['et_dense']:>7.3f}ms {row['et_native']:>7.3f}ms {row['et_native'] / row['et_dense']:>6.2f} | "
                      f"{row['ort_dense']:>7.3f}ms {row['ort_native']:>7.3f}ms {row['ort_native'] / row['ort_dense']:>6.2f} "
                      f"{row['ort_function']:>7.3f}ms {row['ort_function'] / row['ort_dense']:>6.2f}")


if __name__ == "__main__":
    main()
