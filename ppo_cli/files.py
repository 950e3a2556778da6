"""Writing files safely: atomic replaces, and a lock that marks a folder as being written.

* :func:`atomic_write` / :func:`atomic_path`: the new content goes to a temporary file beside the
  destination, is synced, and renamed over it, so a crash, a kill or a full disk leaves the old
  file or the new one, never half of one (and never a stray temporary file after an error).
* :class:`FolderLock`: an exclusive OS lock (``flock``) on ``FOLDER/.lock``, held for as long as
  a process writes into the folder and released by the kernel when that process dies, however it
  dies. The holder writes its PID into the file, so a second writer can say who holds it.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

LOCK_FILE = ".lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock; ``pid`` is the holder's (None if it did not say)."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        who = f"PID {pid}" if pid is not None else "a process that has not written its PID yet"
        super().__init__(f"{folder} is in use by another ppo process ({who}); wait for it to end or stop it"
                         + (f" (kill -INT {pid})" if pid is not None else ""))
        self.folder = folder
        self.pid = pid


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (``mkstemp`` uses 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems cannot sync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) for a writer that needs a file name;
    when the block ends without an error, sync it and rename it over ``path``; otherwise delete it.
    An ``OSError`` names ``path``, the file the user knows."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    _fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file beside ``path`` (binary), sync it, and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of ``text`` as UTF-8, line endings as given."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that an atomic write cut short by a hard kill left in ``folder``."""
    for stale in Path(folder).glob(".*.tmp*"):
        with contextlib.suppress(OSError):
            stale.unlink()


class FolderLock:
    """``with FolderLock(folder):`` holds an exclusive lock on ``folder/.lock`` or raises.

    Raises :class:`FolderBusy` when another process holds it, and ``OSError`` when the lock file
    cannot be created (a read-only or missing folder). Locks are per open file, so one process
    taking the same folder twice conflicts with itself: take each folder once.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusy(self.folder, lock_holder(self.folder)) from None
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the lock holds all the same, only the PID is not on record
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(folder: Path) -> int | None:
    """The PID written in ``folder/.lock`` (its current or last holder), or None."""
    try:
        text = (Path(folder) / LOCK_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def check_writable(folder: Path) -> None:
    """Raise ``OSError`` unless a file can be created (and removed) in ``folder``."""
    fd, probe = tempfile.mkstemp(prefix=".ppo-write-test-", dir=folder)
    os.close(fd)
    os.unlink(probe)
