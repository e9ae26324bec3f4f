"""Run a command under the system-call filter a systemd unit declares, without systemd (tests only).

    python seccomp_exec.py UNIT_FILE -- COMMAND [ARGS...]

Reads the unit's ``SystemCallFilter=`` lines (the first allow-list, then ``~`` lines removing calls) and
``SystemCallErrorNumber=``, expands ``@groups`` with ``systemd-analyze syscall-filter`` (the same tables
systemd uses), loads the filter with libseccomp through ctypes and execs COMMAND. As in systemd, a call
outside the list fails with the error number, or kills the process when none is set. The caller must have
set no_new_privs (``setpriv --no-new-privs``) unless it is root.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if not line.startswith((" ", "\t")):
            current = item
            groups[current] = []
        elif current is not None:
            groups[current].append(item)
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for item in items:
        out |= expand(groups[item], groups) if item.startswith("@") else {item}
    return out


def unit_filter(unit: str) -> tuple[set[str], int]:
    allow: set[str] | None = None
    deny: set[str] = set()
    action = SCMP_ACT_KILL_PROCESS
    groups = syscall_groups()
    for line in open(unit, encoding="utf-8"):
        key, _, value = line.strip().partition("=")
        if key == "SystemCallFilter":
            if value.startswith("~"):
                deny |= expand(value[1:].split(), groups)
            elif allow is None:
                allow = expand(value.split(), groups)
            else:
                allow |= expand(value.split(), groups)
        elif key == "SystemCallErrorNumber":
            action = 0x00050000 | getattr(errno, value.strip())
    if allow is None:
        raise SystemExit(f"{unit}: no allow-list SystemCallFilter=")
    return allow - deny, action


def load(allowed: set[str], default_action: int) -> int:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(default_action)
    rules = 0
    for name in sorted(allowed):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:              # not a system call of this architecture
            continue
        if lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) == 0:
            rules += 1
    if lib.seccomp_load(ctx) != 0:
        raise SystemExit("seccomp_load failed (no_new_privs not set?)")
    return rules


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        raise SystemExit(__doc__)
    allowed, action = unit_filter(argv[1])
    load(allowed, action)
    os.execv(argv[3], argv[3:])


if __name__ == "__main__":
    main(sys.argv)
