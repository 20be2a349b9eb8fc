"""Importers: JSONL and CSV routing logs -> simmoe-trace/1; gaps become -1; bad input names file/field/line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simmoe.errors import InputError
from simmoe.trace.format import Trace, validate
from simmoe.trace.importers import export_jsonl, import_csv, import_jsonl
from simmoe.trace.synth import synth_trace


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _equal(a: Trace, b: Trace) -> None:
    for name in ("experts", "request", "phase", "gates"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), requests=st.integers(1, 3), prompt=st.integers(0, 3),
       decode=st.integers(1, 4), holes=st.floats(0, 0.5, allow_subnormal=False), gates=st.booleans())  # torch: flush-to-zero
def test_jsonl_round_trip(tmp_path, seed, requests, prompt, decode, holes, gates):
    tr = synth_trace("mixtral-8x7b", requests=requests, prompt_tokens=prompt, decode_tokens=decode, seed=seed,
                     gates=gates, slot_shuffle=0.5)
    # null slots (adaptive k) survive too
    ex = tr.experts.copy()
    null = np.random.default_rng(seed).random(ex.shape) < holes
    ex[null] = -1
    g = None if tr.gates is None else np.where(null, np.nan, tr.gates).astype(np.float32)
    tr = Trace(ex, tr.request, tr.phase, tr.meta, gates=g)
    validate(tr)
    p = tmp_path / f"t{seed}.jsonl"
    export_jsonl(tr, p)
    _equal(tr, import_jsonl(p, "mixtral-8x7b"))


def test_gaps_become_minus_one_and_string_ids(tmp_path):
    recs = [
        {"req_id": "cmpl-b", "layer_id": 0, "token_idx": 0, "topk_ids": [1, 2], "is_prefill": True},
        {"req_id": "cmpl-b", "layer_id": 1, "token_idx": 0, "topk_ids": [3, 4], "is_prefill": True},
        # token 1 of cmpl-b is missing entirely; token 2 has only layer 1
        {"req_id": "cmpl-b", "layer_id": 1, "token_idx": 2, "topk_ids": [5], "is_prefill": False},
        {"req_id": "cmpl-a", "layer_id": 0, "token_idx": 0, "topk_ids": [7, 6], "is_prefill": False},
    ]
    tr = import_jsonl(_write(tmp_path / "v.jsonl", recs), "mixtral-8x7b")
    assert tr.num_layers == 32 and tr.meta["request_names"] == ["cmpl-b", "cmpl-a"]
    assert tr.request.tolist() == [0, 0, 0, 1]
    assert tr.experts[0, 0].tolist() == [1, 2] and tr.experts[0, 1].tolist() == [3, 4]
    assert (tr.experts[1] == -1).all()  # the missing row
    assert tr.experts[2, 1].tolist() == [5, -1] and (tr.experts[2, 0] == -1).all()
    assert (tr.experts[0, 2:] == -1).all()  # layers never logged
    assert tr.phase.tolist() == [0, 0, 1, 1]  # gap row takes the earlier row's phase
    assert tr.gates is None and tr.meta["import"]["phase_rule"] == "phase field"


def test_phase_from_prompt_len_and_option(tmp_path):
    recs = [{"request": 0, "layer": 0, "token": t, "experts": [0, 1], "prompt_len": 2} for t in range(4)]
    tr = import_jsonl(_write(tmp_path / "a.jsonl", recs), "mixtral-8x7b")
    assert tr.phase.tolist() == [0, 0, 1, 1]
    recs = [{"request": 0, "layer": 0, "token": t, "experts": [0, 1]} for t in range(4)]
    p = _write(tmp_path / "b.jsonl", recs)
    assert import_jsonl(p, "mixtral-8x7b", prompt_len=3).phase.tolist() == [0, 0, 0, 1]
    with pytest.raises(InputError, match="prompt-len"):
        import_jsonl(p, "mixtral-8x7b")


def test_model_layer_index(tmp_path):
    # deepseek-v2-lite: transformer layer 0 is dense, MoE layers are 1..26
    recs = [{"request": 0, "layer": 1, "token": 0, "experts": [0, 1, 2, 3, 4, 5], "phase": "decode"}]
    tr = import_jsonl(_write(tmp_path / "d.jsonl", recs), "deepseek-v2-lite", layer_index="model")
    assert tr.experts[0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    recs[0]["layer"] = 0
    with pytest.raises(InputError, match=r"d\.jsonl:line 1: layer: transformer layer 0"):
        import_jsonl(_write(tmp_path / "d.jsonl", recs), "deepseek-v2-lite", layer_index="model")


@pytest.mark.parametrize("rec,field", [
    ({"request": 0, "layer": 0, "token": 0, "experts": [0, 8], "phase": 1}, "experts: expert id 8"),
    ({"request": 0, "layer": 32, "token": 0, "experts": [0, 1], "phase": 1}, "layer: MoE layer 32"),
    ({"request": 0, "layer": 0, "token": -1, "experts": [0, 1], "phase": 1}, "token: must be >= 0"),
    ({"request": 0, "layer": 0, "token": 0, "experts": [0, 1, 2], "phase": 1}, "experts: 3 experts"),
    ({"request": 0, "layer": 0, "token": 0, "experts": [0, 1], "weights": [0.5], "phase": 1}, "weights"),
    ({"request": 0, "layer": 0, "token": 0, "experts": [0, 1], "weights": [0.5, -1], "phase": 1}, "weights"),
    ({"request": 0, "layer": 0, "token": 0, "experts": [0, 1], "phase": "middle"}, "phase"),
    ({"request": 0, "layer": 0, "token": 0, "experts": [1, 1], "phase": 1}, "experts: an expert appears twice"),
    ({"request": 0, "layer": 0, "token": 0, "experts": [0, 1], "phase": 1, "ts": 3}, "ts: unknown field"),
    ({"request": 0, "token": 0, "experts": [0, 1], "phase": 1}, "layer: missing field"),
])
def test_jsonl_bad_record_names_line_and_field(tmp_path, rec, field):
    good = {"request": 0, "layer": 1, "token": 0, "experts": [0, 1], "phase": 1}
    p = _write(tmp_path / "bad.jsonl", [good, rec])
    with pytest.raises(InputError) as e:
        import_jsonl(p, "mixtral-8x7b")
    assert e.value.line().startswith(f"{p}:line 2: ") and field in e.value.line(), e.value.line()


def test_jsonl_duplicates_bad_json_and_ignore_fields(tmp_path):
    rec = {"request": 0, "layer": 0, "token": 0, "experts": [0, 1], "phase": 1, "ts": 1.0}
    p = _write(tmp_path / "dup.jsonl", [rec, rec])
    with pytest.raises(InputError, match=r"dup\.jsonl:line 2: token: .*already given at .*line 1"):
        import_jsonl(p, "mixtral-8x7b", ignore_fields=["ts"])
    p.write_text(json.dumps(rec) + "\n{not json\n")
    with pytest.raises(InputError, match=r"line 2: not valid JSON"):
        import_jsonl(p, "mixtral-8x7b", ignore_fields=["ts"])
    p.write_text(json.dumps(rec) + "\n")
    assert import_jsonl(p, "mixtral-8x7b", ignore_fields=["ts"]).num_rows == 1


def test_csv_layer_column_and_per_layer_files(tmp_path):
    tr = synth_trace("mixtral-8x7b", requests=2, prompt_tokens=2, decode_tokens=3, seed=4)
    tr = Trace(tr.experts[:, :3].copy(), tr.request, tr.phase, tr.meta, gates=tr.gates[:, :3].copy())
    validate(tr)
    pos = np.concatenate([np.arange(5), np.arange(5)])
    lines = ["request,token,layer,phase,expert_0,expert_1,weight_0,weight_1"]
    per_layer = {m: ["request,token,phase,experts,weights"] for m in range(3)}
    for r in range(tr.num_rows):
        for m in range(3):
            e, g = tr.experts[r, m], tr.gates[r, m]
            ph = "prefill" if tr.phase[r] == 0 else "decode"
            lines.append(f"{tr.request[r]},{pos[r]},{m},{ph},{e[0]},{e[1]},{float(g[0])!r},{float(g[1])!r}")
            per_layer[m].append(f"{tr.request[r]},{pos[r]},{ph},{e[0]} {e[1]},{float(g[0])!r} {float(g[1])!r}")
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    one = import_csv(tmp_path / "all.csv", "mixtral-8x7b")
    files = []
    for m in range(3):
        f = tmp_path / f"layer_{m}.csv"
        f.write_text("\n".join(per_layer[m]) + "\n")
        files.append(f)
    many = import_csv(files[::-1], "mixtral-8x7b")
    for got in (one, many):
        assert np.array_equal(got.experts[:, :3], tr.experts) and (got.experts[:, 3:] == -1).all()
        assert np.array_equal(got.gates[:, :3], tr.gates)
        assert np.array_equal(got.phase, tr.phase) and np.array_equal(got.request, tr.request)


def test_csv_errors(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("request,token,layer,experts\n0,0,0,0 1\n0,1,0,0 9\n")
    with pytest.raises(InputError, match=r"x\.csv:row 3: experts: expert id 9"):
        import_csv(p, "mixtral-8x7b", prompt_len=0)
    p.write_text("request,token,experts\n0,0,0 1\n")
    with pytest.raises(InputError, match=r"x\.csv: layer: no layer column"):
        import_csv(p, "mixtral-8x7b", prompt_len=0)
    p.write_text("request,token,layer\n0,0,0\n")
    with pytest.raises(InputError, match=r"x\.csv: experts: missing column"):
        import_csv(p, "mixtral-8x7b", prompt_len=0)
    with pytest.raises(InputError, match="unknown model"):
        import_csv(p, "no-such-model")
