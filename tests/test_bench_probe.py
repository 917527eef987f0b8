"""bench/cpu_probe.py's trace aggregation (the `profile` probe) on a tiny synthetic trace and
HLO text: no profiling here, so the parser and the arithmetic can't rot unnoticed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _load_cpu_probe():
    """bench/cpu_probe.py as a module, with sys.path restored afterwards: the script puts the
    repository root and bench/ on it, which need not leak into the rest of the test session."""
    path = Path(__file__).resolve().parents[1] / "bench" / "cpu_probe.py"
    saved = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location("bench_cpu_probe", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


cpu_probe = _load_cpu_probe()

HLO = """HloModule jit_chunk, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_add (param_0: f32[8], param_1: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  %param_1 = f32[8]{0} parameter(1)
  %add.1 = f32[8]{0} add(%param_0, %param_1), metadata={op_name="jit(chunk)/jvp(Net)/dense/add"}
  ROOT %multiply.1 = f32[8]{0} multiply(%add.1, %param_1), metadata={op_name="jit(chunk)/jvp(Net)/dense/mul"}
}

%fused_transpose (param_0.1: f32[2,4,4,8]) -> f32[8,4,4,2] {
  %param_0.1 = f32[2,4,4,8]{3,2,1,0} parameter(0)
  %transpose.1 = f32[8,4,4,2]{0,2,1,3} transpose(%param_0.1), dimensions={3,1,2,0}
  ROOT %copy.1 = f32[8,4,4,2]{3,2,1,0} copy(%transpose.1)
}

%region_0 (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.2 = f32[] add(%a, %b)
}

%fused_reduce (param_0.2: f32[2,4,4,8], param_1.2: f32[]) -> f32[8] {
  %param_0.2 = f32[2,4,4,8]{3,2,1,0} parameter(0)
  %param_1.2 = f32[] parameter(1)
  ROOT %reduce.1 = f32[8]{0} reduce(%param_0.2, %param_1.2), dimensions={0,1,2}, to_apply=%region_0, metadata={op_name="jit(chunk)/transpose(jvp(Net))/bn_1/reduce_sum"}
}

%body (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]) parameter(0)
  %dot.1 = f32[8,8]{1,0} dot(%x, %y), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(chunk)/jvp(Net)/while/body/lstm/dot_general"}
}

