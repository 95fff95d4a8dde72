"""Device model: fingerprint and env id, datasheet lookup, roofline arithmetic, regimes, plausibility."""

from __future__ import annotations

import dataclasses
import re
import sys
import types

import pytest

from attnbench.analysis import device as dm
from attnbench.analysis import datasheet as ds
from attnbench.analysis import roofline as rl
from attnbench.analysis.roofline import Ceilings

H100_FP = {
    "device_kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "sm_count": 132, "driver": "580.95.05",
    "cuda": "13.0", "cudnn": "9.19.0", "torch": "2.11.0+cu130", "triton": "3.6.0", "cpu_model": "AMD EPYC",
    "tf32_matmul": False, "tf32_cudnn": True, "deterministic": False,
    "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980, "power_limit_w": 700.0, "git_commit": "abc1234",
    "python": "3.12.3", "attnbench": "0.1.0", "l2_mb": 50.0, "memory_gib": 79.2,
}


# ---------------------------------------------------------------------------------------------------------
# env_id and env_mismatch
# ---------------------------------------------------------------------------------------------------------

def test_env_id_is_stable_and_short():
    a = dm.env_id(H100_FP)
    assert a == dm.env_id(dict(H100_FP))
    assert a == dm.env_id(dict(reversed(list(H100_FP.items()))))  # key order does not matter
    assert re.fullmatch(r"[0-9a-f]{12}", a)


@pytest.mark.parametrize("key,value", [
    ("torch", "2.12.0+cu130"), ("gpu_name", "NVIDIA H200"), ("sm_count", 114), ("driver", "590.1"),
    ("cudnn", "9.20.0"), ("triton", None), ("tf32_matmul", True), ("tf32_cudnn", False),
    ("device_kind", "cpu"), ("cpu_model", "Intel Xeon"),
])
def test_env_id_changes_with_performance_keys(key, value):
    assert dm.env_id({**H100_FP, key: value}) != dm.env_id(H100_FP)


@pytest.mark.parametrize("key,value", [
    ("sm_clock_mhz", 1410), ("sm_clock_max_mhz", 1755), ("power_limit_w", 350.0), ("git_commit", "def5678"),
    ("git_commit", None), ("python", "3.11.7"), ("attnbench", "0.2.0"), ("memory_gib", 80.0),
    ("unrelated", "x"),
])
def test_env_id_ignores_clocks_commit_and_other_keys(key, value):
    assert dm.env_id({**H100_FP, key: value}) == dm.env_id(H100_FP)


def test_perf_keys_contain_tf32_and_not_clocks():
    assert {"tf32_matmul", "tf32_cudnn", "torch", "gpu_name", "driver"} <= set(dm.PERF_KEYS)
    assert not {"sm_clock_mhz", "git_commit", "power_limit_w"} & set(dm.PERF_KEYS)


def test_env_mismatch_lists_differences_in_words():
    assert dm.env_mismatch(H100_FP, dict(H100_FP)) == []
    assert dm.env_mismatch(H100_FP, {**H100_FP, "sm_clock_mhz": 1200, "git_commit": "zzz"}) == []
    b = {**H100_FP, "torch": "2.12.0+cu130", "gpu_name": "NVIDIA H200"}
    assert dm.env_mismatch(H100_FP, b) == ["gpu_name: NVIDIA H100 80GB HBM3 -> NVIDIA H200",
                                          "torch: 2.11.0+cu130 -> 2.12.0+cu130"]
    assert dm.env_mismatch({"torch": "2.11.0"}, {"torch": "2.12.0"}) == ["torch: 2.11.0 -> 2.12.0"]
    assert "triton: 3.6.0 -> none" in dm.env_mismatch(H100_FP, {**H100_FP, "triton": None})
    # empty iff the env ids agree
    assert (dm.env_mismatch(H100_FP, b) == []) == (dm.env_id(H100_FP) == dm.env_id(b))


# ---------------------------------------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------------------------------------

def test_fingerprint_on_cpu_has_no_gpu_fields():
    import torch

    fp = dm.fingerprint("cpu")
    assert fp["device_kind"] == "cpu"
    assert fp["torch"] == torch.__version__
    assert fp["cpu_model"] and isinstance(fp["cpu_model"], str)
    assert not set(dm.GPU_KEYS) & set(fp), "a CPU fingerprint has no GPU fields"
    assert fp["git_commit"] is None or re.fullmatch(r"[0-9a-f]{4,40}", fp["git_commit"])
    assert isinstance(fp["tf32_matmul"], bool) and isinstance(fp["deterministic"], bool)
    assert dm.env_id(fp) == dm.env_id(dm.fingerprint("cpu"))
    import json
    json.dumps(fp)  # storable as is


