"""One writer per run directory: an advisory `flock` on RUN/.lock.

Two `extmem train` processes with the same `--out` would interleave their metrics lines and
checkpoints (or leave a config.toml that describes one model while the checkpoints hold the
other). The writer holds an exclusive `flock` on RUN/.lock, which records its PID and start
time; a second writer is refused with a line naming that PID before it touches anything. The
kernel drops the lock when its process ends, however it ends (kill -9 included), so a lock file
that exists but is not locked is stale and is simply taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from extmem.errors import ConfigError, TrainingError

LOCK_FILE = ".lock"
# flock is not available on some network file systems: run unlocked there rather than not at all
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunInUseError(TrainingError):
    """Another live process holds the run directory's lock (`holder` names it)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def _holder(fd: int) -> str:
    """'process PID (started ..., host ...)' from the lock file, as well as it can be read."""
    for _ in range(3):  # the holder may be between taking the lock and writing its PID
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", errors="replace")
        try:
            info = json.loads(text)
            return f"process {int(info['pid'])} (started {info['started']} on {info['host']})"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "another process"


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` still names the file `fd` has open (its holder may have removed it)."""
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


class RunLock:
    """The exclusive lock on a run directory (created if missing); a context manager.

    `created` tells whether this lock created the directory."""

    def __init__(self, run_dir: Path, command: str = "extmem train") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.created = False
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"{self.run_dir}: is a file, not a run directory; choose another "
                              "--out (a new or existing run directory)")
        self.created = not self.run_dir.exists()
        while self._fd is None:
            try:  # again on every try: a previous holder that created RUN may have removed it
                self.run_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated unlocked
            except OSError as exc:
                raise ConfigError(f"{self.run_dir}: cannot create the run directory or its "
                                  f"{LOCK_FILE} ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _UNSUPPORTED:
                    os.close(fd)
                    return self
                holder = _holder(fd)
                os.close(fd)
                raise RunInUseError(
                    f"run directory {self.run_dir} is in use by {holder}, which holds "
                    f"{self.path}; two writers would mix their metrics and checkpoints. Wait "
                    f"for it to end (or stop it), or choose another --out", holder) from None
            if _same_file(fd, self.path):
                self._fd = fd
            else:  # removed by its previous holder after we opened it: lock the new one
                os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        return self

    def release(self) -> None:
        """Free the lock (an empty lock file is a free one); idempotent. A run directory this
        lock created and nothing else wrote into (set-up failed) is removed with it."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if _same_file(fd, self.path):
                os.ftruncate(fd, 0)
                if self.created and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
                    self.path.unlink()  # still held: a waiting writer sees it gone and retries
                    self.run_dir.rmdir()
        except OSError:
            pass  # best effort: an empty lock file left behind is a free one
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def holder_of(run_dir: Path) -> str | None:
    """Who holds RUN's lock right now ('process PID (...)'), or None when nobody does (or RUN
    does not exist). Probes by taking and freeing the lock, so a run that is free stays free,
    and a directory that did not exist is left not existing."""
    if not Path(run_dir).is_dir():
        return None
    try:
        with RunLock(run_dir, command="probe"):
            return None
    except RunInUseError as exc:
        return exc.holder
