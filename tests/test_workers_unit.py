"""The pure parts of relaybox/workers.py: each worker's share of the limits, the worker count, log tags."""

from __future__ import annotations

import logging

import pytest

from relay.config import DeliveryConfig, RelayConfig, SMTPConfig
from relaybox import workers
from relaybox.settings import parse

pytestmark = pytest.mark.unit


def _config(**delivery) -> RelayConfig:
    return RelayConfig(delivery=DeliveryConfig(**delivery), smtp=SMTPConfig(max_sessions=500))


def test_share_divides_connection_limits_rounding_up_and_never_below_one():
    rc = _config(concurrency=201, per_destination=20, per_domain={"gmail.com": 5, "tiny.test": 1})
    part = workers.share(rc, 2)
    assert part.delivery.concurrency == 101 and part.delivery.per_destination == 10
    assert part.delivery.per_domain == {"gmail.com": 3, "tiny.test": 1}
    assert part.smtp.max_sessions == 250
    # what is not a connection limit stays as configured
    assert part.delivery.claim_batch == rc.delivery.claim_batch
    assert part.smtp.max_sessions_per_ip == rc.smtp.max_sessions_per_ip
    assert workers.share(rc, 3).delivery.per_destination == 7                   # ceil(20 / 3)
    assert workers.share(_config(per_destination=1), 4).delivery.per_destination == 1


def test_share_with_one_worker_is_the_config_itself():
    rc = _config()
    assert workers.share(rc, 1) is rc


def test_worker_count_prefers_the_command_line_then_the_config_then_the_cores(monkeypatch):
    monkeypatch.setattr(workers, "cores", lambda: 6)
    assert workers.worker_count(3, workers.ProcessConfig(workers=2)) == 3
    assert workers.worker_count(None, workers.ProcessConfig(workers=2)) == 2
    assert workers.worker_count(None, workers.ProcessConfig()) == 6
    assert workers.worker_count(None, None) == 6


def test_the_process_section_is_part_of_the_config_file():
    assert parse({"process": {"workers": 4}}).section("process") == workers.ProcessConfig(workers=4)
    assert parse({}).section("process") == workers.ProcessConfig(workers=0)
    with pytest.raises(Exception, match="process.workers"):
        parse({"process": {"workers": -1}})


def test_every_log_record_of_a_worker_names_its_slot():
    record = logging.LogRecord("relaybox", logging.INFO, __file__, 1, "started", None, None)
    assert workers.WorkerTag(1).filter(record) and record.worker == 1


def test_lease_owner_of_a_worker_is_host_and_pid():
    import socket

    assert workers.owner_of(4242) == f"{socket.gethostname()}:4242"


def test_a_crash_looping_worker_is_restarted_later_and_later_a_healthy_one_at_once():
    failures, delays = 0, []
    for _ in range(9):                                   # dies 2 s after each start
        failures, delay = workers.restart_delay(failures, lived=2.0, was_ready=True)
        delays.append(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert workers.restart_delay(8, lived=3600.0, was_ready=True) == (1, 0.5)    # ran well: count again
    assert workers.restart_delay(0, lived=3600.0, was_ready=False) == (1, 0.5)
    assert workers.restart_delay(1, lived=3600.0, was_ready=False) == (2, 1.0)   # never got ready


PIN_CHILD = r"""
import os, sys
from relaybox.cli import pin_metric_pid
pin_metric_pid()
pin_metric_pid()                                   # a second call keeps the first class (one mmap per file)
from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector
calls = []
real = os.getpid
os.getpid = lambda: calls.append(1) or real()
c = Counter("pin_test", "test", registry=None)
for _ in range(100):
    c.inc()
os.getpid = real
print("getpid_calls", len(calls), "pinned", getattr(values.ValueClass, "pinned_pid", False))
child = os.fork()
if child == 0:
    c.inc(1000)                                    # a forked child writes its own per-pid file
    os._exit(0)
os.waitpid(child, 0)
reg = CollectorRegistry()
MultiProcessCollector(reg)
print("total", reg.get_sample_value("pin_test_total"))
pids = {f.rsplit("_", 1)[-1].removesuffix(".db") for f in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])}
print("files", pids == {str(real()), str(child)})
"""


def test_worker_metrics_read_the_pid_once_and_still_sum_across_processes(tmp_path):
    """pin_metric_pid: no getpid() per metric update in a worker, and a forked child still gets a file of
    its own, so the multiprocess collector sums parent and child."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", PIN_CHILD], env=env, capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines())
    assert lines["getpid_calls"] == "0 pinned True"
    assert lines["total"] == "1100.0"
    assert lines["files"] == "True"                # counter files of the parent's pid and of the child's
