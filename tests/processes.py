"""Running scripts from tests: a subprocess whose whole process group dies on a timeout."""
from __future__ import annotations

import os
import signal
import subprocess
from typing import Any, Sequence


def run_in_group(cmd: Sequence[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """subprocess.run in a new session; on a timeout the whole process group is killed (the
    scripts start children of their own)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
