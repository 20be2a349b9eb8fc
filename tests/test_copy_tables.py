"""Measured copy tables: the schema checks them, the cost model interpolates them (exact at measured sizes,
monotone, sensible beyond them) and falls back to latency + bytes / bandwidth where a kind has none."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.engine.costs import CostModel, copy_table_us
from simmoe.errors import InputError
from simmoe.hw.profile import CopyTable, builtin_dir, load_profile, profile_from_dict
from simmoe.models import get_model

# The H100 host's pageable H2D medians (us) at 1 KiB .. 1 GiB (hwprofiles/h100-sxm-calibrated.json): the
# bandwidth peaks near 16 MiB and falls back to ~6.6 GB/s from 64 MiB, which no latency + bandwidth fits.
SIZES = [1024 * 4**k for k in range(11)]
PAGEABLE_US = [24.704, 25.088, 28.8, 40.96, 45.056, 114.208, 432.48, 1453.312, 9929.568, 38854.111, 163746.14]


def _datasheet() -> dict:
    return copy.deepcopy(yaml.safe_load((builtin_dir() / "h100-sxm.yaml").read_text()))


def _with_tables(**tables: dict) -> CostModel:
    d = _datasheet()
    d["pcie"]["copy_tables"] = tables
    return CostModel(get_model("mixtral-8x7b"), profile_from_dict(d, "test"))


def test_exact_at_measured_sizes_and_linear_between():
    c = _with_tables(h2d_pageable={"bytes": SIZES, "us": PAGEABLE_US})
    for b, us in zip(SIZES, PAGEABLE_US, strict=True):
        assert c.h2d_us(b, pinned=False) == pytest.approx(us, rel=1e-12)
    mid = (SIZES[8] + SIZES[9]) // 2
    assert c.h2d_us(mid, pinned=False) == pytest.approx((PAGEABLE_US[8] + PAGEABLE_US[9]) / 2)
    # the size-dependent bandwidth survives: ~11.5 GB/s at 16 MiB, ~6.8 GB/s at 64 MiB
    assert SIZES[7] / c.h2d_us(SIZES[7], pinned=False) / 1e3 == pytest.approx(11.54, abs=0.01)
    assert SIZES[8] / c.h2d_us(SIZES[8], pinned=False) / 1e3 == pytest.approx(6.76, abs=0.01)


def test_extrapolation_floor_below_and_last_rate_above():
    t = CopyTable(bytes=[1000, 2000, 4000], us=[10.0, 12.0, 16.0])
    assert copy_table_us(t, 0) == 10.0 and copy_table_us(t, 1) == 10.0  # the latency floor
    assert copy_table_us(t, 8000) == pytest.approx(16.0 + 4000 * (4.0 / 2000))  # last segment's rate
    flat = CopyTable(bytes=[1000, 2000], us=[10.0, 10.0])  # flat last segment: the last point's mean rate
    assert copy_table_us(flat, 4000) == pytest.approx(10.0 + 2000 * (10.0 / 2000))


@st.composite
def tables(draw):
    n = draw(st.integers(2, 8))
    sizes = sorted(draw(st.sets(st.integers(1, 2**31), min_size=n, max_size=n)))
    steps = draw(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=n, max_size=n))
    us, acc = [], draw(st.floats(0.01, 100))
    for s in steps:
        acc += s
        us.append(acc)
    return CopyTable(bytes=sizes, us=us)


@settings(max_examples=200, deadline=None)
@given(tables(), st.lists(st.floats(0, 2**33, allow_nan=False), min_size=2, max_size=20))
def test_monotone_and_positive_everywhere(table, sizes):
    times = [copy_table_us(table, b) for b in sorted(sizes)]
    assert all(t > 0 for t in times)
    assert all(b >= a - 1e-9 * a for a, b in zip(times, times[1:]))
    for b, us in zip(table.bytes, table.us, strict=True):
        assert copy_table_us(table, b) == pytest.approx(us, rel=1e-12)


def test_cost_model_picks_direction_and_memory_kind_and_falls_back():
    pinned = {"bytes": [1024, 2**30], "us": [20.0, 20000.0]}
    c = _with_tables(h2d_pinned=pinned)
    assert c.h2d_us(2**30) == pytest.approx(20000.0)  # pinned by default (CostModel(pinned=True))
    p = c.hw.pcie
    # no pageable table, no d2h table: latency + bytes / bandwidth as before
    assert c.h2d_us(2**30, pinned=False) == pytest.approx(p.latency_us + 2**30 / (p.h2d_pageable_gbps * 1e3))
    assert c.d2h_us(2**20) == pytest.approx(p.latency_us + 2**20 / (p.d2h_pinned_gbps * 1e3))
    # memoised answers are the same answers
    assert [c.h2d_us(5000) for _ in range(3)] == [copy_table_us(c.hw.pcie.copy_tables["h2d_pinned"], 5000)] * 3
    pageable = CostModel(get_model("mixtral-8x7b"), c.hw, pinned=False)
    d2h = {"bytes": [1024, 2**30], "us": [30.0, 90000.0]}
    pageable2 = CostModel(get_model("mixtral-8x7b"), _with_tables(d2h_pageable=d2h).hw, pinned=False)
    assert pageable2.d2h_us(2**30) == pytest.approx(90000.0)
    assert pageable.h2d_us(2**30, pinned=True) == pytest.approx(20000.0)


def test_datasheet_profiles_unchanged():
    c = CostModel(get_model("mixtral-8x7b"), load_profile("h100-sxm"))
    p = c.hw.pcie
    assert p.copy_tables == {}
    assert c.h2d_us(c.expert_bytes) == p.latency_us + c.expert_bytes / (p.h2d_pinned_gbps * 1e3)


@pytest.mark.parametrize("table,needle", [
    ({"bytes": [1024, 4096], "us": [30.0, 20.0]}, "must not decrease"),
    ({"bytes": [4096, 1024], "us": [10.0, 20.0]}, "strictly increasing"),
    ({"bytes": [1024], "us": [10.0]}, "at least 2 sizes"),
    ({"bytes": [1024, 4096], "us": [10.0]}, "equal length"),
    ({"bytes": [0, 4096], "us": [10.0, 20.0]}, "must be >= 1"),
    ({"bytes": [1024, 4096], "us": [0.0, 20.0]}, "must be >= 1e-06"),
])
def test_bad_tables_are_one_line_errors(table, needle):
    d = _datasheet()
    d["pcie"]["copy_tables"] = {"h2d_pinned": table}
    with pytest.raises(InputError) as ei:
        profile_from_dict(d, "box.yaml")
    assert ei.value.field.startswith("pcie.copy_tables.h2d_pinned") and needle in ei.value.message


def test_unknown_copy_kind_is_an_error():
    d = _datasheet()
    d["pcie"]["copy_tables"] = {"h2d_pined": {"bytes": [1, 2], "us": [1.0, 2.0]}}
    with pytest.raises(InputError, match="unknown key") as ei:
        profile_from_dict(d, "box.yaml")
    assert ei.value.field == "pcie.copy_tables.h2d_pined"
