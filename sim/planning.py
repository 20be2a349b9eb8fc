"""Capacity planning: the cheapest configurations (hw x runtime x policy x cache size x batch) that meet
latency SLOs (`plan`), and the most load each one sustains within them (`find_max_rate`).

Everything the user gives is checked before the first replay (SLO metric names against the summary's keys,
profiles, runtimes, policies, batch sizes, cache sizes, rates). Configurations that are the same run (batch 4
with one request, a cache size given explicitly and the same size reached by 'auto') run once: `merged`
names the others. Runs go through the sweep runner (parallel, resumable with `out`); each configuration is
then judged against the SLOs: feasible ones are ranked by cost per million decode tokens (the profile's
`price_usd_per_hour` over the simulated throughput), infeasible ones report their binding constraint (the
SLO violated by the largest factor, or the memory limit when the configuration does not fit).

Serving runs (a `rate`, or `find_max_rate`) draw Poisson arrivals with seeds `seed, seed+1, ...` (`seeds` of
them, base `seed` default 0): feasibility is judged on the mean over the seeds; every SLO metric and the
throughput also get a 95% bootstrap confidence interval of that mean (`METRIC.ci_low`, `METRIC.ci_high`).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simmoe.engine.results import LATENCY_KEYS, PERCENTILES, metric_keys
from simmoe.errors import InputError, SimmoeWarning

GIB = 2**30
SIZE_OPTIONS = ("slots_per_layer", "cache_gb")  # cache options that only size the cache
SLOTS = "policy_options.slots_per_layer"
# tpot_p95_ms -> tpot_ms.p95 (every latency distribution and percentile the summary has)
_SHORT = re.compile(rf"^({'|'.join(k.removesuffix('_ms') for k in LATENCY_KEYS)})_({'|'.join(PERCENTILES)})_ms$")
CI_LEVEL = 0.95


# ---- SLOs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slo:
    name: str  # as the user wrote it
    metric: str  # flattened summary key (the sweep table's column)
    op: str  # "<=" (an upper bound: latencies) or ">=" (a lower bound: throughput, attainment)
    limit: float

    def ratio(self, value: float) -> float:
        """> 1 when violated: how many times over (or under) the limit the value is."""
        if self.op == "<=":
            return value / self.limit if self.limit > 0 else (math.inf if value > 0 else 0.0)
        return self.limit / value if value > 0 else math.inf

    def describe(self, value: float) -> str:
        return f"{self.metric} {value:.4g} {'>' if self.op == '<=' else '<'} {self.limit:g} " \
               f"({(self.ratio(value) - 1) * 100:+.1f}%)"

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.limit:g}"


def parse_slo(text: str, source: str = "slos") -> Slo:
    """`tpot_p95_ms=150` (a latency percentile: an upper bound), `KEY<=V` or `KEY>=V` for any summary
    metric (`tokens_per_s>=20`, `slo_attainment>=0.99`). Only the form is checked here: `check_slos` checks
    the metric name."""
    m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(<=|>=|=)\s*([^=<>]+)$", str(text))
    if not m:
        raise InputError(source, str(text), "expected METRIC=LIMIT (e.g. tpot_p95_ms=150) or METRIC>=LIMIT")
    name, op, raw = m.groups()
    try:
        limit = float(raw)
    except ValueError:
        raise InputError(source, text, f"limit {raw.strip()!r} is not a number") from None
    if not math.isfinite(limit) or limit < 0:
        raise InputError(source, text, "limit must be a finite number >= 0")
    short = _SHORT.match(name)
    metric = f"{short.group(1)}_ms.{short.group(2)}" if short else name
    if op == "=" and "_ms" not in metric:  # only a latency reads naturally as an upper bound
        raise InputError(source, text, f"write {name}<={raw.strip()} or {name}>={raw.strip()}: '=' means an "
                                       "upper bound and is only for latencies (..._ms)")
    return Slo(name, metric, "<=" if op in ("=", "<=") else ">=", limit)


def known_metrics(per_request_slo: bool = False, tier: bool = True) -> list[str]:
    """SLO metric names as the sweep table spells them (a summary key that is also a parameter name, such
    as `requests`, is `summary.requests` there). `per_request_slo`: the runs set slo_ttft_ms/slo_tpot_ms,
    so slo_attainment and goodput exist; `tier`: with the SSD tier's metrics (host_tier.*)."""
    from simmoe.sweeps.spec import param_names

    reserved = set(param_names())
    return [f"summary.{k}" if k.partition(".")[0] in reserved else k for k in metric_keys(per_request_slo, tier)]


