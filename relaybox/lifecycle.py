"""Tell the service manager where relaybox is in its life (systemd's sd_notify protocol, no library).

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to ``Type=notify``
services; we send one datagram per state change:

- ``ready()`` once the listeners are bound and the queue recovered (systemd then reports "active"),
- ``reloading()`` at the start of a SIGHUP reload and ``ready()`` again when it is done,
- ``stopping()`` when the drain starts,
- ``status(text)`` for the one-line status shown by ``systemctl status``.

Without ``NOTIFY_SOCKET`` (a shell, a container, ``Type=simple``) every call is a cheap no-op returning
False, so the app may call these unconditionally.
"""

from __future__ import annotations

import os
import signal
import socket
import time

# stop signals that came before the event loop's handlers were installed (keep_early_stop_signals)
EARLY_SIGNALS: list[int] = []


def keep_early_stop_signals() -> None:
    """From here on a SIGTERM/SIGINT is recorded, not fatal, until the app installs its loop handlers and
    honours it as a drain (a supervisor stopping while a worker still imports must not see it killed)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: EARLY_SIGNALS.append(signum))


def notify(state: str, *, env: dict[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=..."``) to the service manager; True if it was sent."""
    target = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not target or target[0] not in "/@":
        return False
    address = "\0" + target[1:] if target[0] == "@" else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def ready(status_text: str = "") -> bool:
    msg = "READY=1"
    if status_text:
        msg += f"\nSTATUS={status_text}"
    return notify(msg + f"\nMAINPID={os.getpid()}")


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd >= 253 match the reload with the READY=1 that ends it
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def stopping() -> bool:
    return notify("STOPPING=1\nSTATUS=draining")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