def test_format_cudnn_version():
    assert dm.format_cudnn_version(91900) == "9.19.0"
    assert dm.format_cudnn_version(90100) == "9.1.0"
    assert dm.format_cudnn_version(8902) == "8.9.2"
    assert dm.format_cudnn_version(None) is None


def _fake_props():
    return types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                                 L2_cache_size=50 * 2**20, total_memory=85_045_231_616,
                                 uuid="12345678-aaaa-bbbb-cccc-1234567890ab")


def _fake_pynvml(clock=1755):
    nv = types.ModuleType("pynvml")
    nv.NVML_CLOCK_SM = 1
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetHandleByUUID = lambda u: ("handle", u)
    nv.nvmlDeviceGetClockInfo = lambda h, kind: clock
    nv.nvmlDeviceGetMaxClockInfo = lambda h, kind: 1980
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlSystemGetDriverVersion = lambda: b"580.95.05"
    return nv


@pytest.fixture
def fake_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _fake_props())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dm, "_NVML_HANDLES", {})
    return monkeypatch


def test_fingerprint_gpu_path_with_fake_nvml(fake_gpu):
    fake_gpu.setitem(sys.modules, "pynvml", _fake_pynvml(clock=1755))
    fp = dm.fingerprint("cuda:0")
    assert fp["device_kind"] == "cuda"
    assert fp["gpu_name"] == "NVIDIA H100 80GB HBM3" and fp["sm_count"] == 132
    assert fp["l2_mb"] == 50.0 and fp["memory_gib"] == pytest.approx(79.2, abs=0.1)
    assert fp["compute_capability"] == "9.0"
    assert (fp["sm_clock_mhz"], fp["sm_clock_max_mhz"], fp["power_limit_w"]) == (1755, 1980, 700.0)
    assert fp["driver"] == "580.95.05" and fp["nvml"] == "ok"
    assert not any("12345678" in str(v) for v in fp.values()), "no UUID in the fingerprint"
    assert dm.sm_clock_mhz("cuda:0") == 1755.0
    # a different clock on the next read: same environment
    fake_gpu.setitem(sys.modules, "pynvml", _fake_pynvml(clock=1200))
    fake_gpu.setattr(dm, "_NVML_HANDLES", {})
    fp2 = dm.fingerprint("cuda:0")
    assert fp2["sm_clock_mhz"] == 1200
    assert dm.env_id(fp2) == dm.env_id(fp)


def test_fingerprint_gpu_path_without_pynvml(fake_gpu):
    fake_gpu.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    fake_gpu.setattr(dm, "_driver_from_proc", lambda: None)
    fp = dm.fingerprint("cuda")
    assert fp["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert fp["sm_clock_mhz"] is None and fp["power_limit_w"] is None and fp["driver"] is None
    assert "pynvml not installed" in fp["nvml"]
    assert dm.sm_clock_mhz("cuda") is None
    assert dm.sm_clock_mhz("cpu") is None


def test_tf32_flags_survive_mixed_api_error():
    class Matmul:
        fp32_precision = "tf32"

        @property
        def allow_tf32(self):
            raise RuntimeError("mix of legacy and new APIs")

    fake = types.SimpleNamespace(
        get_float32_matmul_precision=lambda: "high",
        backends=types.SimpleNamespace(cuda=types.SimpleNamespace(matmul=Matmul()),
                                       cudnn=types.SimpleNamespace(allow_tf32=False, benchmark=False)),
        are_deterministic_algorithms_enabled=lambda: True)
    flags = dm._tf32_flags(fake)
    assert flags["tf32_matmul"] is True and flags["tf32_cudnn"] is False and flags["deterministic"] is True


def test_format_env_cpu_and_gpu():
    cpu = dm.fingerprint("cpu")
    cpu["cuda_available"] = False
    text = dm.format_env(cpu)
    assert "no CUDA GPU is present" in text
    assert text.splitlines()[0].startswith("env_id:") and dm.env_id(cpu) in text
    starts = {re.match(r"^\S+:\s+", line).end() for line in text.splitlines()}
    assert len(starts) == 1, "values are aligned in one column"
    gpu = dm.format_env(H100_FP)
    assert "gpu_name:" in gpu and "NVIDIA H100 80GB HBM3" in gpu
    assert "H100 SXM" in gpu and "no CUDA GPU" not in gpu


# ---------------------------------------------------------------------------------------------------------
# Datasheet
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H200", "H200"), ("NVIDIA H200 NVL", "H200 NVL"), ("NVIDIA L4", "L4"),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"), ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM"),
    ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"), ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA A10G", "A10G"), ("NVIDIA A10", "A10"),
    ("NVIDIA B200", "B200"), ("NVIDIA L40S", "L40S"), ("Tesla T4", "T4"), ("cpu", "CPU"),
])
def test_lookup_spec_on_torch_names(name, key):
    spec = ds.lookup_spec(name)
    assert spec is not None and spec.name == key


