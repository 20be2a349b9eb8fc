"""Built-in model catalog: shapes from each model's published config.json.

Every entry names the Hugging Face repository its config.json comes from in `reference`. The parameter
counts derived from these shapes (`total_params`, `active_params`) are checked against the published totals
in tests/test_models.py.

Conventions, where a config does not map one-to-one onto ModelSpec:
- Multi-head latent attention (DeepSeek): the projection parameter count goes in `attn_params_override`
  (see `_mla_attn_params`); `head_dim` is the q/k head width (qk_nope_head_dim + qk_rope_head_dim).
- Small tensors ModelSpec does not model are left out: q/k/v or o biases (Qwen1.5, gpt-oss, Phi-3.5),
  attention sinks (gpt-oss), q/k norms (Qwen3, OLMoE), LayerNorm biases (Phi-3.5), the final norm, the
  shared-expert gate (Qwen1.5). Each is under 0.1% of its model.
- "Active" parameters as published: DeepSeek and OpenAI (gpt-oss) leave the input embedding table out of
  their activated-parameter figures (a lookup, not a matmul); Mistral, Qwen, AI2, Microsoft and Databricks
  count it. `active_params` always counts it; the test table records which convention each figure uses.
"""

from __future__ import annotations

from simmoe.errors import InputError
from simmoe.models.spec import ModelSpec


def _mla_attn_params(
    d_model: int, heads: int, q_lora_rank: int, kv_lora_rank: int, qk_nope: int, qk_rope: int, v_head: int
) -> int:
    """Parameters of one multi-head latent attention block (DeepSeek-V2/V3), its two latent norms included.

    q: d_model -> q_lora_rank -> heads x (nope + rope), or d_model -> heads x (nope + rope) when q_lora_rank
    is 0; kv: d_model -> kv_lora_rank + rope (the rope key is shared by all heads), kv_lora_rank ->
    heads x (nope + v); o: heads x v -> d_model.
    """
    qk = heads * (qk_nope + qk_rope)
    if q_lora_rank:
        q = d_model * q_lora_rank + q_lora_rank + q_lora_rank * qk
    else:
        q = d_model * qk
    kv = d_model * (kv_lora_rank + qk_rope) + kv_lora_rank + kv_lora_rank * heads * (qk_nope + v_head)
    o = heads * v_head * d_model
    return q + kv + o


