"""Generated malformed inputs (hypothesis): traces, hardware profiles, policy options, sweep specs and import
files, each broken in one way, through the CLI's main() in this process. Every one must meet the standard:
exit status 2, exactly one line on stderr naming the file and the field, no traceback, and no output file
created or modified (an existing output keeps its bytes and its time stamp).

About 390 generated cases (every kind of breakage a few times); they run in seconds (no subprocess: tests/test_hardening.py covers the console
script itself).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import tempfile
import typing
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, assert_clean_error, run_main
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from simmoe.hw.profile import CpuSpec, GpuSpec, HostSpec, HwProfile, NvmeSpec, PcieSpec
from simmoe.models import ModelSpec
from simmoe.policies.registry import all_policies
from simmoe.trace.format import Trace, make_meta, write_trace

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                          HealthCheck.too_slow], derandomize=True)

SPEC = ModelSpec(name="toy-3x8", num_layers=3, moe_layers=(0, 1, 2), num_experts=8, top_k=2, d_model=64,
                 expert_d_ff=128, num_heads=4, num_kv_heads=4, head_dim=16, vocab_size=1000)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("malformed")


@pytest.fixture(scope="module")
def good_trace(base) -> Path:
    p = base / "good.npz"
    write_trace(_valid_trace(), p)
    return p


@contextlib.contextmanager
def case_dir(base: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=base) as d:
        yield Path(d)


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rejected(folder: Path, args: list, needles: list[str], out: Path | None = None, existing: bool = False) -> None:
    """Runs the CLI and checks the standard. `out` is the command's output; `existing` makes it exist first."""
    if out is not None and existing:
        out.write_bytes(b"an earlier result\n")
    before = _snapshot(folder)
    res = run_main(*args, cwd=folder)
    assert_clean_error(res, *needles)
    assert _snapshot(folder) == before, "an output file was created or modified"


