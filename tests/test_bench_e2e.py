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
