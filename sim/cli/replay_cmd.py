"""`simmoe replay TRACE --hw HW [--policy NAME] [--opt k=v ...] ...`"""

from __future__ import annotations

import argparse
import logging

from simmoe.cli import common
from simmoe.errors import InputError
from simmoe.fileio import check_output
from simmoe.policies.config import parse_kv

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a routing trace on a hardware profile under a policy",
                       description="Replay a routing trace on a hardware profile under a policy and print a "
                                   "summary. Each run starts with a cold cache.")
    p.add_argument("trace", help="simmoe-trace/1 .npz file")
    p.add_argument("--hw", required=True, help="hardware profile: a built-in name (see `simmoe hw list`) or a YAML path")
    p.add_argument("--runtime", metavar="NAME_OR_PATH",
                   help="runtime profile: the software that runs the model (see `simmoe runtimes`; default: the "
                        "named system's runtime, else generic)")
    p.add_argument("--runtime-opt", action="append", metavar="SECTION.FIELD=VALUE",
                   help="change one field of the runtime profile, e.g. experts.order=index (repeatable)")
    p.add_argument("--policy", default="lru", help="cache policy or named system (see `simmoe policies`); "
                                                   "module:Class for your own, or a policy YAML file (default: lru)")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE", help="option of --policy (repeatable)")
    p.add_argument("--prefetch", help="prefetch policy")
    p.add_argument("--prefetch-opt", action="append", metavar="KEY=VALUE")
    p.add_argument("--prefetch-chunk-mb", type=float, metavar="MIB",
                   help="ProMoE's chunked, preemptible prefetch: split every prefetch copy into chunks of at most "
                        "MIB MiB (each pays the PCIe latency) that a demand copy overtakes at the running chunk's "
                        "end (default: copies are FIFO)")
    p.add_argument("--placement", help="placement policy (where missed experts are computed)")
    p.add_argument("--placement-opt", action="append", metavar="KEY=VALUE")
    p.add_argument("--precision", help="precision policy (bit-width experts are stored and moved at)")
    p.add_argument("--precision-opt", action="append", metavar="KEY=VALUE")
    p.add_argument("--routing", help="routing-change policy (reports routing fidelity)")
    p.add_argument("--routing-opt", action="append", metavar="KEY=VALUE")
    p.add_argument("--batch", type=int, default=1, help="concurrent requests in the decode batch (default 1)")
    p.add_argument("--prefill-chunk", type=int, help="prefill rows per step (default: whole prompt)")
    p.add_argument("--host-memory", choices=("pinned", "pageable"),
                   help="host memory holding offloaded experts (default: the runtime's)")
    p.add_argument("--copy-stream", choices=("separate", "compute"),
                   help="issue expert copies on a separate copy stream or on the compute stream (default: the "
                        "runtime's)")
    t = p.add_argument_group("SSD tier (profiles with an nvme: section; docs/tiers.md)")
    t.add_argument("--host-memory-gib", type=float, metavar="GIB",
                   help="host memory for experts (default: the profile's cpu.memory_gib minus a 4 GiB OS reserve "
                        "and the dense weights); experts beyond it are read from the NVMe SSD")
    t.add_argument("--host-policy", metavar="NAME",
                   help="cache policy of host memory as the second cache level (default lru: the page cache)")
    t.add_argument("--host-placement", metavar="none|first|popular",
                   help="experts in host memory at t=0: none (cold, default), first (the file's first experts), "
                        "popular (the trace's most activated: an oracle, it reads the future)")
    p.add_argument("--engine", choices=("fast", "simpy"), default="fast",
                   help="fast recurrence (default) or one SimPy event per kernel (slow reference)")
    p.add_argument("--max-requests", type=int, help="replay only the first N requests")
    p.add_argument("--parallel", choices=("none", "pipeline", "expert"), default="none",
                   help="several GPUs (a profile with a topology: section): split the model by layers "
                        "(pipeline) or shard each layer's experts (expert); default none: one GPU")
    p.add_argument("--gpus", type=int, help="GPUs used with --parallel (default: all the profile has)")
    g = p.add_argument_group("serving (arrivals, batching limits, SLOs)")
    g.add_argument("--arrivals", choices=("closed", "trace", "poisson", "gamma"), default="closed",
                   help="closed: all requests waiting at t=0 (default); trace: the trace's arrival_s; "
                        "poisson / gamma: seeded arrivals at --rate")
    g.add_argument("--rate", type=float, help="requests per second (poisson, gamma)")
    g.add_argument("--cv", type=float, help="coefficient of variation of gamma gaps (default 1)")
    g.add_argument("--seed", type=int, help="seed of the poisson / gamma arrival draws (default 0)")
    g.add_argument("--max-batched-tokens", type=int, help="tokens per step (caps prefill chunks)")
    g.add_argument("--requests", type=int, help="cycle the trace's requests up to N requests (explicit: "
                                                "repeated requests reuse the original routing)")
    g.add_argument("--slo-ttft-ms", type=float, help="TTFT SLO per request, for SLO attainment and goodput")
    g.add_argument("--slo-tpot-ms", type=float, help="TPOT SLO per request (mean over its decode tokens)")
    common.add_json(p, "the summary")
    p.add_argument("--steps-csv", metavar="OUT", help="write the per-step table as CSV (first line: a '#' comment "
                                                      "holding the provenance; pandas: read_csv(OUT, comment='#'))")
    p.add_argument("--requests-csv", metavar="OUT",
                   help="write one row per request as CSV: arrival, first token, TTFT, mean TPOT, end to end, "
                        "queueing, prompt / decode tokens, SLO met (with SLOs); a '#' provenance line first")
    p.add_argument("--report", metavar="DIR", help="write DIR/index.html: a self-contained page with the summary, "
                                                   "figures, the provenance and the command")
    p.add_argument("--timeline", metavar="OUT", help="write a Chrome trace-event JSON (open in Perfetto)")
    p.add_argument("--timeline-steps", metavar="A:B",
                   help="steps recorded in the timeline (default 0:50)")
    p.add_argument("--plot", metavar="OUT.png", help="write an overview figure (hit rate, latency per step, "
                                                     "timeline of the first --timeline-steps, GPU memory)")
    p.add_argument("--model", metavar="NAME_OR_PATH", help="replay the trace as this model instead of the one it "
                   "names: a catalog name, a Hugging Face config.json or a spec .yaml (same routing shape)")
    p.set_defaults(func=run)


