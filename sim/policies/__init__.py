"""Pluggable policies: cache, prefetch, placement, and named systems composed of them."""

from simmoe.policies.base import (
    Access,
    CacheContext,
    CacheOptions,
    CachePolicy,
    Options,
    PlacementPolicy,
    Policy,
    PolicySet,
    PrefetchPolicy,
    StepView,
    SystemPolicy,
)
from simmoe.policies.registry import REGISTRY, all_policies, get_policy, register

__all__ = [
    "REGISTRY", "Access", "CacheContext", "CacheOptions", "CachePolicy", "Options", "PlacementPolicy",
    "Policy", "PolicySet", "PrefetchPolicy", "StepView", "SystemPolicy", "all_policies", "get_policy",
    "register",
]
