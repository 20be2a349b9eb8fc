"""The policy registry: duplicate names are errors, a re-defined class (notebook re-run) replaces itself."""

from __future__ import annotations

import pytest

from simmoe.errors import InputError
from simmoe.policies.base import CachePolicy, PrefetchPolicy
from simmoe.policies.registry import DuplicatePolicyError, Registry


def _cache_cls(name: str, qualname: str = "Mine") -> type[CachePolicy]:
    cls = type(qualname, (CachePolicy,), {"name": name, "summary": "test"})
    cls.__qualname__ = qualname
    return cls


def test_second_class_under_a_name_is_rejected():
    reg = Registry()
    reg._loaded = True  # no entry points: a clean registry
    reg.register(_cache_cls("x", "A"))
    with pytest.raises(DuplicatePolicyError, match="registered twice"):
        reg.register(_cache_cls("x", "B"))


def test_same_class_defined_again_replaces_it():
    reg = Registry()
    reg._loaded = True
    old, new = _cache_cls("x"), _cache_cls("x")  # same module and qualname: a notebook cell run twice
    reg.register(old)
    reg.register(new)
    assert reg.get("x") is new


def test_builtin_names_are_protected_and_kinds_checked():
    reg = Registry()
    with pytest.raises(DuplicatePolicyError):
        reg.register(_cache_cls("lru", "NotLRU"))
    with pytest.raises(InputError, match="is a cache policy, not a prefetch policy"):
        reg.get("lru", kind="prefetch")
    with pytest.raises(InputError, match="unknown policy 'lruu'"):
        reg.get("lruu", kind="cache")
    assert issubclass(reg.get("oracle", kind="prefetch"), PrefetchPolicy)


def test_module_colon_class_is_imported_and_registered():
    reg = Registry()
    cls = reg.get("simmoe.policies.cache.lru:LRU", kind="cache")
    assert cls.name == "lru" and reg.get("lru") is cls
    with pytest.raises(InputError, match="cannot import"):
        reg.get("simmoe.nope:X")
    with pytest.raises(InputError, match="not a named simmoe Policy"):
        reg.get("simmoe.policies.base:Options")
