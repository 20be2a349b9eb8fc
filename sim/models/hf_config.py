"""A ModelSpec from a Hugging Face `config.json`, for the MoE families whose config keys say every shape simmoe
needs (no torch, no transformers: the file is read as JSON).

Each family maps its own keys, and a key the file leaves out takes the default of that family's transformers
config class (transformers 5.x `configuration_*.py`; e.g. `MixtralConfig(num_local_experts=8)`), since that
is what transformers would build from the same file. Which transformer layers are MoE follows the modelling
code's rule:

    mixtral, phimoe, olmoe, gpt_oss, dbrx   every layer
    qwen2_moe, qwen3_moe                    layer i unless i in mlp_only_layers, and (i + 1) % decoder_sparse_step == 0
    deepseek_v2, deepseek_v3                i >= first_k_dense_replace (and i % moe_layer_freq == 0, DeepSeek's
                                            own code; 1 in every released config)
    switch_transformers                     encoder blocks then decoder blocks; block i of a stack is MoE when
                                            i % step == 1 (or step == 1), step = layers // num_sparse_*_layers

The catalog's conventions (sim/models/catalog.py) apply: multi-head latent attention's projections go in
`attn_params_override`, small tensors (biases, q/k norms, attention sinks) are left out, `dtype` is the
checkpoint's `torch_dtype` (bf16 when absent) and `quantization_config` with fp8 or mxfp4 sets the experts'
precision. Anything else (a dense model, a multimodal wrapper, an MoE family not listed) is an error naming
the file and its `architectures` / `model_type`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simmoe.errors import InputError
from simmoe.models.catalog import _mla_attn_params
from simmoe.models.spec import ModelSpec

# transformers dtype names -> simmoe precisions
DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# quantization_config.quant_method -> the experts' precision (fp8: DeepSeek-V3's e4m3 blocks; mxfp4: gpt-oss)
QUANT = {"fp8": "fp8", "mxfp4": "mxfp4"}
# gated MLPs (every family here but Switch): the activation of the gate
GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "gelu_new": "geglu", "gelu_pytorch_tanh": "geglu"}


class Config:
    """The config mapping with typed reads: a missing key takes transformers' default, a wrong type is an
    InputError naming the file and the key."""

    def __init__(self, data: dict[str, Any], source: str, prefix: str = "") -> None:
        self.d, self.source, self.prefix = data, source, prefix

    def _err(self, key: str, what: str, v: Any) -> InputError:
        return InputError(self.source, self.prefix + key, f"must be {what}, got {v!r}")

    def raw(self, key: str, default: Any = None) -> Any:
        v = self.d.get(key)
        return default if v is None else v

    def int(self, key: str, default: int | None = None, *aliases: str, minimum: int = 1) -> int:
        for k in (key, *aliases):
            if self.d.get(k) is not None:
                key = k
                break
        v = self.raw(key, default)
        if v is None:
            raise InputError(self.source, self.prefix + key, "missing (no default in transformers either)")
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._err(key, "an integer", v)
        if v < minimum:
            raise self._err(key, f"an integer >= {minimum}", v)
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            raise self._err(key, "true or false", v)
        return v

    def ints(self, key: str) -> list[int]:
        v = self.raw(key, [])
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise self._err(key, "a list of integers", v)
        return v

    def sub(self, key: str) -> Config:
        v = self.raw(key, {})
        if not isinstance(v, dict):
            raise self._err(key, "a mapping", v)
        return Config(v, self.source, f"{self.prefix}{key}.")


def _gated(c: Config, key: str = "hidden_act", default: str = "silu") -> str:
    act = c.raw(key, default)
    if act not in GATED:
        raise InputError(c.source, key, f"activation {act!r} is not one simmoe models; known: {', '.join(GATED)}")
    return GATED[act]


def _attention(c: Config, d_model: int, heads_default: int, kv_default: int | None) -> dict[str, Any]:
    heads = c.int("num_attention_heads", heads_default)
    kv = c.int("num_key_value_heads", kv_default if kv_default is not None else heads)
    head_dim = c.raw("head_dim")  # None in the file or the class: hidden_size // heads, as the modelling does
    return {"num_heads": heads, "num_kv_heads": kv,
            "head_dim": c.int("head_dim") if head_dim is not None else d_model // heads}


def _decoder(c: Config, d: dict[str, Any]) -> dict[str, Any]:
    """hidden_size, layers, attention, vocabulary, tying: the keys every decoder family here shares, with
    that family's transformers defaults in `d`."""
    d_model = c.int("hidden_size", d["hidden_size"])
    return {"d_model": d_model, "num_layers": c.int("num_hidden_layers", d["num_hidden_layers"]),
            **_attention(c, d_model, d["num_attention_heads"], d.get("num_key_value_heads")),
            "vocab_size": c.int("vocab_size", d["vocab_size"]),
            "tie_embeddings": c.bool("tie_word_embeddings", False)}


