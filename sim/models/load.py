"""A model given the three ways a user names one: a catalog name (`mixtral-8x7b`), a Hugging Face
`config.json` (or the folder holding it), or a spec `.yaml` of ModelSpec fields (what `simmoe models show
NAME` prints; strict: unknown keys and wrong types are errors)."""

from __future__ import annotations

import os
from pathlib import Path

from simmoe.errors import InputError
from simmoe.models.catalog import CATALOG, get_model, list_models
from simmoe.models.hf_config import load_hf_config
from simmoe.models.spec import ModelSpec
from simmoe.yamlio import load_yaml

SPEC_SUFFIXES = (".yaml", ".yml")


def is_model_path(ref: str | Path) -> bool:
    """A path rather than a catalog name: a .json / .yaml file, something with a folder in it, or an existing
    file or folder."""
    s = str(ref)
    return (isinstance(ref, Path) or s.endswith((".json", *SPEC_SUFFIXES)) or "/" in s or os.sep in s
            or Path(s).exists())


def load_spec_file(path: str | Path) -> ModelSpec:
    """A spec .yaml: the ModelSpec fields (`name`, `num_layers`, `moe_layers`, ...)."""
    data = load_yaml(path, "model spec")
    return ModelSpec.from_dict(data, source=str(path), prefix="")


def load_model(ref: str | Path | ModelSpec, param: str | None = "model") -> ModelSpec:
    """The ModelSpec `ref` names: a ModelSpec (returned as is), a catalog name, a config.json (or its folder)
    or a spec .yaml. An unknown name is an InputError naming the API parameter `param` (the CLI: its flag)."""
    if isinstance(ref, ModelSpec):
        return ref
    if not isinstance(ref, (str, Path)):
        raise InputError(None, None, f"must be a catalog name, a config.json or spec .yaml path, or a ModelSpec, "
                                     f"got {type(ref).__name__}", param=param)
    if not is_model_path(ref):
        if ref in CATALOG:
            return get_model(str(ref))
        raise InputError(None, None, f"unknown model {str(ref)!r}: give a catalog name ({', '.join(list_models())}), "
                                     f"a Hugging Face config.json or a spec .yaml", param=param)
    p = Path(ref)
    if p.suffix in SPEC_SUFFIXES:
        if not p.is_file():
            raise InputError(str(ref), None, "model spec file not found")
        return load_spec_file(p)
    if p.is_dir() and not (p / "config.json").is_file():
        raise InputError(str(ref), None, "a folder without a config.json")
    return load_hf_config(p)
