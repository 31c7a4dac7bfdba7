"""Scratch space for tests and benchmarks: temporary directories removed at
exit, and a private MongoDB for FiftyOne.

FiftyOne's own database service attaches to any FiftyOne database service
already running on the machine, whatever ``FIFTYONE_DATABASE_DIR`` says, and
stops its mongod only after the process that started it has exited. A test
session would therefore share (and on exit shut down) the database of
another FiftyOne process, such as a second test run or the App, and could not
delete its own database directory: each run left ~300 MB behind. A private
mongod, used through ``FIFTYONE_DATABASE_URI`` and stopped at exit, avoids
both. Call these before importing FiftyOne.
"""

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional


def make_scratch_dir(prefix: str) -> str:
    """A temporary directory, deleted at exit after anything registered later
    (exit handlers run last-in, first-out), such as a mongod inside it."""
    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, True)
    return directory


def start_private_mongod(db_dir: str, timeout: float = 60.0) -> Optional[subprocess.Popen]:
    """Starts FiftyOne's bundled mongod on a free loopback port with its data
    in ``db_dir``, points FiftyOne at it, and stops it at exit.

    Does nothing (returns ``None``) if ``FIFTYONE_DATABASE_URI`` is already
    set: the caller chose a database.
    """
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return None
    spec = importlib.util.find_spec("fiftyone")  # not imported: it reads the URI at import
    mongod = os.path.join(list(spec.submodule_search_locations)[0], "db", "bin", "mongod")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.makedirs(db_dir, exist_ok=True)
    log_path = os.path.join(db_dir, "mongod.log")
    process = subprocess.Popen(
        [mongod, "--dbpath", db_dir, "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket",
         "--logpath", log_path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    atexit.register(stop_mongod, process)  # also when a run fails
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mongod did not start (exit status %s); see %s" % (process.poll(), log_path))
            time.sleep(0.1)
    os.environ["FIFTYONE_DATABASE_URI"] = "mongodb://127.0.0.1:%d" % port
    return process


def stop_mongod(process: subprocess.Popen) -> None:
    """Shuts mongod down cleanly (SIGTERM), killing it after 60 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
