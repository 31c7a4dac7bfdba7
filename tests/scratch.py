"""Temporary directories that hold a FiftyOne database and are removed at exit.

FiftyOne's database service stops its mongod only after the Python process
that started it has exited, so neither a ``TemporaryDirectory`` nor an exit
handler can delete the database directory: mongod still has it open. Each
test or benchmark run would otherwise leave ~300 MB behind. At exit we start
a small detached process that waits for that mongod to go, then deletes the
directory.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time


def make_scratch_dir(prefix: str) -> str:
    """Creates a directory that is deleted once this process and its mongod are gone."""
    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(_remove_later, directory)
    return directory


def _remove_later(directory: str) -> None:
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), directory, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives the end of the test session
    )


def remove_when_unused(directory: str, owner_pid: int, timeout: float = 120.0) -> None:
    """Waits for the owner and every process naming ``directory`` (its mongod) to exit."""
    import psutil  # a FiftyOne dependency

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        users = [p for p in psutil.process_iter(["pid", "cmdline"]) if _uses(p, directory, owner_pid)]
        if not users:
            break
        psutil.wait_procs(users, timeout=1)
    shutil.rmtree(directory, ignore_errors=True)


def _uses(process, directory: str, owner_pid: int) -> bool:
    if process.info["pid"] == os.getpid():
        return False  # this cleaner names the directory too
    if process.info["pid"] == owner_pid:
        return True
    return any(directory in arg for arg in process.info.get("cmdline") or ())


if __name__ == "__main__":
    remove_when_unused(sys.argv[1], int(sys.argv[2]))
