"""Forward hooks on router modules: record each MoE layer's routing decision for one forward step.

Batch size is 1 (one request at a time), so a step's router call at column c covers exactly that step's
T tokens. With `predict`, the hook on column c also applies the next MoE layer's router (same stack) to
column c's router input, the hidden state a speculative prefetcher would have one layer early.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from simmoe.capture.models import Arch, RouterSite


class RouterRecorder:
    """Context manager: hooks every router; `take(tokens)` returns and clears one step's records."""

    def __init__(self, arch: Arch, sites: list[RouterSite], top_k: int, predict: bool = False) -> None:
        self.arch, self.sites, self.k, self.predict = arch, sites, top_k, predict
        self._next: dict[int, RouterSite | None] = {}
        for i, s in enumerate(sites):
            nxt = sites[i + 1] if i + 1 < len(sites) and sites[i + 1].stack == s.stack else None
            self._next[s.column] = nxt
        self._handles: list[Any] = []
        self._busy = False  # set while a hook calls the next router itself (its own hook must not record)
        self._step: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}

    def __enter__(self) -> RouterRecorder:
        for s in self.sites:
            self._handles.append(s.module.register_forward_hook(self._hook(s)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, site: RouterSite):
        def hook(module: torch.nn.Module, args: tuple, out: Any) -> None:
            if self._busy:
                return
            if site.column in self._step:
                raise RuntimeError(f"router {site.name} ran twice in one step (batched or looping model?)")
            ids, w = self.arch.read(out, module)
            pred = None
            nxt = self._next[site.column]
            if self.predict and nxt is not None:
                self._busy = True
                try:
                    pids, pw = self.arch.read(nxt.module(args[0]), nxt.module)
                finally:
                    self._busy = False
                pred = _sorted(pids, pw)[0]
            sid, sw = _sorted(ids, w)
            self._step[site.column] = (sid, sw, pred)
        return hook

    def take(self, tokens: int, columns: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This step's (experts [T, L, K] int16, gates [T, L, K] float32, predicted [T, L, K] int16);
        `columns` = the trace columns that must have run (the others stay -1 / NaN)."""
        L = len(self.sites)
        ex = np.full((tokens, L, self.k), -1, np.int16)
        gs = np.full((tokens, L, self.k), np.nan, np.float32)
        pr = np.full((tokens, L, self.k), -1, np.int16)
        missing = sorted(set(columns) - set(self._step))
        if missing:
            raise RuntimeError(f"router {self.sites[missing[0]].name} did not run in this step")
        for c, (ids, w, pred) in self._step.items():
            if ids.shape[0] != tokens:
                raise RuntimeError(f"router {self.sites[c].name} saw {ids.shape[0]} tokens, expected {tokens}")
            k = ids.shape[1]
            ex[:, c, :k] = ids
            gs[:, c, :k] = np.where(ids >= 0, w, np.nan)
            if pred is not None:
                pr[:, c, :pred.shape[1]] = pred
        self._step.clear()
        return ex, gs, pr


def _sorted(ids: torch.Tensor, w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Slots in descending gate order (dropped slots, NaN, last); DeepSeek's top-k is unsorted."""
    ids_np = ids.detach().to("cpu").numpy().astype(np.int64)
    w_np = w.detach().to("cpu", torch.float32).numpy()
    key = np.where(ids_np >= 0, -np.nan_to_num(w_np, nan=0.0), np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    return (np.take_along_axis(ids_np, order, 1).astype(np.int16),
            np.take_along_axis(w_np, order, 1).astype(np.float32))
