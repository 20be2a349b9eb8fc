"""Per-architecture table for routing capture from Hugging Face transformers MoE models.

For each supported `config.model_type`: which submodule is the router (found by class name, so every MoE
layer's router is hooked wherever the model nests it), how to read (expert ids, gate weights) from that
router's forward output, the architecture's own rule for turning router logits into top-k ids + weights
(used by the tests to check the installed transformers still routes that way, and documented here), and how
to derive a `ModelSpec` from the config.

Transformers >= 5 routers are modules that return their own decision: `(logits, weights [T, K], ids [T, K])`
for the top-k routers, `(dispatch one-hot [B, T, E] with capacity overflow zeroed, max prob [B, T, 1],
logits)` for Switch. Capture records exactly that decision (what the model then computes with), so each
architecture's normalisation is respected by construction:

    mixtral       softmax over E, top-k, renormalise the k weights
    qwen2_moe     softmax over E, top-k, renormalise iff norm_topk_prob (shared expert not in the trace)
    qwen3_moe     as qwen2_moe, no shared expert
    olmoe         as qwen2_moe
    deepseek_v2   softmax over E; greedy top-k, or group_limited_greedy (keep topk_group of n_group groups by
                  their max score, then top-k); weights * routed_scaling_factor (shared experts not in trace)
    deepseek_v3   sigmoid scores; choice on scores + e_score_correction_bias, groups ranked by the sum of their
                  top-2, topk_group groups kept, top-k; weights = the sigmoid scores of the chosen, renormalised
                  iff norm_topk_prob, * routed_scaling_factor
    gpt_oss       top-k of the logits (router has a bias), softmax over the k chosen logits
    switch_transformers  top-1 of softmax, weight = that probability; a token past an expert's capacity is
                  dropped (-1 in the trace, NaN gate)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Routed = tuple[torch.Tensor, torch.Tensor]  # (ids [T, K] int64 with -1 = none, weights [T, K] float32)


# ---- reading a router's own decision ----------------------------------------------------------------------
def _read_topk(out: Any, module: torch.nn.Module) -> Routed:
    """(logits, weights, ids) routers."""
    if not (isinstance(out, tuple) and len(out) == 3):
        raise TypeError(f"{type(module).__name__} returned {type(out).__name__}, expected (logits, weights, ids)")
    _, w, ids = out
    k = ids.shape[-1]
    return ids.reshape(-1, k).long(), w.reshape(-1, k).float()


def _read_switch(out: Any, module: torch.nn.Module) -> Routed:
    """Switch: (dispatch one-hot with dropped tokens all-zero, max prob, logits)."""
    onehot, probs, _ = out
    onehot = onehot.reshape(-1, onehot.shape[-1])
    kept = onehot.any(dim=-1)
    ids = torch.where(kept, onehot.argmax(dim=-1), torch.full_like(kept, -1, dtype=torch.long))
    w = torch.where(kept, probs.reshape(-1).float(), torch.full(kept.shape, float("nan"), device=kept.device))
    return ids[:, None], w[:, None]


# ---- each architecture's rule from logits (documentation + test cross-check) -------------------------------
def rule_softmax_topk(logits: torch.Tensor, router: torch.nn.Module, norm: bool | None = None) -> Routed:
    p = torch.softmax(logits.float(), dim=-1)
    w, ids = torch.topk(p, router.top_k, dim=-1)
    if norm if norm is not None else router.norm_topk_prob:
        w = w / w.sum(dim=-1, keepdim=True)
    return ids, w


def rule_mixtral(logits: torch.Tensor, router: torch.nn.Module) -> Routed:
    return rule_softmax_topk(logits, router, norm=True)


def _group_mask(scores: torch.Tensor, n_group: int, topk_group: int, reduce: Callable) -> torch.Tensor:
    t, e = scores.shape
    grouped = scores.view(t, n_group, e // n_group)
    keep = torch.topk(reduce(grouped), topk_group, dim=-1).indices
    mask = torch.zeros(t, n_group, dtype=torch.bool, device=scores.device).scatter_(1, keep, True)
    return mask[:, :, None].expand(t, n_group, e // n_group).reshape(t, e)


def rule_deepseek_v2(logits: torch.Tensor, router: torch.nn.Module) -> Routed:
    s = torch.softmax(logits.float(), dim=-1)
    if router.topk_method == "group_limited_greedy":
        mask = _group_mask(s, router.num_group, router.topk_group, lambda g: g.max(dim=-1).values)
        s = s.masked_fill(~mask, 0.0)
    elif router.topk_method != "greedy":
        raise ValueError(f"unknown DeepSeek-V2 topk_method {router.topk_method!r}")
    w, ids = torch.topk(s, router.top_k, dim=-1)
    return ids, w * router.routed_scaling_factor


def rule_deepseek_v3(logits: torch.Tensor, router: torch.nn.Module) -> Routed:
    s = torch.sigmoid(logits.float())
    choice = s + router.e_score_correction_bias.float()
    mask = _group_mask(choice, router.num_group, router.topk_group,
                       lambda g: torch.topk(g, 2, dim=-1).values.sum(dim=-1))
    ids = torch.topk(choice.masked_fill(~mask, float("-inf")), router.top_k, dim=-1).indices
    w = s.gather(1, ids)
    if router.norm_topk_prob:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, w * router.routed_scaling_factor


def rule_gpt_oss(logits: torch.Tensor, router: torch.nn.Module) -> Routed:
    v, ids = torch.topk(logits.float(), router.top_k, dim=-1)
    return ids, torch.softmax(v, dim=-1)


def rule_switch(logits: torch.Tensor, router: torch.nn.Module) -> Routed:
    """Top-1 without the capacity limit (capacity depends on the other tokens of the sequence)."""
    w, ids = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    return ids[:, None], w[:, None]


# ---- ModelSpec fields from a config -----------------------------------------------------------------------
def _get(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _decoder_fields(config: Any) -> dict[str, Any]:
    heads = int(config.num_attention_heads)
    return {
        "num_layers": int(config.num_hidden_layers),
        "num_experts": int(_get(config, "num_local_experts", "num_experts", "n_routed_experts")),
        "top_k": int(config.num_experts_per_tok),
        "d_model": int(config.hidden_size),
        "expert_d_ff": int(_get(config, "moe_intermediate_size", "intermediate_size")),
        "num_heads": heads,
        "num_kv_heads": int(_get(config, "num_key_value_heads", default=heads)),
        "head_dim": int(_get(config, "head_dim", default=config.hidden_size // heads)),
        "vocab_size": int(config.vocab_size),
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }


def _spec_mixtral(config: Any) -> dict[str, Any]:
    return _decoder_fields(config)


def _spec_qwen2_moe(config: Any) -> dict[str, Any]:
    d = _decoder_fields(config)
    d.update(num_shared_experts=1, shared_d_ff=int(config.shared_expert_intermediate_size),
             dense_d_ff=int(config.intermediate_size))
    return d


def _spec_qwen3_moe(config: Any) -> dict[str, Any]:
    d = _decoder_fields(config)
    d["dense_d_ff"] = int(config.intermediate_size)
    return d


def _spec_deepseek(config: Any) -> dict[str, Any]:
    d = _decoder_fields(config)
    n_shared = int(getattr(config, "n_shared_experts", 0) or 0)
    d.update(num_shared_experts=n_shared, shared_d_ff=int(config.moe_intermediate_size) if n_shared else 0,
             dense_d_ff=int(config.intermediate_size), head_dim=int(config.qk_nope_head_dim + config.qk_rope_head_dim),
             num_kv_heads=d["num_heads"], kv_lora_rank=int(config.kv_lora_rank or 0),
             qk_rope_head_dim=int(config.qk_rope_head_dim))
    return d


def _spec_gpt_oss(config: Any) -> dict[str, Any]:
    d = _decoder_fields(config)
    d["expert_bias"] = True
    return d


def _spec_switch(config: Any) -> dict[str, Any]:
    act = str(getattr(config, "dense_act_fn", "relu"))
    return {
        # encoder blocks then decoder blocks, as the trace's layer columns are ordered
        "num_layers": int(config.num_layers) + int(config.num_decoder_layers),
        "num_experts": int(config.num_experts),
        "top_k": 1,
        "d_model": int(config.d_model),
        "expert_d_ff": int(config.d_ff),
        "activation": "gelu" if "gelu" in act else "relu",
        "dense_d_ff": int(config.d_ff),
        "num_heads": int(config.num_heads),
        "num_kv_heads": int(config.num_heads),
        "head_dim": int(config.d_kv),
        "vocab_size": int(config.vocab_size),
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", True)),
    }


@dataclass(frozen=True)
class Arch:
    """How to capture one transformers MoE architecture."""

    model_type: str
    router_class: str  # class name of the router module (one per MoE layer)
    read: Callable[[Any, torch.nn.Module], Routed]  # router forward output -> (ids, weights)
    rule: Callable[[torch.Tensor, torch.nn.Module], Routed]  # logits -> (ids, weights), the documented rule
    spec_fields: Callable[[Any], dict[str, Any]]
    encoder_decoder: bool = False
    logits_index: int = 0  # position of the logits in the router's output tuple


ARCHS: dict[str, Arch] = {a.model_type: a for a in (
    Arch("mixtral", "MixtralTopKRouter", _read_topk, rule_mixtral, _spec_mixtral),
    Arch("qwen2_moe", "Qwen2MoeTopKRouter", _read_topk, rule_softmax_topk, _spec_qwen2_moe),
    Arch("qwen3_moe", "Qwen3MoeTopKRouter", _read_topk, rule_softmax_topk, _spec_qwen3_moe),
    Arch("olmoe", "OlmoeTopKRouter", _read_topk, rule_softmax_topk, _spec_mixtral),
    Arch("deepseek_v2", "DeepseekV2TopkRouter", _read_topk, rule_deepseek_v2, _spec_deepseek),
    Arch("deepseek_v3", "DeepseekV3TopkRouter", _read_topk, rule_deepseek_v3, _spec_deepseek),
    Arch("gpt_oss", "GptOssTopKRouter", _read_topk, rule_gpt_oss, _spec_gpt_oss),
    Arch("switch_transformers", "SwitchTransformersTop1Router", _read_switch, rule_switch, _spec_switch,
         encoder_decoder=True, logits_index=2),
)}

# Config attributes that mark a model as MoE even when its class is not in ARCHS (for the error message).
MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size",
                   "num_experts_per_tok")


@dataclass
class RouterSite:
    """One MoE layer's router: trace column `column`, transformer layer `layer` (encoder blocks first for
    encoder-decoder models), in stack `stack` ("decoder" or "encoder")."""

    name: str
    module: torch.nn.Module
    column: int
    layer: int
    stack: str


_LAYER_RE = re.compile(r"(?:^|\.)(?:(encoder|decoder)\.)?(?:.*?\.)?(?:layers|block)\.(\d+)\.")


def find_routers(model: torch.nn.Module, arch: Arch, num_encoder_layers: int = 0) -> list[RouterSite]:
    """Every router module of class `arch.router_class`, in layer order (encoder before decoder)."""
    sites: list[tuple[int, str, str, torch.nn.Module]] = []
    for name, mod in model.named_modules():
        if type(mod).__name__ != arch.router_class:
            continue
        m = _LAYER_RE.search(name)
        if m is None:
            raise ValueError(f"cannot tell the layer index of router {name!r}")
        stack = m.group(1) or "decoder"
        layer = int(m.group(2)) + (num_encoder_layers if arch.encoder_decoder and stack == "decoder" else 0)
        sites.append((layer, stack, name, mod))
    sites.sort(key=lambda s: s[0])
    return [RouterSite(name, mod, col, layer, stack) for col, (layer, stack, name, mod) in enumerate(sites)]
