"""GPU memory accounting: dense weights, expert cache, staging buffers, KV cache and activations share one
capacity that is never exceeded. A configuration that cannot fit is an input error, decided up front."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from simmoe.errors import InputError
from simmoe.hw.profile import HwProfile
from simmoe.models.spec import BYTES_PER_PARAM, ModelSpec

GIB = 2**30


@dataclass
class MemoryPlan:
    usable: int  # GPU memory minus the profile's reserve
    dense: int  # attention, norms, routers, shared experts, dense FFNs, embeddings
    kv_reserved: int  # KV cache for the batch at the longest request length
    activations: int  # workspace for the largest step
    staging: int  # expert staging buffers (no-cache policies)
    cache_slots: int  # expert cache capacity in experts
    expert_bytes: int

    @property
    def fixed(self) -> int:
        return self.dense + self.kv_reserved + self.activations + self.staging

    @property
    def cache_bytes(self) -> int:
        return self.cache_slots * self.expert_bytes

    @property
    def total(self) -> int:
        return self.fixed + self.cache_bytes

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["cache_bytes"] = self.cache_bytes
        d["total"] = self.total
        return d


@dataclass(frozen=True)
class DeviceShare:
    """One GPU's part of a model split across GPUs (sim/engine/parallel.py): the dense weights and the KV cache
    per token it holds (the whole model's when a single GPU runs it)."""

    dense: int
    kv_per_token: int


def activation_bytes(spec: ModelSpec, max_step_tokens: int) -> int:
    """Workspace of the largest step: hidden states, attention and FFN intermediates, logits (fp32)."""
    b = BYTES_PER_PARAM[spec.dtype]
    widest = max(spec.expert_d_ff * max(spec.top_k, 1), spec.dense_d_ff, spec.shared_d_ff * spec.num_shared_experts)
    per_token = (6 * spec.d_model + 3 * widest) * b + 4 * spec.vocab_size
    return int(max_step_tokens * per_token)


def fixed_plan(spec: ModelSpec, hw: HwProfile, *, batch: int, max_request_rows: int, max_step_tokens: int,
               staging_buffers: int, hw_name: str, share: DeviceShare | None = None) -> MemoryPlan:
    plan = MemoryPlan(
        usable=hw.usable_gpu_bytes,
        dense=spec.dense_bytes() if share is None else share.dense,
        kv_reserved=batch * max_request_rows * (spec.kv_bytes_per_token() if share is None else share.kv_per_token),
        activations=activation_bytes(spec, max_step_tokens),
        staging=staging_buffers * spec.expert_bytes(),
        cache_slots=0,
        expert_bytes=spec.expert_bytes(),
    )
    if plan.fixed > plan.usable:
        raise InputError(
            hw_name, "gpu.memory_gib",
            f"{spec.name} does not fit: dense weights {plan.dense / GIB:.2f} GiB + KV cache "
            f"{plan.kv_reserved / GIB:.2f} GiB (batch {batch}) + activations {plan.activations / GIB:.2f} GiB + "
            f"staging {plan.staging / GIB:.2f} GiB > {plan.usable / GIB:.2f} GiB usable",
        )
    return plan


def free_slots(plan: MemoryPlan) -> int:
    """How many experts fit in the memory the fixed part leaves free."""
    return max(0, (plan.usable - plan.fixed) // plan.expert_bytes)


def check_cache(plan: MemoryPlan, slots: int, source: str | None, field: str, param: str | None = None) -> None:
    have = free_slots(plan)
    if slots > have:
        raise InputError(
            source, field,
            f"cache of {slots} experts ({slots * plan.expert_bytes / GIB:.2f} GiB) does not fit: "
            f"{(plan.usable - plan.fixed) / GIB:.2f} GiB of GPU memory is left after dense weights, KV cache "
            f"and activations (room for {have} experts)",
            param=param,
        )