def _all_moe(spec: dict[str, Any]) -> dict[str, Any]:
    spec["moe_layers"] = tuple(range(spec["num_layers"]))
    return spec


def _mixtral(c: Config) -> dict[str, Any]:
    # MixtralConfig defaults (= Mixtral-8x7B); num_experts is an alias of num_local_experts
    s = _decoder(c, {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "vocab_size": 32000})
    return _all_moe({**s, "num_experts": c.int("num_local_experts", 8, "num_experts"),
                     "top_k": c.int("num_experts_per_tok", 2), "expert_d_ff": c.int("intermediate_size", 14336),
                     "activation": _gated(c)})


def _phimoe(c: Config) -> dict[str, Any]:
    # PhimoeConfig defaults (= Phi-3.5-MoE)
    s = _decoder(c, {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "vocab_size": 32064})
    return _all_moe({**s, "num_experts": c.int("num_local_experts", 16), "top_k": c.int("num_experts_per_tok", 2),
                     "expert_d_ff": c.int("intermediate_size", 6400), "activation": _gated(c)})


def _olmoe(c: Config) -> dict[str, Any]:
    # OlmoeConfig defaults; the experts' width is intermediate_size (there is no dense FFN)
    s = _decoder(c, {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 16,
                     "num_key_value_heads": None, "vocab_size": 50304})
    return _all_moe({**s, "num_experts": c.int("num_experts", 64, "num_local_experts"),
                     "top_k": c.int("num_experts_per_tok", 8), "expert_d_ff": c.int("intermediate_size", 2048),
                     "activation": _gated(c)})


def _gpt_oss(c: Config) -> dict[str, Any]:
    # GptOssConfig defaults (= gpt-oss-120b); the original release also spells top-k experts_per_token
    s = _decoder(c, {"hidden_size": 2880, "num_hidden_layers": 36, "num_attention_heads": 64,
                     "num_key_value_heads": 8, "vocab_size": 201088})
    if c.raw("head_dim") is None:
        s["head_dim"] = 64
    return _all_moe({**s, "num_experts": c.int("num_local_experts", 128, "num_experts"),
                     "top_k": c.int("num_experts_per_tok", 4, "experts_per_token"),
                     "expert_d_ff": c.int("intermediate_size", 2880), "activation": "swiglu", "expert_bias": True})


def _qwen_moe_layers(c: Config, num_layers: int) -> tuple[int, ...]:
    step = c.int("decoder_sparse_step", 1)
    dense = set(c.ints("mlp_only_layers"))
    return tuple(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)


def _qwen2_moe(c: Config) -> dict[str, Any]:
    # Qwen2MoeConfig defaults (= Qwen1.5-MoE-A2.7B): one shared expert of shared_expert_intermediate_size
    s = _decoder(c, {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "num_key_value_heads": 16, "vocab_size": 151936})
    shared = c.int("shared_expert_intermediate_size", 5632, minimum=0)
    return {**s, "moe_layers": _qwen_moe_layers(c, s["num_layers"]), "num_experts": c.int("num_experts", 60),
            "top_k": c.int("num_experts_per_tok", 4), "expert_d_ff": c.int("moe_intermediate_size", 1408),
            "num_shared_experts": 1 if shared else 0, "shared_d_ff": shared,
            "dense_d_ff": c.int("intermediate_size", 5632), "activation": _gated(c)}


def _qwen3_moe(c: Config) -> dict[str, Any]:
    # Qwen3MoeConfig defaults; num_local_experts is its attribute name, num_experts the file's
    s = _decoder(c, {"hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
                     "num_key_value_heads": 4, "vocab_size": 151936})
    return {**s, "moe_layers": _qwen_moe_layers(c, s["num_layers"]),
            "num_experts": c.int("num_experts", 128, "num_local_experts"), "top_k": c.int("num_experts_per_tok", 8),
            "expert_d_ff": c.int("moe_intermediate_size", 768), "dense_d_ff": c.int("intermediate_size", 6144),
            "activation": _gated(c)}


