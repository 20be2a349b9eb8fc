"""Built-in model catalog: shapes from each model's published config.json."""

from __future__ import annotations

from simmoe.errors import InputError
from simmoe.models.spec import ModelSpec

_MODELS: list[ModelSpec] = [
    ModelSpec(
        name="mixtral-8x7b", num_layers=32, moe_layers=tuple(range(32)), num_experts=8, top_k=2,
        d_model=4096, expert_d_ff=14336, num_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32000,
        reference="mistralai/Mixtral-8x7B-v0.1 config.json",
    ),
    ModelSpec(
        name="deepseek-v2-lite", num_layers=27, moe_layers=tuple(range(1, 27)), num_experts=64, top_k=6,
        d_model=2048, expert_d_ff=1408, num_shared_experts=2, shared_d_ff=1408, dense_d_ff=10944,
        num_heads=16, num_kv_heads=16, head_dim=192, kv_lora_rank=512, qk_rope_head_dim=64,
        attn_params_override=2048 * 16 * 192 + 2048 * (512 + 64) + 512 * 16 * (128 + 128) + 16 * 128 * 2048,
        vocab_size=102400, reference="deepseek-ai/DeepSeek-V2-Lite config.json",
    ),
]

CATALOG: dict[str, ModelSpec] = {m.name: m for m in _MODELS}


def list_models() -> list[str]:
    return sorted(CATALOG)


def get_model(name: str, source: str = "model") -> ModelSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise InputError(source, None, f"unknown model {name!r}; catalog: {', '.join(list_models())}") from None
