"""The data directory's lock: one archiver per data directory, since two would interleave one spool."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class DataDirLockedError(RuntimeError):
    pass


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold `data_dir/archiver.lock` for the life of the process (closing the handle releases it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "archiver.lock", "a+")  # noqa: SIM115 - held for the process' life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLockedError(f"another perfwatch-archiver uses data dir {data_dir}") from None
    return handle