def _deepseek(defaults: dict[str, Any]) -> Callable[[Config], dict[str, Any]]:
    def spec(c: Config) -> dict[str, Any]:
        d = defaults
        d_model = c.int("hidden_size", d["hidden_size"])
        layers = c.int("num_hidden_layers", d["num_hidden_layers"])
        heads = c.int("num_attention_heads", d["num_attention_heads"])
        first = c.int("first_k_dense_replace", d["first_k_dense_replace"], minimum=0)
        freq = c.int("moe_layer_freq", 1)
        nope, rope = c.int("qk_nope_head_dim", 128), c.int("qk_rope_head_dim", 64)
        kv_rank = c.int("kv_lora_rank", 512)
        # q_lora_rank null (V2-Lite): a plain q projection; absent: the class default 1536
        q_rank = c.int("q_lora_rank") if c.raw("q_lora_rank") is not None else 0 if "q_lora_rank" in c.d else 1536
        shared = c.int("n_shared_experts", d["n_shared_experts"], minimum=0)
        expert = c.int("moe_intermediate_size", d["moe_intermediate_size"])
        return {"d_model": d_model, "num_layers": layers,
                "moe_layers": tuple(i for i in range(layers) if i >= first and i % freq == 0),
                "num_experts": c.int("n_routed_experts", d["n_routed_experts"]),
                "top_k": c.int("num_experts_per_tok", d["num_experts_per_tok"]), "expert_d_ff": expert,
                "num_shared_experts": shared, "shared_d_ff": expert if shared else 0,
                "dense_d_ff": c.int("intermediate_size", d["intermediate_size"]), "activation": _gated(c),
                "num_heads": heads, "num_kv_heads": heads, "head_dim": nope + rope, "kv_lora_rank": kv_rank,
                "qk_rope_head_dim": rope,
                "attn_params_override": _mla_attn_params(d_model, heads, q_rank, kv_rank, nope, rope,
                                                         c.int("v_head_dim", 128)),
                "vocab_size": c.int("vocab_size", d["vocab_size"]),
                "tie_embeddings": c.bool("tie_word_embeddings", False)}
    return spec


# DeepseekV2Config / DeepseekV3Config defaults (V2's num_experts_per_tok defaults to None: the file must say)
_deepseek_v2 = _deepseek({"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
                          "first_k_dense_replace": 0, "n_shared_experts": 2, "moe_intermediate_size": 1407,
                          "n_routed_experts": 64, "num_experts_per_tok": None, "intermediate_size": 11008,
                          "vocab_size": 102400})
_deepseek_v3 = _deepseek({"hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128,
                          "first_k_dense_replace": 3, "n_shared_experts": 1, "moe_intermediate_size": 2048,
                          "n_routed_experts": 256, "num_experts_per_tok": 8, "intermediate_size": 18432,
                          "vocab_size": 129280})


def _dbrx(c: Config) -> dict[str, Any]:
    # DbrxConfig (and its DbrxAttentionConfig / DbrxFFNConfig) defaults; GLU experts with ffn_act_fn
    attn, ffn = c.sub("attn_config"), c.sub("ffn_config")
    d_model, heads = c.int("d_model", 2048), c.int("n_heads", 16)
    act = ffn.raw("ffn_act_fn", {"name": "silu"})
    name = act.get("name", "silu") if isinstance(act, dict) else act
    if name not in GATED:
        raise InputError(c.source, "ffn_config.ffn_act_fn", f"activation {name!r} is not one simmoe models")
    layers = c.int("n_layers", 24)
    return {"d_model": d_model, "num_layers": layers, "moe_layers": tuple(range(layers)),
            "num_experts": ffn.int("moe_num_experts", 4), "top_k": ffn.int("moe_top_k", 1),
            "expert_d_ff": ffn.int("ffn_hidden_size", 3584), "activation": GATED[name], "num_heads": heads,
            "num_kv_heads": attn.int("kv_n_heads", 1), "head_dim": d_model // heads,
            "vocab_size": c.int("vocab_size", 32000), "tie_embeddings": c.bool("tie_word_embeddings", False)}


