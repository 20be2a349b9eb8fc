"""`simmoe` command line: one module per command group, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from simmoe.cli import common
from simmoe.cli.params import flag_of
from simmoe.errors import InputError

# Command modules, in the order `simmoe --help` lists them. Each defines register(subparsers) and sets
# `func` on its parsers: func(args) -> int exit status.
COMMAND_MODULES = [
    "simmoe.cli.replay_cmd",
    "simmoe.cli.trace_cmd",
    "simmoe.cli.hw_cmd",
    "simmoe.cli.runtimes_cmd",
    "simmoe.cli.models_cmd",
    "simmoe.cli.policies_cmd",
    "simmoe.cli.bench_cmd",
    "simmoe.cli.calibrate_cmd",
    "simmoe.cli.validate_cmd",
    "simmoe.cli.sweep_cmd",
    "simmoe.cli.plan_cmd",
    "simmoe.cli.compare_cmd",
]


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (the usage text is one `--help` away), exit status 2."""

    def error(self, message: str) -> NoReturn:
        hint = ""
        if "argument --json" in message and "expected one argument" in message:
            hint = "; --json OUT writes a file, --json - prints to stdout"
        elif "expected one argument" in message:
            hint = "; a value that starts with '-' is written --option=VALUE"
        command = self.prog.removeprefix("simmoe").strip()  # "replay", "trace info"; "" at the top level
        line = " ".join(f"{command + ': ' if command else ''}{message}{hint} (see {self.prog} --help)".split())
        self.exit(2, f"simmoe: error: {line}\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(
        prog="simmoe",
        description="Discrete-event simulator of Mixture-of-Experts serving on constrained hardware.",
    )
    from simmoe import __version__

    parser.add_argument("--version", action="version", version=f"simmoe {__version__}")
    common.add_verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMAND_MODULES:
        mod = importlib.import_module(modname)
        mod.register(sub)
    for sp in common.subparsers_of(parser):  # -v/-q after the subcommand too (`simmoe replay T ... -q`)
        common.add_verbosity(sp, top=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    from simmoe.provenance import command_line

    args.command_line = command_line(argv)  # provenance: the exact command, shell-quoted
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        common.merge_verbosity(args)
        common.setup_logging(args.verbose, args.quiet)
        with common.warnings_shown(args.quiet):
            return int(args.func(args) or 0)
    except InputError as e:
        print(f"simmoe: error: {e.line(flag_of)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simmoe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