# ---- traces ------------------------------------------------------------------------------------------------
def _valid_trace() -> Trace:
    rng = np.random.default_rng(1)
    n = 12
    ex = np.argsort(rng.random((n, 3, 8)), axis=2)[:, :, :2].astype(np.int16)
    ex[3, 1, 1] = -1  # one empty slot, for the gate rules
    gates = rng.random((n, 3, 2)).astype(np.float32)
    gates[ex < 0] = np.nan
    req = np.repeat(np.arange(2, dtype=np.int32), n // 2)
    phase = np.tile(np.r_[np.zeros(2), np.ones(n // 2 - 2)].astype(np.int8), 2)
    return Trace(ex, req, phase, make_meta(model_spec=SPEC, source="test"), gates=gates,
                 arrival_s=np.array([0.0, 0.5]), predicted=ex[:, :, :1].copy())


def _arrays(tr: Trace) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in tr.arrays().items()}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _cell(draw, a: np.ndarray) -> tuple[int, ...]:
    return tuple(draw(st.integers(0, s - 1)) for s in a.shape)


def _meta(arrays: dict, update: dict | None = None, drop: str | None = None) -> None:
    meta = json.loads(str(arrays["meta"][()]))
    meta.update(update or {})
    meta.pop(drop, None)
    arrays["meta"] = np.array(json.dumps(meta))


TRACE_KINDS = [
    "expert_high", "expert_low", "duplicate", "more_than_top_k", "dtype", "ndim", "rows", "not_contiguous",
    "negative_request", "phase_value", "phase_back", "gate_nan", "gate_not_nan", "gate_bad", "gate_shape",
    "arrival_len", "arrival_bad", "predicted", "meta_json", "meta_not_object", "meta_format", "meta_model",
    "meta_unknown_model", "meta_spec", "meta_dtype", "layers", "unknown_array", "missing_array", "objects",
    "truncated", "garbage", "empty"]


@st.composite
def broken_trace(draw, kind: str) -> tuple[Callable[[Path], None], str | None]:
    """A writer of a trace file broken in one way, and the field the error must name (None: the whole file)."""
    a = _arrays(_valid_trace())
    ex = a["experts"]
    field: str | None = "experts"
    if kind == "expert_high":
        ex[_cell(draw, ex)] = draw(st.integers(8, 32767))
    elif kind == "expert_low":
        ex[_cell(draw, ex)] = draw(st.integers(-32768, -2))
    elif kind == "duplicate":
        r, m = draw(st.integers(0, 11)), draw(st.integers(0, 2))
        assume(ex[r, m, 0] >= 0)
        ex[r, m, 1] = ex[r, m, 0]
    elif kind == "more_than_top_k":  # three distinct routed experts a token, a top-2 model
        first = ex[:, :, :1].clip(0)
        a["experts"] = np.concatenate([first, (first + 1) % 8, (first + 2) % 8], axis=2).astype(np.int16)
        a.pop("gates")
        a.pop("predicted")
    elif kind == "dtype":
        field = draw(st.sampled_from(["experts", "request", "phase", "gates", "arrival_s", "predicted"]))
        wrong = draw(st.sampled_from([np.int32, np.int64, np.float32, np.float64, np.uint8]))
        assume(np.dtype(wrong) != a[field].dtype)
        a[field] = a[field].astype(wrong) if np.dtype(wrong).kind == "f" else np.nan_to_num(a[field]).astype(wrong)
    elif kind == "ndim":
        field = draw(st.sampled_from(["experts", "request", "phase", "gates"]))
        a[field] = a[field].reshape(-1) if a[field].ndim > 1 else a[field].reshape(-1, 1)
    elif kind == "rows":
        field = draw(st.sampled_from(["request", "phase"]))
        a[field] = a[field][: draw(st.integers(1, 11))]
    elif kind == "not_contiguous":
        field = "request"
        a["request"] = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], np.int32)
        a["phase"][:] = 1
    elif kind == "negative_request":
        field = "request"
        a["request"] = a["request"] - draw(st.integers(1, 2**20))
    elif kind == "phase_value":
        field = "phase"
        a["phase"][draw(st.integers(0, 11))] = draw(st.sampled_from([-1, 2, 3, 127, -128]))
    elif kind == "phase_back":
        field = "phase"
        a["phase"][5] = 0  # request 0: prefill, prefill, decode, decode, decode, prefill
    elif kind == "gate_nan":
        field = "gates"
        cell = _cell(draw, a["gates"])
        assume(ex[cell] >= 0)
        a["gates"][cell] = np.nan
    elif kind == "gate_not_nan":
        field = "gates"
        a["gates"][3, 1, 1] = draw(st.floats(0, 1, allow_subnormal=False))
    elif kind == "gate_bad":
        field = "gates"
        cell = _cell(draw, a["gates"])
        assume(ex[cell] >= 0)
        a["gates"][cell] = draw(st.sampled_from([-1.0, -1e-3, np.inf, -np.inf]))
    elif kind == "gate_shape":
        field = "gates"
        a["gates"] = a["gates"][:, :, :1]
    elif kind == "arrival_len":
        field = "arrival_s"
        a["arrival_s"] = np.zeros(draw(st.sampled_from([1, 3, 7])))
    elif kind == "arrival_bad":
        field = "arrival_s"
        a["arrival_s"][draw(st.integers(0, 1))] = draw(st.sampled_from([np.nan, np.inf, -1.0]))
    elif kind == "predicted":
        field = "predicted"
        a["predicted"][_cell(draw, a["predicted"])] = draw(st.sampled_from([8, 100, -2]))
    elif kind == "meta_json":
        field = "meta"
        a["meta"] = np.array(draw(st.sampled_from(["{", "not json", "{'a': 1}", "[" * 5000 + "]" * 5000])))
    elif kind == "meta_not_object":
        field = "meta"
        a["meta"] = np.array(json.dumps(draw(st.sampled_from([[1, 2], "x", 3, None]))))
    elif kind == "meta_format":
        field = "meta.format"
        _meta(a, {"format": draw(st.sampled_from(["simmoe-trace/2", "", None, 1]))})
    elif kind == "meta_model":
        field = "meta"
        _meta(a, drop="model_spec")
        _meta(a, drop="model")
    elif kind == "meta_unknown_model":
        field = "meta.model"
        _meta(a, {"model": draw(st.sampled_from(["no-such-model", "mixtral", 7, ["x"]]))}, drop="model_spec")
    elif kind == "meta_spec":
        key = draw(st.sampled_from(["num_experts", "top_k", "d_model", "activation", "moe_layers", "expert_bits",
                                    "bogus_key"]))
        value = draw(st.sampled_from([0, -1, "x", True, None, 1.5, [99]]))
        spec = SPEC.to_dict()
        spec[key] = value
        assume(not (key == "expert_bits" and not isinstance(value, bool) and value in (0, 1.5)))  # valid bits
        _meta(a, {"model_spec": spec})
        field = f"model_spec.{key}"
    elif kind == "meta_dtype":
        field = "meta"
        a["meta"] = np.frombuffer(str(a["meta"][()]).encode(), np.uint8)
    elif kind == "layers":  # more MoE layers than the model has
        a = {"experts": np.zeros((2, 4, 2), np.int16) + np.array([0, 1], np.int16), "request": a["request"][:2],
             "phase": a["phase"][:2], "meta": a["meta"]}
    elif kind == "unknown_array":
        field = draw(st.sampled_from(["foo", "expert", "gate", "arrivals"]))
        a[field] = np.zeros(3)
    elif kind == "missing_array":
        field = draw(st.sampled_from(["experts", "request", "phase", "meta"]))
        a.pop(field)
    elif kind == "objects":
        field = draw(st.sampled_from(["experts", "gates"]))
        a[field] = np.array([{"x": 1}, None], dtype=object)
    elif kind == "empty":
        a = {"experts": np.zeros((0, 3, 2), np.int16), "request": np.zeros(0, np.int32),
             "phase": np.zeros(0, np.int8), "meta": a["meta"]}

    if kind == "objects":
        return (lambda p: _save_pickled(p, a)), field
    if kind in ("truncated", "garbage"):
        buf = io.BytesIO()
        np.savez(buf, **a)
        data = buf.getvalue()
        if kind == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        else:
            data = draw(st.binary(min_size=0, max_size=200))
            assume(not zipfile.is_zipfile(io.BytesIO(data)))
        return (lambda p: p.write_bytes(data)), None
    return (lambda p: _save(p, a)), field


def _save_pickled(path: Path, arrays: dict) -> None:
    """An .npz as numpy would write it with allow_pickle=True (object arrays are pickled)."""
    with zipfile.ZipFile(path, "w") as z:
        for k, v in arrays.items():
            with z.open(f"{k}.npy", "w") as m:
                np.lib.format.write_array(m, v, allow_pickle=True)


@pytest.mark.parametrize("kind", TRACE_KINDS)
@settings(SETTINGS, max_examples=3)
@given(data=st.data(), command=st.sampled_from(["info", "replay"]), existing=st.booleans())
def test_malformed_traces(base, kind, data, command, existing):
    write, field = data.draw(broken_trace(kind))
    with case_dir(base) as d:
        t = d / "broken.npz"
        write(t)
        out = d / "out.json"
        args = ["trace", "info", t, "--json", out] if command == "info" else \
            ["replay", t, "--hw", "rtx3090", "--json", out]
        rejected(d, args, [str(t), *([field] if field else [])], out, existing)


# ---- hardware profiles -------------------------------------------------------------------------------------------
PROFILE = yaml.safe_load((REPO / "hwprofiles" / "rtx3090.yaml").read_text())
# numeric leaves (section, key): each must be a finite number of the right kind within its range
NUMBERS = [(s, k) for s in ("gpu", "host", "pcie", "cpu", "nvme") for k, v in PROFILE.get(s, {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)]
TEXTS = [("", "name"), ("gpu", "name"), ("cpu", "name"), ("", "source")]
REQUIRED = [("", "name"), ("", "source"), ("", "gpu"), ("", "pcie"), ("", "cpu"), ("gpu", "memory_gib"),
            ("gpu", "hbm_gbps"), ("gpu", "peak_tflops"), ("pcie", "h2d_pinned_gbps"), ("pcie", "d2h_pageable_gbps"),
            ("cpu", "cores"), ("cpu", "memory_gbps"), ("cpu", "peak_gflops")]
SCHEMA_KEYS = {name for model in (HwProfile, GpuSpec, HostSpec, PcieSpec, CpuSpec, NvmeSpec)
               for name in model.model_fields}
# Wrong for every numeric field of the schema (bounds are >= 0 everywhere, at most 1e9 of the unit)
BAD_NUMBERS = [True, False, "yes", "12", "abc", math.nan, math.inf, -math.inf, -5, -1e-3, 1e300, [1.0], {"a": 1},
               None]


PROFILE_KINDS = ["text", "missing", "unknown", "section", "peak", "yaml"]  # numbers: test_malformed_profile_numbers


@st.composite
def broken_profile(draw, kind: str) -> tuple[str, str]:
    """YAML text of a profile broken in one way, and the field the error must name."""
    data = copy.deepcopy(PROFILE)
    if kind == "text":
        section, key = draw(st.sampled_from(TEXTS))
        value = draw(st.sampled_from([5, 1.5, True, None, [1], {"a": "b"}]))
        (data[section] if section else data)[key] = value
        field = f"{section}.{key}" if section else key
    elif kind == "missing":
        section, key = draw(st.sampled_from(REQUIRED))
        (data[section] if section else data).pop(key)
        field = f"{section}.{key}" if section else key
    elif kind == "unknown":
        section = draw(st.sampled_from(["", "gpu", "host", "pcie", "cpu"]))
        key = draw(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True))
        target = data[section] if section else data
        assume(key not in SCHEMA_KEYS)
        target[key] = draw(st.sampled_from([1, "x", None]))
        field = f"{section}.{key}" if section else key
    elif kind == "section":
        section = draw(st.sampled_from(["gpu", "pcie", "cpu", "host"]))
        data[section] = draw(st.sampled_from([5, "fast", [1, 2], None, True]))
        field = section
    elif kind == "peak":
        dtype = draw(st.sampled_from(["bf61", "fp6", "BF16", "float16"]))
        data["gpu"]["peak_tflops"][dtype] = 10.0
        field = "gpu.peak_tflops"
    else:  # text that is not a profile at all
        text, field = draw(st.sampled_from([
            ("gpu: [1, 2\n", "line"), ("name: a\nname: b\n", "line"), ("\0name: x\n", ""),
            ("a: &x [*x]\n", ""), ("- 1\n- 2\n", ""), ("", ""), ("x: " + "[" * 3000 + "]" * 3000 + "\n", "")]))
        return text, field
    return yaml.safe_dump(data, sort_keys=False), field


@pytest.mark.parametrize("section,key", NUMBERS)
@settings(SETTINGS, max_examples=3)
@given(value=st.sampled_from(BAD_NUMBERS), existing=st.booleans())
def test_malformed_profile_numbers(base, good_trace, section, key, value, existing):
    assume(not (value is None and key == "sm_count"))  # optional
    data = copy.deepcopy(PROFILE)
    data[section][key] = value
    with case_dir(base) as d:
        p = d / "hw.yaml"
        p.write_text(yaml.safe_dump(data, sort_keys=False))
        out = d / "out.json"
        rejected(d, ["replay", good_trace, "--hw", p, "--json", out], [str(p), f"{section}.{key}"], out, existing)


@pytest.mark.parametrize("kind", PROFILE_KINDS)
@settings(SETTINGS, max_examples=8)
@given(data=st.data(), existing=st.booleans())
def test_malformed_profiles(base, good_trace, kind, data, existing):
    text, field = data.draw(broken_profile(kind))
    with case_dir(base) as d:
        p = d / "hw.yaml"
        p.write_text(text)
        out = d / "out.json"
        rejected(d, ["replay", good_trace, "--hw", p, "--json", out], [str(p), field], out, existing)


# ---- policy options ----------------------------------------------------------------------------------------------
FLAG = {"prefetch": "--prefetch", "placement": "--placement", "precision": "--precision", "routing": "--routing"}
POLICIES = [c for c in all_policies() if c.name]


def _bad_option_text(annotation) -> list[str]:
    """--opt values (YAML scalars) that are wrong for an option of this type."""
    if typing.get_origin(annotation) is typing.Literal:
        return ["no-such-mode", "5", "yes"]
    args = set(typing.get_args(annotation)) or {annotation}
    args.discard(type(None))
    if typing.get_origin(annotation) is tuple:  # a list of numbers (given as text: 4,2)
        return ["yes", "2.5", ".nan", "abc", "no"]
    if str in args:
        return ["5", "yes", "1.5", ".nan"]
    if bool in args:
        return ["2", "abc", "1.5", ".nan"]
    if int in args:
        return ["yes", "2.5", ".nan", ".inf", "abc", "[1, 2]", "no"]
    if float in args:
        return ["yes", ".nan", ".inf", "-.inf", "abc", "off"]
    return ["yes", "abc", ".nan"]  # tuples of numbers


@st.composite
def broken_option(draw) -> tuple[list[str], str, str]:
    cls = draw(st.sampled_from(POLICIES))
    fields = cls.Options.model_fields
    if fields and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(fields)))
        value = draw(st.sampled_from(_bad_option_text(fields[key].annotation)))
    else:
        key = draw(st.from_regex(r"[a-z][a-z_]{0,15}", fullmatch=True))
        assume(key not in fields)
        value = draw(st.sampled_from(["1", "x", "yes"]))
    if cls.kind in ("cache", "system"):
        args = ["--policy", cls.name, "--opt", f"{key}={value}"]
    else:
        args = ["--policy", "lru", FLAG[cls.kind], cls.name, f"{FLAG[cls.kind]}-opt", f"{key}={value}"]
    return args, f"policy {cls.name}", key


