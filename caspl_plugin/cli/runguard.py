"""Guards for CLI commands that train and write files (``distill``, ``adapt``, ``teacher-cache``, ...).

A training command (``distill``, ``adapt``) wraps everything after its input checks in
:func:`guarded_run`, which does, on rank 0, in this order::

    preflight_output(output, suffix=".safetensors", what="--output")
    preflight_output(checkpoint, suffix=".safetensors", what="checkpoint")
    with output_lock(output):
        remove_stale_temps(output); remove_stale_temps(checkpoint)
        ...  # build, train (the loop raises engine.TrainingInterrupted on Ctrl-C), write

:func:`caspl_plugin.cli.main` turns the failures into one line and an exit code:
``CommandError`` / bad input -> 2, other ``OSError`` (permission, disk full, I/O) -> 1 with
:func:`describe_os_error`, Ctrl-C -> :func:`interrupt_message` and :data:`INTERRUPTED_EXIT`.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
from pathlib import Path
from typing import Iterator, Optional, Union

from .common import CommandError

#: Exit code of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT = 130

PathLike = Union[str, os.PathLike]


def preflight_output(path: PathLike, *, suffix: Optional[str] = None, what: str = "output") -> None:
    """Check that ``path`` can be written, before any work is done; raise :class:`CommandError` if not.

    ``path`` must end in ``suffix`` (if given) and must not be a folder; an existing file there must
    be replaceable (:func:`replace_blocker`); its folder must exist or be creatable (it is created)
    and must accept a new file (a temporary file is created and removed). ``what`` names the path in
    the messages (e.g. ``"--output"``).
    """
    from caspl_plugin.files import temporary_path

    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise CommandError(f"{what} must end in {suffix}, got {path}")
    if path.is_dir():
        raise CommandError(f"{what} {path} is a folder; expected the path of a file to write")
    if path.is_file():
        blocker = replace_blocker(path)
        if blocker:
            raise CommandError(f"cannot replace {what} {path}: {blocker}; the result would be lost when training ends. "
                               "Choose another output, or make the file replaceable first")
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise CommandError(f"cannot create the folder of {what} {path}: {existing} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create the folder of {what} {path}: {describe_os_error(error)}") from error
    probe = temporary_path(path)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        raise CommandError(f"cannot write {what} {path}: folder {folder} does not accept new files ({describe_os_error(error)})") from error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


#: Linux inode flags (``FS_IOC_GETFLAGS``): the file cannot be replaced, renamed or unlinked
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _inode_flags(path: Path) -> Optional[int]:
    """The file's Linux inode flags (``lsattr``), or None where they cannot be read (other systems,
    file systems without them)."""
    import struct
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        import fcntl
    except ImportError:
        return None
    request = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1  # _IOR('f', 1, long)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(descriptor, request, struct.pack("i", 0)))[0]
    except OSError:
        return None
    finally:
        os.close(descriptor)


def replace_blocker(path: PathLike) -> Optional[str]:
    """Why the existing file ``path`` could not be replaced by a finished run's ``os.replace`` (None
    when nothing is known to block it): an immutable or append-only file (Linux ``chattr +i``/``+a``,
    BSD/macOS ``chflags uchg``/``uappnd``), or a sticky folder (``/tmp``-like) where the file belongs
    to another user. Nothing is written, renamed or removed to find out."""
    import stat

    path = Path(path)
    try:
        info, folder = os.lstat(path), os.stat(path.parent)
    except OSError:
        return None
    flags = _inode_flags(path)
    if flags is not None and flags & _FS_IMMUTABLE_FL:
        return "the file is immutable (chattr +i; undo with chattr -i)"
    if flags is not None and flags & _FS_APPEND_FL:
        return "the file is append-only (chattr +a; undo with chattr -a)"
    bsd = getattr(info, "st_flags", 0)
    if bsd & (getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "SF_IMMUTABLE", 0)):
        return "the file is immutable (chflags uchg/schg)"
    if bsd & (getattr(stat, "UF_APPEND", 0) | getattr(stat, "SF_APPEND", 0)):
        return "the file is append-only (chflags uappnd/sappnd)"
    user = os.geteuid() if hasattr(os, "geteuid") else None
    if user not in (None, 0) and folder.st_mode & stat.S_ISVTX and user not in (info.st_uid, folder.st_uid):
        return (f"its folder {path.parent} is sticky and the file belongs to another user (uid {info.st_uid}), so only "
                "that user can replace it")
    return None


def remove_stale_temps(path: PathLike) -> int:
    """Remove the ``.<name>.<random>.tmp`` files left next to ``path`` by killed writes; return how many.

    Call it while holding :func:`output_lock` on the output, so no live write is removed.
    """
    from caspl_plugin.files import stale_temporaries

    removed = 0
    for temporary in stale_temporaries(path):
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
            removed += 1
    return removed


def _lock_paths(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".lock"), path.with_name(path.name + ".lock.json")


def _owner_text(owner_file: Path) -> str:
    try:
        owner = json.loads(owner_file.read_text(encoding="utf-8"))
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}" + (
            f", caspl {owner['command']}" if owner.get("command") else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "its details are not recorded yet"


@contextlib.contextmanager
def output_lock(path: PathLike, *, command: Optional[str] = None) -> Iterator[Path]:
    """Hold an exclusive lock on the output ``path`` (``<path>.lock``) for the block.

    A second holder refuses at once with a :class:`CommandError` naming the running one (its pid,
    host and start time, kept in ``<path>.lock.json`` while the lock is held). The lock is the
    operating system's (``filelock``), so a killed run never leaves it held; a finished run removes
    the lock file (while still holding it, and a holder checks that the file it locked is still the
    one at the path, so two runs never both hold it).
    """
    from filelock import FileLock, Timeout

    from caspl_plugin.files import atomic_write

    path = Path(path)
    lock_file, owner_file = _lock_paths(path)
    lock = _acquire(FileLock, Timeout, lock_file, path, owner_file)
    try:
        remove_stale_temps(owner_file)
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
        }
        atomic_write(owner_file, json.dumps(owner) + "\n")
        yield lock_file
    finally:
        with contextlib.suppress(OSError):
            owner_file.unlink()
        with contextlib.suppress(OSError):
            lock_file.unlink()  # still held: a run that opened the old file finds it gone and retries
        lock.release()


def _acquire(FileLock, Timeout, lock_file: Path, path: Path, owner_file: Path):
    """The lock on ``lock_file``, held on the file that is at the path (a run that finished between
    our open and our lock removed the file we locked: lock the new one)."""
    for _ in range(3):
        lock = FileLock(str(lock_file), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise CommandError(
                f"{path} is being written by another run ({_owner_text(owner_file)}); "
                "wait for it to finish or choose another output") from None
        descriptor = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
        try:
            same = descriptor is None or os.fstat(descriptor).st_ino == os.stat(lock_file).st_ino
        except OSError:
            same = False
        if same:
            return lock
        lock.release()
    raise CommandError(f"{path}: its lock file {lock_file} keeps changing; another run is starting and finishing")


def checkpoint_path(output: PathLike) -> Path:
    """Where a training command keeps the checkpoint of ``output``: ``<stem>.ckpt.safetensors`` beside it."""
    output = Path(output)
    return output.with_name(output.stem + ".ckpt.safetensors")


@contextlib.contextmanager
def guarded_run(output: PathLike, *, command: str) -> Iterator[Path]:
    """The guard of a training run writing ``output`` and its checkpoint (yielded): on rank 0 both are
    preflighted, ``output`` is locked and stale temp files of both are removed; the other processes
    of a torchrun job only train."""
    import logging

    from caspl_plugin import distributed

    checkpoint = checkpoint_path(output)
    if not distributed.is_main():
        yield checkpoint
        return
    preflight_output(output, suffix=".safetensors", what="--output")
    preflight_output(checkpoint, suffix=".safetensors", what="checkpoint")
    with output_lock(output, command=command):
        removed = remove_stale_temps(output) + remove_stale_temps(checkpoint)
        if removed:
            logging.getLogger(__name__).info("removed %d temporary file(s) left by an interrupted run", removed)
        yield checkpoint


def describe_os_error(error: OSError) -> str:
    """One line for an ``OSError``: what failed, on which path, and the errno name."""
    reason = error.strerror or str(error) or type(error).__name__
    code = errno.errorcode.get(error.errno) if error.errno is not None else None
    text = f"{reason} ({code})" if code else reason
    if error.filename is not None:
        text += f": {error.filename}"
        if getattr(error, "filename2", None) is not None:
            text += f" -> {error.filename2}"
    return text


def interrupt_message(error: BaseException) -> str:
    """The line printed for Ctrl-C: where training stopped and how to go on.

    ``error`` is a :class:`caspl_plugin.engine.TrainingInterrupted` (epoch/step/checkpoint known)
    or any other ``KeyboardInterrupt`` (interrupted before or after training).
    """
    epoch, step = getattr(error, "epoch", None), getattr(error, "step", None)
    if epoch is None:
        return "interrupted"
    text = f"interrupted at epoch {epoch}, step {step}; resume with --resume"
    done = getattr(error, "completed_epochs", None)
    if done:
        text += f" (the checkpoint holds {done} completed epoch(s))"
    elif done == 0:
        text += " (no epoch completed yet: it starts over)"
    return text


def warmup_warning(epochs: int, warmup_epochs: int, warmup_lr: float, lr: float) -> Optional[str]:
    """A warning when every epoch runs at the warm-up rate (``epochs <= warmup_epochs``), else None."""
    if epochs > warmup_epochs:
        return None
    return (f"--epochs {epochs} does not exceed the {warmup_epochs} warm-up epoch(s): "
            f"every epoch trains at the warm-up rate {warmup_lr:g}, never at --lr {lr:g}; "
            f"use --epochs {warmup_epochs + 1} or more")
