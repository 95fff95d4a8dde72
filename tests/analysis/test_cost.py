"""Tests for attnbench.cost: hand-checked arithmetic, the CI carried through, and the saving's bounds."""

from __future__ import annotations

import pytest

from attnbench.analysis.cost import ASSUMPTION, cost, saving


def test_one_ms_at_86_4_million_calls_is_one_gpu_all_day():
    c = cost(1.0, (1.0, 1.0), calls_per_day=86.4e6, usd_per_hour=2.0)
    # 86.4e6 calls x 1 ms = 86,400 s = 24 GPU-hours per day: one GPU fully busy.
    assert c["gpu_hours_per_day"]["estimate"] == pytest.approx(24.0)
    assert c["gpus_fully_busy"]["estimate"] == pytest.approx(1.0)
    assert c["usd_per_day"]["estimate"] == pytest.approx(48.0)
    assert c["usd_per_month"]["estimate"] == pytest.approx(1440.0)
    assert "no batching" in c["assumption"] and c["assumption"] == ASSUMPTION


def test_ci_of_the_median_is_carried_through_linearly():
    c = cost(1.0, (0.9, 1.2), calls_per_day=86.4e6, usd_per_hour=2.0)
    assert c["ci_ms"] == [0.9, 1.2]
    assert (c["gpu_hours_per_day"]["lo"], c["gpu_hours_per_day"]["hi"]) == pytest.approx((21.6, 28.8))
    assert (c["usd_per_month"]["lo"], c["usd_per_month"]["hi"]) == pytest.approx((1296.0, 1728.0))
    # Half the calls, half the cost; a free GPU costs nothing but still takes hours.
    half = cost(1.0, (0.9, 1.2), calls_per_day=43.2e6, usd_per_hour=2.0)
    assert half["usd_per_month"]["estimate"] == pytest.approx(720.0)
    free = cost(1.0, (0.9, 1.2), calls_per_day=86.4e6, usd_per_hour=0.0)
    assert free["usd_per_month"]["hi"] == 0.0 and free["gpu_hours_per_day"]["estimate"] == pytest.approx(24.0)


def test_saving_is_b_minus_a_with_worst_case_bounds():
    a = cost(1.0, (0.9, 1.1), calls_per_day=86.4e6, usd_per_hour=2.0)   # $1440/month [1296, 1584]
    b = cost(2.0, (1.8, 2.2), calls_per_day=86.4e6, usd_per_hour=2.0)   # $2880/month [2592, 3168]
    s = saving(a, b)
    assert s["usd_per_month"]["estimate"] == pytest.approx(1440.0)
    assert s["usd_per_month"]["lo"] == pytest.approx(2592.0 - 1584.0)
    assert s["usd_per_month"]["hi"] == pytest.approx(3168.0 - 1296.0)
    assert s["gpu_hours_per_day"]["estimate"] == pytest.approx(24.0)
    assert s["fraction"]["estimate"] == pytest.approx(0.5)
    assert (s["fraction"]["lo"], s["fraction"]["hi"]) == pytest.approx((1 - 1.1 / 1.8, 1 - 0.9 / 2.2))
    assert "worst-case" in s["note"]
    # Choosing the slower side is a negative saving.
    assert saving(b, a)["usd_per_month"]["estimate"] == pytest.approx(-1440.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="median"):
        cost(1.0, (1.1, 1.2), 1e6, 2.0)
    with pytest.raises(ValueError, match="calls_per_day"):
        cost(1.0, (0.9, 1.1), -1, 2.0)
    with pytest.raises(ValueError):
        cost(0.0, (0.0, 0.0), 1e6, 2.0)
    with pytest.raises(ValueError, match="usd_per_hour"):
        saving(cost(1.0, (1.0, 1.0), 1e6, 2.0), cost(1.0, (1.0, 1.0), 1e6, 3.0))
