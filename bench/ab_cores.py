"""A/B of two relaybox revisions side by side, one core each: CPU per relayed message, the same minutes.

    .venv/bin/python bench/ab_cores.py REV_A REV_B [--rounds 8] [--messages 4000] [--size 1024]
    # e.g. bench/ab_cores.py HEAD~3 .      ("." = this working tree, anything else = a git revision)

Why: on this VM the speed drifts by up to 30% between minutes (the same commit measured 1,334 and 1,974
us/msg within ten minutes), so two revisions benchmarked one after the other differ by the drift more than
by the change. Here both run at the same time: each revision is one ``relaybox run --workers 1`` on SQLite
with its own smtp-sink and smtp-source (``--sessions`` sessions), all three pinned to one core (A on one,
B on the other, swapped every round). Printed per round: each side's CPU/msg (its process tree) and B/A;
at the end the median of B/A (below 1: B is cheaper). Two copies of one revision gave a median of 0.997,
single rounds within +-7%: a change of a few percent needs 8 rounds or more. Needs two cores and the
peers of ``make peers`` (Postfix's smtp-source / smtp-sink).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

from _common import REPO, RelayboxRun, free_port
from _postfix_ref import CountingSink
from e2e_postfix import measure, relaybox_sections

import tests.peers.relaybox_proc as relaybox_proc

_start_lock = threading.Lock()     # one relaybox starts at a time: the tree it imports is a global


@dataclass
class Side:
    tree: str
    cpu_us: float = 0.0
    rate: float = 0.0
    error: str = ""


def checkout(rev: str, base: str) -> str:
    """The source tree of ``rev``: this working tree for ".", else a detached worktree under ``base``."""
    if rev == ".":
        return REPO
    path = tempfile.mkdtemp(prefix="ab-", dir=base)
    subprocess.run(["git", "-C", REPO, "worktree", "add", "-q", "--detach", path, rev], check=True)
    return path


def run_side(side: Side, cpu: int, args: argparse.Namespace, barrier: threading.Barrier) -> None:
    """One revision on core ``cpu`` (this thread's affinity, which every process it starts inherits)."""
    os.sched_setaffinity(0, {cpu})
    base = tempfile.mkdtemp(prefix="ab-cores-")
    os.chmod(base, 0o755)
    sink = CountingSink(base, free_port()).start()
    work = tempfile.mkdtemp(prefix="relaybox-", dir=base)
    relay = RelayboxRun(work, relaybox_sections(sink.port, work, False, ""), ["--workers", "1"])
    try:
        with _start_lock:
            saved, relaybox_proc.REPO = relaybox_proc.REPO, side.tree      # PYTHONPATH of the process
            try:
                relay.start(timeout=60)
            finally:
                relaybox_proc.REPO = saved
        roots = [relay.proc.pid] if relay.proc else []
        barrier.wait()
        measure("warm", [relay.smtp_port], roots, sink, 300, args.size, args.sessions)
        barrier.wait()
        res = measure("ab", [relay.smtp_port], roots, sink, args.messages, args.size, args.sessions)
        side.cpu_us, side.rate, side.error = res.cpu_us, res.rate, res.error
    except (RuntimeError, OSError, threading.BrokenBarrierError) as exc:
        side.error = str(exc)[-500:]
        barrier.abort()
    finally:
        relay.stop()
        sink.stop()
        shutil.rmtree(base, ignore_errors=True)


def one_round(trees: tuple[str, str], swap: bool, args: argparse.Namespace) -> tuple[Side, Side]:
    a, b = Side(trees[0]), Side(trees[1])
    barrier = threading.Barrier(2)
    cores = (1, 0) if swap else (0, 1)
    threads = [threading.Thread(target=run_side, args=(s, c, args, barrier)) for s, c in zip((a, b), cores,
                                                                                            strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return a, b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev_a")
    p.add_argument("rev_b")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--sessions", type=int, default=10)
    args = p.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("needs two cores", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="ab-trees-")
    trees = (checkout(args.rev_a, base), checkout(args.rev_b, base))
    ratios: list[float] = []
    try:
        for r in range(args.rounds):
            a, b = one_round(trees, r % 2 == 1, args)
            if a.error or b.error:
                print(f"round {r + 1}: failed: {a.error or b.error}", flush=True)
                return 1
            ratios.append(b.cpu_us / a.cpu_us)
            print(f"round {r + 1}: A {a.cpu_us:5.0f} us/msg {a.rate:5.0f} msg/s | B {b.cpu_us:5.0f} us/msg "
                  f"{b.rate:5.0f} msg/s | B/A {ratios[-1]:.3f}", flush=True)
    finally:
        for tree in trees:
            if tree != REPO:
                subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], check=False)
        shutil.rmtree(base, ignore_errors=True)
    print(f"B/A CPU per message ({args.rev_b} against {args.rev_a}): median {statistics.median(ratios):.3f}, "
          f"rounds {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
