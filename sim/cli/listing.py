"""The scaffold `simmoe hw`, `simmoe runtimes` and `simmoe models` share: a plain-text table, and the `list` /
`show` subcommands with `--json OUT` (a file, or '-' for stdout) accepted before or after the subcommand."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from simmoe.cli import common

# (row key, column title, alignment '<' or '>', formatter: a format spec or a callable)
Column = tuple[str, str, str, "str | Callable[[Any], str]"]


def _cell(v: Any, fmt: str | Callable[[Any], str]) -> str:
    if callable(fmt):
        return fmt(v)
    if v is None:
        return "-"
    if isinstance(v, (int, float)) and not isinstance(v, bool) and fmt:
        return format(v, fmt)
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    cells = [[title for _, title, _, _ in columns]]
    cells += [[_cell(r[key], fmt) for key, _, _, fmt in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        parts = [f"{c:{align}{w}}" for c, (_, _, align, _), w in zip(row, columns, widths, strict=True)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_rows(args: argparse.Namespace, rows: list[dict[str, Any]], columns: Sequence[Column]) -> int:
    """The `list` output: the table on stdout, unless `--json -` takes stdout; `--json OUT` writes the rows."""
    dest = getattr(args, "json", None)
    common.check_json(dest)
    if not common.json_to_stdout(args):
        print(format_table(rows, columns))
    if dest:
        common.write_json(dest, rows)
    return 0


def show_json(args: argparse.Namespace, data: dict[str, Any]) -> bool:
    """`show --json OUT|-`: writes `data`; True when stdout is taken by it (then print nothing else)."""
    dest = getattr(args, "json", None)
    if dest:
        common.check_json(dest)
        common.write_json(dest, data)
    return common.json_to_stdout(args)


def add_list_show(p: argparse.ArgumentParser, *, what: str, list_func: Callable, show_func: Callable,
                  show_arg: str, show_metavar: str | None, show_arg_help: str, show_help: str,
                  show_json_help: str) -> None:
    """`CMD [--json OUT]` and `CMD list [--json OUT]` run list_func; `CMD show ARG [--json OUT]` runs
    show_func."""
    common.add_json(p, "the table rows")
    p.set_defaults(func=list_func)
    sub = p.add_subparsers(dest=f"{p.prog.split()[-1]}_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help=f"table of {what} (the default)")
    # SUPPRESS: `simmoe CMD --json list` keeps the flag given before the subcommand.
    common.add_json(ls, "the table rows", default=argparse.SUPPRESS)
    ls.set_defaults(func=list_func)
    show = sub.add_parser("show", help=show_help)
    show.add_argument(show_arg, metavar=show_metavar, help=show_arg_help)
    common.add_json(show, show_json_help, default=argparse.SUPPRESS)
    show.set_defaults(func=show_func)
