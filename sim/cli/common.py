"""Conventions every `simmoe` command shares, in one place:

- `--json OUT` writes a file, `--json -` writes the JSON to stdout (and nothing else goes there);
- `-v` / `-vv` (log INFO / DEBUG on stderr) and `-q` / `--quiet` (no progress bars, warnings or notes, and no
  summary where a command's result is a file), given before the subcommand or after it;
- warnings (simmoe.errors.SimmoeWarning: suspicious but valid input) shown once each, as one line on
  stderr: `simmoe: warning: ...`;
- progress bars through simmoe.progress (drawn only on a terminal, never with `--quiet`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from simmoe.errors import SimmoeWarning
from simmoe.fileio import atomic_open, check_output

STDOUT = "-"


# ---- --json OUT | - ------------------------------------------------------------------------------------
def add_json(p: argparse.ArgumentParser, what: str, **kw: Any) -> None:
    """`--json OUT`: write `what` as JSON to the file OUT, or to stdout with `--json -`."""
    p.add_argument("--json", metavar="OUT", help=f"write {what} as JSON to OUT ('-': to stdout)", **kw)


def check_json(dest: str | None, flag: str = "--json") -> None:
    """Checks a `--json` (or other JSON output) destination before any work (a file's folder must exist; '-'
    is stdout)."""
    if dest is not None and dest != STDOUT:
        check_output(dest, flag)


def json_to_stdout(args: argparse.Namespace) -> bool:
    """Whether stdout is taken by `--json -` (then the human-readable output is not printed)."""
    return getattr(args, "json", None) == STDOUT


def write_json(dest: str, data: Any, indent: int = 2) -> None:
    """Writes `data` (an object, or JSON text already made) to the file `dest` (atomically) or to stdout."""
    text = data if isinstance(data, str) else json.dumps(data, indent=indent)
    text = text.rstrip("\n") + "\n"
    if dest == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with atomic_open(dest) as f:
            f.write(text)


# ---- -v / -q --------------------------------------------------------------------------------------------
VERBOSE_HELP = "more messages on stderr: -v what is done (INFO), -vv details (DEBUG)"
QUIET_HELP = "no progress bars, warnings or notes (and no summary where the result is a file)"


def add_verbosity(p: argparse.ArgumentParser, top: bool) -> None:
    """-v/-q on the top-level parser (`top`), or on a subcommand (given after it: `simmoe replay ... -q`).
    The subcommand's copies use their own dests and no defaults, so that they never overwrite the top-level
    values; `merge_verbosity` adds them up."""
    if top:
        p.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
        p.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    else:
        p.add_argument("-v", "--verbose", dest="sub_verbose", action="count", default=argparse.SUPPRESS,
                       help=VERBOSE_HELP)
        p.add_argument("-q", "--quiet", dest="sub_quiet", action="store_true", default=argparse.SUPPRESS,
                       help=QUIET_HELP)


def subparsers_of(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below `p` (subcommands, their subcommands, ...), each once."""
    seen: set[int] = set()
    for action in p._actions:  # argparse has no public walk over its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                if id(sp) not in seen:
                    seen.add(id(sp))
                    yield sp
                    yield from subparsers_of(sp)


def merge_verbosity(args: argparse.Namespace) -> argparse.Namespace:
    """`args.verbose` (count) and `args.quiet` (bool) from the flags before and after the subcommand."""
    args.verbose = getattr(args, "verbose", 0) + getattr(args, "sub_verbose", 0)
    args.quiet = bool(getattr(args, "quiet", False) or getattr(args, "sub_quiet", False))
    for name in ("sub_verbose", "sub_quiet"):
        if hasattr(args, name):
            delattr(args, name)
    if args.quiet and args.verbose:
        from simmoe.errors import InputError

        raise InputError("-q", None, "cannot be combined with -v")
    return args


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest's capture, a redirect set after start-up)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return " ".join(f"simmoe: {level}{record.getMessage()}".split())  # one line whatever the message holds


def setup_logging(verbose: int, quiet: bool) -> None:
    """The `simmoe` logger (every module's logger is below it) on stderr: WARNING by default, INFO with -v,
    DEBUG with -vv, ERROR with -q. Replaces the handler of an earlier call (main() may run many times in one
    process, as in the tests)."""
    logger = logging.getLogger("simmoe")
    for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_Format())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else
                    (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])


def _line(message: Warning | str, category: type[Warning]) -> str:
    what = "warning" if issubclass(category, SimmoeWarning) else category.__name__
    return " ".join(f"simmoe: {what}: {message}".split())  # one line whatever the message holds


@contextmanager
def warnings_shown(quiet: bool) -> Iterator[None]:
    """Warnings shown once each (by text) as one line on stderr; with -q none at all (ours or a library's).
    The set of shown lines is ours: Python's "once" registry is cleared whenever a catch_warnings block (as
    each sweep configuration has) changes the filters."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = _line(message, category)
        if text not in shown:
            shown.add(text)
            print(text, file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        if quiet:
            warnings.simplefilter("ignore")
        else:
            warnings.simplefilter("always", SimmoeWarning)
        yield
