"""Bounce parser accuracy on the bounce corpus (tests/data/bounces), against flufl.bounce alone measured in
the same run.

    .venv/bin/python bench/bounces.py [--corpus tests/data/bounces] [--misses] [--cli]

Figures (over the expected recipients of the bounce samples): recipients found, status exact (any of
``accept_status``), reason right (any of ``accept_reason``), hard/soft right (any of ``accept_kind``, where
the corpus states one); false bounces on the non-bounce samples; crashes; and seconds per message.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from relay.bounces import parse  # noqa: E402

NON_BOUNCE = {"feedback", "vacation", "autoreply", "delivered", "not-bounce"}


def load_expected(corpus: str) -> list[dict]:
    with open(os.path.join(corpus, "expected.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _match(exp: dict, got: list[dict]) -> dict | None:
    names = {exp["address"].lower(), *(a.lower() for a in exp.get("address_alternatives", []))}
    for g in got:
        if g["address"].lower() in names:
            return g
    return None


def ours(raw: bytes, path: str = "") -> tuple[str, list[dict]]:
    p = parse(raw)
    return p.category, [vars(r) for r in p.recipients]


def via_cli(corpus: str):
    """Our parser through ``relaybox bounces parse FILE...`` (one process for the whole corpus): measures
    exactly the JSON lines admins see."""
    import subprocess

    files = [os.path.join(corpus, row["file"]) for row in load_expected(corpus)]
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "bounces", "parse", *files], cwd=ROOT,
                         capture_output=True, check=False, timeout=600).stdout
    results = {}
    for line in out.decode().splitlines():
        d = json.loads(line)
        results[os.path.realpath(d["file"])] = (d["category"], d["recipients"])

    def lookup(raw: bytes, path: str) -> tuple[str, list[dict]]:
        return results[os.path.realpath(path)]

    return lookup


def flufl_only(raw: bytes, path: str = "") -> tuple[str, list[dict]]:
    from flufl.bounce import all_failures
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    temp, perm = all_failures(msg)
    got = [{"address": a.decode("utf-8", "replace") if isinstance(a, bytes) else a, "status": "",
            "reason": "", "kind": "hard"} for a in perm]
    got += [{"address": a.decode("utf-8", "replace") if isinstance(a, bytes) else a, "status": "",
             "reason": "", "kind": "soft"} for a in temp]
    return ("bounce" if got else "unknown"), got


def _score_nonbounce(t: dict, row: dict, category: str, misses: list) -> None:
    t["nonbounce"] += 1
    want = {"vacation": "autoreply", "not-bounce": "unknown"}.get(row["category"], row["category"])
    t["category_ok"] += category == want
    if category == "bounce":
        t["false_bounce"] += 1
        t["false_files"].append(row["file"])
        misses.append((row["file"], "false bounce", row["category"]))


def _score_recipient(t: dict, name: str, exp: dict, got: list[dict], misses: list) -> None:
    t["rcpt"] += 1
    g = _match(exp, got)
    if g is None:
        misses.append((name, "recipient", exp["address"], [x["address"] for x in got]))
        return
    t["found"] += 1
    diag = g.get("diagnostic", "")[:200]
    if g["status"] in exp["accept_status"]:
        t["status"] += 1
    else:
        misses.append((name, "status", g["status"], exp["accept_status"], diag))
    if g["reason"] in exp["accept_reason"]:
        t["reason"] += 1
    else:
        misses.append((name, "reason", g["reason"], exp["accept_reason"], diag))
    if exp.get("accept_kind"):
        t["kind_n"] += 1
        if g["kind"] in exp["accept_kind"]:
            t["kind"] += 1
        else:
            misses.append((name, "kind", g["kind"], exp["accept_kind"], g["reason"]))


def measure(corpus: str, fn, misses: list | None = None) -> dict:
    t = {"rcpt": 0, "found": 0, "status": 0, "reason": 0, "kind_n": 0, "kind": 0, "nonbounce": 0,
         "false_bounce": 0, "category_ok": 0, "false_files": [], "crashes": 0, "messages": 0, "seconds": 0.0}
    misses = misses if misses is not None else []
    for row in load_expected(corpus):
        path = os.path.join(corpus, row["file"])
        with open(path, "rb") as fh:
            raw = fh.read()
        t["messages"] += 1
        start = time.perf_counter()
        try:
            category, got = fn(raw, path)
        except Exception as exc:  # noqa: BLE001
            t["crashes"] += 1
            misses.append((row["file"], "crash", repr(exc)))
            continue
        finally:
            t["seconds"] += time.perf_counter() - start
        if row["category"] in NON_BOUNCE:
            _score_nonbounce(t, row, category, misses)
            continue
        for exp in row["recipients"]:
            _score_recipient(t, row["file"], exp, got, misses)
    return t


def pct(a: int, b: int) -> float:
    return 100.0 * a / b if b else 0.0


def figures(t: dict) -> dict:
    return {"recipients": pct(t["found"], t["rcpt"]), "status": pct(t["status"], t["rcpt"]),
            "reason": pct(t["reason"], t["rcpt"]), "hardsoft": pct(t["kind"], t["kind_n"]),
            "false_bounces": t["false_bounce"], "crashes": t["crashes"],
            "ms_per_message": 1000 * t["seconds"] / max(1, t["messages"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=os.path.join(ROOT, "tests", "data", "bounces"))
    ap.add_argument("--misses", action="store_true", help="list every miss of our parser")
    ap.add_argument("--cli", action="store_true", help="measure the output of `relaybox bounces parse`")
    args = ap.parse_args()
    misses: list = []
    a = measure(args.corpus, via_cli(args.corpus) if args.cli else ours, misses if args.misses else None)
    b = measure(args.corpus, flufl_only)
    fa, fb = figures(a), figures(b)
    print(f"corpus: {os.path.abspath(args.corpus)}  messages: {a['messages']}  "
          f"bounce recipients: {a['rcpt']}  non-bounce samples: {a['nonbounce']}")
    print(f"{'':24}{'relaybox':>10}{'flufl.bounce':>14}{'ratio':>8}   target")
    targets = {"recipients": ">= 99", "status": ">= 97", "reason": ">= 90", "hardsoft": ">= 95"}   # issue 13
    for key, label in (("recipients", "recipients found %"), ("status", "status exact %"),
                       ("reason", "reason right %"), ("hardsoft", "hard/soft right %")):
        ratio = f"{fa[key] / fb[key]:.2f}" if fb[key] else "-"
        print(f"{label:24}{fa[key]:>10.1f}{fb[key]:>14.1f}{ratio:>8}   {targets[key]}")
    for key, label in (("false_bounces", "false bounces"), ("crashes", "crashes")):
        print(f"{label:24}{fa[key]:>10}{fb[key]:>14}{'':>8}   0")
    print(f"{'non-bounce category %':24}{pct(a['category_ok'], a['nonbounce']):>10.1f}"
          f"{pct(b['category_ok'], b['nonbounce']):>14.1f}")
    print(f"{'ms per message':24}{fa['ms_per_message']:>10.2f}{fb['ms_per_message']:>14.2f}")
    for f in a["false_files"]:
        print(f"false bounce: {f} (labelled non-bounce in expected.jsonl; read it and judge)")
    for m in misses:
        print("MISS", *m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
