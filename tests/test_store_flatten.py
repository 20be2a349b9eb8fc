"""store.flatten (pandas.json_normalize) gives the same columns, in the same order, as the hand-written walk
it replaced (kept here as the reference)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.sweeps.spec import param_names
from simmoe.sweeps.store import _jsonable, flatten
from tests.conftest import REPO


def reference(summary: dict[str, Any], reserved=()) -> dict[str, Any]:
    """The walk store.flatten used before json_normalize."""
    reserved = set(reserved)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            out[prefix] = json.dumps(value, default=_jsonable)
        else:
            out[prefix] = _jsonable(value)

    for k, v in summary.items():
        walk(f"summary.{k}" if k in reserved else str(k), v)
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and isinstance(b[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        or (a[k] == b[k] and type(a[k]) is type(b[k])) for k in a)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**53, 2**53), st.text(max_size=5),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.integers(0, 100).map(np.int64), st.floats(-1e6, 1e6).map(np.float64))
keys = st.text("abcxyz_", min_size=1, max_size=4)
leaf = st.one_of(scalars, st.lists(st.integers(0, 9), max_size=3))
summaries = st.dictionaries(keys, st.one_of(leaf, st.dictionaries(keys, leaf, max_size=4)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(summaries, st.sets(st.sampled_from(["batch", "hw", "a", "x"])))
def test_flatten_equals_the_reference_walk(summary, reserved):
    got, want = flatten(summary, reserved), reference(summary, reserved)
    assert list(got) == list(want) and _same(got, want)


def test_real_summaries_same_columns_in_order():
    from simmoe.engine.replay import replay
    from simmoe.policies.base import PolicySet
    from simmoe.trace.format import read_trace

    tr = read_trace(REPO / "traces" / "tinymoe-stdlib.npz")
    for kw in ({"max_requests": 2}, {"max_requests": 4, "arrivals": "poisson", "rate": 5.0, "slo_tpot_ms": 10.0,
                                     "slo_ttft_ms": 100.0, "batch": 2}):
        s = replay(tr, "rtx3090", PolicySet("lru", {"slots_per_layer": 2}), None, **kw).summary
        got, want = flatten(s, param_names()), reference(s, param_names())
        assert list(got) == list(want) and _same(got, want)
        assert "tpot_ms.p90" in got and "summary.batch" in got