ENTRY %main.1 (p: f32[2,4,4,8]) -> f32[8] {
  %p = f32[2,4,4,8]{3,2,1,0} parameter(0)
  %convolution.1 = f32[2,4,4,8]{3,2,1,0} convolution(%transpose_copy_fusion, %k), window={size=3x3}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(chunk)/jvp(Net)/conv_0/conv_general_dilated"}
  %add_fusion = f32[8]{0} fusion(%a, %b), kind=kLoop, calls=%fused_add, metadata={op_name="jit(chunk)/jvp(Net)/dense/mul"}
  %transpose_copy_fusion = f32[8,4,4,2]{3,2,1,0} fusion(%convolution.1), kind=kLoop, calls=%fused_transpose
  %while.1 = (s32[], f32[8]) while(%t0), condition=%cond, body=%body
  ROOT %reduce_fusion = f32[8]{0} fusion(%convolution.1, %c), kind=kLoop, calls=%fused_reduce, metadata={op_name="jit(chunk)/transpose(jvp(Net))/bn_1/reduce_sum"}
}
"""


def _k(name, tid, ts, dur, run):
    return {"ph": "X", "pid": 1, "tid": tid, "ts": ts * 1000.0, "dur": dur * 1000.0, "name": name,
            "args": {"hlo_op": name, "run_id": run}}


# Two steps, times in ms (events in us). Step 1: an async conv launch (0-1) whose work fills the
# gap to 5, an add (5-7), a while (7-11) holding a dot (8-10) on thread 2 next to a transpose
# (7-8) on thread 1. Between steps: 11-13, with Python dispatch 11-12.5. Step 2: a reduction (13-16).
TRACE = {"traceEvents": [
    {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "tf_XLAEigen/1"}},
    _k("convolution.1", 1, 0, 1, "1"),
    _k("add_fusion", 1, 5, 2, "1"),
    _k("while.1", 2, 7, 4, "1"),
    _k("dot.1", 2, 8, 2, "1"),
    _k("transpose_copy_fusion", 1, 7, 1, "1"),
    _k("reduce_fusion", 1, 13, 3, "2"),
    {"ph": "X", "pid": 1, "tid": 3, "ts": 11000.0, "dur": 1500.0, "name": "$parallel.py:208 run_chunk"},
    {"ph": "X", "pid": 1, "tid": 3, "ts": 0.0, "dur": 20000.0, "name": "ThunkExecutor::Execute"},
]}


def test_parse_hlo_names_ops_layers_and_backward():
    hlo = cpu_probe.parse_hlo(HLO)
    assert hlo["add_fusion"]["ops"] == ["add", "multiply"]
    assert hlo["add_fusion"]["what"] == "dense/mul"
    assert hlo["reduce_fusion"]["what"] == "bwd: bn_1/reduce_sum"
    assert hlo["reduce_fusion"]["layers"] == ["bwd: bn_1"]
    assert set(hlo["reduce_fusion"]["ops"]) == {"reduce", "add"}  # the to_apply region followed
    assert hlo["while.1"]["op"] == "while" and hlo["while.1"]["shape"] == "(s32[], f32[8])"
    assert hlo["transpose_copy_fusion"]["ops"] == ["copy", "transpose"]
    assert hlo["transpose_copy_fusion"]["transposes"] == ["3,1,2,0"]
    assert hlo["convolution.1"]["operands"] == ["transpose_copy_fusion", "k"]
    # a convolution over a batch<->channel transposed input: XLA's kernel-gradient form
    assert cpu_probe.kernel_gradient_convs(hlo) == ["convolution.1"]


def test_categorize_from_hlo_and_from_names():
    hlo = cpu_probe.parse_hlo(HLO)
    got = {n: cpu_probe.categorize(n, hlo[n]) for n in
           ("convolution.1", "add_fusion", "transpose_copy_fusion", "while.1", "dot.1", "reduce_fusion")}
    assert got == {"convolution.1": "convolution", "add_fusion": "fusion: elementwise",
                   "transpose_copy_fusion": "copy/transpose/pad/slice", "while.1": "loop bookkeeping",
                   "dot.1": "dot (XLA)", "reduce_fusion": "fusion: reduction"}
    assert cpu_probe.categorize("ynn_fusion.3", {"op": "fusion", "shape": "f32[4,8]", "ops": ["dot"]}) == "dot (YNNPACK)"
    assert cpu_probe.categorize("wrapped_compare", {"op": "fusion", "shape": "pred[]", "ops": ["compare"]}) == "loop bookkeeping"
    # without HLO: the opcodes XLA writes into the kernel name
    assert cpu_probe.categorize("transpose_copy_fusion.4") == "copy/transpose/pad/slice"
    assert cpu_probe.categorize("multiply_add_fusion.2") == "fusion: elementwise"
    assert cpu_probe.categorize("convolution.7") == "convolution"
    assert cpu_probe.categorize("while.3") == "loop bookkeeping"


def test_summarize_trace_per_step_times_tails_and_host():
    s = cpu_probe.summarize_trace(TRACE, cpu_probe.parse_hlo(HLO), select="bn_")
    assert s["steps"] == 2
    approx = lambda x: pytest.approx(x, abs=1e-9)  # noqa: E731
    assert s["wall_ms"] == approx(16 / 2)
    assert s["busy_ms"] == approx((1 + 2 + 4 + 3) / 2)  # union: 0-1, 5-11, 13-16
    assert s["kernel_ms"] == approx((1 + 2 + 2 + 2 + 1 + 3) / 2)  # while: 4 - its nested dot
    assert s["tail_ms"] == approx(4 / 2)  # 1-5 after the conv launch
    assert s["between_steps_ms"] == approx(2 / 2)  # 11-13
    assert s["host_ms"] == approx(1.5 / 2) and s["host_exposed_ms"] == approx(1.5 / 2)
    rows = {r["name"]: r for r in s["kernels"]}
    assert rows["convolution.1"]["ms"] == approx(5 / 2) and rows["convolution.1"]["tail_ms"] == approx(2)
    assert rows["while.1"]["event_ms"] == approx(1)
    assert s["kernels"][0]["name"] == "convolution.1"  # sorted by event + tail
    cats = {c: v["ms"] for c, v in s["categories"].items()}
    assert cats == {"convolution": approx(2.5), "fusion: elementwise": approx(1), "loop bookkeeping": approx(1),
                    "dot (XLA)": approx(1), "copy/transpose/pad/slice": approx(0.5), "fusion: reduction": approx(1.5)}
    assert sum(v["share"] for v in s["categories"].values()) == approx(1)
    assert [r["name"] for r in s["selected"]] == ["reduce_fusion"]
    assert s["kernel_grad"] == {"convs": ["convolution.1"], "convs_ms": approx(2.5), "operands_ms": approx(0.5)}
    text = cpu_probe.format_summary("net", s)
    assert "convolution" in text and "selected kernels (1," in text


def test_async_tail_goes_to_the_kernel_ended_last_without_a_launch_in_the_step():
    trace = {"traceEvents": [_k("a_fusion", 1, 0, 1, "1"), _k("b_fusion", 1, 3, 1, "1")]}
    s = cpu_probe.summarize_trace(trace)
    assert {r["name"]: r["tail_ms"] for r in s["kernels"]} == {"a_fusion": pytest.approx(2), "b_fusion": 0.0}


def test_summarize_trace_without_kernel_events_says_what_it_expected():
    with pytest.raises(ValueError, match="xla_cpu_enable_xprof_traceme"):
        cpu_probe.summarize_trace({"traceEvents": [TRACE["traceEvents"][-1]]})


def test_union_length_merges_overlaps():
    assert cpu_probe._union_length([(0, 2), (1, 3), (5, 6)]) == 4
    assert cpu_probe._subtract_length([(0, 4)], [(1, 2)]) == 3


def test_convgrad_candidates_equal_xla_kernel_gradient():
    """Every kernel-gradient candidate the `convgrad` probe times computes the stock gradient,
    and the conv it builds from one has XLA's output and input gradient."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
    kern = jnp.asarray(rng.normal(size=(3, 2, 3, 4)), jnp.float32)
    loss = lambda conv: lambda x, k: (jnp.sin(conv(x, k)) * jnp.arange(4.0)).sum()  # noqa: E731
    ref = jax.grad(loss(cpu_probe._valid_conv), argnums=(0, 1))(x, kern)
    for name, dw in cpu_probe.kernel_grad_candidates().items():
        conv = cpu_probe.conv_with_kernel_grad(dw)
        np.testing.assert_allclose(conv(x, kern), cpu_probe._valid_conv(x, kern), rtol=1e-6, err_msg=name)
        got = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(x, kern)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=name)


