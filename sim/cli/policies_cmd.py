"""`simmoe policies [--json OUT]`: the registered policies with one-line descriptions and their options."""

from __future__ import annotations

import argparse

from simmoe.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policies", help="list the registered policies")
    common.add_json(p, "the rows (kind, name, summary, reads_future, options)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simmoe.policies.registry import all_policies

    common.check_json(args.json)
    rows = [{"kind": cls.kind, "name": cls.name, "summary": cls.summary, "reads_future": cls.reads_future,
             "options": list(cls.Options.model_fields)} for cls in all_policies()]
    if not common.json_to_stdout(args):
        w = [max(len(r[k]) for r in rows) for k in ("kind", "name")]
        print(f"{'kind':<{w[0]}}  {'name':<{w[1]}}  description [options]")
        for r in rows:
            flag = " (oracle: reads the future)" if r["reads_future"] else ""
            print(f"{r['kind']:<{w[0]}}  {r['name']:<{w[1]}}  {r['summary'] + flag} [{', '.join(r['options']) or '-'}]")
    if args.json:
        common.write_json(args.json, rows)
    return 0
