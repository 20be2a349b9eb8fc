"""Running a sweep: each configuration is one replay, on a local process pool or on Ray.

Workers return flat records (parameters + status + flattened summary); only the calling process writes the
store, so that a sweep is resumable whatever the backend. A configuration whose values are bad (InputError:
a cache that does not fit, batch 0, a bad option value) is recorded with its error and the sweep goes on;
an unexpected exception is recorded as status "crash" with its type and message.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from simmoe import __version__
from simmoe.errors import InputError, SimmoeWarning, warn
from simmoe.provenance import flat_columns
from simmoe.sweeps.spec import POLICY_KINDS, Config, config_fields, param_names
from simmoe.sweeps.store import ResultStore, flatten

logger = logging.getLogger(__name__)
WARNINGS = "_warnings"  # run_one's key for its warnings: shown by the caller, not stored in the results


def trace_at(path: str):
    """The trace in `path`, read once per version of the file (a notebook may rewrite it between runs)."""
    try:
        st = os.stat(path)
    except OSError:  # read_trace says what is wrong, as an InputError naming the file
        from simmoe.trace.format import read_trace

        return read_trace(path)
    return _read(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int, size: int):
    from simmoe.trace.format import read_trace

    return read_trace(path)  # replay never mutates the trace it is given (max_requests selects a copy)


def _options(resolved: dict[str, Any], kind: str) -> dict[str, Any]:
    prefix = f"{kind}_options."
    return {k[len(prefix):]: v for k, v in resolved.items() if k.startswith(prefix)}


def replay_args(resolved: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """A configuration's policy set, runtime profile (None: the policies' own) and ReplayConfig fields."""
    from simmoe.policies.config import policy_set

    cli: dict[str, Any] = {"cache": resolved.get("policy") or "lru", "cache_options": _options(resolved, "policy")}
    for kind in POLICY_KINDS[1:]:
        cli[kind] = resolved.get(kind)
        cli[f"{kind}_options"] = _options(resolved, kind)
    pset = policy_set(cli)
    fields = set(config_fields())
    cfg = {k: v for k, v in resolved.items() if k in fields}
    runtime = None
    overrides = {k.partition(".")[2]: v for k, v in resolved.items() if k.startswith("runtime_options.")}
    if resolved.get("runtime") is not None or overrides:
        from simmoe.engine.setup import resolve
        from simmoe.runtime.profile import load_runtime

        runtime = load_runtime(resolved.get("runtime") or resolve(pset).runtime, overrides)
    return pset, runtime, cfg


def run_one(resolved: dict[str, Any]) -> dict[str, Any]:
    """Replays one configuration; returns status, error, run_s, the flattened summary and, under WARNINGS, the
    messages of the SimmoeWarnings it raised (a worker process cannot show them: the caller does)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SimmoeWarning)
        out = _run_one(resolved)
    said = [str(w.message) for w in caught if issubclass(w.category, SimmoeWarning)]
    if said:
        out[WARNINGS] = list(dict.fromkeys(said))
    return out


def _run_one(resolved: dict[str, Any]) -> dict[str, Any]:
    from simmoe.engine.replay import replay

    t0 = time.perf_counter()
    try:
        pset, runtime, cfg = replay_args(resolved)
        res = replay(trace_at(str(resolved["trace"])), str(resolved["hw"]), pset, None, runtime=runtime, **cfg)
        # the run's provenance as flat columns: simmoe_version, trace/hw/runtime sha256, policies, settings
        out = {"status": "ok", "error": "", **flatten(res.summary, reserved=param_names()),
               **flat_columns(res.provenance)}
    except InputError as e:
        out = {"status": "error", "error": e.line()}
    except Exception as e:  # a simulator bug must not lose the rest of the sweep; recorded, retried on resume
        last = traceback.extract_tb(e.__traceback__)[-1]
        out = {"status": "crash",
               "error": f"{type(e).__name__}: {e} ({Path(last.filename).name}:{last.lineno})"}
    out.setdefault("simmoe_version", __version__)  # a failed configuration says which version failed it
    out["run_s"] = time.perf_counter() - t0
    return out


