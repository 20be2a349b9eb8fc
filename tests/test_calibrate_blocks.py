"""Dense blocks: timed by calibration (calibrate/blocks.py), kept as kernel tables, used by the cost model."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from test_calibrate_from import synthetic

from simmoe.calibrate.assemble import fit_profile
from simmoe.calibrate.measurements import from_frame, measurements_from_dict, to_frame
from simmoe.engine.costs import CostModel, attention_table_us
from simmoe.errors import InputError
from simmoe.hw.kernel_keys import attention_key, gather_key, head_key, router_key
from simmoe.hw.profile import AttentionTable, load_profile
from simmoe.models.catalog import CATALOG
from simmoe.runtime.profile import load_runtime

try:
    import torch
except ImportError:  # pragma: no cover - torch is the calibrate extra
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (the calibrate extra)")

MIXTRAL = CATALOG["mixtral-8x7b"]


def _stat(us: float) -> dict:
    return {"median": us / 1e6, "min": us / 1e6, "max": us / 1e6}


def _blocks(device: str, threads: int | None = None) -> list[dict]:
    """Block rows of Mixtral's shapes: attention at 2 contexts (the larger one at fewer token counts), the
    others at 3 token counts; times follow simple formulas so tables can be checked exactly."""
    extra = {"threads": threads} if threads else {}
    rows = []
    for ctx in (32, 128):
        for n in ((1, 4, 16) if ctx == 32 else (1, 4)):
            rows.append({"device": device, "key": attention_key(MIXTRAL), "tokens": n, "context": ctx, "ops": 12,
                         "time_s": _stat(100.0 + 10 * n + ctx), **extra})
    for key, ops in ((router_key(MIXTRAL), 6), (head_key(MIXTRAL), 4), (gather_key(MIXTRAL), 3)):
        for n in (1, 4, 16):
            rows.append({"device": device, "key": key, "tokens": n, "ops": ops, "time_s": _stat(50.0 + n), **extra})
    return rows


# ---- measurements file ------------------------------------------------------------------------------------
def test_block_rows_round_trip_through_the_frame():
    data = synthetic(sd=0.0)
    data["blocks"] = _blocks("cuda")
    m = measurements_from_dict(data, "m.json")
    again = from_frame(to_frame(m), device="cuda", machine=dict(m.machine), method=dict(m.method))
    assert again.blocks == m.blocks


@pytest.mark.parametrize("change, field, words", [
    ({"key": "attn:4096x32x8:bf16"}, "blocks[0].key", "pattern"),  # a malformed key
    ({"context": 0}, "blocks[0]", "need a context"),  # attention without one
    ({"ops": 0}, "blocks[0].ops", "greater than or equal to 1"),
])
def test_bad_block_rows_name_the_field(change, field, words):
    data = synthetic(sd=0.0)
    data["blocks"] = _blocks("cuda")
    data["blocks"][0].update(change)
    with pytest.raises(InputError) as ei:
        measurements_from_dict(data, "m.json")
    assert ei.value.field == field and words in ei.value.message


def test_a_router_row_with_a_context_is_refused_and_repeats_are_named():
    data = synthetic(sd=0.0)
    data["blocks"] = _blocks("cuda")
    router = next(i for i, r in enumerate(data["blocks"]) if r["key"].startswith("router:"))
    bad = copy.deepcopy(data)
    bad["blocks"][router]["context"] = 32
    with pytest.raises(InputError, match="other blocks have none"):
        measurements_from_dict(bad, "m.json")
    data["blocks"].append(dict(data["blocks"][0]))
    with pytest.raises(InputError, match="repeats an earlier row"):
        measurements_from_dict(data, "m.json")


# ---- fitting ------------------------------------------------------------------------------------------------
def test_gpu_block_tables_are_the_medians_with_their_origin():
    data = synthetic(sd=0.0)
    data["blocks"] = _blocks("cuda")
    p = fit_profile(measurements_from_dict(data, "m.json"), name="t", base=load_profile("h100-sxm"),
                    base_label="h100-sxm").profile
    a = p.kernels.attention_gpu[attention_key(MIXTRAL)]
    assert a.tokens == [1, 4, 16] and a.context == [32, 128]
    # the 128-context row was measured at 1 and 4 tokens: 16 is extended along its own row (slope 10 / token)
    assert a.us == [[142.0, 172.0, 292.0], [238.0, 268.0, 388.0]]
    assert p.kernels.router_gpu[router_key(MIXTRAL)].us == [51.0, 54.0, 66.0]
    src = p.calibration.provenance[f"kernels.attention_gpu.{attention_key(MIXTRAL)}"]
    assert src.how == "measured" and "1 cells beyond" in src.source and "GPU time" in src.source


def test_cpu_device_block_tables_take_each_ops_dispatch_out():
    data = synthetic(sd=0.0)
    for r in data["cpu_ffn"]:
        r["threads"] = 1
    data.update(device="cpu", gpu_ffn=[], transfer=[t | {"pinned": False} for t in data["transfer"] if not t["pinned"]],
                host=[{"device": "cpu", "op": "dispatch", "time_s": _stat(2.0)}],
                membw=[{"device": "cpu", "bytes": 2**28, "time_s": _stat(2**28 / 20e3)}],
                gemm=[{"device": "cpu", "n": 2048, "dtype": "bf16", "time_s": _stat(2 * 2048**3 / 1e6)}],
                blocks=_blocks("cpu", threads=1))
    p = fit_profile(measurements_from_dict(data, "m.json"), name="t", as_device=True).profile
    assert p.kernels.router_gpu[router_key(MIXTRAL)].us == [51.0 - 12, 54.0 - 12, 66.0 - 12]  # 6 ops x 2 us
    assert p.kernels.gather_gpu[gather_key(MIXTRAL)].us == [45.0, 48.0, 60.0]  # 3 ops x 2 us
    assert p.kernels.attention_gpu[attention_key(MIXTRAL)].us[0] == [142.0 - 24, 172.0 - 24, 292.0 - 24]
    key = "4096x14336xswiglu:bf16"  # the expert table: the call's time minus its 5 ops' dispatch
    assert p.kernels.expert_ffn_gpu[key].us == pytest.approx([u - 10.0 for u in p.kernels.expert_ffn_cpu[key].us])
    assert p.gpu.kernel_min_us == 0.0
    assert "minus its 6 ops' dispatch (2 us each)" in \
        p.calibration.provenance[f"kernels.router_gpu.{router_key(MIXTRAL)}"].source


# ---- the cost model ---------------------------------------------------------------------------------------------
def test_attention_table_interpolates_in_tokens_and_context_and_grows_beyond():
    t = AttentionTable(tokens=[1, 4], context=[32, 128], us=[[10.0, 40.0], [20.0, 80.0]])
    assert attention_table_us(t, 1, 32) == 10.0
    assert attention_table_us(t, 2, 32) == 20.0  # linear in tokens
    assert attention_table_us(t, 1, 80) == 15.0  # linear in context
    assert attention_table_us(t, 1, 8) == 10.0  # a shorter context: the first row (no negative slope)
    assert attention_table_us(t, 4, 224) == 120.0  # beyond: the last two rows' rate
    flat = AttentionTable(tokens=[1], context=[64], us=[[5.0]])
    assert attention_table_us(flat, 1, 1000) == 5.0


def _profile_with_tables() -> object:
    hw = load_profile("h100-sxm")
    k = hw.kernels.model_dump()
    k.update(attention_gpu={attention_key(MIXTRAL): {"tokens": [1, 8], "context": [64], "us": [[500.0, 900.0]]}},
             router_gpu={router_key(MIXTRAL): {"tokens": [1, 8], "us": [7.0, 14.0]}},
             head_gpu={head_key(MIXTRAL): {"tokens": [1], "us": [321.0]}},
             gather_gpu={gather_key(MIXTRAL): {"tokens": [1, 2], "us": [6.0, 8.0]}})
    return hw.model_copy(update={"kernels": type(hw.kernels).model_validate(k)})


def test_block_tables_replace_the_roofline_and_a_key_for_another_shape_does_not():
    hw = _profile_with_tables()
    c = CostModel(MIXTRAL, hw, load_runtime("torch-eager"))
    assert c.attention_us(8, 8 * 64) == 900.0
    assert c.router_us(4) == pytest.approx(10.0)
    assert c.step_extra_us(1) == 321.0
    assert c.gather_each_us(2, 4) == 2.0  # the table's 8 us over 4 launches
    plain = CostModel(MIXTRAL, load_profile("h100-sxm"), load_runtime("torch-eager"))
    assert plain.router_us(4) != c.router_us(4) and plain.attention_us(8, 512) != 900.0
    other = CostModel(CATALOG["olmoe-1b-7b"], hw, load_runtime("torch-eager"))  # other shapes: roofline
    assert other.router_us(4) == CostModel(CATALOG["olmoe-1b-7b"], load_profile("h100-sxm"),
                                           load_runtime("torch-eager")).router_us(4)


def test_a_padded_batch_reads_the_longest_sequences_context_for_every_sequence():
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.scenario import prepare
    from simmoe.engine.schedule import DECODE
    from simmoe.engine.step_timing import StepTiming
    from simmoe.policies import PolicySet
    from simmoe.trace.format import read_trace

    tr = read_trace("traces/tinymoe-stdlib.npz")
    hw = load_profile("rtx3090")
    k = hw.kernels.model_dump()
    k["attention_gpu"] = {attention_key(tr.spec): {"tokens": [1, 8], "context": [32, 512],
                                                    "us": [[10.0, 20.0], [100.0, 200.0]]}}
    hw = hw.model_copy(update={"kernels": type(hw.kernels).model_validate(k)})
    ragged = load_runtime("generic")
    padded = ragged.model_copy(update={"kernels": ragged.kernels.model_copy(update={"attention": "padded"})})
    out = {}
    for rt in (ragged, padded):
        sc = prepare(tr, hw, PolicySet(cache="resident"), ReplayConfig(batch=4, max_requests=4), runtime=rt)
        tl = SimpleNamespace(host=SimpleNamespace(launch_us=0.0))
        timing = StepTiming(sc, tl, SimpleNamespace(num_buffers=0, preloaded=[], staging_first=0), None)
        steps = [s for s in sc.steps if s.kind == DECODE and len(s.rows) == 4]
        pos = [sc.ri.position[s.rows] + 1 for s in steps]
        uneven = next(i for i, p in enumerate(pos) if p.max() * 4 > p.sum())
        out[rt.kernels.attention] = (timing.dense_costs(steps[uneven]).attn_each,
                                     sc.costs.attention_us(4, int(pos[uneven].max()) * 4) / rt.kernels.per_attention)
    assert out["padded"][0] > out["ragged"][0]
    assert out["padded"][0] == pytest.approx(out["padded"][1])


# ---- the blocks themselves --------------------------------------------------------------------------------------
@needs_torch
def test_each_blocks_op_count_is_what_it_dispatches():
    """A block's `ops` is taken out of its CPU time once per op: count the torch calls that are not views."""
    from torch.overrides import TorchFunctionMode

    from simmoe.calibrate.blocks import blocks_of

    class Count(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # a view shares its input's storage (inference tensors do not record views): not an op
            ins = [a for a in args if isinstance(a, torch.Tensor)]
            view = isinstance(out, torch.Tensor) and all(out is not a for a in ins) and \
                out.untyped_storage().data_ptr() in {a.untyped_storage().data_ptr() for a in ins}
            if not view:  # an in-place op returns its input itself: that one is an op
                self.n += 1
            return out

    spec = CATALOG["olmoe-1b-7b"].truncated(1)
    small = type(spec)(**{**spec.to_dict(), "d_model": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
                          "vocab_size": 128, "expert_d_ff": 32, "moe_layers": (0,), "num_layers": 1})
    with torch.inference_mode():
        for b in blocks_of(small, "cpu"):
            for n in (1, 3):
                fn = b.make(n, 8 if b.kind == "attention" else 0)
                with Count() as c:
                    fn(0)
                assert c.n == b.ops, (b.kind, n, c.n)


@needs_torch
def test_blocks_are_timed_at_every_context_within_the_cache_budget():
    from simmoe.calibrate import measure
    from simmoe.calibrate.blocks import CONTEXTS, MAX_CACHED_TOKENS

    spec = CATALOG["olmoe-1b-7b"]
    tiny = type(spec)(**{**spec.to_dict(), "d_model": 64, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16,
                         "vocab_size": 128, "expert_d_ff": 32})
    st = measure.settings(True, max_tokens=4)
    rows = measure._measure_blocks(tiny, "cpu", st, threads=1)
    attn = [(r["context"], r["tokens"]) for r in rows if r["name"].startswith("attn:")]
    assert {c for c, _ in attn} == set(CONTEXTS)
    assert all(n * c <= MAX_CACHED_TOKENS or n == 1 for c, n in attn)
    assert {r["name"].split(":")[0] for r in rows} == {"attn", "router", "head", "gather"}
    assert all(r["ops"] >= 3 and r["median_us"] > 0 for r in rows)
    assert np.all([r["reps"] >= st.min_reps for r in rows])
