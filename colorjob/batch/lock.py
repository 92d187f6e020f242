"""One batch run per output folder at a time: ``OUTPUT/.colorjob/lock.json``.

The lock names its owner (host, pid, process start time, run id) and is refreshed every
:data:`HEARTBEAT_S` seconds while the run lives. A second run refuses to start with a message that
names the owner. A lock is *stale*, and is taken over, when its process is gone (same host: the
pid no longer runs, or runs a newer process) or when it has not been refreshed for
:data:`STALE_S` seconds (another host, or a machine that went away).

On a local disk the lock is created atomically (``O_EXCL``). Object stores have no such
operation: there the lock is written and read back, which catches all but runs that start within
the same second.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

import psutil

from colorjob import storage
from colorjob.batch.grid import BatchError
from colorjob.batch.ledger import STATE

LOCK = f"{STATE}/lock.json"
HEARTBEAT_S = 30.0
STALE_S = 600.0


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_stale(owner: dict, now: float | None = None) -> bool:
    """Whether a lock's owner is gone (see the module's text)."""
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
        self.fs, root = storage.resolve(output_root)
        self.output = output_root
        self.path = storage.join(root, LOCK)
        self.local = not storage.is_uri(output_root)
        self.owner = {
            "host": socket.gethostname(), "pid": os.getpid(),
            "process_started": _process_started(os.getpid()) or time.time(),
            "started": time.time(), "heartbeat": time.time(), "run_id": run_id,
        }  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- taking and giving back ----------------------------------------------------------------
    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.fs, self.path))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def _create(self) -> bool:
        data = json.dumps(self.owner).encode()
        if not self.local:
            if storage.exists(self.fs, self.path):
                return False
            storage.write_atomic(self.fs, self.path, data)
            time.sleep(1.0)  # let a racing writer land, then see who won
            mine = self._read()
            return mine is not None and mine.get("run_id") == self.owner["run_id"]
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True

    def acquire(self) -> None:
        for _ in range(2):
            if self._create():
                self._thread = threading.Thread(target=self._beat, daemon=True)
                self._thread.start()
                return
            owner = self._read()
            if owner is not None and not is_stale(owner):
                age = time.time() - float(owner.get("heartbeat", 0))
                started = time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0))
                )
                raise BatchError(
                    f"another colorjob batch run is writing to {self.output} (host "
                    f"{owner.get('host')}, pid {owner.get('pid')}, started {started}, last seen "
                    f"{age:.0f}s ago); wait for it to finish, or if it is dead (its machine went "
                    f"away), delete {self.output.rstrip('/')}/{LOCK}"
                )
            self._take_over(owner)
        raise BatchError(f"could not take the lock {self.output.rstrip('/')}/{LOCK}; try again")

    def _take_over(self, stale: dict | None) -> None:
        """Move a stale lock aside; only if it is still the one judged stale."""
        aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.move(self.path, aside)
        except OSError:
            return  # someone else moved it
        moved = None
        with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
            moved = json.loads(storage.read_bytes(self.fs, aside))
        if stale is not None and moved is not None and moved.get("run_id") != stale.get("run_id"):
            self.fs.move(aside, self.path)  # a fresh lock of a run that won the race: put it back
            return
        self.fs.delete_file(aside)

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
            self.fs.delete_file(self.path)

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