def _record(cfg: Config, result: dict[str, Any]) -> dict[str, Any]:
    return {**cfg.params, "key": cfg.key, **result}


@dataclass
class SweepReport:
    total: int  # configurations in the spec
    skipped: int  # already done (resume)
    ran: int
    ok: int
    errors: int  # bad values, recorded (InputError)
    crashes: int  # unexpected exceptions, recorded
    wall_s: float
    results: pd.DataFrame


def process_pool(workers: int) -> Executor:
    """The local backend's pool; spawn: the parent may hold threads (tqdm's monitor, BLAS) that fork would
    copy in a broken state."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))


def _local(todo: list[Config], workers: int, pool: Executor | None = None) -> Iterator[tuple[Config, dict[str, Any]]]:
    if pool is None and workers <= 1:  # in-process: no pool start-up, tracebacks readable under a debugger
        for cfg in todo:
            yield cfg, run_one(cfg.resolved)
        return
    from concurrent.futures import as_completed

    own = pool is None
    pool = pool or process_pool(workers)
    futures = {pool.submit(run_one, cfg.resolved): cfg for cfg in todo}
    try:
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    except BaseException:
        for fut in futures:
            fut.cancel()
        if own:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    if own:
        pool.shutdown()


def _ray(todo: list[Config], workers: int | None, address: str | None) -> Iterator[tuple[Config, dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise InputError("--backend", "ray", "ray is not installed (pip install 'simmoe[ray]')") from None
    started = not ray.is_initialized()
    if started:
        kw: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False}
        if address is None and workers:
            kw["num_cpus"] = workers
        try:
            ray.init(**kw)
        except ConnectionError as e:
            raise InputError("--address", address, f"cannot connect to the Ray cluster ({e})") from None
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_one)
        pending = {remote.remote(cfg.resolved): cfg for cfg in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def run_sweep(configs: list[Config], out: str | Path, workers: int | None = None, backend: str = "local",
              address: str | None = None, progress: bool | None = None,
              on_record: Callable[[dict[str, Any]], None] | None = None,
              pool: Executor | None = None) -> SweepReport:
    """Runs the configurations not yet in `out`, appending each record as it finishes; writes the table.

    progress: a bar on stderr when it is a terminal (simmoe.progress); False: none. pool: a process_pool() the
    local backend uses instead of starting its own (callers that run many small batches keep one warm)."""
    from simmoe.progress import bar as progress_bar

    if backend not in ("local", "ray"):
        raise InputError(None, None, f"must be local or ray, got {backend!r}", param="backend")
    if workers is not None and workers < 1:
        raise InputError(None, None, f"must be >= 1, got {workers}", param="workers")
    t0 = time.perf_counter()
    store = ResultStore(out)
    done = store.done_keys()
    todo = [c for c in configs if c.key not in done]
    workers = workers or os.cpu_count() or 1
    counts = {"ok": 0, "error": 0, "crash": 0}
    logger.info(f"sweep: {len(todo)} of {len(configs)} configurations to run ({len(configs) - len(todo)} done "
                f"earlier), {backend} backend, {workers} workers")
    gen = _local(todo, min(workers, max(1, len(todo))), pool) if backend == "local" \
        else _ray(todo, workers, address)
    try:
        with progress_bar(total=len(todo), enabled=progress, unit="cfg", desc="sweep") as bar:
            for cfg, result in gen:
                for message in result.pop(WARNINGS, ()):
                    warn(message)
                rec = _record(cfg, result)
                logger.debug(f"{cfg.key} {rec['status']} in {rec['run_s']:.2f} s {rec.get('error') or ''}")
                store.add(rec)
                counts[rec["status"]] += 1
                if on_record:
                    on_record(rec)
                bar.update(1)
    finally:
        store.close()
    order = [c.key for c in configs]
    cols = list(dict.fromkeys(k for c in configs for k in c.params))
    df = store.finish(order, cols)
    return SweepReport(len(configs), len(configs) - len(todo), len(todo), counts["ok"], counts["error"],
                       counts["crash"], time.perf_counter() - t0, df)