@pytest.mark.parametrize("name", ["NVIDIA GH200 480GB", "NVIDIA GeForce RTX 4090 D", "NVIDIA L40",
                                  "Some Future GPU", "", None])
def test_lookup_spec_unknown_is_none(name):
    assert ds.lookup_spec(name) is None


def test_datasheet_values():
    h100, h200, l4 = ds.SPECS["H100 SXM"], ds.SPECS["H200"], ds.SPECS["L4"]
    assert (h100.bf16_tflops, h100.mem_gbps, h100.sm_count, h100.l2_mb) == (989.0, 3350.0, 132, 50.0)
    assert (h200.bf16_tflops, h200.mem_gbps, h200.memory_gb) == (989.0, 4800.0, 141.0)
    assert (l4.fp16_tflops, l4.mem_gbps, l4.fp32_tflops) == (121.0, 300.0, 30.3)
    assert h100.tflops("bf16") == 989.0 and h100.tflops("fp32") == 67.0
    assert h100.tflops("float32", tf32=True) == h100.tf32_tflops
    # DGEMM runs on the FP64 tensor cores (an H100 measured 58.5 TFLOP/s against 34 non-tensor)
    assert (h100.fp64_tflops, h100.tflops("fp64")) == (34.0, 67.0)
    assert ds.SPECS["RTX 4090"].tflops("fp64") is None
    for needed in ("L4", "A10G", "A100 40GB SXM", "A100 80GB SXM", "H100 SXM", "H100 PCIe", "H200", "B200",
                   "RTX 4090", "CPU"):
        assert needed in ds.SPECS
    for spec in ds.SPECS.values():
        assert spec.source, f"{spec.name} needs a source"
        if spec.fp16_tflops and spec.fp32_tflops:  # tensor cores beat the CUDA cores on every GPU listed
            assert spec.fp16_tflops > spec.fp32_tflops
    with pytest.raises(dataclasses.FrozenInstanceError):
        h100.mem_gbps = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------
# Roofline, regime, plausibility
# ---------------------------------------------------------------------------------------------------------

def test_roofline_bound_hand_computed():
    assert rl.roofline_bound_tflops(100, 800, 3000) == pytest.approx(300.0)   # 100 FLOP/B * 3 TB/s
    assert rl.roofline_bound_tflops(1000, 800, 3000) == pytest.approx(800.0)  # capped by the peak
    assert rl.roofline_bound_tflops(0, 800, 3000) == 0.0
    assert rl.roofline_bound_tflops(float("inf"), 800, 3000) == 800.0
    assert rl.ridge_point(800, 3000) == pytest.approx(266.6667, rel=1e-5)
    ridge = rl.ridge_point(989, 3350)
    assert rl.roofline_bound_tflops(ridge, 989, 3350) == pytest.approx(989.0)
    with pytest.raises(ValueError):
        rl.roofline_bound_tflops(-1, 800, 3000)


def _ceil(tflops=800.0, gbps=3000.0, src="measured"):
    return Ceilings(tflops={"fp16": tflops, "bf16": tflops}, gbps=gbps,
                    tflops_source={"fp16": src, "bf16": src}, gbps_source=src)


def test_regime_labels():
    c = _ceil()  # ridge = 266.7 FLOP/B
    assert c.ridge("fp16") == pytest.approx(266.6667, rel=1e-5)
    assert rl.regime(1e12, 1e10, 2.0, 0.5, c, "fp16") == "memory-bound"     # intensity 100
    assert rl.regime(1e12, 1e9, 2.0, 0.5, c, "fp16") == "compute-bound"     # intensity 1000
    assert rl.regime(1e12, 1e9, 0.010, 0.040, c, "fp16") == "host-bound"    # host 40 us > device 10 us
    assert rl.regime(1e12, 1e9, 0.010, None, c, "fp16") == "compute-bound"  # no host time: not host-bound
    assert rl.regime(1e12, 1e9, 0.010, 0.010, c, "fp16") == "compute-bound"  # equal is not "exceeds"
    assert rl.regime(1e12, 0, 1.0, None, c, "fp16") == "compute-bound"
    assert rl.regime(1e12, 1e10, 1.0, None, Ceilings(), "fp16") == "unknown"


