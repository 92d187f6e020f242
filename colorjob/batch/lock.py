"""One batch run per output folder at a time: ``OUTPUT/.colorjob/lock`` and ``lock.json``.

On a local disk (or NFS) the lock is an exclusive ``flock`` on ``OUTPUT/.colorjob/lock``, held
for the whole run: the kernel gives it to one process at a time and takes it back when that
process ends, however it ends, so there is nothing stale to take over. ``lock.json`` beside it
names the owner (host, pid, run id, start) for the message a second run gets.

Object stores have no locks: there ``lock.json`` is the lock. It is written and read back, and
refreshed every :data:`HEARTBEAT_S` seconds while the run lives. A lock is taken over only when
it is *proven* stale: unreadable or not refreshed for :data:`STALE_S` seconds, judged twice, a
heartbeat apart, as the same lock (same run id and heartbeat). A fresh lock is never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

import psutil

from colorjob import storage
from colorjob.batch.grid import BatchError
from colorjob.batch.ledger import STATE

LOCK = f"{STATE}/lock.json"
FLOCK = f"{STATE}/lock"
HEARTBEAT_S = 30.0
STALE_S = 600.0


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_stale(owner: dict, now: float | None = None) -> bool:
    """Whether a lock's owner is gone: not refreshed for :data:`STALE_S`, or (same host) its
    process no longer runs."""
    now = time.time() if now is None else now
    if now - float(owner.get("heartbeat", 0)) > STALE_S:
        return True
    if owner.get("host") != socket.gethostname():
        return False
    started = _process_started(int(owner.get("pid", -1)))
    return started is None or started > float(owner.get("process_started", 0)) + 1.0


class OutputLock:
    """``with OutputLock(output, run_id):`` holds the folder's lock for the block."""

    def __init__(self, output_root: str, run_id: str):
        self.fs, self.root = storage.resolve(output_root)
        self.output = output_root
        self.path = storage.join(self.root, LOCK)
        self.local = not storage.is_uri(output_root)
        self.owner = {
            "host": socket.gethostname(), "pid": os.getpid(),
            "process_started": _process_started(os.getpid()) or time.time(),
            "started": time.time(), "heartbeat": time.time(), "run_id": run_id,
        }  # fmt: skip
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.fs, self.path))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def _refuse(self, owner: dict | None) -> None:
        owner = owner or {}
        age = time.time() - float(owner.get("heartbeat", time.time()))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        how = (
            "wait for it to finish"
            if self.local
            else f"wait for it to finish, or if it is dead (its machine went away), delete {self.output.rstrip('/')}/{LOCK}"
        )  # fmt: skip
        raise BatchError(
            f"another colorjob batch run is writing to {self.output} (host {owner.get('host', '?')}, "
            f"pid {owner.get('pid', '?')}, started {started}, last seen {age:.0f}s ago); {how}"
        )

    # ---- a local disk: flock ----------------------------------------------------------------
    def _acquire_local(self) -> None:
        import fcntl

        path = storage.join(self.root, FLOCK)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._refuse(self._read())
        self._fd = fd
        storage.write_atomic(self.fs, self.path, json.dumps(self.owner).encode())

    # ---- an object store: lock.json, taken over only when proven stale -------------------------
    def _create_remote(self) -> bool:
        if storage.exists(self.fs, self.path):
            return False
        storage.write_atomic(self.fs, self.path, json.dumps(self.owner).encode())
        time.sleep(1.0)  # let a racing writer land, then see who won
        mine = self._read()
        return mine is not None and mine.get("run_id") == self.owner["run_id"]

    def _acquire_remote(self) -> None:
        for _ in range(3):
            if self._create_remote():
                return
            first = self._read()
            if first is not None and not is_stale(first):
                self._refuse(first)
            time.sleep(min(HEARTBEAT_S, 2.0) if first is None else 0)
            again = self._read()
            same = (first or {}).get("run_id") == (again or {}).get("run_id") and (first or {}).get("heartbeat") == (again or {}).get("heartbeat")  # fmt: skip
            if again is not None and not is_stale(again):
                self._refuse(again)
            if same or again is None:  # proven stale (or gone): ours to take over
                with contextlib.suppress(OSError):
                    self.fs.delete_file(self.path)
        raise BatchError(f"could not take the lock {self.output.rstrip('/')}/{LOCK}; try again")

    def acquire(self) -> None:
        if self.local:
            self._acquire_local()
        else:
            self._acquire_remote()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.owner["heartbeat"] = time.time()
            with contextlib.suppress(OSError):  # the next beat tries again
                storage.write_atomic(self.fs, self.path, json.dumps(self.owner).encode())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        owner = self._read()
        if owner is not None and owner.get("run_id") == self.owner["run_id"]:
            with contextlib.suppress(OSError):
                self.fs.delete_file(self.path)
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