# ReplayConfig fields set from flags of the same name
CONFIG_FLAGS = ("batch", "prefill_chunk", "host_memory", "copy_stream", "engine", "max_requests",
                "prefetch_chunk_mb", "arrivals", "rate", "cv", "seed", "max_batched_tokens", "requests",
                "slo_ttft_ms", "slo_tpot_ms", "parallel", "gpus", "host_memory_gib", "host_policy",
                "host_placement")


def policy_set_from_args(args: argparse.Namespace):
    """--policy NAME|FILE.yaml with --opt, plus --prefetch/--placement/--precision/--routing and their opts."""
    from simmoe.policies.config import policy_set

    cli = {"cache": args.policy, "cache_options": parse_kv(args.opt, "--opt")}
    for kind in ("prefetch", "placement", "precision", "routing"):
        cli[kind] = getattr(args, kind)
        cli[f"{kind}_options"] = parse_kv(getattr(args, f"{kind}_opt"), f"--{kind}-opt")
    return policy_set(cli)


def runtime_from_args(args: argparse.Namespace, pset):
    """--runtime NAME|PATH with --runtime-opt overrides; None: the system's runtime, else generic."""
    overrides = parse_kv(args.runtime_opt, "--runtime-opt")
    if args.runtime is None and not overrides:
        return None
    from simmoe.engine.setup import resolve
    from simmoe.runtime.profile import load_runtime

    return load_runtime(args.runtime or resolve(pset).runtime, overrides)


def run(args: argparse.Namespace) -> int:
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.replay import Replay
    from simmoe.fileio import atomic_open
    from simmoe.hw.profile import load_profile
    from simmoe.provenance import write_csv_header
    from simmoe.trace.format import read_trace

    common.check_json(args.json)
    for path, flag in ((args.steps_csv, "--steps-csv"), (args.requests_csv, "--requests-csv"),
                       (args.timeline, "--timeline")):
        check_output(path, flag)
    if args.report:
        from simmoe.report import check_report_dir

        check_report_dir(args.report)
    if args.plot:
        from simmoe.plots import check_image_path

        check_image_path(args.plot, "--plot")
    pset = policy_set_from_args(args)
    # only the settings given: ReplayConfig rejects one that has no effect (--rate without arrivals)
    given = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    if args.timeline or args.plot:
        given["timeline_steps"] = args.timeline_steps or "0:50"  # ReplayConfig reads START:STOP
    elif args.timeline_steps is not None:
        raise InputError("--timeline-steps", None, "only used with --timeline or --plot")
    cfg = ReplayConfig(**given)
    runtime = runtime_from_args(args, pset)
    hw = load_profile(args.hw)
    trace = read_trace(args.trace)
    if args.model is not None:
        from simmoe.api import with_model

        trace = with_model(trace, args.model)
    whole = trace.model_spec.num_moe_layers
    if trace.num_layers < whole:  # a partial capture: simulated as the cut-down model
        log.warning(f"{args.trace} covers the first {trace.num_layers} of {trace.model_spec.name}'s {whole} MoE "
                    f"layers: simulated as that cut-down model (time and memory of those layers only)")
    result = Replay(trace, hw, pset, cfg, hw_name=args.hw, runtime=runtime).run(progress=not args.quiet)
    if getattr(args, "command_line", None):
        result.provenance["command"] = args.command_line
    if args.json:
        common.write_json(args.json, result.to_json())
    for path, table in ((args.steps_csv, result.steps), (args.requests_csv, result.requests)):
        if path:
            with atomic_open(path) as f:
                write_csv_header(f, result.provenance)
                table.to_csv(f, index=False)
    if args.timeline:
        result.write_timeline(args.timeline)
    if args.report:
        from simmoe.report import replay_sections, write_report

        s = result.summary
        write_report(args.report, f"simmoe replay: {s['model']} on {s['hw']}, {s['runtime']}, {s['policy']}",
                     result.provenance.get("command"), result.provenance, replay_sections(result))
    if args.plot:
        from simmoe.plots import overview, save

        save(overview(result), args.plot)
    if not args.quiet and not common.json_to_stdout(args):
        print(result.format())
    return 0
