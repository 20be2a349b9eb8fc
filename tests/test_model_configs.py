"""Models from a Hugging Face config.json and from a spec .yaml (simmoe.models.hf_config, simmoe.models.load):
the catalog's checkpoints' configs give the catalog's specs, missing keys take transformers' defaults, every
`--model` accepts the three forms, bad files are one line naming the file and the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from conftest import assert_clean_error, run_main
from hf_configs import PUBLISHED_CONFIGS
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.errors import InputError
from simmoe.models import CATALOG, ModelSpec
from simmoe.models.hf_config import FAMILIES, spec_from_hf_config
from simmoe.models.load import load_model


def _write(folder: Path, cfg: dict, name: str = "config.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(json.dumps(cfg))
    return p


# A small Mixtral, as a test checkpoint would ship it.
TINY_MIXTRAL = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 64,
                "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
                "num_hidden_layers": 3, "num_local_experts": 6, "num_experts_per_tok": 2, "vocab_size": 1000,
                "torch_dtype": "float16"}


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONFIGS))
def test_published_config_gives_the_catalog_spec(tmp_path, name):
    path = _write(tmp_path / name, PUBLISHED_CONFIGS[name])
    for ref in (path, path.parent, str(path)):  # the file, its folder, a string path
        spec = load_model(ref)
        assert spec.name == name  # the folder's name
        assert dataclasses.replace(spec, reference=CATALOG[name].reference) == CATALOG[name]
        assert str(path) in spec.reference and PUBLISHED_CONFIGS[name]["model_type"] in spec.reference


def test_the_catalog_matches_every_family():
    assert {c["model_type"] for c in PUBLISHED_CONFIGS.values()} == set(FAMILIES)


# ---- transformers' defaults: an independent reading (the capture's, on transformers' config objects) ---------
CAPTURED_FIELDS = ("num_layers", "num_experts", "top_k", "d_model", "expert_d_ff", "num_heads", "num_kv_heads",
                   "head_dim", "vocab_size", "tie_embeddings", "num_shared_experts", "shared_d_ff",
                   "kv_lora_rank", "qk_rope_head_dim", "activation", "expert_bias")


def _capture_archs():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from simmoe.capture.models import ARCHS

    return ARCHS


@pytest.mark.parametrize("model_type", sorted(set(FAMILIES) - {"dbrx", "phimoe"}))  # capture maps the others
def test_missing_keys_take_transformers_defaults(model_type):
    archs = _capture_archs()
    from transformers import AutoConfig

    extra = {"num_experts_per_tok": 6} if model_type == "deepseek_v2" else {}  # its class default is None
    config = AutoConfig.for_model(model_type, **extra)
    want = archs[model_type].spec_fields(config)
    for data in ({"model_type": model_type, **extra}, config.to_dict()):  # only the type; all transformers saves
        got = spec_from_hf_config(data, "config.json", "m").to_dict()
        assert {k: got[k] for k in want if k in CAPTURED_FIELDS} == {k: v for k, v in want.items()
                                                                      if k in CAPTURED_FIELDS}, data


@pytest.mark.parametrize("model_type", ["dbrx", "phimoe"])
def test_defaults_of_families_capture_does_not_map(model_type):
    pytest.importorskip("transformers")
    from transformers import AutoConfig

    c = AutoConfig.for_model(model_type)
    for data in ({"model_type": model_type}, c.to_dict()):
        s = spec_from_hf_config(data, "config.json", "m")
        if model_type == "dbrx":
            want = (c.d_model, c.n_layers, c.n_heads, c.attn_config.kv_n_heads, c.ffn_config.moe_num_experts,
                    c.ffn_config.moe_top_k, c.ffn_config.ffn_hidden_size, c.vocab_size)
        else:
            want = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
                    c.num_local_experts, c.num_experts_per_tok, c.intermediate_size, c.vocab_size)
        assert (s.d_model, s.num_layers, s.num_heads, s.num_kv_heads, s.num_experts, s.top_k, s.expert_d_ff,
                s.vocab_size) == want


# ---- layer patterns, precisions --------------------------------------------------------------------------
def test_qwen_sparse_step_and_mlp_only_layers_make_dense_layers():
    cfg = {"model_type": "qwen2_moe", "num_hidden_layers": 8, "decoder_sparse_step": 2, "mlp_only_layers": [3],
           "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 96,
           "moe_intermediate_size": 32, "shared_expert_intermediate_size": 0, "num_experts": 8,
           "num_experts_per_tok": 2, "vocab_size": 100}
    s = spec_from_hf_config(cfg, "q/config.json", "q")
    assert s.moe_layers == (1, 5, 7)  # (i + 1) % 2 == 0, minus the mlp_only layer 3
    assert s.dense_d_ff == 96 and s.num_shared_experts == 0 and s.shared_d_ff == 0


def test_deepseek_first_dense_layers_and_layer_freq():
    cfg = {**PUBLISHED_CONFIGS["deepseek-v2-lite"], "num_hidden_layers": 6, "first_k_dense_replace": 2,
           "moe_layer_freq": 2}
    assert spec_from_hf_config(cfg, "d", "d").moe_layers == (2, 4)


def test_dtype_and_quantisation():
    s = spec_from_hf_config(TINY_MIXTRAL, "t", "t")
    assert (s.dtype, s.expert_dtype) == ("fp16", "fp16")
    s = spec_from_hf_config({**TINY_MIXTRAL, "torch_dtype": None}, "t", "t")
    assert (s.dtype, s.expert_dtype) == ("bf16", "bf16")  # absent: the catalog's convention
    with pytest.raises(InputError, match="quantization_config.quant_method: 'awq' is not a format"):
        spec_from_hf_config({**TINY_MIXTRAL, "quantization_config": {"quant_method": "awq"}}, "t", "t")


# ---- errors ----------------------------------------------------------------------------------------------
def test_unknown_architecture_names_the_file_and_its_type(tmp_path):
    p = _write(tmp_path / "llama", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    with pytest.raises(InputError) as e:
        load_model(p)
    line = str(e.value)
    assert line.startswith(f"{p}: model_type: ") and "LlamaForCausalLM" in line and "'llama'" in line
    assert "mixtral" in line  # the known families


@pytest.mark.parametrize(("change", "needle"), [
    ({"num_local_experts": "8"}, "num_local_experts: must be an integer, got '8'"),
    ({"num_local_experts": 8.0}, "num_local_experts: must be an integer, got 8.0"),
    ({"num_experts_per_tok": 0}, "num_experts_per_tok: must be an integer >= 1, got 0"),
    ({"num_experts_per_tok": 9}, "top_k: 9 exceeds num_experts 6"),  # a ModelSpec check, naming the file
    ({"tie_word_embeddings": "no"}, "tie_word_embeddings: must be true or false"),
    ({"hidden_act": "tanh"}, "hidden_act: activation 'tanh' is not one simmoe models"),
    ({"torch_dtype": "int8"}, "torch_dtype: unknown 'int8'"),
])
def test_bad_values_name_the_file_and_key(tmp_path, change, needle):
    p = _write(tmp_path / "m", {**TINY_MIXTRAL, **change})
    with pytest.raises(InputError) as e:
        load_model(p)
    assert str(e.value).startswith(str(p)) and needle in str(e.value), str(e.value)


@pytest.mark.parametrize(("text", "needle"), [("{", "not valid JSON"), ('{"hidden_size": NaN}', "not valid JSON"),
                                               ("[1]", "must hold a JSON object")])
def test_not_a_config(tmp_path, text, needle):
    p = tmp_path / "config.json"
    p.write_text(text)
    with pytest.raises(InputError, match=needle):
        load_model(p)


def test_missing_paths_and_names():
    with pytest.raises(InputError, match="file not found"):
        load_model("nowhere/config.json")
    with pytest.raises(InputError, match="model spec file not found"):
        load_model("nowhere.yaml")
    with pytest.raises(InputError) as e:
        load_model("mixtral-8x8b")
    assert e.value.param == "model" and str(e.value).startswith("model: unknown model 'mixtral-8x8b'")
    assert e.value.line(lambda p: f"--{p}").startswith("--model: unknown model")


# ---- spec .yaml ------------------------------------------------------------------------------------------
def test_spec_yaml_from_models_show_round_trips(tmp_path):
    res = run_main("models", "show", "deepseek-v2-lite")
    assert res.returncode == 0, res.stderr
    p = tmp_path / "dsv2.yaml"
    p.write_text(res.stdout)
    assert load_model(p) == CATALOG["deepseek-v2-lite"]
    # a config.json shows as the spec simmoe reads from it: the same YAML loads back to the same spec
    cfg = _write(tmp_path / "tiny", TINY_MIXTRAL)
    res = run_main("models", "show", cfg)
    assert res.returncode == 0, res.stderr
    p.write_text(res.stdout)
    assert load_model(p) == load_model(cfg)


@pytest.mark.parametrize(("change", "needle"), [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"top_k": "2"}, "top_k: must be an integer, got '2'"),
    ({"top_k": 2.0}, "top_k: must be an integer, got 2.0"),
    ({"expert_bits": float("nan")}, "expert_bits: must be a finite number"),
    ({"moe_layers": [0, True]}, "moe_layers.1: must be an integer"),
    ({"top_k": 99}, "top_k: 99 exceeds num_experts 8"),
])
def test_spec_yaml_is_strict(tmp_path, change, needle):
    d = {**CATALOG["mixtral-8x7b"].to_dict(), **change}
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(InputError) as e:
        load_model(p)
    assert str(e.value).startswith(str(p)) and needle in str(e.value), str(e.value)


def test_spec_yaml_missing_field(tmp_path):
    d = CATALOG["mixtral-8x7b"].to_dict()
    del d["top_k"]
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(InputError, match="top_k: required field missing"):
        load_model(p)


# ---- every --model takes the three forms -------------------------------------------------------------------
@pytest.fixture
def three_forms(tmp_path) -> dict[str, str]:
    cfg = _write(tmp_path / "tiny-mixtral", TINY_MIXTRAL)
    spec = tmp_path / "mixtral.yaml"
    spec.write_text(yaml.safe_dump(CATALOG["mixtral-8x7b"].to_dict()))
    return {"name": "mixtral-8x7b", "config": str(cfg), "spec": str(spec)}


@pytest.mark.parametrize("form", ["name", "config", "spec"])
def test_trace_synth_and_import_take_every_form(tmp_path, three_forms, form):
    from simmoe.trace.format import read_trace

    ref = three_forms[form]
    out = tmp_path / "t.npz"
    res = run_main("trace", "synth", "--model", ref, "--requests", "1", "--prompt-tokens", "2",
                   "--decode-tokens", "3", "--out", out)
    assert res.returncode == 0, res.stderr
    tr = read_trace(out)
    want = load_model(ref)
    assert tr.spec == want
    # a catalog spec is named, any other is embedded (so the trace replays without the file)
    assert ("model_spec" in tr.meta) == (CATALOG.get(want.name) != want)
    log = tmp_path / "r.jsonl"
    log.write_text("\n".join(json.dumps({"request": 0, "token": t, "layer": m, "experts": [0, 1],
                                         "phase": "decode"}) for t in range(2) for m in range(want.num_moe_layers)))
    res = run_main("trace", "import", "--from", "jsonl", log, "--model", ref, "--out", tmp_path / "i.npz")
    assert res.returncode == 0, res.stderr
    assert read_trace(tmp_path / "i.npz").spec == want


def test_replay_model_flag_replays_the_trace_as_that_model(tmp_path, three_forms):
    out = tmp_path / "t.npz"
    assert run_main("trace", "synth", "--model", three_forms["config"], "--requests", "1", "--prompt-tokens", "2",
                    "--decode-tokens", "3", "--out", out).returncode == 0
    cfg16 = _write(tmp_path / "tiny-wide", {**TINY_MIXTRAL, "intermediate_size": 256})
    res = run_main("replay", out, "--hw", "rtx3090", "--model", cfg16, "--json", tmp_path / "s.json")
    assert res.returncode == 0, res.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["model"] == "tiny-wide" and s["expert_bytes"] == 3 * 64 * 256 * 2  # fp16 SwiGLU expert
    # a model the routing does not fit: one line naming the trace
    short = _write(tmp_path / "tiny-short", {**TINY_MIXTRAL, "num_hidden_layers": 2})
    assert_clean_error(run_main("replay", out, "--hw", "rtx3090", "--model", short), str(out),
                       "3 MoE layers but model 'tiny-short' has 2")


@pytest.mark.parametrize("cmd", [["trace", "synth", "--out", "{tmp}/t.npz"],
                                 ["trace", "import", "--from", "jsonl", "{tmp}/x.jsonl", "--out", "{tmp}/t.npz"],
                                 ["replay", "traces/deepseek-v2-lite-synth.npz", "--hw", "rtx3090"],
                                 ["calibrate", "--device", "cpu", "--base", "rtx3090", "--out", "{tmp}/p.yaml"],
                                 ["models", "show"]])
def test_cli_model_errors_are_one_line(tmp_path, cmd, three_forms):
    from conftest import REPO

    (tmp_path / "x.jsonl").write_text("")
    llama = _write(tmp_path / "llama", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    args = [a.replace("{tmp}", str(tmp_path)) for a in cmd]
    flag = [] if cmd[0] == "models" else ["--model"]
    assert_clean_error(run_main(*args, *flag, llama, cwd=REPO), str(llama), "LlamaForCausalLM")
    res = run_main(*args, *flag, "mixtral-8x8b", cwd=REPO)
    assert_clean_error(res, "unknown model 'mixtral-8x8b'")
    if flag:
        assert "--model: unknown model" in res.stderr
    assert not (tmp_path / "t.npz").exists() and not (tmp_path / "p.yaml").exists()


def test_model_spec_object_passes_through():
    spec = CATALOG["olmoe-1b-7b"]
    assert load_model(spec) is spec
    assert isinstance(load_model("olmoe-1b-7b"), ModelSpec)


# ---- properties ------------------------------------------------------------------------------------------


@st.composite
def qwen_configs(draw):
    heads = draw(st.integers(1, 8))
    layers = draw(st.integers(1, 12))
    return {"model_type": draw(st.sampled_from(["qwen2_moe", "qwen3_moe"])), "num_hidden_layers": layers,
            "decoder_sparse_step": draw(st.integers(1, 4)),
            "mlp_only_layers": draw(st.lists(st.integers(0, layers - 1), unique=True, max_size=layers)),
            "hidden_size": heads * draw(st.integers(1, 16)), "num_attention_heads": heads,
            "num_key_value_heads": heads, "intermediate_size": draw(st.integers(1, 256)),
            "moe_intermediate_size": draw(st.integers(1, 256)), "num_experts": draw(st.integers(2, 64)),
            "num_experts_per_tok": 2, "vocab_size": draw(st.integers(1, 1000)),
            "shared_expert_intermediate_size": draw(st.integers(0, 64))}


@settings(max_examples=60, deadline=None)
@given(qwen_configs())
def test_qwen_layers_partition_and_specs_round_trip_through_yaml(tmp_path_factory, cfg):
    layers = cfg["num_hidden_layers"]
    moe = [i for i in range(layers) if i not in cfg["mlp_only_layers"] and (i + 1) % cfg["decoder_sparse_step"] == 0]
    if not moe:
        with pytest.raises(InputError, match="no MoE layer"):
            spec_from_hf_config(cfg, "c.json", "q")
        return
    s = spec_from_hf_config(cfg, "c.json", "q")
    assert list(s.moe_layers) == moe and s.num_layers == layers
    assert (s.dense_d_ff > 0) == (len(moe) < layers)  # a dense width only where dense layers exist
    assert s.expert_params == 3 * cfg["hidden_size"] * cfg["moe_intermediate_size"]
    p = tmp_path_factory.mktemp("spec") / "q.yaml"
    p.write_text(yaml.safe_dump(s.to_dict()))
    assert load_model(p) == s  # what `models show config.json` prints loads back to the same spec


@settings(max_examples=100, deadline=None)
@given(param=st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True), ref=st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True),
       field=st.none() | st.from_regex(r"[a-z][a-z_.]{0,12}", fullmatch=True), text=st.text(max_size=40))
def test_errors_render_parameters_one_way_or_the_other(param, ref, field, text):
    from simmoe.cli.params import flag_of
    from simmoe.errors import param_ref

    e = InputError(None, field, f"{text} {param_ref(ref)}", param=param)
    py, cli = str(e), e.line(flag_of)
    assert "{param:" not in py and "{param:" not in cli and "\n" not in py and "\n" not in cli
    assert py.startswith(f"{param}.{field}: " if field else f"{param}: ") and py.rstrip().endswith(ref)
    assert cli.startswith(f"{flag_of(param)}: ") and cli.endswith(flag_of(ref))
