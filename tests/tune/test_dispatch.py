"""dispatch: bucket keys, the table's JSON, attention() against SDPA, fallbacks; the CLI end to end."""

import json
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnbench.analysis import device as devmod
from attnbench.tune import dispatch
from attnbench.tune.dispatch import DispatchTable, Entry, bucket_key, load_table, pow2_bucket, workload_bucket
from attnbench.errors import UserError
from attnbench.spec import Workload

ROOT = Path(__file__).resolve().parents[2]
CALLS = Counter()
SPY = "tests.tune.test_dispatch:spy_attention"


def spy_attention(q, k, v, is_causal=False, enable_gqa=False, **_):
    CALLS["spy"] += 1
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=enable_gqa)


def here_env() -> dict:
    return {"env_id": devmod.env_id(devmod.fingerprint("cpu")), "device_kind": "cpu"}


def table_for(*workloads: Workload, impl: str = SPY, env: dict | None = None, params=None) -> DispatchTable:
    entries = {}
    for w in workloads:
        b = workload_bucket(w)
        entries[b] = Entry(bucket=b, impl=impl, params=dict(params or {}), workload=w.to_dict())
    return DispatchTable(environment=env or here_env(), entries=entries)


def qkv(b=2, hq=4, hkv=4, s=64, sk=None, d=32, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    sk = sk or s
    q = torch.randn(b, hq, s, d, generator=g)
    k = torch.randn(b, hkv, sk, d, generator=g)
    v = torch.randn(b, hkv, sk, d, generator=g)
    if grad:
        q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    return q, k, v


W = Workload(batch=2, q_heads=4, kv_heads=4, q_len=64, kv_len=64, head_dim=32, dtype="fp32")


def test_bucket_key_rounds_sizes_up_to_powers_of_two():
    assert [pow2_bucket(n) for n in (1, 2, 3, 4, 5, 512, 513, 1000, 1024)] == [1, 2, 4, 4, 8, 512, 1024, 1024, 1024]
    assert bucket_key("fp16", 64, False, 1, "fwd", 512, 512, 32) == "fp16/d64/full/gqa1/fwd/q512/kv512/b32"
    assert bucket_key("bf16", 128, True, 4, "fwd+bwd", 1000, 3000, 3) == "bf16/d128/causal/gqa4/fwd+bwd/q1024/kv4096/b4"
    w = Workload(batch=3, q_heads=32, kv_heads=8, q_len=1000, kv_len=1000, head_dim=128, dtype="bf16", causal=True)
    assert workload_bucket(w) == "bf16/d128/causal/gqa4/fwd/q1024/kv1024/b4"
    assert workload_bucket(w.replace(batch=4, q_len=1024, kv_len=513)) == workload_bucket(w)
    assert workload_bucket(w.replace(q_len=1025)) != workload_bucket(w)
    with pytest.raises(ValueError):
        pow2_bucket(0)


def test_table_json_round_trip_is_stable_and_versioned(tmp_path):
    t = table_for(W, W.replace(causal=True), params={"chunks": 2})
    t.entries[workload_bucket(W)].data["speedup"] = {"baseline": "sdpa-auto", "value": 1.2, "lo": 1.1, "hi": 1.3}
    path = tmp_path / "d.json"
    t.save(path)
    text = path.read_text()
    data = json.loads(text)
    assert list(data)[:2] == ["format", "version"] and data["format"] == "attnbench-dispatch" and data["version"] == 1
    assert [e["bucket"] for e in data["entries"]] == sorted(e["bucket"] for e in data["entries"])
    back = load_table(path)
    assert back.dumps() == text  # load -> save is the identity: diffs show only real changes
    e = back.lookup(workload_bucket(W))
    assert (e.impl, e.params, e.workload) == (SPY, {"chunks": 2}, W.to_dict())
    assert e.data["speedup"]["value"] == 1.2
    assert load_table(path) is back  # cached by path
    assert load_table(path, reload=True) is not back


def test_load_table_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UserError, match="not an attnbench dispatch table"):
        load_table(p)
    p.write_text(json.dumps({"format": "attnbench-dispatch", "version": 99, "entries": []}))
    with pytest.raises(UserError, match="upgrade attnbench"):
        load_table(p)
    with pytest.raises(UserError, match="not found"):
        load_table(tmp_path / "missing.json")


def test_attention_covered_and_uncovered_buckets_equal_sdpa():
    t = table_for(W, W.replace(causal=True))
    CALLS.clear()
    for causal in (False, True):
        q, k, v = qkv()
        out = dispatch.attention(q, k, v, is_causal=causal, table=t)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        assert dispatch.explain(q, k, v, is_causal=causal, table=t).startswith(SPY)
    assert CALLS["spy"] == 2
    q, k, v = qkv(b=1, s=48)  # bucket q64/kv64/b1: not in the table
    out = dispatch.attention(q, k, v, table=t)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert "no entry for bucket fp32/d32/full/gqa1/fwd/q64/kv64/b1" in dispatch.explain(q, k, v, table=t)
    q, k, v = qkv(b=2, s=60)  # same bucket as 64, another exact shape: the winner, built for this shape
    torch.testing.assert_close(dispatch.attention(q, k, v, table=t), F.scaled_dot_product_attention(q, k, v))
    assert CALLS["spy"] == 3


