"""`simmoe policies`: the registered policies with one-line descriptions and their options."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policies", help="list the registered policies")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simmoe.policies.registry import all_policies

    rows = []
    for cls in all_policies():
        opts = ", ".join(cls.Options.model_fields) or "-"
        flag = " (oracle: reads the future)" if cls.reads_future else ""
        rows.append((cls.kind, cls.name, cls.summary + flag, opts))
    w = [max(len(r[i]) for r in rows) for i in range(2)]
    print(f"{'kind':<{w[0]}}  {'name':<{w[1]}}  description [options]")
    for kind, name, summ, opts in rows:
        print(f"{kind:<{w[0]}}  {name:<{w[1]}}  {summ} [{opts}]")
    return 0
