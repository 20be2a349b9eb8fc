"""What every command shares (sim/cli/common.py): `--json OUT` / `--json -`, `-v` / `-q` before or after the
subcommand, progress only through simmoe.progress, warnings once as one line, help texts without argparse's
%-escapes."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.cli import common
from simmoe.cli.main import build_parser
from simmoe.errors import SimmoeWarning
from tests.conftest import REPO, assert_clean_error, run_main

TINY = str(REPO / "traces" / "tinymoe-stdlib.npz")  # 8 experts, 4 MoE layers, 128 requests
SMALL = ["--hw", "rtx3090", "--max-requests", "2"]


def _parsers():
    p = build_parser()
    yield p
    yield from common.subparsers_of(p)


# ---- help -------------------------------------------------------------------------------------------------
def test_every_help_renders_without_percent_escapes():
    progs = []
    for p in _parsers():
        text = p.format_help()
        assert "%%" not in text, (p.prog, [ln for ln in text.splitlines() if "%%" in ln])
        progs.append(p.prog)
    # the walk reaches the nested subcommands too
    assert {"simmoe replay", "simmoe trace info", "simmoe trace synth", "simmoe hw show", "simmoe sweep"} <= set(progs)


def test_trace_info_help_says_75_percent_once():
    res = run_main("trace", "info", "--help")
    assert res.returncode == 0 and "12.5/25/50/75% of each" in " ".join(res.stdout.split())


# ---- --json OUT | - ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["hw"], ["hw", "list"], ["runtimes"], ["models"], ["models", "list"], ["policies"]])
def test_list_json_dash_prints_only_json(args):
    res = run_main(*args, "--json", "-")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)  # nothing else on stdout
    assert isinstance(rows, list) and rows and "name" in rows[0]


@pytest.mark.parametrize("args", [["hw"], ["runtimes", "list"], ["models"]])
def test_list_json_out_writes_a_file_and_prints_the_table(args, tmp_path):
    out = tmp_path / "rows.json"
    res = run_main(*args, "--json", out)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())[0]["name"] in res.stdout  # the table is still printed
    assert "----" in res.stdout


@pytest.mark.parametrize("args,key", [(["hw", "show", "rtx3090"], "gpu"), (["runtimes", "show", "vllm"], "host"),
                                      (["models", "show", "mixtral-8x7b"], "num_experts")])
def test_show_json_file_and_stdout_agree(args, key, tmp_path):
    out = tmp_path / "x.json"
    to_file, to_stdout = run_main(*args, "--json", out), run_main(*args, "--json", "-")
    assert to_file.returncode == to_stdout.returncode == 0
    assert json.loads(out.read_text()) == json.loads(to_stdout.stdout)
    assert key in json.loads(to_stdout.stdout)
    assert not to_file.stdout.lstrip().startswith("{")  # YAML on stdout beside a --json file


def test_json_before_the_subcommand_still_counts():
    res = run_main("hw", "--json", "-", "list")
    assert res.returncode == 0 and json.loads(res.stdout)


def test_bare_json_flag_is_an_error_naming_both_forms():
    res = run_main("models", "--json")
    assert_clean_error(res, "--json OUT writes a file, --json - prints to stdout")


def test_replay_and_trace_info_json_to_stdout(tmp_path):
    res = run_main("replay", TINY, *SMALL, "--json", "-")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model"] == "tinymoe-stdlib"  # the summary text is not mixed in
    res = run_main("trace", "info", TINY, "--json", "-")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model"] == "tinymoe-stdlib"
    out = tmp_path / "s.json"
    res = run_main("trace", "info", TINY, "--json", out)
    assert "LRU" in res.stdout and json.loads(out.read_text())["rows"] == json.loads(
        run_main("trace", "info", TINY, "--json", "-").stdout)["rows"]


def test_every_json_flag_takes_a_destination():
    """One convention: every --json in the CLI takes OUT (no store_true left)."""
    seen = 0
    for p in _parsers():
        for a in p._actions:
            if "--json" in a.option_strings:
                seen += 1
                assert a.nargs is None and a.metavar == "OUT", p.prog
                assert "'-': to stdout" in a.help, p.prog
    assert seen >= 10


# ---- -v / -q ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,verbose,quiet", [
    (["-v", "hw"], 1, False), (["hw", "-v"], 1, False), (["-vv", "hw", "list"], 2, False),
    (["-v", "hw", "list", "-v"], 2, False), (["-q", "hw"], 0, True), (["hw", "show", "t4", "--quiet"], 0, True),
    (["replay", "T", "--hw", "x", "-q"], 0, True), (["hw"], 0, False)])
def test_verbosity_before_or_after_the_subcommand(argv, verbose, quiet):
    args = common.merge_verbosity(build_parser().parse_args(argv))
    assert (args.verbose, args.quiet) == (verbose, quiet)
    assert not hasattr(args, "sub_verbose") and not hasattr(args, "sub_quiet")


def test_quiet_with_verbose_is_an_error():
    assert_clean_error(run_main("-q", "hw", "-v"), "-q", "cannot be combined with -v")


@pytest.mark.parametrize("argv", [["calibrate", "--no-progress", "--out", "x.yaml"],
                                  ["validate", "--trace", "t", "--hw", "h", "--no-progress"]])
def test_no_progress_is_gone(argv):
    res = run_main(*argv)
    assert_clean_error(res, "unrecognized arguments: --no-progress")


def test_verbose_logs_what_replay_does_and_quiet_hides_the_summary():
    res = run_main("-v", "replay", TINY, *SMALL)
    assert res.returncode == 0
    assert "simmoe: replay tinymoe-stdlib on rtx3090 (generic, lru): 2 requests" in res.stderr
    assert "debug" not in res.stderr
    assert "debug: memory plan" in run_main("replay", TINY, *SMALL, "-vv").stderr
    quiet = run_main("replay", TINY, *SMALL, "-q")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert run_main("replay", TINY, *SMALL).stderr == ""  # default: nothing but warnings


def test_logging_setup_is_replaced_not_stacked(capsys):
    common.setup_logging(1, False)
    common.setup_logging(1, False)
    logging.getLogger("simmoe.test").info("once")
    assert capsys.readouterr().err == "simmoe: once\n"
    common.setup_logging(0, True)
    logging.getLogger("simmoe.test").warning("hidden")
    assert capsys.readouterr().err == ""


# ---- progress ---------------------------------------------------------------------------------------------
def test_progress_bar_is_drawn_only_on_a_terminal(monkeypatch):
    import io

    from simmoe.progress import bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert bar(range(3)).disable  # not a terminal (a log, CI): tqdm turns itself off
    monkeypatch.setattr("sys.stderr", Tty())
    assert not bar(range(3)).disable  # a terminal: drawn
    assert bar(range(3), enabled=False).disable  # --quiet: never


def test_no_module_decides_on_a_tty_or_imports_tqdm_itself():
    """One helper decides (simmoe.progress): no other module calls isatty or makes its own tqdm bar."""
    offenders = []
    for folder in ("sim", "calibrate"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "progress.py":
                continue
            text = path.read_text()
            if "isatty(" in text or "from tqdm" in text or "import tqdm" in text:
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


# ---- warnings ---------------------------------------------------------------------------------------------
WARNED = [
    ([TINY, "--hw", "rtx3090", "--max-requests", "1", "--batch", "4"], "batch 4 but the run has 1 request"),
    ([TINY, *SMALL, "--opt", "slots_per_layer=9"],
     "policy lru: slots_per_layer 9 is more than the model's 8 experts per MoE layer"),
    ([TINY, *SMALL, "--opt", "cache_gb=50"], "policy lru: cache_gb 50 is more than the 0.01 GiB all 32 experts"),
    ([TINY, *SMALL, "--policy", "resident", "--prefetch", "oracle"],
     "prefetch oracle has no effect: every expert is resident"),
    ([TINY, *SMALL, "--policy", "ondemand", "--prefetch", "oracle"],
     "prefetch oracle has no effect: the cache has no slots (ondemand keeps no experts)"),
    ([TINY, *SMALL, "--placement", "cpu", "--prefetch", "oracle"],
     "prefetch oracle has no effect: the cache has no slots (the placement computes misses on the CPU)"),
]


@pytest.mark.parametrize("args,needle", WARNED, ids=["batch", "slots", "cache_gb", "resident", "ondemand", "cpu"])
def test_warning_fires_once_as_one_line_and_quiet_silences_it(args, needle):
    res = run_main("replay", *args)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert [ln for ln in lines if needle in ln] == [ln for ln in lines if ln.startswith("simmoe: warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"simmoe: warning: {needle}"), res.stderr
    assert "Traceback" not in res.stderr and "SimmoeWarning" not in res.stderr
    assert res.stdout.startswith("simmoe replay")  # the run went on
    for quiet in (["-q", "replay", *args], ["replay", *args, "--quiet"]):
        silenced = run_main(*quiet)
        assert silenced.returncode == 0 and silenced.stderr == "", silenced.stderr


def test_prefill_heavy_run_warns(tmp_path):
    res = run_main("trace", "synth", "--model", "olmoe-1b-7b", "--requests", "2", "--prompt-tokens", "40",
                   "--decode-tokens", "2", "--out", tmp_path / "p.npz")
    assert res.returncode == 0, res.stderr
    res = run_main("replay", tmp_path / "p.npz", "--hw", "rtx3090", "--json", tmp_path / "r.json")
    assert res.returncode == 0 and res.stderr.splitlines() == [
        "simmoe: warning: 95% of the run's 84 trace rows are prefill (4 decode tokens): TPOT and throughput "
        "(decode tokens/s) rest on few tokens"], res.stderr
    assert run_main("-q", "replay", tmp_path / "p.npz", "--hw", "rtx3090").stderr == ""


def test_ordinary_runs_do_not_warn():
    for args in ([TINY, *SMALL], [TINY, *SMALL, "--batch", "2", "--opt", "slots_per_layer=8"],
                 [TINY, *SMALL, "--prefetch", "oracle", "--opt", "slots_per_layer=2"]):
        res = run_main("replay", *args)
        assert res.returncode == 0 and res.stderr == "", (args, res.stderr)


def test_library_warns_through_python_warnings():
    """A notebook gets the same checks as ordinary Python warnings (category SimmoeWarning)."""
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.scenario import prepare
    from simmoe.hw.profile import load_profile
    from simmoe.trace.format import read_trace

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(read_trace(TINY), load_profile("rtx3090"), None, ReplayConfig(batch=3, max_requests=2))
    assert [str(w.message)[:36] for w in caught if w.category is SimmoeWarning] == [
        "batch 3 but the run has 2 requests: "]


def test_sweep_shows_worker_warnings_once(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"trace: {TINY}\nbase: {{hw: rtx3090, max_requests: 1}}\ngrid:\n  batch: [2, 3]\n"
                    "  policy_options.slots_per_layer: [2, 9]\n")
    res = run_main("sweep", spec, "--out", tmp_path / "r.csv", "--workers", "1")
    assert res.returncode == 0, res.stderr
    warned = [ln for ln in res.stderr.splitlines() if ln.startswith("simmoe: warning:")]
    # two batch messages (2 and 3) and one slots message, each once although 2 configurations raise it
    assert len(warned) == 3 and sum("slots_per_layer 9" in ln for ln in warned) == 1, res.stderr
    import pandas as pd

    assert "_warnings" not in pd.read_csv(tmp_path / "r.csv").columns
    res = run_main("sweep", spec, "--out", tmp_path / "q.csv", "--workers", "1", "-q")
    assert res.returncode == 0 and res.stderr == "" and res.stdout == ""
    res = run_main("-v", "sweep", spec, "--out", tmp_path / "q.csv", "--workers", "1")  # all done: resumed
    assert "simmoe: sweep: 0 of 4 configurations to run (4 done earlier)" in res.stderr, res.stderr


def test_warnings_are_one_line_once_and_quiet_hides_every_kind(capsys):
    with common.warnings_shown(quiet=False):
        warnings.warn("two\nlines", SimmoeWarning, stacklevel=1)
        warnings.warn("two\nlines", SimmoeWarning, stacklevel=1)
        warnings.warn("from a library", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "simmoe: warning: two lines\nsimmoe: UserWarning: from a library\n"
    with common.warnings_shown(quiet=True):
        warnings.warn("ours", SimmoeWarning, stacklevel=1)
        warnings.warn("a library's", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == ""


# ---- one YAML loader --------------------------------------------------------------------------------------
def test_every_yaml_input_rejects_a_duplicate_key(tmp_path):
    hw = tmp_path / "hw.yaml"
    hw.write_text((REPO / "hwprofiles" / "rtx3090.yaml").read_text() + "\nname: again\n")
    rt = tmp_path / "rt.yaml"
    rt.write_text("name: mine\nsource: estimate\nname: again\n")
    pol = tmp_path / "p.yaml"
    pol.write_text("cache: lru\ncache: lfu\n")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"trace: {TINY}\nbase: {{hw: rtx3090}}\nbase: {{hw: t4}}\n")
    for args, path in ((["replay", TINY, "--hw", hw], hw), (["replay", TINY, "--hw", "rtx3090", "--runtime", rt], rt),
                       (["replay", TINY, "--hw", "rtx3090", "--policy", pol], pol),
                       (["sweep", spec, "--out", tmp_path / "r.csv"], spec), (["hw", "show", hw], hw),
                       (["runtimes", "show", rt], rt)):
        assert_clean_error(run_main(*args), str(path), "duplicate key")


def test_yaml_is_parsed_in_one_module():
    """sim/yamlio.py is the one loader (duplicate keys, YAML 1.2 floats, cycles): nothing else parses YAML."""
    offenders = [str(p.relative_to(REPO)) for folder in ("sim", "calibrate") for p in (REPO / folder).rglob("*.py")
                 if p.name != "yamlio.py" and any(s in p.read_text() for s in ("yaml.load(", "safe_load(",
                                                                                 "yaml.full_load(", "yaml.Loader"))]
    assert offenders == []


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 6), requests=st.integers(1, 6), slots=st.integers(0, 12))
def test_batch_and_cache_warnings_fire_exactly_when_they_should(batch, requests, slots):
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.scenario import prepare
    from simmoe.hw.profile import load_profile
    from simmoe.policies.base import PolicySet

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare(_tiny(), load_profile("rtx3090"), PolicySet("lru", {"slots_per_layer": slots}),
                ReplayConfig(batch=batch, max_requests=requests))
    said = [str(w.message) for w in caught if w.category is SimmoeWarning]
    assert any(m.startswith(f"batch {batch} but") for m in said) == (batch > requests)
    assert any("slots_per_layer" in m for m in said) == (slots > 8)  # tinymoe: 8 experts per MoE layer
    assert len(said) == (batch > requests) + (slots > 8)


_TRACE = []


def _tiny():
    if not _TRACE:
        from simmoe.trace.format import read_trace

        _TRACE.append(read_trace(TINY))
    return _TRACE[0]