def test_reference_winner_and_gqa_and_grad_pass():
    gw = W.replace(kv_heads=2)
    t = table_for(gw, impl="reference")
    q, k, v = qkv(hkv=2)
    out = dispatch.attention(q, k, v, table=t, enable_gqa=None)  # None: inferred from the head counts
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    assert dispatch.explain(q, k, v, table=t, enable_gqa=True).startswith("reference")
    # with gradients the pass is fwd+bwd: a fwd-only table falls back, a fwd+bwd entry is used
    q, k, v = qkv(hkv=2, grad=True)
    assert "fwd+bwd" in dispatch.explain(q, k, v, table=t, enable_gqa=True)
    assert "sdpa fallback" in dispatch.explain(q, k, v, table=t, enable_gqa=True)
    t2 = table_for(gw.replace(direction="fwd+bwd"))
    CALLS.clear()
    out = dispatch.attention(q, k, v, table=t2, enable_gqa=True)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), (q, k, v))):
        torch.testing.assert_close(g, r)
    assert CALLS["spy"] == 1
    with torch.no_grad():  # no autograd: the fwd bucket again
        why = dispatch.explain(q, k, v, table=t2, enable_gqa=True)
        assert "fwd/" in why and "sdpa fallback" in why


def test_other_environment_falls_back_and_warns_once():
    t = table_for(W, env={"env_id": "not-this-one", "device_kind": "cpu"})
    q, k, v = qkv()
    CALLS.clear()
    with pytest.warns(RuntimeWarning, match="tuned in environment not-this-one"):
        out = dispatch.attention(q, k, v, table=t)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatch.attention(q, k, v, table=t)
        dispatch.attention(*qkv(s=32), table=t)  # another shape: no second warning
    assert CALLS["spy"] == 0
    gpu_table = table_for(W, env={**here_env(), "device_kind": "cuda"})
    with pytest.warns(RuntimeWarning):
        dispatch.attention(q, k, v, table=gpu_table)
    assert CALLS["spy"] == 0


