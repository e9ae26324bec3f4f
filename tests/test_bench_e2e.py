"""Smoke run of bench/e2e_postfix.py (issue 11): a private Postfix instance and relaybox, both relaying to
one smtp-sink, tiny counts. Checks that both systems delivered every message end to end, that the Markdown
table and the ratio line are printed, and that the bench removed its work dir (Postfix stopped, spools
gone)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_e2e_postfix_smoke():
    proc = subprocess.Popen([sys.executable, "bench/e2e_postfix.py", "--messages", "200", "--sizes", "1024",
                             "--reps", "1", "--skip-pg", "--skip-dkim"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.terminate()                  # SIGTERM: the bench stops its Postfix, relaybox and sink itself
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"bench did not finish in 150 s:\n{stdout}{stderr}")
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    runs = re.findall(r"^rep 1 \| (e2e \d+ KB) \| (\S+)\s*\|\s*(\d+) msgs in .*\| (\S+)$", out.stdout, re.M)
    assert sorted((load, system) for load, system, _, _ in runs) == [
        ("e2e 1 KB", "Postfix"), ("e2e 1 KB", "relaybox")], text
    for _load, _system, sent, status in runs:
        assert status == "ok", text
        assert int(sent) > 200, text            # the load and the probe's messages, all at the sink
    assert re.search(r"^\| e2e 1 KB \(SQLite\) \| \d+ \| \d+ \| \d+\.\d\dx \|", out.stdout, re.M), text
    ratio = r"^ratio relaybox/Postfix e2e 1 KB \(SQLite\): \d+\.\d\dx \(target >= 2\.0x: (met|NOT met)\)$"
    assert re.search(ratio, out.stdout, re.M), text
    work = re.search(r"^work dir .*: (\S+)$", out.stdout, re.M)
    assert work and not os.path.exists(work.group(1)), text


def test_bench_ab_cores_smoke():
    """bench/ab_cores.py with HEAD against this tree, one small round: both sides relay everything on one
    core each, the ratio is printed, and its worktree of HEAD is removed again."""
    before = subprocess.run(["git", "-C", REPO, "worktree", "list"], capture_output=True, text=True).stdout
    out = subprocess.run([sys.executable, "bench/ab_cores.py", "HEAD", ".", "--rounds", "1",
                          "--messages", "150", "--sessions", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    line = re.search(r"^round 1: A +(\d+) us/msg +(\d+) msg/s \| B +(\d+) us/msg +(\d+) msg/s \| B/A (\S+)$",
                     out.stdout, re.M)
    assert line and all(int(x) > 0 for x in line.groups()[:4]), text
    assert 0.3 < float(line.group(5)) < 3.0, text        # the same code on two cores: the same order
    assert re.search(r"^B/A CPU per message \(\. against HEAD\): median \d\.\d{3}", out.stdout, re.M), text
    after = subprocess.run(["git", "-C", REPO, "worktree", "list"], capture_output=True, text=True).stdout
    assert after == before, text


def test_bench_store_writes_smoke():
    """bench/store_writes.py, tiny counts: both backends took every message (the bench asserts each
    hand-off), each rep and the medians line with the PostgreSQL / SQLite ratio are printed."""
    out = subprocess.run([sys.executable, "bench/store_writes.py", "--messages", "60", "--concurrency", "4",
                          "--reps", "2"], cwd=REPO, capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    reps = re.findall(r"^rep (\d) \| (SQLite|PostgreSQL) +\| 60 x 1024 B \| +(\d+) msg/s", out.stdout, re.M)
    assert sorted((r, n) for r, n, _ in reps) == [("1", "PostgreSQL"), ("1", "SQLite"), ("2", "PostgreSQL"),
                                                  ("2", "SQLite")], text
    assert all(int(rate) > 0 for _, _, rate in reps), text
    assert re.search(r"^medians: SQLite \d+ msg/s, PostgreSQL \d+ msg/s; PostgreSQL / SQLite \d+\.\d\dx",
                     out.stdout, re.M), text
