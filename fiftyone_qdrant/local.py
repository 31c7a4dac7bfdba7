"""Finding, starting and stopping the local Qdrant service of a store
directory (see :mod:`fiftyone_qdrant.service`), the way FiftyOne manages its
own database service: the first process that needs the store starts it,
every other process finds it through ``service.json``, and it stops by
itself once no client process is alive and it has been idle for a while.

Every client process holds a shared lock on ``clients.lock`` for as long as
it lives (released by the OS even after a SIGKILL), which is how the service
knows whether anyone may still call it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, Iterator, Optional

from .errors import ConnectionFailedError

SERVICE_FILE = "service.json"
SERVICE_LOCK = "service.lock"
CLIENTS_LOCK = "clients.lock"
SPAWN_LOCK = "spawn.lock"
LOG_FILE = "service.log"
START_TIMEOUT_S = 60.0

# root -> (descriptor holding the shared lock, number of open stores)
_client_locks: Dict[str, list] = {}
_lock = threading.Lock()
# root -> the service process this one launched and has not waited for yet
_launched: Dict[str, subprocess.Popen] = {}


@dataclasses.dataclass(frozen=True)
class ServiceAddress:
    host: str
    port: int
    pid: int
    token: str = dataclasses.field(repr=False)


def can_lock(path: str, exclusive: bool) -> bool:
    """Whether a lock of that kind on ``path`` could be taken right now
    (it is taken and let go at once); True when the file does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _is_owned(root: str) -> bool:
    """Whether a live service holds the store's service lock (exclusive)."""
    return not can_lock(os.path.join(root, SERVICE_LOCK), exclusive=False)


def read_address(root: str) -> Optional[ServiceAddress]:
    """The running service's address, or None when no service is running."""
    try:
        with open(os.path.join(root, SERVICE_FILE)) as f:
            doc = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    if not _is_owned(root):
        return None
    return ServiceAddress(doc["host"], int(doc["port"]), int(doc["pid"]), doc["token"])


def register_client(root: str) -> None:
    """Marks this process as a client of the store until it exits or
    unregisters as often as it registered."""
    with _lock:
        if root in _client_locks:
            _client_locks[root][1] += 1
            return
        os.makedirs(root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(root, CLIENTS_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.set_inheritable(fd, False)
        _client_locks[root] = [fd, 1]


def unregister_client(root: str) -> None:
    """One store of this process closed; the last one lets the service
    stop once it is idle."""
    with _lock:
        entry = _client_locks.get(root)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _client_locks[root]
            os.close(entry[0])  # releases the lock


@contextlib.contextmanager
def _spawn_lock(root: str) -> Iterator[None]:
    """One starter at a time, across processes (and threads: each call
    opens the file anew)."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(root, SPAWN_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_service(root: str) -> None:
    """Launches the store's service if none runs, without waiting for it:
    the caller then imports qdrant-client (~1.4 s here) while the service
    starts (~1 s), instead of one after the other. ``ensure_service``
    waits for it."""
    root = os.path.abspath(root)
    if read_address(root) is not None:
        return
    with _spawn_lock(root):
        if read_address(root) is None:
            _launched[root] = _take_starting_process(root)  # for ensure_service to wait on


def ensure_service(root: str, timeout: float = START_TIMEOUT_S) -> ServiceAddress:
    """The address of the store's service, started first if none runs."""
    root = os.path.abspath(root)
    address = read_address(root)
    if address is not None:
        return address
    with _spawn_lock(root):
        address = read_address(root)
        if address is not None:
            return address
        return _wait_for_address(root, _take_starting_process(root), timeout)


def _take_starting_process(root: str) -> subprocess.Popen:
    """The service process that ``start_service`` launched ahead, while it
    is still starting, else a new one; no longer tracked either way (the
    caller holds the spawn lock)."""
    process = _launched.pop(root, None)
    if process is None or process.poll() is not None:
        process = _launch(root)
    return process


def _launch(root: str) -> subprocess.Popen:
    log_path = os.path.join(root, LOG_FILE)
    try:
        os.remove(os.path.join(root, SERVICE_FILE))  # a dead service's
    except FileNotFoundError:
        pass
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        return subprocess.Popen(
            [sys.executable, "-m", "fiftyone_qdrant.service", root],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,  # outlives us, and our Ctrl-C
            close_fds=True,
        )


def _wait_for_address(root: str, process: subprocess.Popen, timeout: float) -> ServiceAddress:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        address = read_address(root)
        if address is not None:
            return address
        if process.poll() is not None and not _is_owned(root):
            break
        time.sleep(0.02)
    raise ConnectionFailedError(
        "The local Qdrant service for the embedded store at '%s' did not start (exit status %s). "
        "Its log is %s" % (root, process.poll(), os.path.join(root, LOG_FILE))
    )


def stop_service(root: str, timeout: float = 30.0) -> bool:
    """Stops the store's service (it flushes and closes every shard first);
    False if none was running."""
    root = os.path.abspath(root)
    address = read_address(root)
    if address is None:
        return False
    try:
        os.kill(address.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _is_owned(root):
        time.sleep(0.05)
    return not _is_owned(root)


def service_status(root: str) -> Optional[Dict[str, object]]:
    """What ``fiftyone-qdrant service status`` prints (never the token)."""
    root = os.path.abspath(root)
    address = read_address(root)
    if address is None:
        return None
    return {"store": root, "pid": address.pid, "address": "%s:%d" % (address.host, address.port),
            "log": os.path.join(root, LOG_FILE)}