def test_plausibility_flags():
    c = _ceil(tflops=800.0, gbps=3000.0)
    assert rl.plausibility(500.0, 2500.0, c, "fp16") == ("ok", "")
    assert rl.plausibility(800.0, 3000.0, c, "fp16") == ("ok", "")  # exactly 100% is possible
    status, why = rl.plausibility(100.0, 3500.0, c, "fp16")
    assert status == "implausible"
    assert "above the copy ceiling" in why and "cache-resident" in why and "117%" in why
    status, why = rl.plausibility(900.0, 100.0, c, "bf16")
    assert status == "implausible" and "above the matmul ceiling" in why and "miscounted FLOPs" in why
    status, why = rl.plausibility(900.0, 3500.0, c, "fp16")
    assert "matmul ceiling" in why and "copy ceiling" in why
    assert rl.plausibility(100.0, 3100.0, c, "fp16", tolerance=0.05)[0] == "ok"
    assert rl.plausibility(100.0, 3100.0, c, "fp16")[0] == "implausible"
    assert rl.plausibility(None, None, c, "fp16") == ("ok", "")
    assert rl.plausibility(1e6, 1e6, Ceilings(), "fp16") == ("ok", "")  # unknown ceilings: no verdict


def test_a_read_mostly_kernel_over_a_large_working_set_may_pass_the_copy_ceiling():
    """H200, seen: decode over a 4 GB cache read at 4.5 TB/s, above the 4.26 TB/s copy (which also writes)
    and below the 4.8 TB/s datasheet: not flagged; the same figure on an L2-sized working set is."""
    c = _ceil(tflops=800.0, gbps=4263.0)
    c = Ceilings(**{**c.__dict__, "datasheet_gbps": 4800.0, "l2_bytes": 60 * 2**20})
    assert rl.plausibility(18.0, 4534.0, c, "bf16", working_set_bytes=4.3e9) == ("ok", "")
    status, why = rl.plausibility(18.0, 4534.0, c, "bf16", working_set_bytes=40e6)
    assert status == "implausible" and "cache-resident" in why
    status, why = rl.plausibility(18.0, 5200.0, c, "bf16", working_set_bytes=4.3e9)
    assert status == "implausible" and "datasheet" in why and "timer error" in why
    assert rl.plausibility(18.0, 4534.0, c, "bf16")[0] == "implausible"  # working set unknown: the copy ceiling


def test_ceilings_for_prefers_measured_and_labels_sources():
    measured = {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3",
                "tflops": {"fp16": 797.0, "bf16": 793.0}, "gbps": 3000.0}
    c = rl.ceilings_for(H100_FP, measured)
    assert (c.peak("fp16"), c.source("fp16")) == (797.0, "measured")
    assert (c.peak("bf16"), c.source("bf16")) == (793.0, "measured")
    assert (c.peak("fp32"), c.source("fp32")) == (67.0, "datasheet")   # not measured: datasheet
    assert (c.gbps, c.gbps_source) == (3000.0, "measured")
    assert c.spec_name == "H100 SXM"

    d = rl.ceilings_for(H100_FP, None)
    assert (d.peak("bf16"), d.source("bf16"), d.gbps, d.gbps_source) == (989.0, "datasheet", 3350.0, "datasheet")
    # a measurement from another GPU model does not apply
    other = rl.ceilings_for(H100_FP, {**measured, "gpu_name": "NVIDIA L4"})
    assert other.source("fp16") == "datasheet" and other.notes
    # TF32 on: the fp32 ceiling is the TF32 tensor peak
    tf = rl.ceilings_for({**H100_FP, "tf32_matmul": True}, None)
    assert (tf.peak("fp32"), tf.source("fp32")) == (494.0, "datasheet (TF32)")
    # unknown GPU, nothing measured
    u = rl.ceilings_for({**H100_FP, "gpu_name": "Mystery GPU"}, None)
    assert u.peak("fp16") is None and u.source("fp16") == "unknown" and u.gbps_source == "unknown"
    assert any("no datasheet entry" in n for n in u.notes)
    assert u.to_dict()["tflops_source"]["fp16"] == "unknown"


