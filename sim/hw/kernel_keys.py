"""Keys of measured kernel tables: which expert shape and precision a table row was timed for.

Shared by the cost model (which looks tables up) and calibration (which writes them), so that the engine
never imports the calibration package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from simmoe.models.spec import ModelSpec

# Precisions torch computes with natively. Experts stored in a narrower format (int4, mxfp4, fp8 ...) are
# timed at bf16: a dequantising kernel is at least as slow as the bf16 GEMM of the same shape.
TORCH_DTYPES = ("bf16", "fp16", "fp32")


def shape_key(d_model: int, d_ff: int, activation: str, dtype: str) -> str:
    """Kernel-table key of an expert shape: 'd_model x d_ff x activation : dtype' (e.g. '4096x14336xswiglu:bf16')."""
    return f"{int(d_model)}x{int(d_ff)}x{activation}:{dtype}"


def compute_dtype(spec: ModelSpec) -> str:
    """The precision calibration times a model's experts at (its expert dtype when torch has it, else bf16)."""
    return spec.expert_dtype if spec.expert_dtype in TORCH_DTYPES else "bf16"


def model_shape_key(spec: ModelSpec, dtype: str | None = None) -> str:
    """Kernel-table key of a model's routed expert at `dtype` (default: the dtype calibration measures at)."""
    return shape_key(spec.d_model, spec.expert_d_ff, spec.activation, dtype or compute_dtype(spec))


# ---- blocks of the dense part (attention, router, lm_head, an eager expert's gather/scatter) ----------------
def attention_key(spec: ModelSpec, dtype: str | None = None) -> str | None:
    """Key of a model's attention block: 'attn:d_model x heads x kv_heads x head_dim : dtype'; None for
    multi-head latent attention (its tables are not measured: the roofline estimates it)."""
    if spec.kv_lora_rank:
        return None
    return f"attn:{spec.d_model}x{spec.num_heads}x{spec.num_kv_heads}x{spec.head_dim}:{dtype or dense_dtype(spec)}"


def router_key(spec: ModelSpec, dtype: str | None = None) -> str:
    """Key of a MoE layer's router block: 'router:d_model x experts x top_k : dtype'."""
    return f"router:{spec.d_model}x{spec.num_experts}x{spec.top_k}:{dtype or dense_dtype(spec)}"


def head_key(spec: ModelSpec, dtype: str | None = None) -> str:
    """Key of the step's head block (final norm, lm_head, argmax): 'head:d_model x vocab : dtype'."""
    return f"head:{spec.d_model}x{spec.vocab_size}:{dtype or dense_dtype(spec)}"


def gather_key(spec: ModelSpec, dtype: str | None = None) -> str:
    """Key of an eager expert call's gather, gate weighting and scatter-add: 'gather:d_model : dtype'."""
    return f"gather:{spec.d_model}:{dtype or dense_dtype(spec)}"


def dense_dtype(spec: ModelSpec) -> str:
    """The precision calibration times a model's dense blocks at (its dtype when torch has it, else bf16)."""
    return spec.dtype if spec.dtype in TORCH_DTYPES else "bf16"
