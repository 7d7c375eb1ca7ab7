"""gateway/processes.py: the one liveness check behind pid files, spill claims and shared metrics."""

from __future__ import annotations

import os
import subprocess

import pytest

from gateway.processes import is_running


def test_a_gone_process_is_not_running() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    assert is_running(os.getpid()) and is_running(str(os.getpid()))
    assert not is_running(child.pid)


@pytest.mark.parametrize("pid", ["", "abc", "-1", "١٢", "99999999999999999999999"], ids=repr)
def test_what_is_no_pid_is_not_running(pid: str) -> None:
    assert not is_running(pid)