def test_unsupported_inputs_fall_back():
    t = table_for(W)
    q, k, v = qkv()
    CALLS.clear()
    mask = torch.rand(64, 64) > 0.3
    torch.testing.assert_close(dispatch.attention(q, k, v, attn_mask=mask, table=t),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.manual_seed(1)
    a = dispatch.attention(q, k, v, dropout_p=0.5, table=t)
    torch.manual_seed(1)
    torch.testing.assert_close(a, F.scaled_dot_product_attention(q, k, v, dropout_p=0.5))
    custom = dispatch.attention(q, k, v, scale=0.5, table=t)
    torch.testing.assert_close(custom, F.scaled_dot_product_attention(q, k, v, scale=0.5))
    assert "custom scale" in dispatch.explain(q, k, v, scale=0.5, table=t)
    q3, k3, v3 = q[0], k[0], v[0]
    torch.testing.assert_close(dispatch.attention(q3, k3, v3, table=t), F.scaled_dot_product_attention(q3, k3, v3))
    assert "not 4-D" in dispatch.explain(q3, k3, v3, table=t)
    assert CALLS["spy"] == 0
    assert dispatch.attention(q, k, v, scale=32 ** -0.5, table=t) is not None and CALLS["spy"] == 1  # default scale


def test_a_winner_that_raises_falls_back_and_warns_once():
    t = table_for(W, impl="tests.fixtures.kernels:raises")
    q, k, v = qkv()
    with pytest.warns(RuntimeWarning, match="raised RuntimeError: kernel exploded"):
        out = dispatch.attention(q, k, v, table=t)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dispatch.attention(q, k, v, table=t)
    assert "sdpa fallback" in dispatch.explain(q, k, v, table=t)
    missing = table_for(W, impl="tests.no_such_module:fn")
    with pytest.warns(RuntimeWarning, match="cannot build"):
        torch.testing.assert_close(dispatch.attention(q, k, v, table=missing), F.scaled_dot_product_attention(q, k, v))


def test_no_table_is_plain_sdpa(monkeypatch):
    monkeypatch.delenv("ATTNBENCH_DISPATCH", raising=False)
    monkeypatch.setattr(dispatch, "_FAST", {})
    q, k, v = qkv()
    torch.testing.assert_close(dispatch.attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert "no dispatch table" in dispatch.explain(q, k, v)


def test_package_exports_attention_lazily():
    code = ("import sys, attnbench; assert 'torch' not in sys.modules; f = attnbench.attention; "
            "assert 'torch' not in sys.modules; print(f.__module__)")  # torch loads on the first call
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "attnbench.tune.dispatch"


def test_cli_tune_writes_a_table_that_drives_attention(tmp_path, capsys):
    from attnbench.cli import main

    db, out = str(tmp_path / "t.db"), tmp_path / "dispatch.json"
    args = ["tune", "--preset", "cpu-smoke", "-i", "sdpa-math", "-i", "sdpa-flash", "-i", "reference",
            "-i", "tests.fixtures.kernels:blockwise_qkv", "-i", "tests.fixtures.kernels:query_chunked",
            "--budget", "0.2s", "--samples", "30", "-o", str(out), "--db", db]

    def cli(*extra):
        try:
            main(args + list(extra))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        got = capsys.readouterr()
        return code, got.out, got.err

    code, text, err = cli()
    assert code == 0, err
    assert "| tests.fixtures.kernels:blockwise_qkv | incorrect | relative error" in text
    assert text.count("## B2 H4") == 5 and "speedup vs sdpa-auto" in text
    data = json.loads(out.read_text())
    assert data["format"] == "attnbench-dispatch" and len(data["entries"]) == 5
    assert data["environment"]["env_id"] == devmod.env_id(devmod.fingerprint("cpu"))
    assert all(e["winner"]["impl"] != "tests.fixtures.kernels:blockwise_qkv" for e in data["entries"])
    for e in data["entries"]:
        s = e["speedup"]
        assert s["lo"] <= s["value"] <= s["hi"] and e["workload"]["batch"] == 2
    # attention() driven by the file, on every tuned shape, equals SDPA
    from attnbench.spec import load_preset

    for w in load_preset("cpu-smoke").workloads:
        q, k, v = qkv(b=w.batch, hq=w.q_heads, hkv=w.kv_heads, s=w.q_len, d=w.head_dim)
        got = dispatch.attention(q, k, v, is_causal=w.causal, enable_gqa=w.gqa, table=str(out))
        want = F.scaled_dot_product_attention(q, k, v, is_causal=w.causal, enable_gqa=w.gqa)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # the winner may be the eager reference
        why = dispatch.explain(q, k, v, is_causal=w.causal, enable_gqa=w.gqa, table=str(out))
        winner = load_table(out).lookup(workload_bucket(w)).impl
        assert why.startswith(winner) or why == "sdpa fallback: winner is sdpa-auto"
    # the second tune reads the cache; json format
    code, text, err = cli("--format", "json")
    report = json.loads(text)
    assert code == 0 and report["format"] == "attnbench-tune"
    assert all("(cached)" in line for line in err.splitlines() if line.startswith("B2 "))
    statuses = {c["impl"]: c["status"] for c in report["workloads"][0]["candidates"]}
    assert statuses["tests.fixtures.kernels:blockwise_qkv"] == "incorrect" and statuses["sdpa-auto"] == "ok"


def test_cli_throughput_objective(tmp_path, capsys):
    from attnbench.cli import main

    plan = tmp_path / "plan.json"
    try:
        # a budget a loaded CPU stays within: the test is about the plan's plumbing, not the timing
        main(["tune", "--objective", "throughput", "--latency-budget", "2000ms", "-b", "1,2,...,4", "-H", "2",
              "-s", "32", "-d", "16", "--plan-impl", "sdpa-math", "--samples", "10", "-o", str(plan),
              "--db", str(tmp_path / "t.db"), "-q"])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    got = capsys.readouterr()
    assert code == 0, got.err
    assert "| batch | impl | median ms | 95% CI | tokens/s | within budget |" in got.out
    data = json.loads(plan.read_text())
    rows = data["plans"][0]["rows"]
    assert [r["batch"] for r in rows] == [1, 2, 4] and all(r["impl"] == "sdpa-math" for r in rows)
    assert data["plans"][0]["best_batch"] in (1, 2, 4)


@pytest.mark.gpu
def test_flex_winner_on_gpu_compiles_per_shape_and_matches_sdpa():
    """FlexAttention through the dispatcher: no torch._dynamo.reset(), one compile per exact shape."""
    w = Workload(batch=2, q_heads=4, kv_heads=4, q_len=256, kv_len=256, head_dim=64, dtype="fp16", causal=True)
    b = workload_bucket(w)
    env = {"env_id": devmod.env_id(devmod.fingerprint("cuda")), "device_kind": "cuda"}
    t = DispatchTable(environment=env, entries={b: Entry(bucket=b, impl="flex", params={}, workload=w.to_dict())})
    for s in (256, 200):  # 200 is in the same bucket: built for its own shape
        q, k, v = (torch.randn(2, 4, s, 64, device="cuda", dtype=torch.float16) for _ in range(3))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback warning
            out = dispatch.attention(q, k, v, is_causal=True, table=t)
        assert dispatch.explain(q, k, v, is_causal=True, table=t).startswith("flex")
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=2e-3, rtol=2e-3)


def masked_spy(q, k, v, is_causal=False, enable_gqa=False, mask=None, **_):
    """Exact attention for the masks of a model's layers; counts its calls by mask."""
    from attnbench.spec import masks

    CALLS[mask or ("causal" if is_causal else "full")] += 1
    keep = masks.mask_matrix(mask or ("causal" if is_causal else "full"), q.shape[-2], k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=enable_gqa)


masked_spy.mask_kinds = ("full", "causal", "causal-br", "window")
MASKED_SPY = "tests.tune.test_dispatch:masked_spy"


def test_mask_keyword_picks_the_bucket_and_falls_back_to_an_explicit_mask():
    from attnbench.impls.reference import attention_math
    from attnbench.spec import masks

    win = W.replace(mask="window:7")
    decode = W.replace(q_len=1, mask="causal-br")
    t = table_for(win, decode, impl=MASKED_SPY)
    CALLS.clear()
    q, k, v = qkv()
    ref = attention_math(q.double(), k.double(), v.double(), "window:7").float()
    torch.testing.assert_close(dispatch.attention(q, k, v, mask="window:7", table=t), ref)
    assert CALLS == {"window:7": 1}
    assert dispatch.explain(q, k, v, mask="window:7", table=t).startswith(MASKED_SPY + " (bucket fp32/d32/win7/")
    q1 = q[:, :, -1:]
    torch.testing.assert_close(dispatch.attention(q1, k, v, mask="causal-br", table=t),
                               F.scaled_dot_product_attention(q1, k, v))  # one query at the end sees every key
    assert CALLS == {"window:7": 1, "causal-br": 1}
    # no entry: SDPA with the mask made explicit; as cheap as SDPA allows where the mask is a plain one
    for mask, sq, sk in (("window:3", 64, 64), ("causal-br", 16, 64), ("window:7", 1, 64), ("causal-br", 64, 64)):
        q, k, v = qkv(s=sq, sk=sk, seed=sq)
        want = attention_math(q.double(), k.double(), v.double(), masks.canonical_mask(mask, sq, sk)).float()
        torch.testing.assert_close(dispatch.attention(q, k, v, mask=mask, table=t), want, rtol=1e-4, atol=1e-5)
        assert dispatch.explain(q, k, v, mask=mask, table=t).startswith("sdpa fallback: no entry for bucket")
    assert CALLS == {"window:7": 1, "causal-br": 1}
    q, k, v = qkv(hkv=2)  # grouped-query heads with an explicit mask: K and V repeated, the result the same
    want = attention_math(q.double(), k.double(), v.double(), "window:5").float()
    torch.testing.assert_close(dispatch.attention(q, k, v, mask="window:5", enable_gqa=True, table=t), want,
                               rtol=1e-4, atol=1e-5)
    # dropout with a mask: the explicit mask, every call
    q, k, v = qkv()
    torch.manual_seed(3)
    a = dispatch.attention(q, k, v, dropout_p=0.3, mask="window:7", table=t)
    torch.manual_seed(3)
    keep = masks.mask_matrix("window:7", 64, 64)
    torch.testing.assert_close(a, F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=0.3))
    with pytest.raises(UserError, match="give is_causal=True or mask"):
        dispatch.attention(q, k, v, is_causal=True, mask="window:7", table=t)
    with pytest.raises(UserError, match="give attn_mask or mask"):
        dispatch.attention(q, k, v, attn_mask=keep, mask="window:7", table=t)
    with pytest.raises(UserError, match="unknown mask"):
        dispatch.attention(q, k, v, mask="diagonal", table=t)
    # mask="causal" is is_causal=True: the same bucket
    assert dispatch.explain(q, k, v, mask="causal", table=t) == dispatch.explain(q, k, v, is_causal=True, table=t)