def check_slos(slos: Sequence[str | Slo] | str | Slo, *, per_request_slo: bool = False,
               source: str = "slos") -> list[Slo]:
    """Parsed SLOs whose metrics a run's summary has; an unknown one is an InputError naming it."""
    items = [slos] if isinstance(slos, (str, Slo)) else list(slos or [])
    if not items:
        raise InputError(source, None, "give at least one SLO (e.g. tpot_p95_ms=150)")
    out = [s if isinstance(s, Slo) else parse_slo(s, source) for s in items]
    known = known_metrics(per_request_slo)
    for s in out:
        if s.metric in known:
            continue
        if s.metric in known_metrics(True):
            raise InputError(source, s.name, f"{s.metric} exists only in runs with a per-request SLO "
                                             "(slo_ttft_ms / slo_tpot_ms in base)")
        close = difflib.get_close_matches(s.metric, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(source, s.name, f"no metric {s.metric!r} in the replay summary; {hint}known: "
                                         f"{', '.join(known)}")
    return out


# ---- the search space ----------------------------------------------------------------------------------------
def _csv(text: str | None, flag: str, cast=str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(flag, text, "empty list")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise InputError(flag, text, f"expected a comma-separated list of {cast.__name__}") from None


def search_space(trace: str, hws: list[str] | None = None, policies: list[str] | None = None,
                 slots: list[int | None] | None = None, batches: list[int] | None = None,
                 rate: float | None = None, base: dict[str, Any] | None = None,
                 runtimes: list[str] | None = None,
                 host_memory: list[float | None] | None = None) -> list[dict[str, Any]]:
    """Flat parameter rows: hw x host memory x runtime x policy x cache size (for policies with
    slots_per_layer) x batch (runtimes None: each policy's own, i.e. the named system's, else generic;
    host_memory: GiB of host memory for experts, the SSD tier's `host_memory_gib`, None = the profile's). Every value is checked here,
    before anything runs; errors name the parameter (`hws`, `slots`, ...)."""
    from simmoe.engine.config import ReplayConfig
    from simmoe.hw.profile import list_profiles, load_profile, resolve_profile_path
    from simmoe.policies.registry import get_policy
    from simmoe.trace.format import read_trace

    if not Path(trace).is_file():
        raise InputError("trace", str(trace), "trace file not found")
    if hws is None:  # every bundled profile that has a price
        hws = [h for h in list_profiles() if load_profile(h).price_usd_per_hour is not None]
    for h in hws:
        try:
            resolve_profile_path(h)
            load_profile(h)
        except InputError as e:
            raise InputError("hws", None, e.line()) from None
    policies = policies or ["lru", "ondemand", "cpu-experts"]
    batches = batches or [1, 4]
    if slots is None:
        e = read_trace(trace).spec.num_experts
        slots = sorted({max(1, e // 8), max(1, e // 4), max(1, e // 2)}) + [None]  # None: all free memory
    extra = dict(base or {})
    if rate is not None:
        extra.update(rate=rate, arrivals="poisson")
    # the values replay would reject, rejected up front (not a table of configurations that all failed)
    for b in batches:
        ReplayConfig(batch=b, **extra)
    for s in slots:
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise InputError("slots", None, f"cache sizes must be integers >= 0 (or None: all free memory), "
                                            f"got {s!r}")
    if runtimes is not None:
        from simmoe.runtime.profile import resolve_runtime_path

        for r in runtimes:
            try:
                resolve_runtime_path(r)
            except InputError as e:
                raise InputError("runtimes", None, e.line()) from None
    rams = _host_memory(host_memory, hws)
    tspec = read_trace(trace).spec
    num_experts = tspec.num_experts
    rows = []
    for hw, ram in ((h, m) for h in hws for m in _rams_of(h, rams)):
        # a machine with several GPUs runs the model split over them, each way that fits the model (a
        # `parallel` in `base` chooses one); its price is the whole machine's
        modes: list[dict[str, Any]] = [{}]
        gpus = load_profile(hw).num_gpus if "parallel" not in extra else 1
        if gpus > 1:
            from simmoe.engine.parallel import pipeline_layers

            split = pipeline_layers(tspec.num_layers, gpus)
            stages = {split[li] for li in tspec.moe_layers}  # every GPU needs a MoE layer of its own
            modes = ([{"parallel": "pipeline"}] if len(stages) == gpus else []) \
                + ([{"parallel": "expert"}] if num_experts % gpus == 0 else [])
        for mode, rt in ((m, r) for m in modes for r in runtimes or [None]):
            for pol in policies:
                if mode and not _splits(pol):
                    continue  # CPU placements and routing policies are not modelled on several GPUs
                sized = "slots_per_layer" in get_policy(pol, "cache", source="policies").Options.model_fields
                for s in (slots if sized else [None]):
                    for b in batches:
                        row = {"trace": str(trace), "hw": hw, "policy": pol, "batch": b, **extra, **mode}
                        if ram is not None:
                            row["host_memory_gib"] = ram
                        if rt is not None:
                            row["runtime"] = rt
                        if s is not None:
                            row[SLOTS] = s
                        rows.append(row)
    return rows


def _splits(policy: str) -> bool:
    """Whether a policy (or named system) runs on several GPUs (sim/engine/parallel.py)."""
    from simmoe.engine.setup import resolve
    from simmoe.policies.base import PolicySet

    r = resolve(PolicySet(policy))
    return r.placement_cls is None and r.routing_cls is None


# ---- identical runs ------------------------------------------------------------------------------------------
@dataclass
class Group:
    """Configurations that are one run: the first is run, the others (`merged`) share its results."""

    rows: list[dict[str, Any]]
    why: str = ""  # what makes them the same run

    @property
    def params(self) -> dict[str, Any]:
        return self.rows[0]


def _effective(row: dict[str, Any]) -> tuple[tuple, str] | None:
    """What decides a run's outcome, from its prepared scenario (cheap: no step is played): the resolved
    policies without their size options, the cache partitions as sized, the runtime and hardware profiles,
    and the replay settings with the batch cut to the requests that can run at once. None when the
    configuration cannot be prepared (it runs alone and records its error)."""
    from simmoe.engine.config import ReplayConfig
    from simmoe.engine.scenario import prepare
    from simmoe.hw.profile import load_profile
    from simmoe.sweeps.runner import replay_args, trace_at

    try:
        pset, runtime, fields = replay_args(row)
        cfg = ReplayConfig(**fields)
        args = (trace_at(str(row["trace"])), load_profile(row["hw"]), pset, cfg, str(row["hw"]), runtime)
        # a batch above the requests or a cache above the experts is what merging reports (the configuration
        # is listed as merged): no warning from this look-ahead; the runs themselves still warn
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SimmoeWarning)
            if cfg.parallel != "none":  # several GPUs: each has its own memory plan and cache
                from simmoe.engine.parallel import prepare_parallel

                ps = prepare_parallel(*args)
                parts = ps.devices
                sc = ps.driver
            else:
                sc = prepare(*args)
                parts = (sc,)
    except InputError:
        return None
    r = parts[0].policies
    n = len(sc.ri.ids)
    settings = cfg.model_dump()
    settings["batch"] = min(cfg.batch, n)
    pols = []
    for kind in ("cache", "prefetch", "placement", "precision", "routing"):
        cls, opts = getattr(r, f"{kind}_cls"), getattr(r, f"{kind}_opts")
        d = opts.model_dump() if hasattr(opts, "model_dump") else opts
        if kind == "cache" and isinstance(d, dict):
            d = {k: v for k, v in d.items() if k not in SIZE_OPTIONS}  # their effect is the sizing below
        pols.append((kind, None if cls is None else f"{cls.__module__}.{cls.__qualname__}",
                     json.dumps(d, sort_keys=True, default=str)))
    # the memory plan but its KV reservation (batch x longest request: it only decides the fit and the
    # sizing above); the activations of an online run grow with the batch and show in the peak memory
    devices = tuple((p.cache.scope, p.cache.capacity, p.memory.dense, p.memory.activations, p.memory.staging,
                     p.memory.expert_bytes, p.runtime.model_dump_json()) for p in parts)
    key = (str(row["trace"]), str(row["hw"]), parts[0].hw.model_dump_json(), tuple(pols), devices,
           json.dumps(settings, sort_keys=True, default=str))
    per = sorted({c for p in parts for c in p.cache.capacity})
    sc = parts[0]
    why = f"{n} request{'s' if n != 1 else ''} (effective batch {settings['batch']}), cache " + \
          ("/".join(map(str, per)) + (" slots per layer" if sc.cache.scope == "layer" else " slots"))
    return key, why


def merge_identical(rows: list[dict[str, Any]]) -> list[Group]:
    """Groups the rows that make the same run (see _effective), in the order of their first row."""
    groups: dict[Any, Group] = {}
    for i, row in enumerate(rows):
        eff = _effective(row)
        key, why = eff if eff is not None else (("alone", i), "")
        if key in groups:
            groups[key].rows.append(row)
        else:
            groups[key] = Group([row], why)
    return list(groups.values())


# ---- running: the sweep runner with a cache of finished runs -------------------------------------------------
class Runs:
    """Runs parameter rows through the sweep runner into one store; a row already run (in this call, or in
    `out` from an earlier one) is not run again. Counts the replays it ran and the ones it reused."""

    def __init__(self, out: Path, workers: int | None, on_replay: Callable[[], None] | None = None) -> None:
        self.out, self.workers, self.on_replay = out, workers, on_replay
        self.records: dict[str, dict[str, Any]] = {}
        self.ran = 0
        self.reused = 0
        self.pool: Executor | None = None  # one warm pool for every batch (a search runs many small ones)

    def __enter__(self) -> Runs:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def __call__(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from simmoe.sweeps.runner import process_pool, run_sweep
        from simmoe.sweeps.spec import build_configs

        configs = [build_configs([r], Path("."), "plan")[0] for r in rows]
        todo = list({c.key: c for c in configs if c.key not in self.records}.values())
        self.reused += len(configs) - len(todo)
        if todo:
            def count(_: dict[str, Any]) -> None:
                self.ran += 1
                if self.on_replay:
                    self.on_replay()

            workers = self.workers or os.cpu_count() or 1
            if self.pool is None and workers > 1 and len(todo) > 1:
                self.pool = process_pool(workers)
            rep = run_sweep(todo, self.out, workers=workers, progress=False, on_record=count, pool=self.pool)
            self.reused += rep.skipped
            done = {c.key for c in todo}
            for rec in rep.results.to_dict("records"):
                if rec["key"] in done:
                    self.records[rec["key"]] = {k: v for k, v in rec.items()
                                                if not (isinstance(v, float) and math.isnan(v))}
        return [self.records[c.key] for c in configs]

    @property
    def replays(self) -> int:
        return self.ran + self.reused


@contextmanager
def _store(out: str | Path | None) -> Iterator[Path]:
    if out is not None:
        from simmoe.sweeps.store import check_out

        yield check_out(out)
        return
    with tempfile.TemporaryDirectory(prefix="simmoe-plan-") as tmp:
        yield Path(tmp) / "plan.parquet"


def _bar(progress: bool | None, desc: str):
    from simmoe.progress import bar

    return bar(desc=desc, unit=" replays", enabled=progress, leave=False)


# ---- seeds and confidence intervals --------------------------------------------------------------------------
def mean_ci(values: Sequence[float], level: float = CI_LEVEL) -> tuple[float, float, float]:
    """Mean and its bootstrap confidence interval (scipy.stats.bootstrap, percentile method, 2000 resamples,
    fixed generator: deterministic). NaN bounds with fewer than two values (no spread to resample). With a
    handful of values the bootstrap interval is narrower than the true one (it only resamples what was
    seen): read a CI from 3 seeds as a rough spread, not a guarantee."""
    from scipy.stats import bootstrap

    a = np.asarray([v for v in values if v is not None], dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan, math.nan
    m = float(a.mean())
    if a.size < 2:
        return m, math.nan, math.nan
    if np.ptp(a) == 0:  # every seed gave the same value: the interval is that value
        return m, m, m
    res = bootstrap((a,), np.mean, confidence_level=level, n_resamples=2000, method="percentile",
                    rng=np.random.default_rng(0))
    return m, float(res.confidence_interval.low), float(res.confidence_interval.high)


def aggregate(records: list[dict[str, Any]], ci_metrics: Sequence[str]) -> dict[str, Any]:
    """One configuration's runs over seeds as one row: numbers averaged, `ci_metrics` with a 95% CI of the
    mean (`M.ci_low` / `M.ci_high`); a run that failed makes the row that failure."""
    bad = [r for r in records if r.get("status") != "ok"]
    if bad:
        return {**bad[0], "seeds": len(records)}
    out = dict(records[0])
    for k in {k for r in records for k in r}:
        vals = [r.get(k) for r in records]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = float(np.mean(vals)) if len(records) > 1 else vals[0]
    for m in ci_metrics:
        vals = [r.get(m) for r in records]
        if any(isinstance(v, (int, float)) for v in vals):
            out[m], out[f"{m}.ci_low"], out[f"{m}.ci_high"] = mean_ci(vals)
    out["seeds"] = len(records)
    out.pop("seed", None)
    return out


# ---- judging -------------------------------------------------------------------------------------------------
def _host_memory(host_memory: list[float | None] | None, hws: list[str]) -> list[float | None]:
    """The host-memory dimension, checked: sizes > 0 (None: the profile's own), only on profiles with an SSD
    tier (an nvme: section), where host memory holding fewer experts than the model has means NVMe reads."""
    from simmoe.hw.profile import load_profile

    if host_memory is None:
        return [None]
    for m in host_memory:
        if m is not None and (isinstance(m, bool) or not isinstance(m, int | float) or not m > 0
                              or not math.isfinite(m)):
            raise InputError("host_memory", None, f"sizes must be numbers of GiB > 0 (or None: the profile's), "
                                                  f"got {m!r}")
    if any(m is not None for m in host_memory):
        no_ssd = [h for h in hws if load_profile(h).nvme is None]
        if no_ssd:
            raise InputError("host_memory", None, f"{', '.join(no_ssd)} ha{'s' if len(no_ssd) == 1 else 've'} no "
                                                  "nvme: section (no SSD tier): host memory would have no effect")
    return list(dict.fromkeys(host_memory))


def _rams_of(hw: str, rams: list[float | None]) -> list[float | None]:
    """The host-memory sizes a profile runs with: all of them, but the profile's own on a machine with several
    GPUs (the SSD tier is modelled with one GPU: engine/tiers.py), said once as a warning."""
    from simmoe.errors import warn
    from simmoe.hw.profile import load_profile

    if rams == [None] or load_profile(hw).num_gpus == 1:
        return rams
    warn(f"host_memory: {hw} has {load_profile(hw).num_gpus} GPUs and the SSD tier is modelled with one: it runs "
         "with its own RAM only")
    return [None]


# Host memory priced per GiB-hour where a plan varies it (estimate: DDR5 desktop memory at ~$3 per GB retail,
# 2024 kit prices, amortised like the bundled profiles' purchase prices: 3 years of 24/7 use = 26,280 h).
RAM_USD_PER_GIB_HOUR = 3.0 / 26_280


def _price(hw: str, host_memory_gib: float | None = None) -> float | None:
    """The profile's price per hour; with `host_memory_gib` (the SSD tier's host memory for experts), the
    machine's RAM becomes that plus the tier's OS reserve, priced at `ram_usd_per_gib_hour` against the
    profile's `cpu.memory_gib` at RAM_USD_PER_GIB_HOUR (more RAM costs more, less RAM saves)."""
    from simmoe.engine.tiers import OS_RESERVED_GIB
    from simmoe.hw.profile import load_profile

    prof = load_profile(hw)
    if prof.price_usd_per_hour is None:
        return None
    if host_memory_gib is None or (isinstance(host_memory_gib, float) and math.isnan(host_memory_gib)):
        return prof.price_usd_per_hour
    ram = float(host_memory_gib) + OS_RESERVED_GIB
    return max(0.0, prof.price_usd_per_hour + (ram - prof.cpu.memory_gib) * RAM_USD_PER_GIB_HOUR)


def _row_price(row: dict[str, Any] | pd.Series) -> float | None:
    return _price(row["hw"], row.get("host_memory_gib"))


def judge(row: dict[str, Any] | pd.Series, slos: list[Slo]) -> tuple[float, str]:
    """The worst SLO ratio (<= 1: every SLO met) and a description of the SLO that binds."""
    worst, why = 0.0, ""
    for s in slos:
        v = row.get(s.metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            r, d = math.inf, f"{s.metric}: no value"
        else:
            r, d = s.ratio(float(v)), s.describe(float(v))
        if r > worst:
            worst, why = r, d
    return worst, why


def evaluate(df: pd.DataFrame, slos: list[Slo]) -> pd.DataFrame:
    """Adds usd_per_hour, usd_per_mtok, feasible, binding (why not feasible) and violation (worst ratio)."""
    if not len(df):
        raise InputError("plan", None, "no configurations were run")
    slos = check_slos(slos, per_request_slo=True)
    if (df["status"] == "ok").any():
        missing = [s.metric for s in slos if s.metric not in df.columns]
        if missing:
            raise InputError("slos", None, f"no metric {missing[0]!r} in these results (a column of the sweep "
                                           "table)")
    out = df.copy()
    ram = out["host_memory_gib"] if "host_memory_gib" in out else pd.Series(None, index=out.index, dtype=object)
    pairs = [(h, None if pd.isna(m) else float(m)) for h, m in zip(out["hw"], ram)]
    prices = {pr: _price(*pr) for pr in dict.fromkeys(pairs)}  # a profile read once per (hw, host memory)
    out["usd_per_hour"] = [math.nan if prices[pr] is None else float(prices[pr]) for pr in pairs]
    tps = out["tokens_per_s"].astype(float) if "tokens_per_s" in out else pd.Series(np.nan, index=out.index)
    out["usd_per_mtok"] = out["usd_per_hour"] / (tps * 3600) * 1e6
    feasible, binding, violation = [], [], []
    for _, row in out.iterrows():
        if row["status"] != "ok":
            kind = "memory" if "does not fit" in str(row["error"]) else row["status"]
            feasible.append(False)
            binding.append(f"{kind}: {row['error']}")
            violation.append(math.inf)
            continue
        worst, why = judge(row, slos)
        if math.isnan(row["usd_per_hour"]):
            feasible.append(False)
            binding.append("no price_usd_per_hour in the profile")
            violation.append(worst)
            continue
        feasible.append(worst <= 1.0)
        binding.append("" if worst <= 1.0 else why)
        violation.append(worst)
    out["feasible"] = feasible
    out["binding"] = binding
    out["violation"] = violation
    return out


def ranked(ev: pd.DataFrame) -> pd.DataFrame:
    """Feasible configurations, cheapest per token first (then cheapest per hour)."""
    return ev[ev["feasible"]].sort_values(["usd_per_mtok", "usd_per_hour", "key"], kind="stable")


def closest_infeasible(ev: pd.DataFrame) -> pd.DataFrame:
    """Per (hw, policy): the infeasible configuration nearest to feasibility, with its binding constraint.
    Only for pairs that have no feasible configuration at all."""
    bad = ev[~ev["feasible"]]
    good_pairs = set(map(tuple, ev[ev["feasible"]][["hw", "policy"]].values))
    rows = []
    for (hw, pol), g in bad.groupby(["hw", "policy"], sort=False):
        if (hw, pol) in good_pairs:
            continue
        rows.append(g.sort_values(["violation", "usd_per_mtok"], kind="stable").iloc[0])
    return pd.DataFrame(rows).sort_values(["violation", "hw"], kind="stable") if rows else bad.iloc[:0]


def pareto_mask(x: Sequence[float], y: Sequence[float], minimize: tuple[bool, bool] = (True, True)) -> np.ndarray:
    """True for the points no other point dominates (at least as good on x and y, better on one); equal
    points do not dominate each other. NaN points are never on the front. The one Pareto implementation
    (plots.pareto_front draws it)."""
    a = np.asarray(x, dtype=float) * (1 if minimize[0] else -1)
    b = np.asarray(y, dtype=float) * (1 if minimize[1] else -1)
    ok = ~(np.isnan(a) | np.isnan(b))
    mask = np.zeros(len(a), dtype=bool)
    best_b = np.inf  # the lowest b among points with a strictly smaller a
    idx = np.flatnonzero(ok)
    idx = idx[np.lexsort((b[idx], a[idx]))]  # by a, then b
    i = 0
    while i < len(idx):  # points of equal a: only those with the group's lowest b can be on the front
        j = i
        while j < len(idx) and a[idx[j]] == a[idx[i]]:
            j += 1
        low = b[idx[i]]
        if low < best_b:
            for k in idx[i:j]:
                mask[k] = b[k] == low
        best_b = min(best_b, low)
        i = j
    return mask


def label(row: pd.Series | dict[str, Any]) -> str:
    """`rtx3090 lru 16/layer on torch-eager b4`"""
    slots = row.get(SLOTS)
    size = f" {int(slots)}/layer" if slots is not None and not (isinstance(slots, float) and math.isnan(slots)) \
        else ""
    rt = row.get("runtime")
    on = f" on {rt}" if isinstance(rt, str) else ""
    par = row.get("parallel")
    split = f" {par}" if isinstance(par, str) and par != "none" else ""
    ram = row.get("host_memory_gib")
    host = f" host {ram:g} GiB" if isinstance(ram, int | float) and not math.isnan(ram) else ""
    return f"{row['hw']}{host}{split} {row['policy']}{size}{on} b{int(row['batch'])}"


def _validate_common(slos, seeds: int, base: dict[str, Any] | None, serving: bool,
                     workers: int | None) -> list[Slo]:
    base = base or {}
    slo_runs = base.get("slo_ttft_ms") is not None or base.get("slo_tpot_ms") is not None
    out = check_slos(slos, per_request_slo=slo_runs)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise InputError("seeds", None, f"must be an integer >= 1, got {seeds!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError("workers", None, f"must be an integer >= 1 (None: every CPU), got {workers!r}")
    if seeds > 1 and not serving:
        raise InputError("seeds", None, "seeds are arrival draws: only used with a rate (serving runs) or "
                                        "find_max_rate")
    return out


def _rows_of(groups: list[Group], seeds: int, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each group's run, once per arrival seed (seed, seed+1, ...; base `seed` default 0) for serving runs."""
    rows = []
    for g in groups:
        s0 = int(g.params.get("seed", 0))
        for i in range(seeds):
            row = {**g.params, **(extra or {})}
            if row.get("arrivals") == "poisson":
                row["seed"] = s0 + i
            rows.append(row)
    return rows


def _finish(df: pd.DataFrame, groups: list[Group], runs: Runs) -> pd.DataFrame:
    df["merged"] = ["; ".join(label(r) for r in g.rows[1:]) for g in groups]
    df["merged_why"] = [g.why if len(g.rows) > 1 else "" for g in groups]
    df.attrs.update(configurations=sum(len(g.rows) for g in groups), runs=len(groups), replays_run=runs.ran,
                    replays_reused=runs.reused)
    return df


def plan(trace: str, slos: Sequence[str | Slo] | str, *, hws: list[str] | None = None,
         policies: list[str] | None = None, slots: list[int | None] | None = None,
         batches: list[int] | None = None, rate: float | None = None, seeds: int = 1,
         base: dict[str, Any] | None = None, workers: int | None = None, out: str | None = None,
         progress: bool | None = None, runtimes: list[str] | None = None,
         host_memory: list[float | None] | None = None) -> pd.DataFrame:
    """Every configuration of hws x runtimes x policies x slots x batches, judged against `slos`
    ('tpot_p95_ms=100', 'tokens_per_s>=20'): one row per distinct run, with `feasible`, `binding`,
    `usd_per_mtok`, `merged` (the configurations that were the same run). `rate`: Poisson arrivals at that
    many requests/s, `seeds` arrival draws each (mean and 95% CI; feasibility on the mean). Nothing runs
    until every input has been checked. `attrs`: configurations, runs, replays_run, replays_reused."""
    slos = _validate_common(slos, seeds, base, serving=rate is not None, workers=workers)
    rows = search_space(trace, hws, policies, slots, batches, rate, base, runtimes, host_memory)
    groups = merge_identical(rows)
    ci = list(dict.fromkeys([s.metric for s in slos] + ["tokens_per_s"])) if rate is not None else []
    with _store(out) as path, _bar(progress, "plan") as bar:
        with Runs(path, workers, bar.update) as runs:
            recs = runs(_rows_of(groups, seeds))
    per = [aggregate(recs[i * seeds:(i + 1) * seeds], ci) for i in range(len(groups))]
    df = _finish(pd.DataFrame(per), groups, runs)
    ev = evaluate(df, slos)
    ev.attrs.update(df.attrs)
    return ev


# ---- the most load within the SLOs ---------------------------------------------------------------------------
def _round_rate(r: float) -> float:
    return float(f"{r:.4g}")  # stable keys (resume, cache) and readable rates; far finer than any tolerance


@dataclass
class _Search:
    group: Group
    start: float | None = None
    lo: float | None = None  # highest rate found feasible
    hi: float | None = None  # lowest rate found infeasible
    lo_row: dict[str, Any] | None = None
    hi_row: dict[str, Any] | None = None
    next: float | None = None
    done: bool = False
    error: dict[str, Any] | None = None  # the run failed (does not fit, ...)
    replays: int = 0
    probes: list[tuple[float, bool]] = field(default_factory=list)


def find_max_rate(trace: str, slos: Sequence[str | Slo] | str, *, hws: list[str] | None = None,
                  policies: list[str] | None = None, slots: list[int | None] | None = None,
                  batches: list[int] | None = None, seeds: int = 1, tol: float = 0.05,
                  start_rate: float | None = None, max_rate: float | None = None,
                  base: dict[str, Any] | None = None, workers: int | None = None, out: str | None = None,
                  progress: bool | None = None, runtimes: list[str] | None = None,
         host_memory: list[float | None] | None = None) -> pd.DataFrame:
    """Per configuration, the highest Poisson arrival rate (requests/s) at which every SLO holds.

    The search brackets, then bisects (geometrically) until the lowest infeasible rate is within `tol`
    (relative) of the highest feasible one. It starts at `start_rate`, or at the closed-loop throughput
    (requests/s with every request waiting at t=0: one extra replay per configuration), doubles up to
    `max_rate` (default 64x the start) and halves down to start/64 (or until halving changes no SLO
    metric: the requests no longer meet). Each rate runs `seeds` arrival draws
    (seeds fixed, so the search is deterministic); feasibility is the mean over them. With a fixed seed the
    arrival times scale as 1/rate, so feasibility is monotone in the rate only approximately (continuous
    batching groups requests differently at each rate): the result is a rate found feasible, with a higher
    one within `tol` found infeasible.

    One row per distinct run: max_rate (NaN: infeasible even at the lowest rate tried), rate_infeasible
    (NaN: feasible up to max_rate, `bounded` False), the SLO metrics and tokens_per_s (simulated) at
    max_rate, tokens_per_s_offered (max_rate x decode tokens per request) and usd_per_mtok
    (price_usd_per_hour / offered tokens per hour), binding (the SLO that fails at
    rate_infeasible), replays, probes (the rates tried in order, `x` after an infeasible one).

    A finite trace is a short burst: above the capacity the queue grows only for as many requests as the
    trace has, and at a high enough rate every request arrives at once. Give a TTFT (or queue / e2e) SLO and
    enough requests (`base={"requests": N}` cycles the trace) for overload to show; with a TPOT SLO alone
    the search may end at its cap (`bounded` False)."""
    slos = _validate_common(slos, seeds, base, serving=True, workers=workers)
    for name, v in (("tol", tol), ("start_rate", start_rate), ("max_rate", max_rate)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or v <= 0):
            raise InputError(name, None, f"must be a finite number > 0, got {v!r}")
    fixed = sorted({"rate", "arrivals", "cv"} & set(base or {}))
    if fixed:
        raise InputError("base", fixed[0], "find_max_rate searches the Poisson arrival rate: leave the arrivals "
                                           "to it (start_rate: where the search starts)")
    if not 0.001 <= tol <= 1:
        raise InputError("tol", None, f"relative tolerance must be in [0.001, 1], got {tol:g}")
    if start_rate is not None and max_rate is not None and max_rate < start_rate:
        raise InputError("max_rate", None, f"must be >= start_rate ({start_rate:g}), got {max_rate:g}")
    # rate 1 stands for every rate: checks the values and prepares the serving scenario (its memory plan)
    rows = search_space(trace, hws, policies, slots, batches, 1.0, base, runtimes, host_memory)
    groups = merge_identical(rows)
    ci = list(dict.fromkeys([s.metric for s in slos] + ["tokens_per_s"]))
    states = [_Search(g) for g in groups]
    with _store(out) as path, _bar(progress, "find max rate") as bar, Runs(path, workers, bar.update) as runs:
        if start_rate is None:  # the closed-loop throughput: where the search starts
            closed = runs([{k: v for k, v in g.params.items() if k not in ("arrivals", "rate", "seed")}
                           for g in groups])
            for st, rec in zip(states, closed):
                st.replays += 1
                if rec.get("status") != "ok":
                    st.error, st.done = rec, True
                else:
                    st.start = _round_rate(max(float(rec.get("requests_per_s") or 0.0), 1e-6))
        else:
            for st in states:
                st.start = _round_rate(start_rate)
        for st in states:
            st.next = st.start
        while pending := [st for st in states if not st.done]:
            bar.set_postfix_str(f"{len(states) - len(pending)}/{len(states)} configurations settled")
            recs = runs([r for st in pending for r in _rows_of([st.group], seeds, {"rate": st.next})])
            for i, st in enumerate(pending):
                agg = aggregate(recs[i * seeds:(i + 1) * seeds], ci)
                st.replays += seeds
                _step(st, agg, slos, tol, max_rate)
        bar.set_postfix_str(f"{len(states)}/{len(states)} configurations settled")
    df = _finish(pd.DataFrame([_max_rate_row(st, slos, ci) for st in states]), groups, runs)
    return df


def _step(st: _Search, agg: dict[str, Any], slos: list[Slo], tol: float, max_rate: float | None) -> None:
    """Records the probe at st.next and picks the next rate (or ends the search)."""
    r = st.next
    prev = st.hi_row
    if agg.get("status") != "ok":
        st.error, st.done = agg, True
        return
    worst, _ = judge(agg, slos)
    ok = worst <= 1.0
    st.probes.append((r, ok))
    if ok:
        st.lo, st.lo_row = r, agg
    else:
        st.hi, st.hi_row = r, agg
    cap = max_rate if max_rate is not None else 64 * st.start
    floor = st.start / 64
    if st.hi is None:  # feasible so far: go up
        nxt = _round_rate(min(r * 2, cap))
        st.done = nxt <= r  # feasible at the cap: unbounded within the search
    elif st.lo is None:  # infeasible so far: go down
        nxt = _round_rate(r / 2)
        # below the floor, or halving the rate changed none of the SLO metrics: the requests no longer
        # meet (each runs alone), lower rates only add idle time
        st.done = nxt < floor or (prev is not None and all(
            _close(prev.get(s.metric), agg.get(s.metric)) for s in slos))
    else:
        st.done = st.hi <= st.lo * (1 + tol)
        nxt = _round_rate(math.sqrt(st.lo * st.hi))
        if nxt <= st.lo or nxt >= st.hi:  # the rounding leaves nothing between them
            st.done = True
    st.next = nxt


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def _max_rate_row(st: _Search, slos: list[Slo], ci: list[str]) -> dict[str, Any]:
    p = st.group.params
    row: dict[str, Any] = {k: v for k, v in p.items() if k not in ("arrivals", "rate", "seed")}
    row["key"] = "|".join(f"{k}={v}" for k, v in sorted(row.items()))
    price = _row_price(p)
    row.update(max_rate=math.nan, rate_infeasible=math.nan, bounded=False, feasible=False, status="ok",
               error="", binding="", usd_per_hour=math.nan if price is None else float(price),
               usd_per_mtok=math.nan, replays=st.replays,
               probes=", ".join(f"{r:g}{'' if ok else 'x'}" for r, ok in st.probes))
    if st.error is not None:
        kind = "memory" if "does not fit" in str(st.error.get("error")) else st.error.get("status")
        row.update(status=st.error.get("status"), error=st.error.get("error", ""),
                   binding=f"{kind}: {st.error.get('error', '')}")
        return row
    if st.hi is not None:
        row["rate_infeasible"] = st.hi
        row["binding"] = judge(st.hi_row, slos)[1]
        row["bounded"] = True
    if st.lo is None:
        row["binding"] = f"at {st.hi:g} req/s (the lowest rate tried): {row['binding']}"
        return row
    at = st.lo_row
    row["max_rate"] = st.lo
    row["feasible"] = True
    for m in [*ci, "requests_per_s", "peak_gpu_mem_bytes", "hit_rate"]:
        for suffix in ("", ".ci_low", ".ci_high"):
            if m + suffix in at:
                row[m + suffix] = at[m + suffix]
    # the load served: the rate times the decode tokens a request brings (the simulated tokens_per_s of a
    # finite run also counts the drain after the last arrival)
    per_request = float(at.get("decode_tokens") or 0) / float(at.get("summary.requests") or math.nan)
    row["tokens_per_s_offered"] = tps = st.lo * per_request
    row["usd_per_mtok"] = row["usd_per_hour"] / (tps * 3600) * 1e6 if tps > 0 else math.nan
    return row


def ranked_max_rate(df: pd.DataFrame) -> pd.DataFrame:
    """Configurations that sustain some rate, cheapest per token at their max rate first."""
    return df[df["feasible"]].sort_values(["usd_per_mtok", "max_rate"], ascending=[True, False], kind="stable")


# ---- figures -------------------------------------------------------------------------------------------------
def plot(ev: pd.DataFrame, slos: list[Slo], path: str) -> None:
    """plan_figure(ev, slos) written to `path` (atomically)."""
    _save(plan_figure(ev, slos), path)


def plan_figure(ev: pd.DataFrame, slos: list[Slo]):
    """Two panels: the first SLO's metric against $/Mtok and against peak GPU memory, Pareto fronts drawn
    (with seeds, each point's 95% CI as an error bar)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    slo = slos[0]
    ok = ev[(ev["status"] == "ok") & ev["usd_per_mtok"].notna()].copy()
    ok = ok[np.isfinite(ok["usd_per_mtok"]) & ok[slo.metric].notna()]
    fig = Figure(figsize=(13, 5.2))
    axes = fig.subplots(1, 2)
    hws = sorted(ok["hw"].unique())
    colors = dict(zip(hws, colormaps["tab10"](np.linspace(0, 1, 10))[: len(hws)]))
    lower = slo.op == "<="  # the front minimises latency or maximises a lower-bounded metric
    for ax, xcol, xlabel, xscale, log in (
            (axes[0], "usd_per_mtok", "cost, $ per million decode tokens (log)", 1.0, True),
            (axes[1], "peak_gpu_mem_bytes", "peak GPU memory, GiB", 1.0 / GIB, False)):
        for hw in hws:
            g = ok[ok["hw"] == hw]
            for feas in (True, False):
                h = g[g["feasible"] == feas]
                ax.scatter(h[xcol] * xscale, h[slo.metric], s=28, marker="o",
                           facecolors=colors[hw] if feas else "none", edgecolors=colors[hw])
                lo_col, hi_col = f"{slo.metric}.ci_low", f"{slo.metric}.ci_high"
                if lo_col in h and h[lo_col].notna().any():  # seeds: the 95% CI of the mean
                    y = h[slo.metric].to_numpy(float)
                    err = np.vstack([y - h[lo_col].to_numpy(float), h[hi_col].to_numpy(float) - y])
                    ax.errorbar(h[xcol] * xscale, y, yerr=np.nan_to_num(err), fmt="none", ecolor=colors[hw],
                                alpha=0.6, lw=1)
        if len(ok):
            x = ok[xcol].to_numpy(float) * xscale
            y = ok[slo.metric].to_numpy(float)
            f = np.flatnonzero(pareto_mask(x, y, (True, lower)))
            f = f[np.argsort(x[f], kind="stable")]
            ax.step(x[f], y[f], where="post", color="k", lw=1.2)
            best = ranked(ok)
            if len(best):
                b = best.iloc[0]
                ax.annotate(f"cheapest feasible:\n{label(b)}", (b[xcol] * xscale, b[slo.metric]),
                            xytext=(14, 22), textcoords="offset points", fontsize=8,
                            arrowprops={"arrowstyle": "->", "lw": 0.8})
        ax.axhline(slo.limit, color="r", ls="--", lw=1)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(slo.metric + (" (ms)" if "_ms." in slo.metric else ""))
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], marker="o", ls="", color=colors[h], label=h) for h in hws] + [
        Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="grey", label="misses an SLO"),
        Line2D([], [], color="k", lw=1.2, label="Pareto front"),
        Line2D([], [], color="r", ls="--", lw=1, label=f"SLO {slo.metric} {slo.op} {slo.limit:g}")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.995, 0.5), fontsize=8, frameon=False)
    axes[0].set_title("latency vs cost (filled: meets every SLO)", fontsize=10)
    axes[1].set_title("latency vs GPU memory", fontsize=10)
    fig.tight_layout()
    return fig


def plot_max_rate(df: pd.DataFrame, path: str) -> None:
    """max_rate_figure(df) written to `path` (atomically)."""
    _save(max_rate_figure(df), path)


def max_rate_figure(df: pd.DataFrame):
    """Max sustainable rate against $/Mtok at that rate, one colour per GPU, the Pareto front (more load,
    less cost) drawn."""
    from matplotlib.figure import Figure

    ok = df[df["feasible"] & np.isfinite(df["usd_per_mtok"].astype(float))]
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for hw, g in ok.groupby("hw"):
        ax.scatter(g["usd_per_mtok"], g["max_rate"], s=30, label=hw)
    if len(ok):
        x, y = ok["usd_per_mtok"].to_numpy(float), ok["max_rate"].to_numpy(float)
        f = np.flatnonzero(pareto_mask(x, y, (True, False)))
        f = f[np.argsort(x[f], kind="stable")]
        ax.step(x[f], y[f], where="post", color="k", lw=1.2, label="Pareto front")
        for i in f:
            ax.annotate(label(ok.iloc[i]), (x[i], y[i]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("$ per million decode tokens at the max rate (log)")
    ax.set_ylabel("max rate within the SLOs (requests/s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("most load within the SLOs vs its cost")
    fig.tight_layout()
    return fig


def _save(fig, path: str) -> None:
    from simmoe.fileio import atomic_path

    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
