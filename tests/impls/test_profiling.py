"""The profiler's start/stop chatter is kept off stderr; everything else written there meanwhile is passed on."""

import os

import torch
from torch.profiler import ProfilerActivity

from attnbench.impls.profiling import _stderr_filtered, profiled


def test_chatter_is_dropped_and_the_rest_passed_on(capfd):
    with _stderr_filtered():
        os.write(2, b"USDT:2026-12-04 22:46:31 13976:13976 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a real warning\n")
        os.write(2, b"USDT:2026-12-04 22:46:31 13976:13976 SyncActivityProfilerHandler.cpp:59] profiler_stop\n")
    err = capfd.readouterr().err
    assert err == "a real warning\n"


def test_stderr_is_restored_after_an_exception(capfd):
    try:
        with _stderr_filtered():
            os.write(2, b"before the error\n")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before the error\nafter\n"


def test_profiled_records_the_call(capfd):
    x = torch.randn(8, 8)
    with profiled([ProfilerActivity.CPU]) as prof:
        torch.mm(x, x)
    assert any("aten::mm" in e.name for e in prof.events())
    assert "profiler_start" not in capfd.readouterr().err