def test_convgrad_swapped_conv2d_equals_zoo_conv2d():
    """The probe's stand-in for zoo.layers.conv2d (lax branch swapped) computes the same function
    on both of conv2d's branches (im2col for few input channels, lax above), padded or not."""
    import jax.numpy as jnp
    import numpy as np

    from zoo import layers

    swapped = cpu_probe._conv2d_with(cpu_probe.conv_with_kernel_grad(cpu_probe.kernel_grad_candidates()["taps"]))
    rng = np.random.default_rng(1)
    for cin, pad in ((1, ((1, 1), (1, 1))), (8, ((0, 0), (0, 0))), (8, ((1, 0), (2, 1)))):
        x = jnp.asarray(rng.normal(size=(2, 7, 6, cin)), jnp.float32)
        kern = jnp.asarray(rng.normal(size=(3, 3, cin, 5)), jnp.float32)
        np.testing.assert_allclose(swapped(x, kern, 1, pad), layers.conv2d(x, kern, 1, pad), rtol=1e-5, atol=1e-5)


def test_torch_without_onednn_switches_it_off_only_for_the_steps():
    torch = pytest.importorskip("torch")
    seen = []

    class Fake:
        def run(self, steps):
            seen.append((steps, torch._C._get_mkldnn_enabled()))
            return 0.5

    before = torch._C._get_mkldnn_enabled()
    assert cpu_probe.TorchWithoutOneDNN(Fake()).run(3) == 0.5
    assert seen == [(3, False)] and torch._C._get_mkldnn_enabled() == before


def test_torch_top_ops_ranks_self_time_shares():
    torch = pytest.importorskip("torch")
    a = torch.randn(256, 256)  # large enough that the matmul outweighs relu_ under any load

    class Fake:
        def run(self, steps):
            for _ in range(steps):
                (a @ a).relu_()

    top = cpu_probe.torch_top_ops(Fake(), steps=2, top=2)
    assert len(top) == 2 and top[0][1] >= top[1][1] > 0 and sum(v for _, v in top) <= 1.0 + 1e-9
    assert any("mm" in name for name, _ in top)


def test_autodiff_max_pool_is_the_old_forward():
    import jax
    import numpy as np

    from zoo import layers

    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
    np.testing.assert_array_equal(cpu_probe.autodiff_max_pool_2x2(x), layers.max_pool_2x2(x))
