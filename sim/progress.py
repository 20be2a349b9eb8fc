"""The one place that decides whether a progress bar is drawn.

Bars are tqdm's with `disable=None`: tqdm draws them only when stderr is a terminal, so a log file or a CI
job never gets one. `enabled=False` (the CLI's `--quiet`) turns them off everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool | None = True, **kw: Any):
    """A tqdm bar on stderr: drawn when stderr is a terminal, unless `enabled` is False (None: as True)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=True if enabled is False else None, file=sys.stderr, **kw)