@settings(SETTINGS, max_examples=60)
@given(case=broken_option(), existing=st.booleans())
def test_malformed_policy_options(base, good_trace, case, existing):
    args, source, key = case
    with case_dir(base) as d:
        out = d / "out.json"
        rejected(d, ["replay", good_trace, "--hw", "a100-80gb-sxm", *args, "--json", out], [source, key], out,
                 existing)


# ---- sweep specs -------------------------------------------------------------------------------------------------
SPEC_KINDS = ["top", "param", "not_list", "empty", "mapping", "policy", "option", "orphan_option", "case_axis",
              "trace", "hw", "shape", "yaml"]


@st.composite
def broken_spec(draw, kind: str, trace: str) -> tuple[str, str]:
    """YAML text of a sweep spec broken in one way, and the field the error must name."""
    spec = {"trace": trace, "base": {"hw": "rtx3090", "max_requests": 1},
            "grid": {"policy": ["lru", "lfu"], "policy_options.slots_per_layer": [2, 4]},
            "cases": [{"batch": 1}]}
    where = draw(st.sampled_from(["base", "grid", "cases"]))
    if kind == "top":
        key = draw(st.sampled_from(["grids", "bases", "case", "traces", "output", "workers"]))
        spec[key] = 1
        field = key
    elif kind == "param":
        key = draw(st.sampled_from(["batches", "hardware", "polciy", "slots_per_layer", "max_request", "bach"]))
        field = key
        if where == "base":
            spec["base"][key] = 1
        elif where == "grid":
            spec["grid"][key] = [1]
        else:
            spec["cases"][0][key] = 1
    elif kind == "not_list":
        field = "grid.batch"
        spec["grid"]["batch"] = draw(st.sampled_from([1, "a", {"x": 1}, None]))
    elif kind == "empty":
        field = "grid.batch"
        spec["grid"]["batch"] = []
    elif kind == "mapping":  # a value that is not a single value, for a parameter that takes one
        key = draw(st.sampled_from(["hw", "batch", "policy", "engine"]))
        value = draw(st.sampled_from([{"a": 1}, [1, 2]]))
        field = key
        spec["grid"].pop(key, None)
        spec["cases"][0].pop(key, None)  # a case's value would override the base's
        if where == "grid":
            spec["grid"][key] = [value]
        elif where == "base":
            spec["base"][key] = value
        else:
            spec["cases"][0][key] = value
    elif kind == "policy":
        spec["grid"]["policy"] = ["lru", draw(st.sampled_from(["lruu", "no-such", "oracle"]))]
        field = "policy"
    elif kind == "option":
        opt = draw(st.sampled_from(["slots", "slot_per_layer", "size", "cachegb"]))
        spec["grid"][f"policy_options.{opt}"] = [1]
        field = f"policy_options.{opt}"
    elif kind == "orphan_option":
        spec["base"]["prefetch_options.lookahead"] = 2
        field = "prefetch_options.lookahead"
    elif kind == "case_axis":
        spec["cases"] = [{"policy": "lfu"}]
        field = "cases[0].policy"
    elif kind == "trace":
        spec["trace"] = draw(st.sampled_from(["missing.npz", "no/such/dir/t.npz"]))
        field = "trace"
    elif kind == "hw":
        spec["base"]["hw"] = draw(st.sampled_from(["rtx9090", "no/such/profile.yaml", "missing.yaml"]))
        field = "hw"
    elif kind == "shape":
        return yaml.safe_dump(draw(st.sampled_from([[1, 2], "text", 5]))), ""
    else:
        text, field = draw(st.sampled_from([("grid: {a: [1, 2}\n", "line"), ("grid: {}\ngrid: {}\n", "line"),
                                            ("\0trace: x\n", ""), ("a: &x {b: *x}\n", ""),
                                            ("trace:\n\t- x\n", "line")]))
        return text, field
    return yaml.safe_dump(spec, sort_keys=False), field