_MODELS: list[ModelSpec] = [
    # 46.7B total / 12.9B active (Mistral).
    ModelSpec(
        name="mixtral-8x7b", num_layers=32, moe_layers=tuple(range(32)), num_experts=8, top_k=2,
        d_model=4096, expert_d_ff=14336, num_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32000,
        reference="mistralai/Mixtral-8x7B-v0.1 config.json",
    ),
    # 141B total / 39B active (Mistral). The Instruct-v0.1 checkpoint has vocab_size 32768 (+6.3M params).
    ModelSpec(
        name="mixtral-8x22b", num_layers=56, moe_layers=tuple(range(56)), num_experts=8, top_k=2,
        d_model=6144, expert_d_ff=16384, num_heads=48, num_kv_heads=8, head_dim=128, vocab_size=32000,
        reference="mistralai/Mixtral-8x22B-v0.1 config.json",
    ),
    # 15.7B total / 2.4B activated (DeepSeek; activated excludes the input embedding).
    # first_k_dense_replace=1, q_lora_rank=null (plain q projection), kv_lora_rank 512, qk 128+64, v 128.
    ModelSpec(
        name="deepseek-v2-lite", num_layers=27, moe_layers=tuple(range(1, 27)), num_experts=64, top_k=6,
        d_model=2048, expert_d_ff=1408, num_shared_experts=2, shared_d_ff=1408, dense_d_ff=10944,
        num_heads=16, num_kv_heads=16, head_dim=192, kv_lora_rank=512, qk_rope_head_dim=64,
        attn_params_override=_mla_attn_params(2048, 16, 0, 512, 128, 64, 128),
        vocab_size=102400, reference="deepseek-ai/DeepSeek-V2-Lite config.json",
    ),
    # 671B total / 37B activated (DeepSeek: 36.6B incl. the 0.9B output head, excl. the input embedding).
    # The 61 main layers only: the released checkpoint's multi-token-prediction module (layer 61, 11.5B
    # unique params, num_nextn_predict_layers=1) is a speculative-decoding add-on, left out as in the 671B.
    # first_k_dense_replace=3. The released weights are fp8 (e4m3, one fp32 scale per 128x128 block, 0.02%
    # extra, ignored): routed experts are stored as fp8 (expert_dtype). Attention, dense FFNs and the shared
    # expert ship in fp8 too, but `dtype` also sets activation and KV-cache precision, which serving keeps in
    # bf16, so dtype stays bf16 and dense_bytes() overstates the resident dense weights (~15B params) ~2x.
    ModelSpec(
        name="deepseek-v3", num_layers=61, moe_layers=tuple(range(3, 61)), num_experts=256, top_k=8,
        d_model=7168, expert_d_ff=2048, num_shared_experts=1, shared_d_ff=2048, dense_d_ff=18432,
        num_heads=128, num_kv_heads=128, head_dim=192, kv_lora_rank=512, qk_rope_head_dim=64,
        attn_params_override=_mla_attn_params(7168, 128, 1536, 512, 128, 64, 128),
        vocab_size=129280, dtype="bf16", expert_dtype="fp8", reference="deepseek-ai/DeepSeek-V3 config.json",
    ),
    # 14.3B total / 2.7B active (Qwen). 60 routed experts of 1408, top-4 (norm_topk_prob false), plus one
    # shared expert of shared_expert_intermediate_size 5632 (= 4 x 1408, behind a sigmoid gate) in every
    # layer (decoder_sparse_step 1). q/k/v carry biases (not modelled).
    ModelSpec(
        name="qwen1.5-moe-a2.7b", num_layers=24, moe_layers=tuple(range(24)), num_experts=60, top_k=4,
        d_model=2048, expert_d_ff=1408, num_shared_experts=1, shared_d_ff=5632,
        num_heads=16, num_kv_heads=16, head_dim=128, vocab_size=151936,
        reference="Qwen/Qwen1.5-MoE-A2.7B config.json",
    ),
    # 30.5B total / 3.3B active (Qwen). decoder_sparse_step 1, mlp_only_layers [] -> all 48 layers MoE;
    # 32 q heads x head_dim 128 = 4096 (wider than d_model 2048), 4 kv heads.
    ModelSpec(
        name="qwen3-30b-a3b", num_layers=48, moe_layers=tuple(range(48)), num_experts=128, top_k=8,
        d_model=2048, expert_d_ff=768, num_heads=32, num_kv_heads=4, head_dim=128, vocab_size=151936,
        reference="Qwen/Qwen3-30B-A3B config.json",
    ),
    # 6.9B total / 1.3B active (AI2). All 16 layers MoE.
    ModelSpec(
        name="olmoe-1b-7b", num_layers=16, moe_layers=tuple(range(16)), num_experts=64, top_k=8,
        d_model=2048, expert_d_ff=1024, num_heads=16, num_kv_heads=16, head_dim=128, vocab_size=50304,
        reference="allenai/OLMoE-1B-7B-0924 config.json",
    ),
    # 21B (20.9B) total / 3.6B active (OpenAI model card; active excludes the input embedding).
    # Experts are MXFP4 with bf16 biases on gate_up and down (the biases are counted at the mxfp4 rate:
    # 17 KB per expert, 0.1%). SwiGLU with clamping (swiglu_limit 7.0). 64 q heads x head_dim 64, 8 kv heads.
    # Alternating sliding-window (128) / full attention layers: not modelled (only the KV cache would differ).
    ModelSpec(
        name="gpt-oss-20b", num_layers=24, moe_layers=tuple(range(24)), num_experts=32, top_k=4,
        d_model=2880, expert_d_ff=2880, activation="swiglu", num_heads=64, num_kv_heads=8, head_dim=64,
        vocab_size=201088, expert_dtype="mxfp4", expert_bias=True, reference="openai/gpt-oss-20b config.json",
    ),
    # 117B (116.8B) total / 5.1B active (OpenAI model card; active excludes the input embedding).
    ModelSpec(
        name="gpt-oss-120b", num_layers=36, moe_layers=tuple(range(36)), num_experts=128, top_k=4,
        d_model=2880, expert_d_ff=2880, activation="swiglu", num_heads=64, num_kv_heads=8, head_dim=64,
        vocab_size=201088, expert_dtype="mxfp4", expert_bias=True, reference="openai/gpt-oss-120b config.json",
    ),
    # 41.9B total / 6.6B active (Microsoft). attention_bias and lm_head_bias true, LayerNorm (not modelled).
    ModelSpec(
        name="phi-3.5-moe", num_layers=32, moe_layers=tuple(range(32)), num_experts=16, top_k=2,
        d_model=4096, expert_d_ff=6400, num_heads=32, num_kv_heads=8, head_dim=128, vocab_size=32064,
        reference="microsoft/Phi-3.5-MoE-instruct config.json",
    ),
    # ~7.4B total (Google). T5 encoder-decoder modelled as one stack: encoder blocks 0-11 then decoder
    # blocks 12-23; encoder_sparse_step = decoder_sparse_step = 2 makes every odd block MoE (12 MoE layers,
    # 6 per side), top-1 routing, ReLU experts 768 -> 3072 -> 768 in fp32 (18,874,368 bytes, as the
    # Pre-gated MoE paper states). Encoder blocks have self-attention (4 d^2), decoder blocks self- and
    # cross-attention (8 d^2): attn_params_override is their mean, 6 d^2, so the stack holds the real
    # attention parameter count. tie_word_embeddings is not in the config: the default (true) applies.
    ModelSpec(
        name="switch-base-128", num_layers=24, moe_layers=tuple(range(1, 24, 2)), num_experts=128, top_k=1,
        d_model=768, expert_d_ff=3072, activation="relu", dense_d_ff=3072,
        num_heads=12, num_kv_heads=12, head_dim=64, attn_params_override=6 * 768 * 768,
        vocab_size=32128, tie_embeddings=True, dtype="fp32", expert_dtype="fp32",
        reference="google/switch-base-128 config.json",
    ),
    # 132B total / 36B active (Databricks). ffn_config: ffn_hidden_size 10752, moe_num_experts 16,
    # moe_top_k 4, GLU (SiLU) experts; attn_config kv_n_heads 8; 48 heads x 128 = d_model 6144.
    ModelSpec(
        name="dbrx", num_layers=40, moe_layers=tuple(range(40)), num_experts=16, top_k=4,
        d_model=6144, expert_d_ff=10752, num_heads=48, num_kv_heads=8, head_dim=128, vocab_size=100352,
        reference="databricks/dbrx-base config.json",
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
