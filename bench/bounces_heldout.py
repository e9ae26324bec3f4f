"""Generalisation check: the parser on the bounce samples of sisimai/set-of-emails that are NOT in our
corpus, against the expectations published in sisimai/rb-sisimai's tests (status, reply code, reason,
hard bounce per recipient, in order). Development aid only: not used by tests, needs both checkouts.

    git -C <set-of-emails> archive HEAD maildir/bsd | tar -x -C /tmp/soe
    git -C <rb-sisimai> archive HEAD test/public | tar -x -C /tmp/rbs
    .venv/bin/python bench/bounces_heldout.py --emails /tmp/soe/maildir/bsd --expect /tmp/rbs/test/public

Prints recipients found (count of recipients), status exact, reason right, hard/soft right and crashes,
for the held-out samples only; ``--misses`` lists the differences.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from relay.bounces import parse  # noqa: E402

_KEY = re.compile(r"^\s*'(\d+)'\s*=>")
_TUPLE = re.compile(r"\[\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*(true|false)")


def expectations(expect_dir: str) -> dict[str, list[tuple[str, str, str, bool]]]:
    out: dict[str, list] = {}
    for name in sorted(os.listdir(expect_dir)):
        if not name.endswith(".rb") or name.endswith("-test.rb"):
            continue
        prefix = name[:-3]
        key = None
        with open(os.path.join(expect_dir, name), encoding="utf-8") as fh:
            for line in fh:
                m = _KEY.match(line)
                if m:
                    key = f"{prefix}-{m.group(1)}.eml"
                    out[key] = []
                if key:
                    out[key] += [(s, c, r, h == "true") for s, c, r, h in _TUPLE.findall(line)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--emails", required=True)
    ap.add_argument("--expect", required=True)
    ap.add_argument("--corpus", default=os.path.join(ROOT, "tests", "data", "bounces"),
                    help="our corpus (its samples are skipped unless --include-known)")
    ap.add_argument("--misses", action="store_true")
    ap.add_argument("--include-known", action="store_true", help="also samples that are in our corpus")
    args = ap.parse_args()
    known = set()
    with open(os.path.join(args.corpus, "expected.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            known.add(os.path.basename(json.loads(line)["file"]))
    t = dict(files=0, rcpt=0, found=0, status=0, reason=0, kind=0, crashes=0, nonbounce=0, wrongcat=0)
    misses = []
    for name, exp in sorted(expectations(args.expect).items()):
        path = os.path.join(args.emails, name)
        if (name in known and not args.include_known) or not exp or not os.path.exists(path):
            continue
        with open(path, "rb") as fh:
            raw = fh.read()
        t["files"] += 1
        try:
            p = parse(raw)
        except Exception as exc:  # noqa: BLE001
            t["crashes"] += 1
            misses.append((name, "crash", repr(exc)))
            continue
        if exp[0][2] in ("feedback", "vacation", "delivered"):
            t["nonbounce"] += 1
            want = {"vacation": "autoreply"}.get(exp[0][2], exp[0][2])
            if p.category != want:
                t["wrongcat"] += 1
                misses.append((name, "category", p.category, want))
            continue
        got = p.recipients if p.category == "bounce" else []
        for i, (status, _code, reason, hard) in enumerate(exp):
            t["rcpt"] += 1
            if i >= len(got):
                misses.append((name, "recipient", i, p.category, p.problem))
                continue
            g = got[i]
            t["found"] += 1
            t["status"] += g.status == status
            t["reason"] += g.reason == reason
            t["kind"] += (g.kind == "hard") == hard
            if g.reason != reason or g.status != status:
                misses.append((name, "reason/status", g.reason, reason, g.status, status, g.diagnostic[:150]))
    n = max(1, t["rcpt"])
    print(f"held-out files: {t['files']}  bounce recipients: {t['rcpt']}  non-bounce: {t['nonbounce']}")
    print(f"recipients found  {100 * t['found'] / n:5.1f} %   target >= 99")
    print(f"status exact      {100 * t['status'] / n:5.1f} %   target >= 97")
    print(f"reason right      {100 * t['reason'] / n:5.1f} %   target >= 90")
    print(f"hard/soft right   {100 * t['kind'] / n:5.1f} %   target >= 95")
    print(f"wrong category on non-bounces: {t['wrongcat']}   crashes: {t['crashes']}")
    if args.misses:
        for m in misses:
            print("MISS", *m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
