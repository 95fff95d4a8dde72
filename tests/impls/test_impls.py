import pytest
import torch
import torch.nn.functional as F

from attnbench.errors import UserError
from attnbench.impls import make_call, make_inputs, registry, resolve
from attnbench.impls import plugins
from attnbench.impls.base import Impl
from attnbench.spec import Workload

W = Workload(batch=1, q_heads=4, kv_heads=2, q_len=16, kv_len=24, head_dim=8, dtype="fp32")


def test_registry_has_the_builtins():
    names = list(registry())
    for name in ("sdpa-auto", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "flex", "reference"):
        assert name in names
    assert registry()["sdpa-cudnn"].supports(W, "cpu") == "needs a CUDA GPU (no CPU kernel for this backend)"
    assert registry()["sdpa-math"].supports(W, "cpu") is None
    assert "power-of-two" in registry()["flex"].supports(W.replace(head_dim=24), "cpu")


def test_resolve_errors_are_one_line():
    with pytest.raises(UserError, match="unknown impl 'nope'"):
        resolve("nope")
    with pytest.raises(UserError, match="cannot import"):
        resolve("no.such.module:fn")
    with pytest.raises(UserError, match="has no attribute 'missing'"):
        resolve("tests.fixtures.kernels:missing")
    with pytest.raises(UserError, match="expected a registered name"):
        plugins.load_object("justtext:")


def test_function_plugin_gets_causal_gqa_and_params():
    seen = {}

    def kernel(q, k, v, is_causal=False, enable_gqa=False, block=0):
        seen.update(is_causal=is_causal, enable_gqa=enable_gqa, block=block)
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=enable_gqa)

    kernel.param_space = lambda w, d: [{"block": 16}, {"block": 32}]
    impl = plugins.as_impl("mine", kernel)
    assert impl.param_space(W, "cpu") == [{"block": 16}, {"block": 32}]
    fn = impl.build(W.replace(causal=True), "cpu", {"block": 32})
    inputs = make_inputs(W, "cpu", 0)
    out = fn(inputs.q, inputs.k, inputs.v)
    assert out.shape == inputs.q.shape
    assert seen == {"is_causal": True, "enable_gqa": True, "block": 32}


def test_entry_point_plugins(monkeypatch):
    class EP:
        def __init__(self, name, value, obj):
            self.name, self.value, self._obj = name, value, obj

        def load(self):
            if isinstance(self._obj, Exception):
                raise self._obj
            return self._obj

    class Custom(Impl):
        name = "custom"

    eps = [EP("fn-kernel", "pkg:fn", lambda q, k, v, **kw: q), EP("cls-kernel", "pkg:Custom", Custom),
           EP("broken", "pkg:oops", ImportError("no module pkg")), EP("sdpa-math", "pkg:shadow", lambda *a: None)]
    import importlib.metadata as md

    monkeypatch.setattr(md, "entry_points", lambda group=None: eps if group == plugins.ENTRY_POINT_GROUP else [])
    reg = registry()
    assert isinstance(reg["fn-kernel"], plugins.FunctionImpl)
    assert isinstance(reg["cls-kernel"], Custom)
    assert "failed to load" in reg["broken"].supports(W, "cpu")  # a broken plugin is reported, not fatal
    assert reg["sdpa-math"].family == "sdpa"  # plugins cannot shadow built-ins


@pytest.mark.parametrize("direction", ["fwd", "bwd", "fwd+bwd"])
def test_make_call_runs_the_pass(direction):
    w = W.replace(direction=direction)
    inputs = make_inputs(w, "cpu", 1)
    fn = resolve("sdpa-math").build(w, "cpu", {})
    result = make_call(fn, w, inputs)()
    if direction == "fwd":
        assert result.shape == (1, 4, 16, 8)
    else:
        dq, dk, dv = result
        assert dq.shape == inputs.q.shape and dk.shape == inputs.k.shape and dv.shape == inputs.v.shape
        assert torch.isfinite(dq).all()


def test_inputs_are_seeded_random_not_zero():
    a, b, c = make_inputs(W, "cpu", 5), make_inputs(W, "cpu", 5), make_inputs(W, "cpu", 6)
    assert torch.equal(a.q, b.q) and not torch.equal(a.q, c.q)
    assert a.q.abs().min() >= 0 and a.q.abs().sum() > 0 and a.grad_out is None
    assert a.k.shape == (1, 2, 24, 8)


def test_sdpa_no_kernel_becomes_unsupported():
    from attnbench.impls.base import Unsupported

    w = W.replace(dtype="fp64")
    fn = resolve("sdpa-flash").build(w, "cpu", {})
    inputs = make_inputs(w, "cpu", 0)
    try:
        out = fn(inputs.q, inputs.k, inputs.v)
    except Unsupported as exc:  # this torch's CPU flash kernel refuses fp64
        assert "no sdpa-flash kernel" in str(exc)
    else:  # or it takes fp64: then the result must be right
        torch.testing.assert_close(out, F.scaled_dot_product_attention(inputs.q, inputs.k, inputs.v,
                                                                       enable_gqa=True))