def test_flex_mask_mods_keep_what_spec_masks_keep():
    from attnbench.spec import masks

    for mask, sq, sk in (("causal", 16, 16), ("causal-br", 5, 16), ("window:3", 16, 16), ("window:4", 1, 16)):
        mod = dispatch._flex_mask_mod(mask, sq, sk)
        got = mod(0, 0, torch.arange(sq)[:, None], torch.arange(sk)[None, :])
        assert torch.equal(got, masks.mask_matrix(masks.canonical_mask(mask, sq, sk), sq, sk)), mask
    assert dispatch._flex_mask_mod("full", 4, 4) is None
    with pytest.raises(ValueError, match="no FlexAttention mask_mod"):
        dispatch._flex_mask_mod("document:2+2", 4, 4)


def test_concurrent_calls_keep_sdpa_backend_flags_and_each_others_backends():
    """SDPA's backend flags are process-wide: winners restricted to one backend, called from several threads,
    must not leave backends switched off, nor run another thread's SDPA fallback under their flags (on a CPU,
    dropout has no flash kernel: 'No available kernel')."""
    import threading

    C = torch._C
    flags = (C._get_flash_sdp_enabled, C._get_math_sdp_enabled, C._get_mem_efficient_sdp_enabled)
    before = [f() for f in flags]
    small = W.replace(batch=1, q_heads=2, kv_heads=2, q_len=8, kv_len=8, head_dim=16)
    flash, math = table_for(small, impl="sdpa-flash"), table_for(small, impl="sdpa-math")
    q, k, v = qkv(b=1, hq=2, hkv=2, s=8, d=16)
    assert dispatch.explain(q, k, v, table=flash).startswith("sdpa-flash")
    errors = []

    def loop(call):
        try:
            for _ in range(1500):
                call()
        except Exception as exc:  # noqa: BLE001 (recorded, asserted below)
            errors.append(f"{type(exc).__name__}: {exc}")

    calls = [lambda: dispatch.attention(q, k, v, table=flash), lambda: dispatch.attention(q, k, v, table=math),
             lambda: dispatch.attention(q, k, v, dropout_p=0.5, table=flash)]
    threads = [threading.Thread(target=loop, args=(c,)) for c in calls + calls[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = [f() for f in flags]
    for f, on in zip((C._set_sdp_use_flash, C._set_sdp_use_math, C._set_sdp_use_mem_efficient), before):
        f(on)  # leave the process as it was for the tests after this one, even when this one fails
    assert after == before
    assert errors == []


def test_enable_gqa_defaults_to_sdpas_false():
    """SDPA's enable_gqa is False: K and V with fewer heads (not one) are its error, with or without a table,
    never a grouped-query result it would not give; one KV head broadcasts in both; None infers."""
    gw = W.replace(kv_heads=2)
    t = table_for(gw, impl="reference")
    q, k, v = qkv(hkv=2)
    with pytest.raises(RuntimeError) as sdpa_error:
        F.scaled_dot_product_attention(q, k, v)
    for table in (t, None):
        with pytest.raises(RuntimeError) as ours:
            dispatch.attention(q, k, v, table=table)
        assert str(ours.value) == str(sdpa_error.value)
    assert "enable_gqa=False" in dispatch.explain(q, k, v, table=t)
    want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    for gqa in (True, None):
        torch.testing.assert_close(dispatch.attention(q, k, v, enable_gqa=gqa, table=t), want)
        assert dispatch.explain(q, k, v, enable_gqa=gqa, table=t).startswith("reference")
    q, k, v = qkv(hkv=1)
    torch.testing.assert_close(dispatch.attention(q, k, v, table=t), F.scaled_dot_product_attention(q, k, v))


def test_other_environment_warning_names_what_differs_and_a_bad_table_argument_is_a_user_error():
    fp = devmod.fingerprint("cpu")
    t = table_for(W, env={"env_id": "elsewhere", "device_kind": "cpu", "torch": "2.0.0", "cpu_model": fp["cpu_model"]})
    q, k, v = qkv()
    with pytest.warns(RuntimeWarning, match=r"torch: 2\.0\.0 -> " + fp["torch"].replace("+", r"\+")):
        torch.testing.assert_close(dispatch.attention(q, k, v, table=t), F.scaled_dot_product_attention(q, k, v))
    for bad in (t.to_dict(), 3, ["dispatch.json"]):
        with pytest.raises(UserError, match="table must be a path or a DispatchTable"):
            dispatch.attention(q, k, v, table=bad)


def test_cli_tune_into_an_existing_table_adds_and_replaces_buckets(tmp_path, capsys):
    """Re-running tune with the same -o updates the table: the buckets tuned now replace theirs, the others
    stay; a table of another environment is replaced (and it says so); a file that is not a table is refused
    before anything is measured."""
    from attnbench.cli import main
    from attnbench.tune.report import update_table

    out, db = tmp_path / "d.json", str(tmp_path / "t.db")

    def cli(seq, output=out):
        args = ["tune", "-b", "1", "-H", "2", "-s", str(seq), "-d", "16", "-i", "sdpa-math", "--budget", "1s",
                "--samples", "10", "--db", db, "-o", str(output), "-q"]
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    def buckets(path=out):
        return sorted(e["bucket"] for e in json.loads(path.read_text())["entries"])

    assert cli(16)[0] == 0 and buckets() == ["fp32/d16/full/gqa1/fwd/q16/kv16/b1"]
    code, err = cli(32)
    assert code == 0 and "1 entries tuned now, 0 of them replacing older ones; 1 kept" in err
    assert buckets() == ["fp32/d16/full/gqa1/fwd/q16/kv16/b1", "fp32/d16/full/gqa1/fwd/q32/kv32/b1"]
    code, err = cli(16)
    assert code == 0 and "1 entries tuned now, 1 of them replacing older ones; 1 kept" in err and len(buckets()) == 2
    # another environment's table is replaced, not merged
    old = load_table(out, reload=True)
    foreign = DispatchTable(environment={"env_id": "elsewhere"}, entries=dict(old.entries))
    new = table_for(W)
    table, what = update_table(new, foreign)
    assert table is new and "tuned in environment elsewhere" in what
    bad = tmp_path / "notes.json"
    bad.write_text('{"mine": 1}')
    code, err = cli(16, bad)
    assert code == 2 and "exists and is not a dispatch table" in err and bad.read_text() == '{"mine": 1}'


@pytest.mark.parametrize("corrupt", [
    b"\xff\xfe\x00 not text", b'{"format": "attnbench-dispatch", "version": 1, "entries": null}',
    b'{"format": "attnbench-dispatch", "version": 1, "entries": {"b": 1}}',
    b'{"format": "attnbench-dispatch", "version": 1, "environment": [1], "entries": []}',
    b'{"format": "attnbench-dispatch", "version": 1, "notes": "abc", "entries": []}',
    b'{"format": "attnbench-dispatch", "version": 0, "entries": []}',
    b'{"format": "attnbench-dispatch", "version": "1", "entries": []}',
    b'{"format": "attnbench-dispatch", "version": 1, "entries": [{"bucket": "b", "winner": {"impl": "x", '
    b'"params": [1, 2]}, "workload": {}}]}',
    b'{"format": "attnbench-dispatch", "version": 1, "entries": [{"bucket": "b", "winner": "x", "workload": {}}]}',
])
def test_a_corrupt_table_file_is_one_user_error(tmp_path, corrupt):
    p = tmp_path / "d.json"
    p.write_bytes(corrupt)
    with pytest.raises(UserError) as err:
        load_table(p, reload=True)
    assert "upgrade" not in str(err.value)
    q, k, v = qkv()
    with pytest.raises(UserError):
        dispatch.attention(q, k, v, table=str(p))


def test_inputs_on_a_device_neither_cpu_nor_cuda_fall_back():
    """A CPU table's winner is not run on another kind of device (the fingerprint calls every non-CUDA device
    a CPU, so its environment id matched); the meta device stands for one here (mps, xpu, ...)."""
    t = table_for(W, impl="reference")
    q, k, v = (x.to("meta") for x in qkv())
    with pytest.warns(RuntimeWarning, match="these inputs are on meta"):
        out = dispatch.attention(q, k, v, table=t)
    assert out.device.type == "meta" and out.shape == q.shape
    assert dispatch.explain(q, k, v, table=t) == "sdpa fallback: environment differs from the table's"


def random_call(rng):
    """Arguments of one attention() call from a space that reaches every decision: winners and sdpa-auto,
    no entry, 3-D, mixed dtypes or devices, v unlike k, heads that do not divide, GQA with and without enable_gqa,
    custom and default scales, masks, attn_mask and dropout, autograd on and off; some are SDPA's errors."""
    b, hq = rng.choice([1, 2]), rng.choice([1, 2, 4])
    hkv = rng.choice([hq, hq, hq, 1, 1, 2, 2]) if rng.random() < 0.95 else 3
    s = rng.choice([1, 4, 8])
    sk, d = rng.choice([s, s, 8, 16]), rng.choice([8, 16])
    dtype = rng.choice([torch.float32, torch.float32, torch.float64])
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype) for h, n in ((hq, s), (hkv, sk), (hkv, sk)))
    odd = rng.random()
    if odd < 0.05:
        q, k, v = q[0], k[0], v[0]
    elif odd < 0.1:
        k = k.to(torch.float64 if dtype == torch.float32 else torch.float32)
    elif odd < 0.13:
        v = v.to(torch.float64 if dtype == torch.float32 else torch.float32)
    elif odd < 0.16:
        v = torch.randn(b, hkv, sk, 2 * d, generator=g, dtype=dtype)
    elif odd < 0.18:
        v = v.to("meta")
    if rng.random() < 0.3:
        for t in (q, k, v)[:rng.choice([1, 3])]:
            t.requires_grad_(True)
    kw = {"is_causal": rng.random() < 0.4, "scale": rng.choice([None, None, d ** -0.5, 0.3]),
          "enable_gqa": rng.choice([False, True, True, None]),
          "mask": rng.choice([None, None, None, "causal-br", "window:2", "causal"])}
    if kw["mask"] and kw["is_causal"] and rng.random() < 0.9:
        kw["is_causal"] = False
    extra = rng.random()
    if extra < 0.05 and (kw["mask"] is None or rng.random() < 0.2):
        kw["attn_mask"] = torch.rand(s, sk, generator=g) > 0.3
    elif extra < 0.1:
        kw["dropout_p"] = 0.25
    return (q, k, v), kw, rng.random() < 0.3  # the last: run under torch.no_grad()


