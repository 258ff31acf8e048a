"""Where derived data (trained tokenizers, parsed corpora) is cached, and atomic writes there.

The cache root is, in order: an explicit `cache_dir` argument, the `EXTMEM_CACHE` environment
variable, or `~/.cache/extmem`. Everything in it can be deleted at any time.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CACHE_ENV = "EXTMEM_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root directory (not created)."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env)
    return Path.home() / ".cache" / "extmem"


def write_atomic(path: Path, data: str | bytes) -> bool:
    """Write `data` (str as UTF-8) to `path` via a temporary file + rename (makes folders).

    Returns False instead of raising when the cache cannot be written (read-only disk etc.):
    a cache is an optimisation, never a reason to fail.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        tmp.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True
