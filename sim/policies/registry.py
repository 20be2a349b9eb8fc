"""Policy registry: built-ins and third-party policies register the same way, through the entry-point group
`simmoe.policies`. An entry point may name a Policy subclass or a sequence of them. Duplicate names are
errors (never a silent override). `module:Class` is accepted wherever a policy name is.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from simmoe.errors import InputError
from simmoe.policies.base import Policy

ENTRY_POINT_GROUP = "simmoe.policies"


class DuplicatePolicyError(RuntimeError):
    pass


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, type[Policy]] = {}
        self._loaded = False

    def register(self, cls: type[Policy]) -> type[Policy]:
        """Register a policy class (usable as a decorator). A second class under the same name is an error,
        unless it is the same class defined again (same module and qualified name)."""
        if not (isinstance(cls, type) and issubclass(cls, Policy)) or not cls.name:
            raise TypeError(f"{cls!r} is not a named simmoe Policy subclass")
        self._load_entry_points()  # a user class may not take a built-in's name, whatever the order
        have = self._by_name.get(cls.name)
        # the same class defined again (a notebook cell re-run, a module reload) replaces the old one
        if have is not None and have is not cls and _qual(have) != _qual(cls):
            raise DuplicatePolicyError(
                f"policy name {cls.name!r} registered twice: {_qual(have)} and {_qual(cls)}"
            )
        self._by_name[cls.name] = cls
        return cls

    def unregister(self, name: str) -> None:
        self._by_name.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name != "builtin", e.name)):
            obj = ep.load()
            for cls in obj if isinstance(obj, Iterable) else [obj]:
                self.register(cls)

    def get(self, name: str, kind: str | None = None, source: str | None = None,
            param: str | None = None) -> type[Policy]:
        """The policy class `name` (or `module:Class`). An unknown name is an InputError naming `source`, or
        the API parameter `param` it was given as (default `policy`)."""
        if source is not None:
            return self._get(name, kind, source)
        try:
            return self._get(name, kind, "")
        except InputError as e:
            raise InputError(None, None, e.template, param=param or "policy") from None

    def _get(self, name: str, kind: str | None, source: str) -> type[Policy]:
        self._load_entry_points()
        if ":" in name:
            cls = _import_class(name, source)
            try:
                self.register(cls)
            except DuplicatePolicyError as e:
                raise InputError(source, None, str(e)) from None
        else:
            cls = self._by_name.get(name)
            if cls is None:
                names = sorted(n for n, c in self._by_name.items() if kind is None or c.kind == kind)
                raise InputError(source, None, f"unknown policy {name!r}; known: {', '.join(names)}")
        if kind is not None and cls.kind != kind and not (kind == "cache" and cls.kind == "system"):
            raise InputError(source, None, f"{name!r} is a {cls.kind} policy, not a {kind} policy")
        return cls

    def all(self) -> list[type[Policy]]:
        self._load_entry_points()
        return sorted(self._by_name.values(), key=lambda c: (c.kind, c.name))


def _qual(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(spec: str, source: str) -> type[Policy]:
    """`module:Class`. The working folder is searched after the installed packages, as `python -m` would
    (first) do: the `simmoe` console script otherwise sees only its own folder and PYTHONPATH."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise InputError(source, None, f"{spec!r}: expected module:Class")
    try:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            cwd = os.getcwd()
            if e.name != mod_name.partition(".")[0] or cwd in sys.path or "" in sys.path:
                raise
            sys.path.append(cwd)  # kept: the module may import its neighbours later
            module = importlib.import_module(mod_name)
    except SyntaxError as e:  # the user's module does not parse: where, not a traceback
        where = f"{Path(e.filename).name}:{e.lineno}" if e.filename else f"line {e.lineno}"
        raise InputError(source, None, f"cannot import policy {spec!r}: syntax error at {where} ({e.msg})") from None
    except ImportError as e:
        raise InputError(source, None, f"cannot import policy {spec!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - the module's own code failed while importing
        tb = traceback.extract_tb(e.__traceback__)[-1]
        raise InputError(source, None, f"cannot import policy {spec!r}: {type(e).__name__}: {e} (at "
                                       f"{Path(tb.filename).name}:{tb.lineno})") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise InputError(source, None, f"cannot import policy {spec!r} (module {mod_name!r} has no "
                                       f"{attr!r})") from None
    if not (isinstance(obj, type) and issubclass(obj, Policy) and obj.name):
        raise InputError(source, None, f"{spec!r} is not a named simmoe Policy subclass")
    return obj


REGISTRY = Registry()
register = REGISTRY.register
get_policy = REGISTRY.get
all_policies = REGISTRY.all