def outcome(call, args, kw, no_grad):
    """(output or the error's type and first line, spy calls) of one call, with dropout seeded."""
    import contextlib

    before = CALLS["spy"]
    torch.manual_seed(7)
    try:
        with torch.no_grad() if no_grad else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call(*args, **kw)
    except Exception as exc:  # noqa: BLE001 (an error is an outcome both paths must share)
        out = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
    return out, CALLS["spy"] - before


def same_outcome(a, b):
    if isinstance(a, tuple) or isinstance(b, tuple):
        return a == b
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("with_table", [True, False])
def test_memoised_decisions_match_a_fresh_slow_decision(monkeypatch, with_table):
    """The hot path memoises a decision per call key (and, without a table, per is_causal, scale and
    enable_gqa). For 70 random calls and four neighbours of each (autograd on or off, an input's
    requires_grad flipped, its dtype or device changed, one argument changed) through one shared
    dispatcher, its decision (explain, whether the winner ran, the output or error) equals that of a fresh
    Dispatcher deciding from scratch, on the first call and on the memoised second one: a key that left out
    something a decision reads would share a decision between calls that differ in it."""
    import random

    from attnbench.spec import masks

    monkeypatch.delenv("ATTNBENCH_DISPATCH", raising=False)
    monkeypatch.setattr(dispatch, "_FAST", {})
    rng = random.Random(1234)
    table = None
    if with_table:
        import itertools

        entries = {}
        for b, (hq, hkv), s, sk, d, dtype, mask, direction in itertools.product(
                (1, 2), ((1, 1), (2, 2), (4, 4), (2, 1), (4, 2), (4, 1)), (1, 4, 8), (1, 4, 8, 16), (8, 16),
                ("fp32", "fp64"), ("full", "causal", "causal-br", "window:2"), ("fwd", "fwd+bwd")):
            if rng.random() < 0.3:  # buckets with no entry
                continue
            try:
                w = Workload(b, hq, hkv, s, sk, d, dtype, mask=masks.canonical_mask(mask, s, sk), direction=direction)
            except (UserError, ValueError):  # a mask these lengths do not take
                continue
            b_key = workload_bucket(w)
            entries[b_key] = Entry(b_key, rng.choice([SPY, SPY, "sdpa-auto", "reference"]), {}, w.to_dict())
        table = DispatchTable(environment=here_env(), entries=entries)
    whys, outcomes = Counter(), Counter()
    for i in range(70):
        args, kw, no_grad = random_call(rng)
        # the call, then neighbours that share its tensors' shapes and differ in one thing a decision may read
        _, other, _ = random_call(rng)
        name = rng.choice(["is_causal", "scale", "enable_gqa", "mask"])
        j = rng.randrange(3)
        grad = [t.detach().requires_grad_(not t.requires_grad) if n == j else t for n, t in enumerate(args)]
        moved = [t.to(rng.choice([torch.float16, "meta"])) if n == j else t for n, t in enumerate(args)]
        for call in ((args, kw, no_grad), (args, kw, not no_grad), (grad, kw, no_grad), (moved, kw, no_grad),
                     (args, {**kw, name: other[name]}, no_grad)):
            why, kind = _same_decision_both_ways(table, *call, i)
            whys[why.split(" (bucket")[0].split(" for bucket")[0]] += 1
            outcomes[kind] += 1
    # the space reached what it is for: SDPA's errors, the winner, fallbacks of each kind
    assert outcomes["error"] >= 10 and outcomes["no spy"] >= 100, outcomes
    want = ["sdpa fallback: attn_mask or dropout given"]
    if with_table:
        assert outcomes["winner ran"] >= 30, outcomes
        want += ["sdpa fallback: inputs are not 4-D (batch, heads, seq, dim)", SPY, "reference", "sdpa fallback: winner is sdpa-auto", "sdpa fallback: no entry",
                 "sdpa fallback: custom scale (tuned impls use 1/sqrt(head_dim))",
                 "sdpa fallback: inputs of different dtypes",
                 "sdpa fallback: grouped-query shapes with enable_gqa=False",
                 "sdpa fallback: q, k, v shapes do not form one attention problem the impls take"]
    else:
        want += ["sdpa fallback: no dispatch table"]
    missing = [w for w in want if not whys[w]]
    assert not missing, (missing, whys)


