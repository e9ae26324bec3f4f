"""A small Dockerfile reader and a replay of its install steps without a Docker engine (tests only).

``parse(text)`` -> list of ``Stage`` (name, base, instructions); ``context_files(root)`` applies
``.dockerignore`` like the Docker CLI does (Go filepath.Match patterns, ``**`` for any depth, ``!`` to
re-include, a matched directory excludes everything below it). ``replay(...)`` builds the image's root
filesystem under a temp dir: it maps absolute paths of the image into that dir, runs the build stage's
``python -m venv`` and ``pip install`` steps (with ``--no-deps``: the dependencies come from the test's own
environment through a ``.pth`` file, so the test stays fast and offline) and copies files as the COPY
instructions say. Any other RUN in the build stage is refused, so an incompatible change to the Dockerfile
breaks the test instead of being silently skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field


@dataclass
class Instruction:
    op: str
    args: str
    line: int

    def words(self) -> list[str]:
        """JSON (exec) form or shell words; flags like --from=... included."""
        a = self.args.strip()
        if a.startswith("["):
            return json.loads(a)
        return shlex.split(a)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, op: str) -> list[Instruction]:
        return [i for i in self.instructions if i.op == op]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                out[key] = value
        return out


def logical_lines(text: str) -> list[tuple[int, str]]:
    out, buf, start = [], "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue   # comment lines inside a continuation are dropped, as Docker does
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    if buf:
        out.append((start, buf))
    return out


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Returns (global ARGs, stages)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for lineno, line in logical_lines(text):
        op, _, rest = line.strip().partition(" ")
        op = op.upper()
        if op == "FROM":
            words = rest.split()
            base = words[0]
            for k, v in args.items():
                base = base.replace("${" + k + "}", v).replace("$" + k, v)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if op == "ARG":
                key, _, value = rest.strip().partition("=")
                args[key] = value
        else:
            stages[-1].instructions.append(Instruction(op, rest.strip(), lineno))
    return args, stages


# ---- .dockerignore -----------------------------------------------------------------------------------
def _pattern_re(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out + r"\Z")


def ignore_rules(root: str) -> list[tuple[bool, re.Pattern[str]]]:
    path = os.path.join(root, ".dockerignore")
    rules = []
    if os.path.exists(path):
        for line in open(path, encoding="utf-8"):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pat = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((negate, _pattern_re(pat)))
    return rules


def ignored(rel: str, rules) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for negate, rx in rules:
        if any(rx.match(p) for p in prefixes):
            result = not negate
    return result


def context_files(root: str) -> list[str]:
    """Relative paths of the files that ``docker build root`` would send."""
    rules = ignore_rules(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not (ignored(rel_dir + d, rules)
                                                    and not any(neg for neg, _ in rules))]
        for name in filenames:
            rel = rel_dir + name
            if not ignored(rel, rules):
                out.append(rel)
    return sorted(out)


# ---- replay --------------------------------------------------------------------------------------------
class ReplayError(Exception):
    pass


def _map(word: str, rootfs: str) -> str:
    return rootfs + word if word.startswith("/") else word


def _copy(ins: Instruction, context: str, rootfs: str) -> None:
    words = [w for w in ins.words() if not w.startswith(("--chown", "--chmod"))]
    from_stage = words[0].startswith("--from=")
    if from_stage:
        words = words[1:]
    *sources, dest = words
    dest_path = _map(dest, rootfs)
    if from_stage:
        # one root filesystem holds every stage here; a venv is not relocatable (its scripts' #! lines
        # name its path), so the image must keep the path too
        for src in sources:
            if os.path.normpath(src) != os.path.normpath(dest):
                raise ReplayError(f"line {ins.line}: COPY --from must keep the path ({src} -> {dest})")
        return
    files = context_files(context)
    for src in sources:
        prefix = "" if src in (".", "./") else os.path.normpath(src)
        if prefix in files:
            target = os.path.join(dest_path, os.path.basename(src)) if dest.endswith("/") else dest_path
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(context, prefix), target)
            continue
        matched = [rel for rel in files if not prefix or rel.startswith(prefix + "/")]
        if not matched:
            raise ReplayError(f"line {ins.line}: {src} is not in the build context (see .dockerignore)")
        for rel in matched:
            target = os.path.join(dest_path, rel[len(prefix) + 1:] if prefix else rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(context, rel), target)


def _run_build_step(ins: Instruction, rootfs: str, env: dict[str, str], log: list[str]) -> None:
    words = shlex.split(ins.args)
    if "&&" in words or ";" in ins.args or "|" in words:
        raise ReplayError(f"line {ins.line}: keep one command per RUN in the build stage: {ins.args}")
    if words[:3] == ["python", "-m", "venv"]:
        cmd = [sys.executable, "-m", "venv"] + [_map(w, rootfs) for w in words[3:]]
    elif len(words) > 2 and words[0].endswith("/bin/pip") and words[1] == "install":
        cmd = [_map(words[0], rootfs), "install", "--no-deps", "-q"] + [_map(w, rootfs) for w in words[2:]]
    else:
        raise ReplayError(f"line {ins.line}: the test does not know how to replay: RUN {ins.args}")
    log.append(" ".join(cmd))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if res.returncode != 0:
        raise ReplayError(f"line {ins.line}: {' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")


def replay(dockerfile: str, context: str, rootfs: str) -> list[str]:
    """Build the image's root filesystem under ``rootfs``; returns the commands run."""
    _, stages = parse(open(dockerfile, encoding="utf-8").read())
    log: list[str] = []
    venvs: list[str] = []
    for idx, stage in enumerate(stages):
        build_stage = idx < len(stages) - 1
        env = dict(os.environ)
        for k, v in stage.env().items():
            env[k] = v.replace("$PATH", os.environ.get("PATH", ""))
        for ins in stage.instructions:
            if ins.op == "COPY":
                _copy(ins, context, rootfs)
            elif ins.op == "RUN" and build_stage:
                _run_build_step(ins, rootfs, env, log)
                words = shlex.split(ins.args)
                if words[:3] == ["python", "-m", "venv"]:
                    venvs.append(_map(words[3], rootfs))
            elif ins.op == "RUN":
                pass          # runtime stage: user and directory creation need root; checked elsewhere
    # dependencies: the test environment's site-packages, after relaybox itself
    site = sysconfig.get_paths()["purelib"]
    for venv in venvs:
        for sp in _site_dirs(venv):
            with open(os.path.join(sp, "_test_deps.pth"), "w") as fh:
                fh.write(site + "\n")
    return log


def _site_dirs(venv: str) -> list[str]:
    out = []
    for dirpath, dirnames, _ in os.walk(os.path.join(venv, "lib")):
        if os.path.basename(dirpath) == "site-packages":
            out.append(dirpath)
            dirnames[:] = []
    return out
