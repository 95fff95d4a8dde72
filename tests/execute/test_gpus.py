"""--executor gpus on a GPU machine: one dask-cuda worker per GPU, the same rows as in-process."""

import pytest

from attnbench.execute import run_sweep
from attnbench.measure.runner import RunConfig
from attnbench.measure.timing import TimingPolicy
from attnbench.spec import Workload
from attnbench.store import Store

W = Workload(batch=2, q_heads=8, kv_heads=8, q_len=256, kv_len=256, head_dim=64, dtype="fp16")
FAST = TimingPolicy(warmup_ms=5.0, min_samples=10, max_samples=10)


@pytest.mark.gpu
def test_every_local_gpu_gets_a_worker_and_the_rows_match_in_process(tmp_path):
    import torch

    config = RunConfig(workloads=[W, W.replace(causal=True)], impls=["sdpa-flash", "sdpa-math",
                       "tests.fixtures.kernels:blockwise_qkv"], device="cuda", policy=FAST)
    with Store(tmp_path / "r.db") as store:
        here = run_sweep(config, store, "inproc", progress=False)
        there = run_sweep(config, store, "gpus", progress=False)
        a = {(m.cell, m.status) for m in store.measurements(here)}
        b = {(m.cell, m.status) for m in store.measurements(there)}
        assert a == b and {s for _, s in b} == {"ok", "incorrect"}
        info = store.run(there)
        assert info.config["workers"] == torch.cuda.device_count() and info.status == "complete"
        ms = store.measurements(there)
        assert all(m.timer == "cold" and m.env_id == store.run(here).env_id for m in ms)
        assert all("/gpu" in m.extra["worker"] for m in ms)  # pinned by CUDA_VISIBLE_DEVICES