def _same_decision_both_ways(table, args, kw, no_grad, i) -> tuple[str, str]:
    """Asserts that attention() (through the shared dispatcher's memo, twice) decides as a fresh Dispatcher
    does; returns that decision's explain text and what happened (error, the winner ran, no spy)."""
    with torch.no_grad() if no_grad else torch.enable_grad():
        slow_why = _fresh_explain(table, args, kw)
    slow = outcome(dispatch.Dispatcher(table), args, kw, no_grad)
    for _ in range(2):  # the first call decides and memoises, the second reads the memo
        fast = outcome(lambda *a, **k: dispatch.attention(*a, table=table, **k), args, kw, no_grad)
        assert same_outcome(fast[0], slow[0]) and fast[1] == slow[1], (i, kw, no_grad, slow_why, fast, slow)
    with torch.no_grad() if no_grad else torch.enable_grad():
        assert _fresh_explain(table, args, kw, dispatch._dispatcher(table)) == slow_why, (i, kw, no_grad)
    return slow_why, "error" if isinstance(slow[0], tuple) else "winner ran" if slow[1] else "no spy"


def _fresh_explain(table, args, kw, dispatcher=None):
    """explain() by a fresh Dispatcher (deciding from scratch), or by the one given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return (dispatcher or dispatch.Dispatcher(table)).explain(*args, **kw)
        except Exception as exc:  # noqa: BLE001 (a mask's UserError: the call raises it too)
            return f"error: {type(exc).__name__}"


def test_a_change_to_the_table_or_its_file_drops_the_memoised_decisions(tmp_path, monkeypatch):
    """Entries added, replaced or removed, the environment or baseline changed, and the file reloaded (for its
    path as str or Path, and for $ATTNBENCH_DISPATCH): the next call decides again."""
    from attnbench.tune.dispatch import Dispatcher

    monkeypatch.setattr(dispatch, "_FAST", {})
    q, k, v = qkv()
    b = workload_bucket(W)
    t = table_for(W)

    def run(table=t):
        CALLS.clear()
        torch.testing.assert_close(dispatch.attention(q, k, v, table=table), F.scaled_dot_product_attention(q, k, v))
        return CALLS["spy"], dispatch.explain(q, k, v, table=table)

    assert run() == (1, f"{SPY} (bucket {b})")
    t.entries[b] = Entry(b, "sdpa-auto", {}, W.to_dict())
    assert run() == (0, "sdpa fallback: winner is sdpa-auto")
    t.baseline = "reference"  # sdpa-auto is then a winner like another: built and run
    assert run()[1] == f"sdpa-auto (bucket {b})"
    t.baseline = "sdpa-auto"
    del t.entries[b]
    assert run() == (0, f"sdpa fallback: no entry for bucket {b}")
    t.entries.update({b: Entry(b, SPY, {}, W.to_dict())})
    assert run()[0] == 1
    with pytest.warns(RuntimeWarning, match="tuned in environment elsewhere"):
        t.environment["env_id"] = "elsewhere"
        assert run() == (0, "sdpa fallback: environment differs from the table's")
    t.environment = here_env()
    assert run()[0] == 1
    t.entries = {}
    assert run()[0] == 0
    t.entries.setdefault(b, Entry(b, SPY, {}, W.to_dict()))
    assert run()[0] == 1
    t.notes.append("a note changes no decision")
    assert dispatch._FAST[t]._fns  # and drops nothing

    # the file: load_table(path, reload=True) re-reads it, and every name that led to it follows
    path = tmp_path / "d.json"
    table_for(W).save(path)
    monkeypatch.setenv("ATTNBENCH_DISPATCH", str(path))
    names = (str(path), path, None)
    assert all(run(name)[0] == 1 for name in names)
    table_for(W, impl="sdpa-auto").save(path)
    assert all(run(name)[0] == 1 for name in names)  # read once: a change to the file alone is not seen
    load_table(path, reload=True)
    assert [run(name) for name in names] == [(0, "sdpa fallback: winner is sdpa-auto")] * 3
    # a decision made while the table changed is not stored over the change
    d = Dispatcher(t)
    real = d._decision

    def racing(key, gen, *args):
        out = real(key, gen, *args)
        if not racing.done:
            racing.done = True
            t.entries[b] = Entry(b, "sdpa-auto", {}, W.to_dict())  # lands after this decision read the table
        return out

    racing.done = False
    monkeypatch.setattr(d, "_decision", racing)
    assert d.explain(q, k, v) == "sdpa fallback: winner is sdpa-auto"


def test_fallbacks_take_the_backend_flags_lock_once_a_restricted_winner_exists(monkeypatch):
    """Until a winner restricted to one SDPA backend is built, a fallback is SDPA itself; building one makes
    every dispatcher decide again, so that their fallbacks hold the lock around SDPA's flags from then on."""
    import threading

    monkeypatch.setattr(dispatch, "_FAST", {})
    monkeypatch.setattr(dispatch, "_RESTRICTED", [False])
    small = W.replace(batch=1, q_heads=2, kv_heads=2, q_len=8, kv_len=8, head_dim=16)
    q, k, v = qkv(b=1, hq=2, hkv=2, s=8, d=16)
    plain = table_for(W)  # no entry for this shape
    dispatch.attention(q, k, v, table=plain)
    dispatch.attention(q, k, v)  # no table
    key = dispatch.call_key(q, k, v, False, None, False, None)
    assert dispatch._FAST[plain]._fns[key] is F.scaled_dot_product_attention
    assert dispatch._FAST[None]._plain[(False, None, False)] is F.scaled_dot_product_attention
    math = table_for(small, impl="sdpa-math")
    assert dispatch.explain(q, k, v, table=math).startswith("sdpa-math")
    assert dispatch._RESTRICTED[0] and not dispatch._FAST[plain]._fns and not dispatch._FAST[None]._plain
    for table in (plain, None):
        done = threading.Event()
        with dispatch._SDP_FLAGS_LOCK:
            t = threading.Thread(target=lambda: (dispatch.attention(q, k, v, table=table), done.set()))
            t.start()
            assert not done.wait(0.3)  # waits for the lock
        t.join(10)
        assert done.is_set()


def test_torch_compile_traces_the_memoised_path():
    """torch.compile (fullgraph, after an eager call decided) traces the memoised decision: no table, a
    fallback, and a winner restricted to one SDPA backend, each equal to SDPA."""
    small = W.replace(batch=1, q_heads=2, kv_heads=2, q_len=8, kv_len=8, head_dim=16)
    q, k, v = qkv(b=1, hq=2, hkv=2, s=8, d=16)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for table in (None, table_for(W), table_for(small.replace(causal=True), impl="sdpa-math")):
        torch._dynamo.reset()
        dispatch.attention(q, k, v, is_causal=True, table=table)

        def f(q, k, v):
            return dispatch.attention(q, k, v, is_causal=True, table=table)

        torch.testing.assert_close(torch.compile(f, backend="eager", fullgraph=True)(q, k, v), want)
    torch._dynamo.reset()
