"""Reading the YAML files users write (hardware profiles, policy files, sweep specs), with one set of rules.

`load_yaml` gives the parsed document or an InputError naming the file (and the line, for syntax errors):
missing, a folder, not UTF-8, not valid YAML (PyYAML's two-line messages are folded into one), a key given
twice in one mapping (PyYAML silently keeps the last), nesting deep enough to exhaust Python's recursion,
or an alias that contains itself (`a: &x [*x]`, which no schema can walk).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml

from simmoe.errors import InputError

logger = logging.getLogger(__name__)


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # construct_mapping reports unhashable keys as a YAML error
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
# YAML 1.1 (PyYAML) reads 1e3 and 25e-1 as strings; YAML 1.2, JSON and every user read them as numbers. With
# strict schemas a string is not a number, so resolve them as floats (1.0e3 and .inf already are).
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def scalar(text: str) -> Any:
    """A command-line value (`--opt key=VALUE`) read as a YAML scalar, by the same rules as the files; the text
    itself when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):
        return text


def parse_yaml(text: str, source: str | Path) -> Any:
    """The document in `text` (see the module docstring for what is an error)."""
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise InputError(source, where, f"not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise InputError(source, None, "not usable YAML (nested too deeply)") from None
    try:
        cyclic = _cyclic(data, set())
    except RecursionError:
        raise InputError(source, None, "not usable YAML (nested too deeply)") from None
    if cyclic:
        raise InputError(source, None, "not usable YAML (an alias contains itself)")
    return data


def load_yaml(path: str | Path, what: str = "file") -> Any:
    """Reads and parses a user's YAML file; `what` names it in errors ("profile file not found")."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(p, None, f"{what} not found") from None
    except IsADirectoryError:
        raise InputError(p, None, f"is a folder, not a {what}") from None
    except UnicodeDecodeError:
        raise InputError(p, None, "not valid YAML (not UTF-8 text)") from None
    except OSError as e:
        raise InputError(p, None, f"cannot read ({e.strerror or e})") from None
    logger.debug(f"reading {what} {p}")
    return parse_yaml(text, p)


def _cyclic(obj: Any, open_ids: set[int]) -> bool:
    """Whether a container holds itself (only aliases make that; a shared but acyclic alias is fine)."""
    if not isinstance(obj, (dict, list)):
        return False
    if id(obj) in open_ids:
        return True
    open_ids.add(id(obj))
    try:
        items = obj.values() if isinstance(obj, dict) else obj
        return any(_cyclic(v, open_ids) for v in items)
    finally:
        open_ids.discard(id(obj))
