"""glass::gather_ffn: every implementation against an independent reference, and its refusals.

Tolerance: fp32 implementations vs a float64 loop, |diff| <= 1e-4 + 1e-4 |ref| with O(1) activations.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import glass_ops
from glass_ops import native, onnx_ops
from glass_ops.torch_ops import pack_ffn_weights, reference

ROOT = Path(__file__).resolve().parents[1]
ATOL = RTOL = 1e-4


def loop_reference(x, w_gate_up, w_down_t, idx, activation):
    """Independent float64 computation, one neuron at a time."""
    x, gu, dt = x.double().reshape(-1, x.shape[-1]), w_gate_up.double(), w_down_t.double()
    y = torch.zeros_like(x)
    for j in idx.tolist():
        g, u = x @ gu[j, 0], x @ gu[j, 1]
        a = g * torch.sigmoid(g) if activation == 0 else 0.5 * g * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (g + 0.044715 * g**3)))
        y += (a * u)[:, None] * dt[j][None]
    return y.float()


def random_case(seed, d=None, m=None, k=None, tokens=1):
    gen = torch.Generator().manual_seed(seed)
    d = d or int(torch.randint(1, 48, (1,), generator=gen))
    m = m or int(torch.randint(1, 64, (1,), generator=gen))
    k = k or int(torch.randint(1, 2 * m + 1, (1,), generator=gen))  # > m means duplicates
    x = torch.randn(1, tokens, d, generator=gen)
    gu = torch.randn(m, 2, d, generator=gen) / d**0.5
    dt = torch.randn(m, d, generator=gen) / d**0.5
    idx = torch.randint(0, m, (k,), generator=gen)  # unsorted, may repeat
    return x, gu, dt, idx


CASES = [dict(seed=s) for s in range(6)] + [dict(seed=10, k=1), dict(seed=11, m=40, k=40), dict(seed=12, tokens=3)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("activation", [0, 1])
def test_torch_op_matches_loop_reference(case, activation):
    x, gu, dt, idx = random_case(**case)
    want = loop_reference(x, gu, dt, idx, activation).reshape(x.shape)
    got = torch.ops.glass.gather_ffn(x, gu, dt, idx, activation)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    out = torch.empty(0)
    torch.ops.glass.gather_ffn.out(x, gu, dt, idx, activation, out=out)
    torch.testing.assert_close(out, want, atol=ATOL, rtol=RTOL)


def test_pack_ffn_weights_is_neuron_contiguous():
    gate, up, down = torch.randn(5, 3), torch.randn(5, 3), torch.randn(3, 5)
    gu, dt = pack_ffn_weights(gate, up, down)
    assert gu.shape == (5, 2, 3) and gu.is_contiguous() and dt.is_contiguous()
    assert torch.equal(gu[2, 0], gate[2]) and torch.equal(gu[2, 1], up[2]) and torch.equal(dt[2], down[:, 2])


def test_torch_op_refuses_bad_input():
    x, gu, dt, idx = random_case(0, d=8, m=10, k=4)
    for bad in (10, -1):
        with pytest.raises(IndexError, match="out of range"):
            torch.ops.glass.gather_ffn(x, gu, dt, torch.tensor([0, bad]), 0)
    with pytest.raises(ValueError, match="activation"):
        torch.ops.glass.gather_ffn(x, gu, dt, idx, 7)
    with pytest.raises(ValueError, match="w_down_t"):
        torch.ops.glass.gather_ffn(x, gu, dt[:, :4], idx, 0)
    with pytest.raises(ValueError, match="int64"):
        torch.ops.glass.gather_ffn(x, gu, dt, idx.int(), 0)


class GatherFFN(torch.nn.Module):
    def __init__(self, gu, dt, activation):
        super().__init__()
        self.register_buffer("gu", gu)
        self.register_buffer("dt", dt)
        self.activation = activation

    def forward(self, x, idx):
        return torch.ops.glass.gather_ffn(x, self.gu, self.dt, idx, self.activation)


@pytest.mark.parametrize("activation", [0, 1])
def test_onnx_function_fallback_runs_on_stock_onnxruntime(activation):
    x, gu, dt, idx = random_case(3, d=32, m=48, k=20)
    program = torch.onnx.export(GatherFFN(gu, dt, activation).eval(), (x, idx), dynamo=True, optimize=False,
                                 custom_translation_table=onnx_ops.translation_table(), verbose=False)
    model = onnx_ops.add_function_fallback(program.model_proto)
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("glass", "GatherFFN")]
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for seed in range(4):  # other index sets of the exported (static) k
        _, _, _, other = random_case(seed, d=32, m=48, k=20)
        got = session.run(None, {names[0]: x.numpy(), names[1]: other.numpy()})[0]
        want = loop_reference(x, gu, dt, other, activation).reshape(x.shape).numpy()
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)


@pytest.fixture(scope="module")
def onnxruntime_kernel():
    # The core path: the library must be built (scripts/test.sh builds it); a missing one fails loudly.
    return native.onnxruntime_ops_library()


def native_session(model: onnx.ModelProto, library, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(library))
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("activation", [0, 1])
def test_onnxruntime_kernel_matches_reference_and_refuses_bad_indices(onnxruntime_kernel, activation):
    d, m = 40, 56
    for tokens, k in [(1, 1), (1, m), (2, 23), (1, 2 * m), (3, 300)]:
        x, gu, dt, idx = random_case(tokens * 100 + k, d=d, m=m, k=k, tokens=tokens)
        # No function fallback in this model: without the kernel ORT could not even load it.
        bare = torch.onnx.export(GatherFFN(gu, dt, activation).eval(), (x, idx), dynamo=True, optimize=False,
                                 custom_translation_table=onnx_ops.translation_table(), verbose=False).model_proto
        with pytest.raises(Exception, match="GatherFFN"):
            ort.InferenceSession(bare.SerializeToString(), providers=["CPUExecutionProvider"])
        session = native_session(bare, onnxruntime_kernel, threads=1 + k % 3)
        names = [i.name for i in session.get_inputs()]
        got = session.run(None, {names[0]: x.numpy(), names[1]: idx.numpy()})[0]
        want = loop_reference(x, gu, dt, idx, activation).reshape(x.shape).numpy()
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=RTOL)
        for bad in (m, -1, 1 << 40):
            wrong = idx.clone()
            wrong[k // 2] = bad
            with pytest.raises(Exception, match="out of range"):
                session.run(None, {names[0]: x.numpy(), names[1]: wrong.numpy()})
        # the session still works after refusing
        np.testing.assert_allclose(session.run(None, {names[0]: x.numpy(), names[1]: idx.numpy()})[0], want,
                                   atol=ATOL, rtol=RTOL)


def test_onnxruntime_kernel_refuses_mismatched_weights(onnxruntime_kernel):
    """Shapes the exporter would never emit, fed through a hand-made graph: an error status, no crash."""
    from onnx import TensorProto, helper

    node = helper.make_node("GatherFFN", ["x", "gu", "dt", "idx"], ["y"], domain="glass", activation=0)
    graph = helper.make_graph([node], "g", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("gu", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("dt", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("idx", TensorProto.INT64, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("glass", 1)])
    session = native_session(model, onnxruntime_kernel)
    x, gu, dt, idx = random_case(5, d=8, m=10, k=4)
    feeds = {"x": x.numpy(), "gu": gu.numpy(), "dt": dt.numpy(), "idx": idx.numpy()}
    np.testing.assert_allclose(session.run(None, feeds)[0], loop_reference(x, gu, dt, idx, 0).reshape(x.shape).numpy(),
                               atol=ATOL, rtol=RTOL)
    for key, value, message in (("dt", dt[:, :4].numpy(), "disagree"), ("gu", gu[:, 0].numpy(), "expected"),
                                ("x", x[..., :5].numpy(), "disagree"), ("idx", idx.reshape(2, 2).numpy(), "expected")):
        with pytest.raises(Exception, match=message):
            session.run(None, {**feeds, key: np.ascontiguousarray(value)})


@pytest.fixture(scope="module")
def executorch_kernels():
    # The core path: the library must be built (scripts/test.sh builds it); a missing one fails loudly.
    return native.load_executorch_kernels()


def export_pte(module, example, path):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = to_edge_transform_and_lower(torch.export.export(module, example), partitioner=[XnnpackPartitioner()])
    path.write_bytes(program.to_executorch().buffer)
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


@pytest.mark.parametrize("activation", [0, 1])
def test_executorch_kernel_matches_reference_and_refuses_bad_indices(executorch_kernels, activation, tmp_path):
    d, m = 40, 56
    for tokens, k in [(1, 1), (1, m), (2, 23), (1, 2 * m)]:
        x, gu, dt, idx = random_case(tokens * 100 + k, d=d, m=m, k=k, tokens=tokens)
        method = export_pte(GatherFFN(gu, dt, activation), (x, idx), tmp_path / f"g{tokens}_{k}.pte")
        got = method.execute([x, idx])[0]
        torch.testing.assert_close(got, loop_reference(x, gu, dt, idx, activation).reshape(x.shape), atol=ATOL, rtol=RTOL)
        for bad in (m, -1, 1 << 40):
            wrong = idx.clone()
            wrong[k // 2] = bad
            with pytest.raises(RuntimeError):
                method.execute([x, wrong])
    # the method still works after refusing
    torch.testing.assert_close(method.execute([x, idx])[0], reference(x, gu, dt, idx, activation), atol=ATOL, rtol=RTOL)


class LocalStatistic(torch.nn.Module):
    def forward(self, z):
        return torch.ops.glass.normalised_square_sum(z)


def test_executorch_local_statistic_matches_its_definition(executorch_kernels, tmp_path):
    """glass::normalised_square_sum (the ExecuTorch prefill's float64 local statistic) against the one
    definition eager PyTorch uses, rows of every scale and an all-zero row included; within float64
    rounding, so the float32 scores GLASS ranks are the same."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime
    from glass_ops.torch_ops import normalised_square_sum

    seq = torch.export.Dim("seq", min=1, max=64)
    example = torch.randn(5, 96)
    program = to_edge_transform_and_lower(torch.export.export(LocalStatistic(), (example,), dynamic_shapes=({0: seq},)),
                                          partitioner=[XnnpackPartitioner()])
    to_pte = tmp_path / "stat.pte"
    to_pte.write_bytes(program.to_executorch().buffer)
    method = Runtime.get().load_program(str(to_pte)).load_method("forward")
    generator = torch.Generator().manual_seed(0)
    for tokens in (1, 7, 50):
        z = torch.randn(tokens, 96, generator=generator) * torch.logspace(-3, 3, tokens).unsqueeze(1)
        if tokens > 1:
            z[1] = 0.0
        got = method.execute([z])[0]
        assert got.dtype == torch.float64 and got.shape == (96,)
        want = normalised_square_sum(z)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        assert torch.equal(got.sqrt().float(), want.sqrt().float())
    with pytest.raises(RuntimeError):
        method.execute([torch.randn(3, 95)])  # not the exported m: the method refuses the shape
    with pytest.raises(ValueError, match="float32"):
        torch.ops.glass.normalised_square_sum(torch.randn(3, 4, 5))


def test_missing_native_library_says_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(native, "_loaded", {})
    with pytest.raises(native.NativeLibraryMissing, match="runtime_ops/build.sh"):
        native.load_executorch_kernels()
    with pytest.raises(native.NativeLibraryMissing, match="libglass_ort_ops.so not found"):
        native.onnxruntime_ops_library()


def test_executorch_kernels_load_in_a_fresh_process():
    """The kernel library finds libexecutorch.so by itself (its rpath), not because an earlier import of
    executorch's runtime loaded it into the process."""
    script = ("import sys; from glass_ops import native; native.load_executorch_kernels(); "
              "assert not any(name.startswith('executorch.extension') for name in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def asan_build():
    """The compute cores built with ASan + UBSan (runtime_ops/build-asan)."""
    env = {**__import__("os").environ, "GLASS_ASAN": "1", "PATH": "/usr/bin:/bin"}
    build = subprocess.run(["bash", str(ROOT / "runtime_ops/build.sh")], capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    return ROOT / "runtime_ops/build-asan"


def test_kernel_core_fuzz_under_address_sanitizer(asan_build):
    run = subprocess.run([str(asan_build / "gather_ffn_fuzz"), "400"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "400 passed, 0 failed" in run.stdout
    assert "AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr


def test_quantised_kernel_fuzz_under_address_sanitizer(asan_build):
    """Every SIMD variant this CPU runs against a float64 reference on the dequantised weights."""
    run = subprocess.run([str(asan_build / "quant_ffn_fuzz"), "300"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "scalar: 300 passed, 0 failed" in run.stdout and "avx2: 300 passed, 0 failed" in run.stdout
    assert "AddressSanitizer" not in run.stderr and "runtime error" not in run.stderr


def test_arm64_kernels_under_qemu():
    """The NEON and NEON-dotprod kernels phones run, cross-built and run under qemu-user."""
    build = subprocess.run(["bash", str(ROOT / "runtime_ops/build_arm64.sh")], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    for program, expected in (("quant_ffn_fuzz", ["neon: 300 passed, 0 failed", "neon-dotprod: 300 passed, 0 failed"]),
                              ("gather_ffn_fuzz", ["300 passed, 0 failed"])):
        run = subprocess.run(["qemu-aarch64-static", "-L", "/usr/aarch64-linux-gnu",
                              str(ROOT / "runtime_ops/build-arm64" / program), "300"], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        for line in expected:
            assert line in run.stdout, run.stdout


class DensePrefillFFN(torch.nn.Module):
    """The dense prefill halves: glass::ffn_up then glass::ffn_down."""

    def __init__(self, gu, dt, activation):
        super().__init__()
        self.register_buffer("gu", gu)
        self.register_buffer("dt", dt)
        self.activation = activation

    def forward(self, x):
        z = torch.ops.glass.ffn_up(x, self.gu, self.activation)
        return z, torch.ops.glass.ffn_down(z, self.dt)


@pytest.mark.parametrize("activation", [0, 1])
def test_dense_prefill_ops_match_reference_in_torch_and_executorch(executorch_kernels, activation, tmp_path):
    x, gu, dt, _ = random_case(21, d=24, m=40, k=1, tokens=5)
    all_neurons = torch.arange(40)
    want_y = loop_reference(x, gu, dt, all_neurons, activation).reshape(x.shape)
    g, u = x @ gu[:, 0].T, x @ gu[:, 1].T
    want_z = (torch.nn.functional.silu(g) if activation == 0 else torch.nn.functional.gelu(g, approximate="tanh")) * u
    module = DensePrefillFFN(gu, dt, activation)
    for z, y in (module(x), export_pte(module, (x,), tmp_path / "dense.pte").execute([x])):
        torch.testing.assert_close(z, want_z, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(y, want_y, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="ffn_down"):
        torch.ops.glass.ffn_down(want_z, dt[:10])


# --- quantised ops: native ORT kernels and the function fallbacks against a numpy reference ----------

def quant_case(seed, d=64, m=24, bits=4, group=32):
    from glass_export.quantization import quantize_rows

    rng = np.random.default_rng(seed)
    gate_up = quantize_rows(rng.standard_normal((2 * m, d)).astype(np.float32) / d**0.5, bits, group)
    down = quantize_rows(rng.standard_normal((m, d)).astype(np.float32) / d**0.5, bits, group)
    return rng.standard_normal((1, 3, d)).astype(np.float32), gate_up, down


@pytest.mark.parametrize("bits", [4, 8])
def test_quantiser_scales_are_float16_values_and_codes_follow_them(bits):
    """The kernels hold scales as float16: the quantiser must give float16 values (so MatMulNBits, which reads
    the float32 tensors, and the glass kernels agree exactly), with codes taken against the rounded scale."""
    from glass_export.errors import GlassExportError
    from glass_export.quantization import dequantize_rows, quantize_rows

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((16, 128)) * 0.02).astype(np.float32)
    weight[2] = 0.0  # an all-zero row: scale 0, every code the zero point
    q = quantize_rows(weight, bits, 32)
    np.testing.assert_array_equal(q.scales.astype(np.float16).astype(np.float32), q.scales)
    values = dequantize_rows(q)
    # round to nearest against the rounded scale: within half a step of the weight, but for values past the
    # last code on the positive side (ORT's symmetric range is [-Z, Z - 1]), which are clipped to it
    scale = np.repeat(q.scales, 32, axis=1)
    step = np.abs(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.abs(weight / scale) <= (1 << (bits - 1)) - 0.5
    assert inside.mean() > 0.8
    assert (np.abs(values - weight)[inside] <= 0.5 * step[inside] * (1 + 1e-6)).all()
    assert (np.abs(values - weight) <= step * (1 + 1e-6)).all()
    assert (values[2] == 0).all()
    with pytest.raises(GlassExportError, match="float16"):
        quantize_rows(np.full((1, 32), 1e9, np.float32), bits, 32)


def quant_reference(x, gate_up, down, idx, activation, accuracy):
    """(y, bound): the float64 FFN over the dequantised rows, with the kernels' view of x, and how far the
    decode may be from it: with accuracy 4 its down projection rounds every coefficient z_j * s_{j,g} to
    int8 steps of its group of 32 kept neurons (torch_ops.decode_down_int8), half a step at most each."""
    from glass_export.quantization import dequantize_rows, fake_quantize_activations

    if accuracy == 4:
        x = fake_quantize_activations(torch.from_numpy(x), gate_up.group_size).numpy()
    gu, dn = dequantize_rows(gate_up).astype(np.float64), dequantize_rows(down).astype(np.float64)
    g, u = x @ gu[0::2][idx].T, x @ gu[1::2][idx].T
    act = g / (1 + np.exp(-g)) if activation == 0 else 0.5 * g * (1 + np.tanh((2 / np.pi) ** 0.5 * (g + 0.044715 * g**3)))
    z = act * u  # [..., k]
    bound = np.zeros(z.shape[:-1] + (dn.shape[1],))
    if accuracy == 4:
        group = down.group_size
        centred = (dn / np.repeat(down.scales, group, axis=1))[idx]  # u - Z of the kept rows
        for start in range(0, len(idx), 32):
            members = slice(start, start + 32)
            coefs = z[..., members, None] * down.scales[idx][members]  # [..., n, blocks]
            step = np.repeat(np.abs(coefs).max(axis=-2) / 127, group, axis=-1)  # [..., d]
            bound += 0.5 * step * np.abs(centred[members]).sum(axis=0)
    return z @ dn[idx], bound


def quant_session(op_type, bits, group, accuracy, activation, native_library):
    """A one-node model of a quantised glass op with its function fallback, native kernel optional."""
    from onnx import TensorProto, helper

    if op_type == "GatherFFNQ":
        inputs = ["x", "gu", "gus", "dn", "dns", "idx"]
        attrs = dict(activation=activation, bits=bits, block_size=group, accuracy_level=accuracy)
        types = [TensorProto.FLOAT, TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8, TensorProto.FLOAT,
                 TensorProto.INT64]
    else:
        inputs = ["x", "dn", "dns"]
        attrs = dict(bits=bits, block_size=group)
        types = [TensorProto.FLOAT, TensorProto.UINT8, TensorProto.FLOAT]
    node = helper.make_node(op_type, inputs, ["y"], domain="glass", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, None) for n, t in zip(inputs, types)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("glass", 1)],
                              functions=[onnx_ops.fallback_function(op_type, activation, 21, bits, group, accuracy)])
    options = ort.SessionOptions()
    if native_library is not None:
        options.register_custom_ops_library(str(native_library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits, group, accuracy", [(4, 32, 4), (4, 64, 1), (8, 32, 4), (8, 32, 1)])
@pytest.mark.parametrize("activation", [0, 1])
def test_quantised_gather_ffn_native_and_fallback_match_the_reference(onnxruntime_kernel, bits, group, accuracy,
                                                                     activation):
    m = 24
    x, gu, dn = quant_case(bits * 10 + group, m=m, bits=bits, group=group)
    feeds = {"x": x, "gu": gu.blocked_codes(), "gus": gu.scales, "dn": dn.blocked_codes(), "dns": dn.scales}
    for library in (onnxruntime_kernel, None):
        session = quant_session("GatherFFNQ", bits, group, accuracy, activation, library)
        for idx in (np.array([3, 7, 8, 20]), np.arange(m), np.array([5]), np.array([4, 4, 9])):  # duplicates count twice
            got = session.run(None, {**feeds, "idx": idx})[0]
            want, bound = quant_reference(x, gu, dn, idx, activation, accuracy)
            assert np.all(np.abs(got - want) <= 1.05 * bound + 1e-4 * (1 + np.abs(want))), (library, idx)
        for bad in (-1, m, 1 << 40):  # refused by the native kernel and by the function alike
            with pytest.raises(Exception, match="out of range|out of bounds|indices"):
                session.run(None, {**feeds, "idx": np.array([0, bad])})


class NormGatherFFNQ(torch.nn.Module):
    """ExecuTorch's quantised decode op with its weights as inputs (so the runtime copies each call's weights
    into the same planned memory)."""

    def __init__(self, layer=0, eps=0.0, activation=0, bits=4, group=32, accuracy=4, residual=False):
        super().__init__()
        self.layer, self.eps, self.args = layer, eps, (activation, bits, group, accuracy)
        self.op = torch.ops.glass.residual_norm_gather_ffn_q if residual else torch.ops.glass.norm_gather_ffn_q

    def forward(self, x, norm_weight, gu, gus, dn, dns, indices):
        return self.op(x, norm_weight, self.eps, gu, gus, dn, dns, indices, self.layer, *self.args)


def exactly_normalised(x):
    """(x4, normed): x4 = +-4 with x's signs, whose RMSNorm with eps 0 is exact in float32 (mean square 16,
    1 / sqrt(16) = 0.25), so a kernel and a reference that normalise it see the same x, +-1."""
    normed = np.where(x < 0, -1.0, 1.0).astype(np.float32)
    return 4 * normed, normed


def test_rms_norm_is_transformers_rmsnorm():
    """torch_ops.rms_norm, the definition the fused decode op follows, against the families' own modules:
    Llama's, and Gemma's (1 + w) with the offset folded into the weight. float32 rounding apart."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from glass_ops.torch_ops import rms_norm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 48, generator=gen) * 3
    llama, gemma = LlamaRMSNorm(48, eps=1e-5), GemmaRMSNorm(48, eps=1e-6)
    with torch.no_grad():
        for module in (llama, gemma):
            module.weight.copy_(torch.randn(48, generator=gen))
        torch.testing.assert_close(rms_norm(x, llama.weight, 1e-5), llama(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rms_norm(x, 1 + gemma.weight, 1e-6), gemma(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("accuracy", [4, 1])
def test_norm_gather_ffn_q_in_executorch_normalises_and_reads_its_layer(executorch_kernels, accuracy, residual,
                                                                         tmp_path):
    """glass::norm_gather_ffn_q = the FFN of rms_norm(x) * w over row `layer` of indices [layers, k], native in
    ExecuTorch (glass::residual_norm_gather_ffn_q: x + that FFN). Accuracy 4 (int8 x): x = +-4, whose norm is
    exact, so kernel and reference quantise the same x, and the result is within quant_reference's bound.
    Accuracy 1 (float x): any x, eps 1e-5; the norm adds float32 rounding only, |diff| <= 1e-4 (1 + |ref|)."""
    m, d = 40, 64
    x, gu, dn = quant_case(7, d=d, m=m)
    rng = np.random.default_rng(8)
    weight = rng.uniform(0.5, 1.5, d).astype(np.float32)
    indices = np.stack([rng.permutation(m)[:24] for _ in range(3)])  # [layers 3, k 24], each row its own set
    if accuracy == 4:
        eps, (x, normed) = 0.0, exactly_normalised(x)
        normed = normed * weight
    else:
        eps = 1e-5
        normed = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * weight
    feeds = [torch.from_numpy(v) for v in (x, weight, gu.blocked_codes(), gu.scales, dn.blocked_codes(), dn.scales,
                                           indices)]
    outputs = {}
    for layer in (0, 2):
        method = export_pte(NormGatherFFNQ(layer, eps, accuracy=accuracy, residual=residual), tuple(feeds),
                            tmp_path / f"l{layer}.pte")
        got = outputs[layer] = method.execute(feeds)[0].numpy()
        want, bound = quant_reference(normed, gu, dn, indices[layer], 0, accuracy)
        if residual:
            want = want + x
        assert np.all(np.abs(got - want) <= 1.05 * bound + 1e-4 * (1 + np.abs(want))), layer
    assert not np.allclose(outputs[0], outputs[2])  # the layers' rows differ, and each read its own
    for bad_layer, bad_indices, bad_weight in ((3, indices, weight), (0, indices * 0 + m, weight),
                                              (0, indices, weight[:-1])):
        bad = feeds[:1] + [torch.from_numpy(bad_weight)] + feeds[2:6] + [torch.from_numpy(bad_indices)]
        method = export_pte(NormGatherFFNQ(bad_layer, eps, accuracy=accuracy, residual=residual), tuple(bad),
                            tmp_path / "bad.pte")
        with pytest.raises(RuntimeError):  # the kernel's checks fail the method
            method.execute(bad)


class RMSNorm(torch.nn.Module):
    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, x, weight):
        return torch.ops.glass.rms_norm(x, weight, self.eps)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_rms_norm_op_is_the_families_rmsnorm_in_executorch(executorch_kernels, family, tmp_path):
    """glass::rms_norm (graphs.norms_through_glass) against the family's own RMSNorm module (Gemma's 1 + w folded
    into the weight), in ExecuTorch and as the torch op; a weight of the wrong length is refused by both. float32
    rounding apart: 1e-5 + 1e-5 |ref|."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5, 48, generator=gen) * 3
    module = LlamaRMSNorm(48, eps=1e-5) if family == "llama" else GemmaRMSNorm(48, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(torch.randn(48, generator=gen))
        want = module(x)
    weight = module.weight.detach() + (1.0 if family == "gemma" else 0.0)
    eps = 1e-5 if family == "llama" else 1e-6
    method = export_pte(RMSNorm(eps), (x, weight), tmp_path / "norm.pte")
    torch.testing.assert_close(method.execute([x, weight])[0], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.ops.glass.rms_norm(x, weight, eps), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected x"):
        torch.ops.glass.rms_norm(x, weight[:-1], eps)
    short = export_pte(RMSNorm(eps), (x, weight[:-1]), tmp_path / "short.pte")
    with pytest.raises(RuntimeError):
        short.execute([x, weight[:-1]])


def test_norm_gather_ffn_q_reference_refuses_bad_input():
    x, gu, dn = quant_case(9, m=16)
    args = [torch.from_numpy(v) for v in (gu.blocked_codes(), gu.scales, dn.blocked_codes(), dn.scales)]
    x, weight, indices = torch.from_numpy(x), torch.ones(64), torch.tensor([[1, 2], [3, 4]])
    op = torch.ops.glass.norm_gather_ffn_q
    with pytest.raises(IndexError, match="layer 2 is out of range"):
        op(x, weight, 0.0, *args, indices, 2, 0, 4, 32, 4)
    with pytest.raises(IndexError, match="index 16 is out of range"):
        op(x, weight, 0.0, *args, torch.tensor([[1, 2], [3, 16]]), 1, 0, 4, 32, 4)
    with pytest.raises(ValueError, match=r"indices must be int64 \[layers, k\]"):
        op(x, weight, 0.0, *args, indices[0], 0, 0, 4, 32, 4)
    with pytest.raises(ValueError, match="norm_weight must be"):
        op(x, weight[:8], 0.0, *args, indices, 0, 0, 4, 32, 4)
    with pytest.raises(ValueError, match="norm_eps finite"):
        op(x, weight, -1.0, *args, indices, 0, 0, 4, 32, 4)


def test_decode_pack_is_rebuilt_for_other_weights_at_the_same_address(onnxruntime_kernel, executorch_kernels,
                                                                       tmp_path):
    """The kernels repack a prompt's kept rows once and keep the pack while the indices and a fingerprint of the
    source rows match: new weights in the very buffers of the old ones (same shapes, same kept set) must be
    repacked, not decoded with the old rows. ONNX Runtime: the inputs' numpy buffers overwritten in place;
    ExecuTorch: inputs copied into the method's planned memory at every call."""
    m, idx = 24, np.array([1, 5, 6, 11, 17, 23])
    cases = [quant_case(seed, m=m) for seed in (11, 12)]
    feeds = {name: np.empty_like(value) for name, value in
             zip(("x", "gu", "gus", "dn", "dns"), (cases[0][0], cases[0][1].blocked_codes(), cases[0][1].scales,
                                                 cases[0][2].blocked_codes(), cases[0][2].scales))}
    session = quant_session("GatherFFNQ", 4, 32, 4, 0, onnxruntime_kernel)
    norm_weight, indices = torch.ones(cases[0][0].shape[-1]), torch.from_numpy(idx).reshape(1, -1).clone()
    example = [torch.from_numpy(v) for v in feeds.values()]
    method = export_pte(NormGatherFFNQ(), (example[0], norm_weight, *example[1:], indices), tmp_path / "gather_q.pte")
    for x, gu, dn in cases * 2:
        x4, normed = exactly_normalised(x)  # ExecuTorch's op normalises x first: x4's norm is exact
        for name, value in zip(feeds, (normed, gu.blocked_codes(), gu.scales, dn.blocked_codes(), dn.scales)):
            np.copyto(feeds[name], value)
        want, bound = quant_reference(normed, gu, dn, idx, 0, 4)
        inputs = [torch.from_numpy(v) for v in feeds.values()]
        inputs[0] = torch.from_numpy(x4)
        for got in (session.run(None, {**feeds, "idx": idx})[0],
                    method.execute([inputs[0], norm_weight, *inputs[1:], indices])[0].numpy()):
            assert np.all(np.abs(got - want) <= 1.05 * bound + 1e-4 * (1 + np.abs(want)))


@pytest.mark.parametrize("bits, group", [(4, 32), (8, 64)])
def test_decode_down_int8_reference_follows_its_definition(bits, group):
    """torch_ops.decode_down_int8 (the semantics the decode kernels and the ONNX function implement) against
    a direct numpy reading of its definition, on the same float32 coefficients: equal to float rounding."""
    from glass_ops.torch_ops import decode_down_int8

    _, _, dn = quant_case(bits + group, d=128, m=45, bits=bits, group=group)
    z = np.random.default_rng(bits).standard_normal((3, 45)).astype(np.float32)
    got = decode_down_int8(torch.from_numpy(z), torch.from_numpy(dn.blocked_codes()), torch.from_numpy(dn.scales),
                           bits, group).numpy()
    codes = dn.blocked_codes().reshape(45, -1)
    if bits == 4:
        codes = np.stack([codes & 15, codes >> 4], axis=-1).reshape(45, -1)
    centred = codes.astype(np.int64) - (1 << (bits - 1))  # [k, d]
    want = np.zeros((3, 128))
    for t in range(3):
        for start in range(0, 45, 32):  # groups of 32 kept neurons, the last one short
            for i in range(128):
                c = z[t, start:start + 32] * dn.scales[start:start + 32, i // group]  # float32, as the kernels
                amax = np.abs(c).max()
                q = np.round(c * (np.float32(127) / amax)) if amax else np.zeros_like(c)
                want[t, i] += float(amax / np.float32(127)) * int((q.astype(np.int64) * centred[start:start + 32, i]).sum())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_quantised_ffn_down_native_and_fallback_match_the_reference(onnxruntime_kernel):
    from glass_export.quantization import dequantize_rows

    for bits in (4, 8):
        _, _, dn = quant_case(bits, m=40, bits=bits)
        z = np.random.default_rng(bits).standard_normal((1, 5, 40)).astype(np.float32)
        want = z.astype(np.float64) @ dequantize_rows(dn).astype(np.float64)
        for library in (onnxruntime_kernel, None):
            session = quant_session("FFNDownQ", bits, 32, 4, 0, library)
            got = session.run(None, {"x": z, "dn": dn.blocked_codes(), "dns": dn.scales})[0]
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        with pytest.raises(Exception, match="disagree|FFNDownQ"):
            quant_session("FFNDownQ", bits, 32, 4, 0, onnxruntime_kernel).run(
                None, {"x": z[..., :30], "dn": dn.blocked_codes(), "dns": dn.scales})


def test_fp32_fallback_refuses_negative_indices_like_the_kernel():
    x, gu, dt, idx = random_case(3, d=32, m=48, k=20)
    program = torch.onnx.export(GatherFFN(gu, dt, 0).eval(), (x, idx), dynamo=True, optimize=False,
                                custom_translation_table=onnx_ops.translation_table(), verbose=False)
    session = ort.InferenceSession(onnx_ops.add_function_fallback(program.model_proto).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    wrong = idx.clone()
    wrong[0] = -1
    with pytest.raises(Exception, match="out of bounds|indices"):
        session.run(None, {names[0]: x.numpy(), names[1]: wrong.numpy()})


def test_kernel_variant_is_reported():
    assert native.quant_kernels_name() in ("avx512vnni", "avx2", "neon-dotprod", "neon", "scalar")


# --- a tied embedding table read by the LM head and the lookup (ExecuTorch stores it once) ----------

class TiedTableOps(torch.nn.Module):
    """The LM head and the lookup over one table given as inputs (so each call's table lands in the same
    planned memory: the LM head's cached pack must follow new weights there)."""

    def __init__(self, bits, group, accuracy):
        super().__init__()
        self.bits, self.group, self.accuracy = bits, group, accuracy

    def forward(self, x, ids, codes, scales):
        logits = torch.ops.glass.linear_rows_q(x, codes, scales, self.bits, self.group, self.accuracy)
        return logits, torch.ops.glass.embedding_q(ids, codes, scales, self.bits, self.group)


@pytest.mark.parametrize("bits, group, accuracy", [(4, 32, 4), (8, 64, 4), (4, 32, 1)])
@pytest.mark.parametrize("tokens", [1, 5])
def test_tied_table_ops_match_their_definition_in_executorch(executorch_kernels, bits, group, accuracy, tokens,
                                                            tmp_path):
    """linear_rows_q: x (int8 per block at accuracy 4, as the reference quantises it) against every dequantised
    row; 100 rows = 50 pairs, so the last tile of 16 pairs is padded. embedding_q: the dequantised rows, exactly.
    Tolerance 1e-4 + 1e-4 |ref| (the integer dots' float scaling in another order)."""
    from glass_export.quantization import quantize_rows
    from glass_ops.torch_ops import dequantize, quantize_activations

    rng = np.random.default_rng(bits * 10 + tokens)
    rows, d = 100, 128
    tables = [quantize_rows(rng.standard_normal((rows, d)).astype(np.float32), bits, group) for _ in range(2)]
    x = torch.from_numpy(rng.standard_normal((1, tokens, d)).astype(np.float32))
    ids = torch.tensor([[0, rows - 1, 37][: min(tokens, 3)]])
    example = (x, ids, torch.from_numpy(tables[0].blocked_codes()), torch.from_numpy(tables[0].scales))
    method = export_pte(TiedTableOps(bits, group, accuracy), example, tmp_path / "tied.pte")
    for table in tables * 2:
        codes, scales = torch.from_numpy(table.blocked_codes()), torch.from_numpy(table.scales)
        weights = dequantize(codes, scales, bits)
        want = (quantize_activations(x, group) if accuracy == 4 else x) @ weights.T
        logits, embedded = method.execute([x, ids, codes, scales])
        torch.testing.assert_close(logits, want, atol=ATOL, rtol=RTOL)
        assert torch.equal(embedded, weights[ids])
        torch.testing.assert_close(torch.ops.glass.linear_rows_q(x, codes, scales, bits, group, accuracy), want,
                                   atol=ATOL, rtol=RTOL)
        assert torch.equal(torch.ops.glass.embedding_q(ids, codes, scales, bits, group), weights[ids])
    for bad in (rows, -1):
        with pytest.raises(RuntimeError):
            method.execute([x, torch.tensor([[bad]]), codes, scales])
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.glass.embedding_q(torch.tensor([[rows]]), codes, scales, bits, group)
    odd = quantize_rows(rng.standard_normal((rows - 1, d)).astype(np.float32), bits, group)
    odd_inputs = (x, ids, torch.from_numpy(odd.blocked_codes()), torch.from_numpy(odd.scales))
    odd_method = export_pte(TiedTableOps(bits, group, 4), odd_inputs, tmp_path / "odd.pte")
    with pytest.raises(RuntimeError):  # the int8 LM head tiles rows in pairs: it refuses an odd count
        odd_method.execute(list(odd_inputs))


class TiedHeadF32(torch.nn.Module):
    def forward(self, x, weight):
        return torch.ops.glass.linear_rows(x, weight)


@pytest.mark.parametrize("rows, tokens", [(37, 1), (64, 6)])
def test_fp32_tied_head_matches_matmul_in_executorch(executorch_kernels, rows, tokens, tmp_path):
    """An odd row count is read as a last pair of the same row, written once."""
    x, weight = torch.randn(1, tokens, 48), torch.randn(rows, 48)
    method = export_pte(TiedHeadF32(), (x, weight), tmp_path / "head.pte")
    torch.testing.assert_close(method.execute([x, weight])[0], x @ weight.T, atol=ATOL, rtol=RTOL)


# --- transformers' rotary embedding as one kernel (graphs.rope_through_glass) -----------------------

class Rope(torch.nn.Module):
    def forward(self, x, cos, sin):
        return torch.ops.glass.rope(x, cos, sin)


@pytest.mark.parametrize("heads, tokens, head_dim", [(9, 1, 64), (3, 7, 16)])
def test_rope_matches_transformers_in_executorch(executorch_kernels, heads, tokens, head_dim, tmp_path):
    """glass::rope against transformers' own apply_rotary_pos_emb (Llama's; every supported family's is the
    same function), in ExecuTorch and as the torch op; mismatched shapes are refused. Tolerance 1e-4 + 1e-4
    |ref| (one rounding per product either way)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    generator = torch.Generator().manual_seed(heads * 100 + tokens)
    x = torch.randn(1, heads, tokens, head_dim, generator=generator)
    cos, sin = (torch.randn(1, tokens, head_dim, generator=generator) for _ in range(2))
    want, _ = apply_rotary_pos_emb(x, x, cos, sin)
    method = export_pte(Rope(), (x, cos, sin), tmp_path / "rope.pte")
    torch.testing.assert_close(method.execute([x, cos, sin])[0], want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.ops.glass.rope(x, cos, sin), want, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="do not fit"):
        torch.ops.glass.rope(x, cos[..., :-2], sin[..., :-2])
    odd = torch.randn(1, heads, tokens, head_dim - 1)
    odd_tables = torch.randn(1, tokens, head_dim - 1)
    odd_method = export_pte(Rope(), (odd, odd_tables, odd_tables), tmp_path / "odd.pte")
    with pytest.raises(RuntimeError):  # an odd head_dim has no halves: the kernel refuses it
        odd_method.execute([odd, odd_tables, odd_tables])


# --- GLASS's selection as one kernel (graphs.glass_select_kept) -----------------------------------

class SelectKept(torch.nn.Module):
    def __init__(self, local_weight: int, k: int, prior: bool):
        from glass_export.selection import LAMBDA_SCALE

        super().__init__()
        self.local_weight, self.global_weight, self.k, self.prior = local_weight, LAMBDA_SCALE - local_weight, k, prior

    def forward(self, local, global_rank):
        return torch.ops.glass.select_kept(local, global_rank if self.prior else None, self.local_weight,
                                           self.global_weight, self.k)


@pytest.mark.parametrize("lam_units, prior", [(250, True), (1000, False), (1, True)])
def test_select_kept_is_select_with_ranks_in_executorch(executorch_kernels, lam_units, prior, tmp_path):
    """glass::select_kept keeps exactly the neurons selection.select_with_ranks keeps, in the same ascending
    order: in ExecuTorch and as the torch op, on scores full of ties (equal values and zeros, which the
    ranking breaks by the lower index) and with a NaN (ranked above every number, as PyTorch's sort puts it).
    Bad input is refused: a global rank out of range, k out of range."""
    from glass_export.selection import SelectionConfig, select_with_ranks

    layers, m, k = 5, 96, 37
    generator = torch.Generator().manual_seed(lam_units)
    local = torch.randint(0, 6, (layers, m), generator=generator).float() / 4  # many equal scores, zeros too
    local[1] = torch.rand(m, generator=generator)
    local[2, 7] = float("nan")
    global_rank = torch.stack([torch.randperm(m, generator=generator) for _ in range(layers)])
    config = SelectionConfig("i-glass" if prior else "griffin", k / m, lam_units / 1000 if prior else None)
    want = select_with_ranks(config, local, global_rank if prior else None, m, layers)
    assert want.shape == (layers, k)
    method = export_pte(SelectKept(lam_units, k, prior), (local, global_rank), tmp_path / "select.pte")
    assert torch.equal(method.execute([local, global_rank])[0], want)
    assert torch.equal(SelectKept(lam_units, k, prior)(local, global_rank), want)
    if prior:
        bad = global_rank.clone()
        bad[3, 5] = m
        with pytest.raises(RuntimeError):
            method.execute([local, bad])
        with pytest.raises(ValueError, match="out of range"):
            SelectKept(lam_units, k, prior)(local, bad)
    too_many = export_pte(SelectKept(lam_units, m + 1, prior), (local, global_rank), tmp_path / "too_many.pte")
    with pytest.raises(RuntimeError):
        too_many.execute([local, global_rank])
