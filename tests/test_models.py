"""Model catalog and ModelSpec: shapes against published configs and totals, (de)serialisation, validation,
and the `simmoe models` command."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import assert_clean_error

from simmoe.errors import InputError
from simmoe.models import CATALOG, ModelSpec, get_model, list_models

REQUIRED = {
    "mixtral-8x7b", "mixtral-8x22b", "deepseek-v2-lite", "deepseek-v3", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b",
    "olmoe-1b-7b", "gpt-oss-20b", "gpt-oss-120b", "phi-3.5-moe", "switch-base-128", "dbrx",
}

# Published parameter counts, billions: (total, active, active figure leaves out the input embedding, tol).
# DeepSeek and OpenAI count "activated" parameters without the input embedding table (DeepSeek-V3: "36.6B
# including 0.9B for the output head"; gpt-oss-120b card: 5.13B active = attention + 4 experts + unembedding);
# the others count it. Tolerance 3%, 5% for MLA models (attention counted through attn_params_override).
PUBLISHED = {
    "mixtral-8x7b": (46.7, 12.9, False, 0.03),  # Mistral, "Mixtral of Experts" paper
    "mixtral-8x22b": (141.0, 39.0, False, 0.03),  # Mistral announcement
    "deepseek-v2-lite": (15.7, 2.4, True, 0.05),  # DeepSeek-V2 paper / model card
    "deepseek-v3": (671.0, 37.0, True, 0.05),  # DeepSeek-V3 report (main model, MTP module excluded)
    "qwen1.5-moe-a2.7b": (14.3, 2.7, False, 0.03),  # Qwen blog
    "qwen3-30b-a3b": (30.5, 3.3, False, 0.03),  # Qwen3 model card
    "olmoe-1b-7b": (6.9, 1.3, False, 0.03),  # OLMoE paper
    "gpt-oss-20b": (20.91, 3.61, True, 0.03),  # OpenAI model card
    "gpt-oss-120b": (116.83, 5.13, True, 0.03),  # OpenAI model card
    "phi-3.5-moe": (41.9, 6.6, False, 0.03),  # Microsoft model card
    "dbrx": (132.0, 36.0, False, 0.03),  # Databricks announcement
    "switch-base-128": (7.4, None, False, 0.03),  # google/switch-base-128 (HF)
}

# Fields transcribed from each config.json:
# (num_layers, first MoE layer, MoE layers, experts, top_k, shared, d_model, expert_d_ff, heads, kv heads,
#  head_dim, vocab, tied)
CONFIG = {
    "mixtral-8x7b": (32, 0, 32, 8, 2, 0, 4096, 14336, 32, 8, 128, 32000, False),
    "mixtral-8x22b": (56, 0, 56, 8, 2, 0, 6144, 16384, 48, 8, 128, 32000, False),
    "deepseek-v2-lite": (27, 1, 26, 64, 6, 2, 2048, 1408, 16, 16, 192, 102400, False),
    "deepseek-v3": (61, 3, 58, 256, 8, 1, 7168, 2048, 128, 128, 192, 129280, False),
    "qwen1.5-moe-a2.7b": (24, 0, 24, 60, 4, 1, 2048, 1408, 16, 16, 128, 151936, False),
    "qwen3-30b-a3b": (48, 0, 48, 128, 8, 0, 2048, 768, 32, 4, 128, 151936, False),
    "olmoe-1b-7b": (16, 0, 16, 64, 8, 0, 2048, 1024, 16, 16, 128, 50304, False),
    "gpt-oss-20b": (24, 0, 24, 32, 4, 0, 2880, 2880, 64, 8, 64, 201088, False),
    "gpt-oss-120b": (36, 0, 36, 128, 4, 0, 2880, 2880, 64, 8, 64, 201088, False),
    "phi-3.5-moe": (32, 0, 32, 16, 2, 0, 4096, 6400, 32, 8, 128, 32064, False),
    "switch-base-128": (24, 1, 12, 128, 1, 0, 768, 3072, 12, 12, 64, 32128, True),
    "dbrx": (40, 0, 40, 16, 4, 0, 6144, 10752, 48, 8, 128, 100352, False),
}


def _spec(**over) -> ModelSpec:
    """A small valid spec with some fields replaced."""
    base = dict(name="toy", num_layers=4, moe_layers=(1, 2, 3), num_experts=8, top_k=2, d_model=64,
                expert_d_ff=128, dense_d_ff=256, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=100)
    base.update(over)
    return ModelSpec(**base)


# ---- catalog --------------------------------------------------------------------------------------------
def test_catalog_has_every_required_model():
    assert REQUIRED <= set(CATALOG)
    assert list_models() == sorted(CATALOG)
    assert set(PUBLISHED) == set(CATALOG) == set(CONFIG)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_catalog_model_validates_and_cites_its_config(name):
    m = get_model(name)
    assert m.name == name
    assert "/" in m.reference and "config.json" in m.reference
    # Re-running validation on the same fields passes (the entry is a valid spec, not a frozen accident).
    again = ModelSpec(**{f.name: getattr(m, f.name) for f in dataclasses.fields(ModelSpec)})
    assert again == m
    assert m.total_params > m.active_params > m.dense_params > 0
    assert m.expert_bytes() > 0 and m.kv_bytes_per_token() > 0


@pytest.mark.parametrize("name", sorted(CONFIG))
def test_catalog_shapes_match_config(name):
    m = get_model(name)
    layers, first_moe, n_moe, experts, top_k, shared, d, dff, heads, kv, hd, vocab, tied = CONFIG[name]
    assert (m.num_layers, m.moe_layers[0], m.num_moe_layers) == (layers, first_moe, n_moe)
    assert (m.num_experts, m.top_k, m.num_shared_experts) == (experts, top_k, shared)
    assert (m.d_model, m.expert_d_ff, m.num_heads, m.num_kv_heads, m.head_dim) == (d, dff, heads, kv, hd)
    assert (m.vocab_size, m.tie_embeddings) == (vocab, tied)
    assert list(m.moe_layers) == sorted(m.moe_layers)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_counts_match_published(name):
    m = get_model(name)
    total_b, active_b, active_without_input_embedding, tol = PUBLISHED[name]
    total = m.total_params / 1e9
    assert total == pytest.approx(total_b, rel=tol), f"{name}: total {total:.2f}B vs published {total_b}B"
    if active_b is not None:
        active = m.active_params - (m.vocab_size * m.d_model if active_without_input_embedding else 0)
        active /= 1e9
        assert active == pytest.approx(active_b, rel=tol), f"{name}: active {active:.2f}B vs {active_b}B"


def test_mixtral_param_count_is_exact():
    # The checkpoint holds 46,702,792,704 parameters; ModelSpec leaves out only the final RMSNorm (d_model).
    m = get_model("mixtral-8x7b")
    assert m.total_params + m.d_model == 46_702_792_704


@pytest.mark.parametrize(("name", "nbytes"), [
    ("mixtral-8x7b", 352_321_536),  # 3 x 4096 x 14336 x 2 bytes
    ("deepseek-v2-lite", 17_301_504),  # 3 x 2048 x 1408 x 2 bytes
    ("switch-base-128", 18_874_368),  # 2 x 768 x 3072 x 4 bytes (Pre-gated MoE paper)
    ("deepseek-v3", 44_040_192),  # 3 x 7168 x 2048 x 1 byte (fp8 release)
])
def test_expert_bytes(name, nbytes):
    assert get_model(name).expert_bytes() == nbytes


def test_expert_dtypes_and_biases():
    assert get_model("mixtral-8x7b").expert_bytes("fp32") == 2 * 352_321_536
    for name in ("gpt-oss-20b", "gpt-oss-120b"):
        m = get_model(name)
        assert (m.expert_dtype, m.expert_bias, m.activation) == ("mxfp4", True, "swiglu")
        # 3 x 2880 x 2880 weights + 2 x 2880 gate/up biases + 2880 down bias, 4.25 bits each.
        assert m.expert_params == 3 * 2880 * 2880 + 3 * 2880
        assert m.expert_bytes() == round(m.expert_params * 4.25 / 8)
    sw = get_model("switch-base-128")
    assert (sw.activation, sw.dtype, sw.expert_dtype) == ("relu", "fp32", "fp32")
    assert sw.moe_layers == tuple(range(1, 24, 2))
    assert get_model("deepseek-v3").expert_dtype == "fp8"
    q = get_model("qwen1.5-moe-a2.7b")
    assert q.shared_d_ff == 4 * q.expert_d_ff == 5632


def test_mla_kv_cache_is_the_latent():
    # DeepSeek MLA caches kv_lora_rank + rope dims per layer, not 2 x heads x head_dim.
    v3 = get_model("deepseek-v3")
    assert v3.kv_bytes_per_token() == (512 + 64) * 61 * 2
    lite = get_model("deepseek-v2-lite")
    assert lite.kv_bytes_per_token() == (512 + 64) * 27 * 2
    assert get_model("mixtral-8x7b").kv_bytes_per_token() == 2 * 8 * 128 * 32 * 2


def test_unknown_model_is_an_input_error():
    with pytest.raises(InputError, match="unknown model 'mixtral-8x9b'"):
        get_model("mixtral-8x9b")


# ---- (de)serialisation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CATALOG))
def test_round_trip(name):
    m = get_model(name)
    d = m.to_dict()
    assert ModelSpec.from_dict(d) == m
    assert ModelSpec.from_dict(json.loads(json.dumps(d))) == m  # what a trace's meta carries
    assert ModelSpec.from_dict(yaml.safe_load(yaml.safe_dump(d))) == m


def test_from_dict_rejects_unknown_key():
    d = get_model("mixtral-8x7b").to_dict()
    d["num_expert"] = 8
    with pytest.raises(InputError) as e:
        ModelSpec.from_dict(d, source="trace.npz")
    assert e.value.source == "trace.npz"
    assert e.value.field == "model_spec.num_expert"


@pytest.mark.parametrize("key", ["name", "num_layers", "moe_layers", "num_experts", "top_k", "d_model",
                                 "expert_d_ff"])
def test_from_dict_rejects_missing_key(key):
    d = get_model("olmoe-1b-7b").to_dict()
    del d[key]
    with pytest.raises(InputError) as e:
        ModelSpec.from_dict(d)
    assert e.value.field == f"model_spec.{key}"
    assert "missing" in e.value.message


def test_from_dict_fills_defaults():
    d = {"name": "m", "num_layers": 2, "moe_layers": [0, 1], "num_experts": 4, "top_k": 1, "d_model": 32,
         "expert_d_ff": 64}
    m = ModelSpec.from_dict(d)
    assert (m.activation, m.dtype, m.num_shared_experts) == ("swiglu", "bf16", 0)


@pytest.mark.parametrize(("key", "value"), [("num_layers", "32"), ("num_layers", 32.0), ("top_k", None),
                                            ("vocab_size", 1.5)])
def test_from_dict_rejects_non_integer(key, value):
    d = get_model("mixtral-8x7b").to_dict()
    d[key] = value
    with pytest.raises(InputError) as e:
        ModelSpec.from_dict(d)
    assert e.value.field == f"model_spec.{key}"


@pytest.mark.parametrize("value", [None, 3, ["a"]])
def test_from_dict_rejects_bad_moe_layers(value):
    d = get_model("mixtral-8x7b").to_dict()
    d["moe_layers"] = value
    with pytest.raises(InputError) as e:
        ModelSpec.from_dict(d)
    assert e.value.field in ("model_spec.moe_layers", "model_spec.moe_layers.0")  # .0: the bad item


def test_from_dict_rejects_non_object():
    with pytest.raises(InputError, match="JSON object"):
        ModelSpec.from_dict([1, 2])  # type: ignore[arg-type]


# ---- truncation -----------------------------------------------------------------------------------------
def test_truncated_keeps_first_moe_layers():
    m = get_model("deepseek-v2-lite")  # layer 0 dense, 1..26 MoE
    t = m.truncated(3)
    assert t.moe_layers == (1, 2, 3)
    assert t.num_layers == 4 and t.num_dense_layers == 1
    assert t.expert_bytes() == m.expert_bytes()
    assert t.total_params < m.total_params
    assert t.total_params - t.dense_params == 3 * m.num_experts * m.expert_params

    sw = get_model("switch-base-128").truncated(2)
    assert sw.moe_layers == (1, 3) and sw.num_layers == 4

    assert m.truncated(26) is m and m.truncated(100) is m
    assert m.truncated(25).moe_layers == tuple(range(1, 26))


# ---- validation -----------------------------------------------------------------------------------------
def test_toy_spec_is_valid():
    m = _spec()
    assert m.num_moe_layers == 3 and m.num_dense_layers == 1


@pytest.mark.parametrize(("over", "field"), [
    ({"top_k": 9}, "top_k"),
    ({"top_k": 0}, "top_k"),
    ({"num_experts": 0, "top_k": 0}, "num_experts"),
    ({"activation": "silu"}, "activation"),
    ({"dtype": "bf8"}, "dtype"),
    ({"expert_dtype": "q4_k"}, "expert_dtype"),
    ({"moe_layers": (1, 4)}, "moe_layers"),
    ({"moe_layers": (-1, 2)}, "moe_layers"),
    ({"moe_layers": (1, 1)}, "moe_layers"),
    ({"moe_layers": ()}, "moe_layers"),
    ({"num_layers": 0, "moe_layers": (0,)}, "num_layers"),
    ({"d_model": -64}, "d_model"),
    ({"expert_d_ff": 0}, "expert_d_ff"),
    ({"dense_d_ff": 0}, "dense_d_ff"),  # layer 0 is dense
])
def test_invalid_spec_raises_input_error(over, field):
    with pytest.raises(InputError) as e:
        _spec(**over)
    assert e.value.field == field
    assert e.value.source == "model 'toy'"


def test_invalid_spec_from_dict_names_field():
    d = get_model("mixtral-8x7b").to_dict()
    d["moe_layers"] = [0, 32]
    with pytest.raises(InputError, match=r"moe_layers.*\[0, 32\)"):
        ModelSpec.from_dict(d)


# ---- CLI ------------------------------------------------------------------------------------------------
def test_cli_models_table(simmoe_cli):
    res = simmoe_cli("models")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "layers", "MoE"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
    assert set(rows) == set(CATALOG)
    # name, layers, MoE layers, experts, top-k, shared, expert dtype, expert MB, total B, active B, KV KiB
    assert rows["mixtral-8x7b"] == ["mixtral-8x7b", "32", "32", "8", "2", "0", "bf16", "352.32", "46.70",
                                    "12.88", "128.00"]
    assert rows["deepseek-v2-lite"][1:8] == ["27", "26", "64", "6", "2", "bf16", "17.30"]
    assert rows["switch-base-128"][6:8] == ["fp32", "18.87"]


def test_cli_models_json(simmoe_cli):
    res = simmoe_cli("models", "--json", "-")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == set(CATALOG)
    v3 = rows["deepseek-v3"]
    assert (v3["layers"], v3["moe_layers"], v3["experts"], v3["top_k"], v3["shared"]) == (61, 58, 256, 8, 1)
    assert v3["expert_dtype"] == "fp8" and v3["expert_mb"] == 44.04
    assert v3["total_b"] == pytest.approx(671.03) and v3["kv_kib_per_token"] == pytest.approx(68.62)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_cli_models_show_round_trips(simmoe_cli, fmt):
    name = "deepseek-v2-lite"
    res = simmoe_cli("models", "show", name, *(["--json", "-"] if fmt == "json" else []))
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout) if fmt == "json" else yaml.safe_load(res.stdout)
    assert ModelSpec.from_dict(d) == get_model(name)


def test_cli_models_show_unknown(simmoe_cli):
    res = simmoe_cli("models", "show", "mixtral-8x9b")
    assert_clean_error(res, "unknown model 'mixtral-8x9b'", "mixtral-8x7b")
    assert res.stdout == ""