@pytest.mark.parametrize("kind", SPEC_KINDS)
@settings(SETTINGS, max_examples=4)
@given(data=st.data(), existing=st.booleans())
def test_malformed_sweep_specs(base, good_trace, kind, data, existing):
    text, field = data.draw(broken_spec(kind, str(good_trace)))
    with case_dir(base) as d:
        spec = d / "spec.yaml"
        spec.write_text(text)
        out = d / "out.parquet"
        rejected(d, ["sweep", spec, "--out", out, "--workers", "1", "--quiet"], [str(spec), field], out, existing)


# ---- import files ------------------------------------------------------------------------------------------------
def _records() -> list[dict]:
    return [{"request": r, "layer": m, "token": t, "experts": [(r + m + t) % 8, (r + m + t + 1) % 8],
             "weights": [0.6, 0.4], "phase": "prefill" if t == 0 else "decode"}
            for r in range(2) for t in range(3) for m in range(2)]


IMPORT_KINDS = ["unknown", "missing", "layer", "token", "int_type", "experts_type", "expert_id", "duplicate_expert",
                "top_k", "weights", "weights_presence", "phase", "request", "duplicate_record", "not_json",
                "not_object", "utf8"]


@st.composite
def broken_import(draw, kind: str) -> tuple[bytes, str, str]:
    """JSONL bytes broken in one record, the line it is on, and the field the error must name."""
    recs = _records()
    i = draw(st.integers(0, len(recs) - 1))
    rec = recs[i]
    field = kind
    if kind == "unknown":
        field = draw(st.sampled_from(["ts", "latency", "expert", "Layer"]))
        rec[field] = 1
    elif kind == "missing":
        field = draw(st.sampled_from(["request", "layer", "token", "experts"]))
        rec.pop(field)
    elif kind == "layer":
        rec["layer"] = draw(st.sampled_from([-1, 32, 1000, 2**31 - 1]))
    elif kind == "token":
        rec["token"] = draw(st.sampled_from([-1, -(2**31), 2**31, 10**12, 1.5, "x", None, True]))
    elif kind == "int_type":
        field = draw(st.sampled_from(["layer", "token"]))
        rec[field] = draw(st.sampled_from([True, None, 1.5, "1.5", [1], {"a": 1}, 10**30]))
    elif kind == "experts_type":
        field = "experts"
        rec["experts"] = draw(st.sampled_from([3, "1 2", None, {"a": 1}, [1, "x"], [1.5, 2]]))
    elif kind == "expert_id":
        field = "experts"
        rec["experts"] = [draw(st.sampled_from([8, 9, 100, -2, 2**40])), 1]
    elif kind == "duplicate_expert":
        field = "experts"
        rec["experts"] = [3, 3]
    elif kind == "top_k":
        field = "experts"
        rec["experts"] = [1, 2, 3]
        rec["weights"] = [0.5, 0.3, 0.2]
    elif kind == "weights":
        rec["weights"] = draw(st.sampled_from([[0.5], [0.5, -1], [0.5, "x"], "0.5", [0.5, True],
                                               [0.5, 0.1, 0.1]]))
    elif kind == "weights_presence":
        rec.pop("weights")
        field = "weights"
    elif kind == "phase":
        rec["phase"] = draw(st.sampled_from(["middle", 2, -1, None, [0], "Prefill!"]))
    elif kind == "request":
        rec["request"] = draw(st.sampled_from([True, None, [1], {"a": 1}, 1.5, -1, 2**31]))
    elif kind == "duplicate_record":
        assume(i > 0)
        recs[i] = dict(recs[i - 1])
        field = "token"
    lines = [json.dumps(r).encode() for r in recs]
    if kind == "not_json":
        lines[i] = draw(st.sampled_from([b"{", b"{'a': 1}", b"nope", b"[" * 3000 + b"]" * 3000]))
        field = ""
    elif kind == "not_object":
        lines[i] = draw(st.sampled_from([b"[1, 2]", b"3", b'"x"', b"null"]))
        field = ""
    elif kind == "utf8":
        lines[i] = b'{"request": "\xff\xfe"}'
        return b"\n".join(lines) + b"\n", "", ""
    return b"\n".join(lines) + b"\n", f"line {i + 1}", field


