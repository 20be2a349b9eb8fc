"""Policy files (`--policy FILE.yaml`): the PolicyFile pydantic model, through the real CLI."""

from __future__ import annotations

import pytest

from simmoe.errors import InputError
from simmoe.policies.config import FILE_KEYS, KINDS, PolicyFile, load_policy_file
from tests.conftest import REPO, assert_clean_error, run_main

TINY = str(REPO / "traces" / "tinymoe-stdlib.npz")


def test_model_keys_are_the_file_keys():
    assert tuple(PolicyFile.model_fields) == tuple(x for k in KINDS for x in (k, f"{k}_options"))
    assert set(PolicyFile.model_fields) == set(FILE_KEYS)


@pytest.mark.parametrize("text,needles", [
    ("cache: lru\ncahce: lfu\n", ["cahce", "unknown key; valid keys: cache, prefetch"]),
    ("prefetch: oracle\n", ["cache", "missing (a cache policy or a named system)"]),
    ("cache: 3\n", ["cache", "must be a policy name, got 3"]),
    ("cache: lru\nprefetch: [oracle]\n", ["prefetch", "must be a policy name"]),
    ("cache: lru\ncache_options: 4\n", ["cache_options", "must be a mapping of option: value"]),
    ("cache: lru\nprefetch_options: {lookahead: 2}\n",
     ["prefetch_options", "given without a prefetch policy (they would have no effect)"]),
    ("- lru\n", ["must be a mapping of kind: policy name"]),
    ("cache: lru\ncache: lfu\n", ["line 2", "duplicate key 'cache'"]),
    ("cache: lru\ncache_options: {slots_per_layer: 2, slots_per_layer: 4}\n", ["duplicate key 'slots_per_layer'"]),
    ("cache: lru\ncache_options: {1: 2}\n", ["cache_options.1", "must be a string"]),
])
def test_bad_policy_files_are_one_line_errors(tmp_path, text, needles):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as e:
        load_policy_file(f)
    assert str(f) in e.value.line() and all(n in e.value.line() for n in needles), e.value.line()
    assert_clean_error(run_main("replay", TINY, "--hw", "rtx3090", "--policy", f), str(f), *needles)


def test_empty_options_and_null_kinds_are_absent(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("cache: lru\ncache_options:\nprefetch: null\nplacement: cpu\n")
    assert load_policy_file(f) == {"cache": "lru", "cache_options": {}, "prefetch": None, "placement": "cpu"}
    res = run_main("replay", TINY, "--hw", "rtx3090", "--max-requests", "1", "--policy", f, "--json", "-")
    assert res.returncode == 0, res.stderr


def test_a_policy_file_runs_as_its_flags_do(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("cache: lfu\ncache_options: {slots_per_layer: 3}\nprefetch: oracle\n"
                 "prefetch_options: {lookahead: 2}\n")
    import json

    a = run_main("replay", TINY, "--hw", "rtx3090", "--max-requests", "2", "--policy", f, "--json", "-")
    b = run_main("replay", TINY, "--hw", "rtx3090", "--max-requests", "2", "--policy", "lfu", "--opt",
                 "slots_per_layer=3", "--prefetch", "oracle", "--prefetch-opt", "lookahead=2", "--json", "-")
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert (ja["hits"], ja["misses"], ja["policy"]) == (jb["hits"], jb["misses"], jb["policy"])


@pytest.mark.parametrize("flags,needle", [
    (["--prefetch", "oracle", "--prefetch-opt", "lookahead=0"], "policy oracle: lookahead: must be >= 1, got 0"),
    (["--prefetch", "next-layer", "--prefetch-opt", "accuracy=1.5"], "policy next-layer: accuracy: must be <= 1"),
    (["--prefetch", "next-layer", "--prefetch-opt", "distance=0"], "policy next-layer: distance: must be >= 1"),
    (["--prefetch", "successor", "--prefetch-opt", "width=0"], "policy successor: width: must be >= 1"),
    (["--placement", "n-cpu-moe", "--placement-opt", "n=-1"], "policy n-cpu-moe: n: must be >= 0, got -1"),
    (["--routing", "adaptive-k", "--routing-opt", "top_p=0"], "policy adaptive-k: top_p: must be > 0, got 0"),
    (["--routing", "adaptive-k", "--routing-opt", "min_k=0"], "policy adaptive-k: min_k: must be >= 1, got 0"),
    (["--precision", "quantized", "--precision-opt", "bits=7"], "policy quantized: bits: must be one of 1, 2, 3"),
    (["--precision", "quantized", "--precision-opt", "bits=yes"], "bits: must be an integer, got a boolean"),
    (["--precision", "quantized", "--precision-opt", "group_size=0"], "group_size: must be >= 1, got 0"),
])
def test_option_bounds_are_field_constraints(flags, needle):
    """Bounds of policy options are pydantic Field constraints (one line naming the option), not hand checks."""
    assert_clean_error(run_main("replay", TINY, "--hw", "rtx3090", *flags), needle)
