"""ModelSpec: the shapes of an MoE model that decide its memory footprint and its compute.

Only what the simulator needs: parameter counts and bytes by precision, FLOPs per token, KV bytes per token.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError, create_model

from simmoe.errors import InputError
from simmoe.validation import STRICT, AsTuple, input_error

# Bytes per parameter by precision name. mxfp4 = 4-bit values + one 8-bit scale per 32 values.
BYTES_PER_PARAM: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "mxfp4": 4.25 / 8,
    "int4": 0.5,
    "int3": 0.375,
    "int2": 0.25,
}

EXPERT_ID_MAX = 2**15 - 1  # traces store expert ids as int16

ACTIVATIONS = ("swiglu", "geglu", "relu", "gelu")


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of an MoE transformer.

    MoE layers are the transformer layers listed in `moe_layers` (indices into 0..num_layers-1); the others
    have a dense FFN of width `dense_d_ff`. Routed experts all have width `expert_d_ff`; `num_shared_experts`
    always-active experts of width `shared_d_ff` sit beside the router in every MoE layer.
    """

    name: str
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    d_model: int
    expert_d_ff: int
    activation: str = "swiglu"
    num_shared_experts: int = 0
    shared_d_ff: int = 0
    dense_d_ff: int = 0
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    # Multi-head latent attention (DeepSeek-V2/V3): KV cache holds kv_lora_rank + rope dim per token.
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    # Attention parameter count when the q/k/v/o formula does not fit (e.g. MLA); 0 = derive from heads.
    attn_params_override: int = 0
    vocab_size: int = 32000
    tie_embeddings: bool = False
    dtype: str = "bf16"  # precision of dense weights and activations
    expert_dtype: str = "bf16"  # precision experts are stored in
    # Bits per expert parameter including quantisation metadata (group scales/zeros); 0 = from expert_dtype.
    # Set by precision policies (e.g. `quantized`): 2-bit weights with fp16 scale+zero per 16 = 4.0 bits.
    expert_bits: float = 0.0
    # Bits per parameter of the layers' dense weights (attention, router, shared experts, dense FFNs) including
    # quantisation metadata; 0 = from dtype. Set by a runtime's weight format (e.g. HQQ 4-bit attention).
    # Embeddings and lm_head stay at dtype.
    dense_bits: float = 0.0
    expert_bias: bool = False
    reference: str = ""  # where the shapes come from (config.json of the published checkpoint)

    # ---- validation -------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        src = f"model {self.name!r}"
        for name in ("num_layers", "num_experts", "top_k", "d_model", "expert_d_ff", "num_heads", "head_dim",
                     "num_kv_heads", "vocab_size"):
            if getattr(self, name) <= 0:
                raise InputError(src, name, f"must be > 0, got {getattr(self, name)}")
        for name in ("num_shared_experts", "shared_d_ff", "dense_d_ff", "kv_lora_rank", "qk_rope_head_dim",
                     "attn_params_override"):
            if getattr(self, name) < 0:
                raise InputError(src, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("expert_bits", "dense_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v <= 64):
                raise InputError(src, name, f"must be a number in [0, 64], got {v!r}")
        if self.num_shared_experts and self.shared_d_ff <= 0:
            raise InputError(src, "shared_d_ff", "shared experts present but shared_d_ff is 0")
        if self.num_experts > EXPERT_ID_MAX + 1:
            raise InputError(src, "num_experts", f"at most {EXPERT_ID_MAX + 1} (traces hold expert ids as int16), "
                                                 f"got {self.num_experts}")
        if self.top_k > self.num_experts:
            raise InputError(src, "top_k", f"{self.top_k} exceeds num_experts {self.num_experts}")
        if self.activation not in ACTIVATIONS:
            raise InputError(src, "activation", f"unknown {self.activation!r}; expected one of {ACTIVATIONS}")
        for name in ("dtype", "expert_dtype"):
            if getattr(self, name) not in BYTES_PER_PARAM:
                raise InputError(src, name, f"unknown precision {getattr(self, name)!r}; expected one of "
                                 f"{sorted(BYTES_PER_PARAM)}")
        if not self.moe_layers:
            raise InputError(src, "moe_layers", "no MoE layers")
        if any(not 0 <= i < self.num_layers for i in self.moe_layers) or len(set(self.moe_layers)) != len(
            self.moe_layers
        ):
            raise InputError(src, "moe_layers", f"must be distinct indices in [0, {self.num_layers})")
        if len(self.moe_layers) < self.num_layers and self.dense_d_ff <= 0:
            raise InputError(src, "dense_d_ff", "dense layers present but dense_d_ff is 0")

    # ---- shapes -----------------------------------------------------------------------------------------
    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    def _ffn_params(self, d_ff: int) -> int:
        mats = 3 if self.activation in ("swiglu", "geglu") else 2
        return mats * self.d_model * d_ff

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (biases included when the model has them)."""
        p = self._ffn_params(self.expert_d_ff)
        if self.expert_bias:
            mats = 3 if self.activation in ("swiglu", "geglu") else 2
            p += (mats - 1) * self.expert_d_ff + self.d_model
        return p

    def expert_bytes(self, dtype: str | None = None) -> int:
        """Bytes of one routed expert's weights at `dtype` (default: the model's expert precision)."""
        if dtype is None and self.expert_bits:
            return int(round(self.expert_params * self.expert_bits / 8))
        return int(round(self.expert_params * BYTES_PER_PARAM[dtype or self.expert_dtype]))

    @property
    def attn_params(self) -> int:
        if self.attn_params_override:
            return self.attn_params_override
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return self.d_model * (q + 2 * kv) + q * self.d_model

    @property
    def router_params(self) -> int:
        return self.d_model * self.num_experts

    @property
    def shared_params(self) -> int:
        return self.num_shared_experts * self._ffn_params(self.shared_d_ff) if self.num_shared_experts else 0

    def layer_dense_params(self, layer: int) -> int:
        """Parameters that are always resident in a layer: attention, norms, router, shared experts, dense FFN."""
        p = self.attn_params + 2 * self.d_model
        if layer in self._moe_set:
            p += self.router_params + self.shared_params
        else:
            p += self._ffn_params(self.dense_d_ff)
        return p

    @property
    def _moe_set(self) -> frozenset[int]:
        return frozenset(self.moe_layers)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.d_model * (1 if self.tie_embeddings else 2)

    @property
    def dense_params(self) -> int:
        """All non-routed-expert parameters (the part kept on the GPU by offloading systems)."""
        return sum(self.layer_dense_params(i) for i in range(self.num_layers)) + self.embedding_params

    @property
    def total_params(self) -> int:
        return self.dense_params + self.num_moe_layers * self.num_experts * self.expert_params

    @property
    def active_params(self) -> int:
        return self.dense_params + self.num_moe_layers * self.top_k * self.expert_params

    def dense_bytes(self) -> int:
        if not self.dense_bits:
            return int(round(self.dense_params * BYTES_PER_PARAM[self.dtype]))
        layers = self.dense_params - self.embedding_params
        return int(round(layers * self.dense_bits / 8 + self.embedding_params * BYTES_PER_PARAM[self.dtype]))

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token over all layers."""
        if self.kv_lora_rank:
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.num_kv_heads * self.head_dim
        return int(per_layer * self.num_layers * BYTES_PER_PARAM[self.dtype])

    def expert_flops(self, tokens: int) -> float:
        """FLOPs of one expert applied to `tokens` tokens (2 per multiply-add)."""
        return 2.0 * self._ffn_params(self.expert_d_ff) * tokens

    # ---- (de)serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["moe_layers"] = list(self.moe_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model_spec", prefix: str = "model_spec.") -> ModelSpec:
        """A spec from its mapping (a trace's meta.model_spec, a spec .yaml), validated strictly (STRICT: unknown
        keys, wrong types, NaN are errors naming `source` and the `prefix`ed field)."""
        if not isinstance(d, dict):
            raise InputError(source, prefix.rstrip(".") or None, "must be a mapping (a JSON object) of ModelSpec fields")
        try:
            kw = dict(_spec_schema().model_validate(d))
        except ValidationError as e:
            raise input_error(e, source, lambda loc: prefix + loc) from None
        try:
            return cls(**kw)
        except InputError as e:  # the shape checks name the model: name the file that holds it too
            raise InputError(source, prefix + e.field if e.field else prefix.rstrip(".") or None, e.message) from None

    def truncated(self, num_moe_layers: int) -> ModelSpec:
        """The same model keeping only its first `num_moe_layers` MoE layers (a truncated capture), and only
        the transformer layers up to the last of them. Its name says so ("mixtral-8x7b (first 31 of 32 MoE
        layers)"), so that every output built on it (replay summary, trace info, sweep tables) does too."""
        if num_moe_layers < 1:
            raise InputError(f"model {self.name!r}", "moe_layers", "a trace needs at least one MoE layer")
        if num_moe_layers >= self.num_moe_layers:
            return self
        keep = self.moe_layers[:num_moe_layers]
        last = keep[-1]
        name = f"{self.name} (first {num_moe_layers} of {self.num_moe_layers} MoE layers)"
        return dataclasses.replace(self, name=name, num_layers=last + 1, moe_layers=keep)




@functools.cache
def _spec_schema() -> type[BaseModel]:
    """ModelSpec's fields as a strict pydantic model (ModelSpec stays a plain frozen dataclass: the engine
    reads its fields in tight loops)."""
    hints = typing.get_type_hints(ModelSpec)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(ModelSpec):
        t = Annotated[hints[f.name], AsTuple] if f.name == "moe_layers" else hints[f.name]
        fields[f.name] = (t, ... if f.default is dataclasses.MISSING else f.default)
    return create_model("ModelSpecFields", __config__=STRICT, **fields)
