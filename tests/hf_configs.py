"""config.json contents of the catalog's checkpoints (the shape keys of each published file, plus a few keys
simmoe ignores), written here so that no test needs the network. Missing keys take transformers' defaults."""

from __future__ import annotations

PUBLISHED_CONFIGS: dict[str, dict] = {
    "mixtral-8x7b": {  # mistralai/Mixtral-8x7B-v0.1
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32,
        "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32000},
    "mixtral-8x22b": {  # mistralai/Mixtral-8x22B-v0.1
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu", "hidden_size": 6144,
        "intermediate_size": 16384, "num_attention_heads": 48, "num_experts_per_tok": 2, "num_hidden_layers": 56,
        "num_key_value_heads": 8, "num_local_experts": 8, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 32000},
    "deepseek-v2-lite": {  # deepseek-ai/DeepSeek-V2-Lite
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "first_k_dense_replace": 1,
        "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 10944, "kv_lora_rank": 512,
        "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64,
        "n_shared_experts": 2, "norm_topk_prob": False, "num_attention_heads": 16, "num_experts_per_tok": 6,
        "num_hidden_layers": 27, "num_key_value_heads": 16, "q_lora_rank": None, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "tie_word_embeddings": False,
        "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 102400},
    "deepseek-v3": {  # deepseek-ai/DeepSeek-V3
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "first_k_dense_replace": 3,
        "hidden_act": "silu", "hidden_size": 7168, "intermediate_size": 18432, "kv_lora_rank": 512,
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
        "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [128, 128]},
        "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "tie_word_embeddings": False, "topk_group": 4,
        "topk_method": "noaux_tc", "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 129280},
    "qwen1.5-moe-a2.7b": {  # Qwen/Qwen1.5-MoE-A2.7B
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "decoder_sparse_step": 1,
        "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
        "norm_topk_prob": False, "num_attention_heads": 16, "num_experts": 60, "num_experts_per_tok": 4,
        "num_hidden_layers": 24, "num_key_value_heads": 16, "shared_expert_intermediate_size": 5632,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 151936},
    "qwen3-30b-a3b": {  # Qwen/Qwen3-30B-A3B
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "decoder_sparse_step": 1,
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 6144, "mlp_only_layers": [],
        "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128,
        "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "vocab_size": 151936},
    "olmoe-1b-7b": {  # allenai/OLMoE-1B-7B-0924
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_act": "silu", "hidden_size": 2048,
        "intermediate_size": 1024, "num_attention_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
        "num_hidden_layers": 16, "num_key_value_heads": 16, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 50304},
    "gpt-oss-20b": {  # openai/gpt-oss-20b
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "experts_per_token": 4, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880, "num_attention_heads": 64,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8, "num_local_experts": 32,
        "quantization_config": {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                           "model.embed_tokens", "lm_head"], "quant_method": "mxfp4"},
        "sliding_window": 128, "swiglu_limit": 7.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 201088},
    "gpt-oss-120b": {  # openai/gpt-oss-120b
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "experts_per_token": 4, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 2880, "intermediate_size": 2880, "num_attention_heads": 64,
        "num_experts_per_tok": 4, "num_hidden_layers": 36, "num_key_value_heads": 8, "num_local_experts": 128,
        "quantization_config": {"quant_method": "mxfp4"}, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 201088},
    "phi-3.5-moe": {  # microsoft/Phi-3.5-MoE-instruct
        "architectures": ["PhiMoEForCausalLM"], "model_type": "phimoe", "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 6400, "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "num_local_experts": 16, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "vocab_size": 32064},
    "switch-base-128": {  # google/switch-base-128 (fp32 weights)
        "architectures": ["SwitchTransformersForConditionalGeneration"], "model_type": "switch_transformers",
        "d_ff": 3072, "d_kv": 64, "d_model": 768, "dense_act_fn": "relu", "num_decoder_layers": 12,
        "num_experts": 128, "num_heads": 12, "num_layers": 12, "num_sparse_decoder_layers": 6,
        "num_sparse_encoder_layers": 6, "torch_dtype": "float32", "vocab_size": 32128},
    "dbrx": {  # databricks/dbrx-base
        "architectures": ["DbrxForCausalLM"], "model_type": "dbrx",
        "attn_config": {"clip_qkv": 8, "kv_n_heads": 8, "rope_theta": 500000},
        "d_model": 6144, "ffn_config": {"ffn_hidden_size": 10752, "moe_jitter_eps": 0.01, "moe_loss_weight": 0.05,
                                        "moe_num_experts": 16, "moe_top_k": 4},
        "n_heads": 48, "n_layers": 40, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 100352},
}