def _switch(c: Config) -> dict[str, Any]:
    # SwitchTransformersConfig defaults (= switch-base-8); encoder and decoder as one stack, as capture does
    enc = c.int("num_layers", 12)
    dec = c.int("num_decoder_layers", enc)
    d_model, heads, d_kv = c.int("d_model", 768), c.int("num_heads", 12), c.int("d_kv", 64)

    def sparse(n: int, key: str) -> list[int]:
        # the config's __init__ derives the step (a stored encoder_sparse_step is overwritten)
        k = c.int(key, 3, minimum=0)
        step = n // k if k > 0 else n
        return [i for i in range(n) if step > 0 and (i % step == 1 or step == 1)]

    act = c.raw("dense_act_fn", "relu")
    if act not in ("relu", "gelu", "gelu_new"):
        raise InputError(c.source, "dense_act_fn", f"activation {act!r} is not one simmoe models")
    # encoder blocks have self-attention (4 projections), decoder blocks self- and cross-attention (8): the
    # override is their mean, so that the stack holds the real attention parameter count
    attn = (4 * enc + 8 * dec) * d_model * heads * d_kv
    if attn % (enc + dec):
        raise InputError(c.source, "num_decoder_layers", "encoder and decoder attention do not average to a "
                                                         "whole parameter count per layer")
    return {"d_model": d_model, "num_layers": enc + dec,
            "moe_layers": tuple(sparse(enc, "num_sparse_encoder_layers")
                                 + [enc + i for i in sparse(dec, "num_sparse_decoder_layers")]),
            "num_experts": c.int("num_experts", 8), "top_k": 1, "expert_d_ff": c.int("d_ff", 2048),
            "activation": "gelu" if "gelu" in act else "relu", "dense_d_ff": c.int("d_ff", 2048),
            "num_heads": heads, "num_kv_heads": heads, "head_dim": d_kv, "attn_params_override": attn // (enc + dec),
            "vocab_size": c.int("vocab_size", 32128), "tie_embeddings": c.bool("tie_word_embeddings", True)}


FAMILIES: dict[str, Callable[[Config], dict[str, Any]]] = {
    "mixtral": _mixtral, "phimoe": _phimoe, "olmoe": _olmoe, "gpt_oss": _gpt_oss, "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe, "deepseek_v2": _deepseek_v2, "deepseek_v3": _deepseek_v3, "dbrx": _dbrx,
    "switch_transformers": _switch,
}


def spec_from_hf_config(data: Any, source: str, name: str) -> ModelSpec:
    """The ModelSpec of a parsed config.json (`source` names the file in errors)."""
    if not isinstance(data, dict):
        raise InputError(source, None, "a config.json must hold a JSON object")
    model_type = data.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        arch = data.get("architectures")
        raise InputError(source, "model_type", f"architectures {arch!r}, model_type {model_type!r}: not an MoE "
                         f"family simmoe maps from config.json (known model_type: {', '.join(FAMILIES)})")
    c = Config(data, source)
    fields = family(c)
    dtype = data.get("torch_dtype", data.get("dtype"))
    if dtype is not None and dtype not in DTYPES:
        raise InputError(source, "torch_dtype", f"unknown {dtype!r}; expected one of {', '.join(DTYPES)}")
    fields["dtype"] = DTYPES[dtype] if dtype is not None else "bf16"
    quant = c.sub("quantization_config").raw("quant_method")
    if quant is not None:
        if quant not in QUANT:
            raise InputError(source, "quantization_config.quant_method", f"{quant!r} is not a format simmoe maps "
                             f"(known: {', '.join(QUANT)}); write a spec .yaml with expert_dtype or expert_bits")
        fields["expert_dtype"] = QUANT[quant]
    else:
        fields["expert_dtype"] = fields["dtype"]
    if not fields["moe_layers"]:
        raise InputError(source, "model_type", f"{model_type}: this configuration has no MoE layer")
    if len(fields["moe_layers"]) == fields["num_layers"]:
        fields["dense_d_ff"] = 0  # a width no layer has
    try:
        return ModelSpec(name=name, reference=f"{source} (model_type {model_type})", **fields)
    except InputError as e:  # a shape check: name the file
        raise InputError(source, e.field, e.message) from None


def load_hf_config(path: str | Path, name: str | None = None) -> ModelSpec:
    """The ModelSpec of a config.json file (or of the folder holding one). Its name: `name`, else the folder
    holding a `config.json`, else the file's stem."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    src = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(src, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(src, None, f"cannot read ({e})") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise InputError(src, None, f"not valid JSON ({e})") from None
    if name is None:
        name = p.resolve().parent.name if p.name == "config.json" else p.stem
    return spec_from_hf_config(data, src, name)


def _no_constant(x: str) -> float:
    raise ValueError(f"{x} is not a number JSON allows")
