"""Progress bars on stderr: one switch for ``--quiet``, and rare updates when stderr is not a terminal.

Every bar of the package is made here (``from benchmark.progress import tqdm``), so ``--quiet`` silences all of
them (data generation, classifier training, sampling, metrics) and a redirected run writes a bar line every
``LOG_INTERVAL_S`` seconds instead of a few per second.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm as _tqdm

LOG_INTERVAL_S = 30.0  # seconds between bar updates when stderr is a file or a pipe
_quiet = False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no progress bar at all for the rest of the process."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    """:class:`tqdm.tqdm`, disabled under ``--quiet``, updating every ``LOG_INTERVAL_S`` s off a terminal."""
    kwargs["disable"] = bool(kwargs.get("disable", False)) or _quiet
    stream = kwargs.get("file") or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return _tqdm(*args, **kwargs)