@pytest.mark.parametrize("kind", IMPORT_KINDS)
@settings(SETTINGS, max_examples=4)
@given(data=st.data(), existing=st.booleans())
def test_malformed_import_files(base, kind, data, existing):
    data, line, field = data.draw(broken_import(kind))
    with case_dir(base) as d:
        src = d / "routing.jsonl"
        src.write_bytes(data)
        out = d / "out.npz"
        rejected(d, ["trace", "import", "--from", "jsonl", src, "--model", "mixtral-8x7b", "--out", out],
                 [str(src), line, field], out, existing)


CSV_VALID = {("token", "99"), ("experts", "-1"), *(("request", c) for c in ("x", "1.5", "-1", "99", "1;1", "1 x"))}


@settings(SETTINGS, max_examples=25)
@given(cell=st.sampled_from(["x", "1.5", "-1", "99", "1;1", "1 x", "4294967296"]),
       column=st.sampled_from(["layer", "token", "experts", "request"]), existing=st.booleans())
def test_malformed_csv_imports(base, cell, column, existing):
    assume((column, cell) not in CSV_VALID)  # a gap, an empty slot, string request ids: all valid
    rows = [{"request": 0, "layer": 0, "token": t, "experts": f"{t % 8} {(t + 1) % 8}", "phase": 1} for t in range(3)]
    rows[1][column] = cell
    with case_dir(base) as d:
        src = d / "routing.csv"
        src.write_text("request,layer,token,experts,phase\n" +
                       "".join(f"{r['request']},{r['layer']},{r['token']},{r['experts']},{r['phase']}\n" for r in rows))
        out = d / "out.npz"
        rejected(d, ["trace", "import", "--from", "csv", src, "--model", "mixtral-8x7b", "--out", out],
                 [str(src), "row 3", column], out, existing)
