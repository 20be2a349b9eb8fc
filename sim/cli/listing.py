"""The scaffold `simmoe hw` and `simmoe models` share: a plain-text table, and the `list` / `show`
subcommands with `--json` accepted before or after the subcommand."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

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
    """The `list` output: the table, or the rows as JSON with --json."""
    print(json.dumps(rows, indent=2) if getattr(args, "json", False) else format_table(rows, columns))
    return 0


def add_list_show(p: argparse.ArgumentParser, *, what: str, list_func: Callable, show_func: Callable,
                  show_arg: str, show_metavar: str | None, show_arg_help: str, show_help: str,
                  show_json_help: str) -> None:
    """`CMD [--json]` and `CMD list [--json]` run list_func; `CMD show ARG [--json]` runs show_func."""
    p.add_argument("--json", action="store_true", help="print the table rows as JSON")
    p.set_defaults(func=list_func)
    sub = p.add_subparsers(dest=f"{p.prog.split()[-1]}_command", metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help=f"table of {what} (the default)")
    # SUPPRESS: `simmoe CMD --json list` keeps the flag given before the subcommand.
    ls.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the table rows as JSON")
    ls.set_defaults(func=list_func)
    show = sub.add_parser("show", help=show_help)
    show.add_argument(show_arg, metavar=show_metavar, help=show_arg_help)
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=show_json_help)
    show.set_defaults(func=show_func)