def test_ceilings_for_cpu():
    cpu_fp = {"device_kind": "cpu", "cpu_model": "AMD EPYC"}
    c = rl.ceilings_for(cpu_fp, None)
    assert c.spec_name == "CPU" and c.peak("fp32") is None and c.gbps_source == "unknown"
    m = {"device": "cpu", "gpu_name": None, "tflops": {"fp32": 0.15}, "gbps": 30.0}
    c = rl.ceilings_for(cpu_fp, m)
    assert (c.peak("fp32"), c.source("fp32"), c.gbps, c.gbps_source) == (0.15, "measured", 30.0, "measured")
    # a CPU measurement never stands in for a GPU's ceilings
    g = rl.ceilings_for(H100_FP, m)
    assert g.source("fp32") == "datasheet" and g.gbps == 3350.0


def test_throughput_arithmetic():
    assert dm.matmul_tflops(8192, 1.0) == pytest.approx(2 * 8192**3 / 1e-3 / 1e12)
    assert dm.matmul_tflops(8192, 1.386) == pytest.approx(793.3, rel=1e-3)
    assert dm.copy_gbps(2**30, 1.0) == pytest.approx(2147.48, rel=1e-5)  # read + write


# ---------------------------------------------------------------------------------------------------------
# Measurement on the CPU (fast) and on a GPU (marked)
# ---------------------------------------------------------------------------------------------------------

def test_measure_ceilings_on_cpu_is_quick_and_says_so():
    import time

    import torch

    t0 = time.perf_counter()
    m = dm.measure_ceilings("cpu", dtypes=("fp32",))
    assert time.perf_counter() - t0 < 2.0
    assert m["device"] == "cpu" and m["gpu_name"] is None
    assert m["tflops"]["fp32"] > 0 and m["gbps"] > 0
    assert "CPU" in m["note"]
    assert "matmul fp32" in dm.format_ceilings(m)
    if not torch.cuda.is_available():
        m2 = dm.measure_ceilings("cuda", dtypes=("fp32",))
        assert "no CUDA GPU is present" in m2["note"] and m2["device"] == "cpu"


def test_peak_memory_none_on_cpu():
    calls = []
    assert dm.peak_memory_mb(lambda: calls.append(1), "cpu") is None
    assert calls == [], "on a CPU fn is not run"


def _cuda():
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_measure_ceilings_gpu():
    fp = dm.fingerprint("cuda")
    m = dm.measure_ceilings("cuda", dtypes=("fp16", "bf16", "fp32"), reps=5)
    assert set(m["tflops"]) == {"fp16", "bf16", "fp32"} and m["gbps"] > 0
    spec = ds.lookup_spec(fp["gpu_name"])
    if spec is not None:  # a real measurement lands below (or near) the datasheet, far above nothing
        assert 0.2 * spec.bf16_tflops < m["tflops"]["bf16"] < 1.1 * spec.bf16_tflops
        assert 0.3 * spec.mem_gbps < m["gbps"] < 1.1 * spec.mem_gbps
    c = rl.ceilings_for(fp, m)
    assert c.source("bf16") == "measured" and c.gbps_source == "measured"
    assert fp["tf32_matmul"] == dm.fingerprint("cuda")["tf32_matmul"], "TF32 switch restored"


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_peak_memory_gpu():
    import torch

    def alloc():
        x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        x.fill_(1)
        return None

    peak = dm.peak_memory_mb(alloc, "cuda", above_baseline=True)
    assert 256 <= peak < 300


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_a_timer_error_on_the_gpu_is_flagged_implausible(tmp_path):
    """A kernel whose work runs on a side stream (waited for on the host) reads as a few microseconds on
    the caller's stream: far above the copy ceiling, so the report must flag it, never rank it."""
    from attnbench.report.tables import markdown
    from attnbench.measure.runner import RunConfig, run
    from attnbench.spec import Workload
    from attnbench.store import Store

    w = Workload(batch=32, q_heads=8, kv_heads=8, q_len=2048, kv_len=2048, head_dim=64, dtype="fp16")
    with Store(tmp_path / "g.db") as store:
        store.put("ceilings", dm.env_id(dm.fingerprint("cuda")), dm.measure_ceilings("cuda", dtypes=("fp16",), reps=3))
        rid = run(RunConfig(workloads=[w], impls=["tests.fixtures.kernels:side_stream", "sdpa-flash"],
                            device="cuda", timer="cold"), store)
        ms = {m.impl: m for m in store.measurements(rid)}
        text = markdown(store, rid)
    side, flash = ms["tests.fixtures.kernels:side_stream"], ms["sdpa-flash"]
    assert side.status == "ok" and flash.status == "ok"
    assert side.extra["plausibility"] == "implausible" and "copy ceiling" in side.extra["plausibility_reason"]
    assert flash.extra["plausibility"] == "ok"
    assert "IMPLAUSIBLE" in text
