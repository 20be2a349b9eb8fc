"""No expert cache: every activated expert is copied to a staging buffer, then computed (Accelerate-style)."""

from __future__ import annotations

from simmoe.policies.base import CachePolicy, Options


class OnDemand(CachePolicy):
    name = "ondemand"
    summary = "no cache: copy every activated expert into a staging buffer, then compute it"
    Options = Options
    fixed_capacity = "none"

    def find(self, key: int, t: int) -> bool:
        return False

    def insert(self, key: int, t: int) -> None:
        raise RuntimeError("ondemand has no cache")

    def to_evict(self, t: int) -> int:
        raise RuntimeError("ondemand has no cache")

    def evict(self, key: int) -> None:
        raise RuntimeError("ondemand has no cache")

    def __contains__(self, key: int) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def keys(self) -> list[int]:
        return []
