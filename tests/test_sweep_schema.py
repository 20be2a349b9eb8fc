"""The sweep spec's JSON Schema and the models the loader checks specs with (sim/sweeps/schema.py): built
from ReplayConfig and the parameter names, so the CLI, sweep specs and the API agree."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from simmoe.engine.config import ReplayConfig
from simmoe.errors import InputError
from simmoe.sweeps import load_spec
from simmoe.sweeps.schema import spec_schema
from simmoe.sweeps.spec import config_fields, param_names
from tests.conftest import REPO, assert_clean_error, run_main

SCHEMA_FILE = REPO / "docs" / "sweep-spec.schema.json"
TINY = REPO / "traces" / "tinymoe-stdlib.npz"


def _validator():
    return jsonschema.Draft202012Validator(spec_schema())


def test_docs_schema_file_is_the_generated_one():
    """docs/sweep-spec.schema.json is `simmoe sweep --schema docs/sweep-spec.schema.json`: regenerate it when
    ReplayConfig or the parameters change."""
    assert json.loads(SCHEMA_FILE.read_text()) == spec_schema()


def test_cli_prints_the_schema():
    res = run_main("sweep", "--schema", "-")
    assert res.returncode == 0 and json.loads(res.stdout) == spec_schema()
    assert_clean_error(run_main("sweep", "s.yaml", "--schema", "-"), "--schema", "SPEC would have no effect")
    assert_clean_error(run_main("sweep", "s.yaml"), "give a sweep spec and --out")


def test_schema_is_valid_and_names_every_parameter():
    jsonschema.Draft202012Validator.check_schema(spec_schema())
    props = spec_schema()["$defs"]["SweepParameters"]["properties"]
    assert set(param_names()) <= set(props)
    for name in config_fields():  # type, default and description come from ReplayConfig
        field = ReplayConfig.model_fields[name]
        assert props[name].get("description") == field.description, name
        if field.default is not None:
            assert props[name]["default"] == field.default, name
    assert props["batch"]["minimum"] == 1 and props["engine"]["enum"] == ["fast", "simpy"]
    assert "timeline_steps" not in props  # not a sweep parameter


def test_the_bundled_and_readme_specs_validate():
    v = _validator()
    bench = yaml.safe_load((REPO / "docs" / "benchmarks" / "sweep200.yaml").read_text())
    assert list(v.iter_errors(bench)) == []
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n(# sweep\.yaml.*?)```", readme, re.S).group(1)
    assert list(v.iter_errors(yaml.safe_load(block))) == []


@pytest.mark.parametrize("spec,where", [
    ({"gird": {}}, "gird"),
    ({"base": {"bacth": 2}}, "bacth"),
    ({"base": {"batch": "4"}}, "'4'"),
    ({"base": {"batch": 0}}, "minimum"),
    ({"base": {"arrivals": "poison"}}, "poison"),
    ({"grid": {"batch": []}}, "non-empty"),
    ({"grid": {"batch": 2}}, "array"),
    ({"base": {"policy_option.slots_per_layer": 4}}, "policy_option.slots_per_layer"),
    ({"base": {"runtime_options.experts": "index"}}, "runtime_options.experts"),
    ({"cases": [{"hw": 3}]}, "3"),
])
def test_schema_rejects_what_the_loader_or_a_run_rejects(spec, where):
    errors = list(_validator().iter_errors(spec))
    assert errors and any(where in e.message for e in errors), [e.message for e in errors]


def test_schema_accepts_dotted_options_and_option_mappings():
    ok = {"trace": "t.npz", "base": {"hw": "rtx3090", "policy_options.slots_per_layer": 4,
                                     "runtime_options.experts.order": "index", "prefetch": None},
          "grid": {"policy_options": [{"slots_per_layer": 2}], "prefetch": [None, "oracle"],
                   "prefetch_options.lookahead": [1, 2], "rate": [1, 2.5]},
          "cases": [{"policy": "lfu", "batch": 2}]}
    assert list(_validator().iter_errors(ok)) == []


@pytest.mark.parametrize("body,needles", [
    ("base: {hw: rtx3090, batch: '4'}\n", ["base.batch", "must be an integer, got '4'"]),
    ("base: {hw: rtx3090, batch: 4.0}\n", ["base.batch", "must be an integer, got 4"]),
    ("base: {hw: rtx3090}\ngrid: {rate: [1, yes]}\n", ["grid.rate.1", "must be a number, got a boolean (true)"]),
    ("base: {hw: rtx3090, engine: turbo}\n", ["base.engine", "must be 'fast' or 'simpy', got 'turbo'"]),
    ("base: {hw: [rtx3090]}\n", ["base.hw", "must be a string"]),
    ("cases: [{hw: rtx3090, arrivals: 3}]\n", ["cases.0.arrivals"]),
])
def test_loader_checks_value_types_with_the_same_model(tmp_path, body, needles):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: {TINY}\n{body}")
    with pytest.raises(InputError) as e:
        load_spec(spec)
    assert all(n in e.value.line() for n in [str(spec), *needles]), e.value.line()


def test_loader_leaves_bounds_to_the_run(tmp_path):
    """batch 0 has the right type: it is recorded as that configuration's error, the others run."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: {TINY}\nbase: {{hw: rtx3090, max_requests: 1, rate: 2}}\ngrid: {{batch: [0, 1]}}\n")
    cfgs = load_spec(spec).configs
    assert [c.params["batch"] for c in cfgs] == [0, 1]
    assert cfgs[0].params["rate"] == 2 and type(cfgs[0].params["rate"]) is int  # as written: keys unchanged
