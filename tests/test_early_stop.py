"""A stop signal that arrives while a process is still starting is a drain, not a kill.

Found in CI: the supervisor of ``--workers 2`` was stopped 0.2 s after its first worker came up; the
second worker was still importing, died by SIGTERM's default action and the instance exited 1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.peers.relaybox_proc import REPO, RelayboxProcess

pytestmark = pytest.mark.integration


def test_a_signal_before_the_loop_handlers_is_recorded_not_fatal():
    code = ("import os, signal\n"
            "from relaybox.lifecycle import EARLY_SIGNALS, keep_early_stop_signals\n"
            "keep_early_stop_signals()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "print(EARLY_SIGNALS)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == f"[{int(signal.SIGTERM)}]", out


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.5])
def test_stopping_an_instance_while_its_workers_start_exits_0(tmp_path, delay):
    """SIGTERM to the supervisor ``delay`` s after its second worker process exists: that worker is still
    importing (well over 0.1 s), so the signal reaches it before its event loop's handlers do."""
    rb = RelayboxProcess(str(tmp_path), {"process": {"workers": 2}})
    rb.extra_args = ["--workers", "2"]
    env = {"PYTHONPATH": REPO}
    import os
    log = open(rb.log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "relaybox.cli", "run", "--config", rb.config_path,
                             "--workers", "2"], cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **env))
    try:
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:   # both workers spawned
            assert proc.poll() is None, rb.log()
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, rb.log()
        assert "killed by signal" not in rb.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
