"""ReplayConfig checks timeline_steps itself (text or pair), with the one-line messages the CLI prints (naming
--timeline-steps) and Python shows (naming timeline_steps)."""

from __future__ import annotations

import pytest

from simmoe.cli.params import flag_of
from simmoe.engine.config import ReplayConfig
from simmoe.errors import InputError
from tests.conftest import REPO, assert_clean_error, run_main


@pytest.mark.parametrize("given,want", [("0:50", (0, 50)), ("3:7", (3, 7)), (":4", (0, 4)), ("2:", (2, 10**12)),
                                        ((1, 5), (1, 5)), ([2, 9], (2, 9))])
def test_window_text_or_pair(given, want):
    assert ReplayConfig(timeline_steps=given).timeline_steps == want


@pytest.mark.parametrize("given,message", [
    ("5", "--timeline-steps: expected START:STOP step numbers, got '5'"),
    ("a:b", "--timeline-steps: expected START:STOP step numbers, got 'a:b'"),
    ("-5:2", "--timeline-steps: must be >= 0, got -5"),
    ("3:3", "--timeline-steps: must have START < STOP in START:STOP, got 3:3"),
    ((4, 1), "--timeline-steps: must have START < STOP in START:STOP, got 4:1"),
    ((True, 3), "--timeline-steps: must be an integer, got a boolean (true)"),
])
def test_bad_windows_are_one_line(given, message):

    with pytest.raises(InputError) as e:
        ReplayConfig(timeline_steps=given)
    assert e.value.line(flag_of) == message  # as the CLI prints it
    assert e.value.line() == message.replace("--timeline-steps", "timeline_steps")  # as Python names it


def test_cli_passes_the_text_to_the_model(tmp_path):
    tiny = REPO / "traces" / "tinymoe-stdlib.npz"
    assert_clean_error(run_main("replay", tiny, "--hw", "rtx3090", "--timeline", tmp_path / "t.json",
                                "--timeline-steps=9:2"), "--timeline-steps: must have START < STOP")
    assert not (tmp_path / "t.json").exists()
    res = run_main("replay", tiny, "--hw", "rtx3090", "--max-requests", "1", "--timeline", tmp_path / "t.json",
                   "--timeline-steps", "1:3", "-q")
    assert res.returncode == 0 and (tmp_path / "t.json").is_file()
