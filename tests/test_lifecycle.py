"""sd_notify: the datagrams systemd would receive, on a real unix socket (path and abstract namespace)."""

from __future__ import annotations

import os
import socket

import pytest

from relaybox import lifecycle

pytestmark = pytest.mark.integration


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_ready_reloading_stopping_reach_the_notify_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with _receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert lifecycle.ready("accepting mail")
        msg = sock.recv(4096).decode()
        assert msg.splitlines()[0] == "READY=1"
        assert "STATUS=accepting mail" in msg and f"MAINPID={os.getpid()}" in msg
        assert lifecycle.reloading()
        msg = sock.recv(4096).decode()
        assert msg.startswith("RELOADING=1\nMONOTONIC_USEC=") and msg.split("=")[-1].isdigit()
        assert lifecycle.stopping()
        assert sock.recv(4096).decode() == "STOPPING=1\nSTATUS=draining"


def test_abstract_socket_address(monkeypatch):
    name = f"relaybox-test-{os.getpid()}"
    with _receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert lifecycle.status("queue 3")
        assert sock.recv(4096) == b"STATUS=queue 3"


def test_without_a_service_manager_calls_are_no_ops(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert lifecycle.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert lifecycle.stopping() is False          # a vanished socket never breaks the relay


def test_a_real_relaybox_speaks_the_protocol_the_unit_expects(tmp_path, monkeypatch):
    """systemd/relaybox.service is Type=notify: READY=1 after the listeners are bound, RELOADING=1 then
    READY=1 around SIGHUP, STOPPING=1 on SIGTERM, all from the main process (NotifyAccess=main)."""
    import signal
    import smtplib

    from tests.peers.ports import free_port
    from tests.peers.relaybox_proc import RelayboxProcess

    path = str(tmp_path / "notify")
    with _receiver(path) as sock:
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        rb = RelayboxProcess(str(tmp_path / "rb"), {"admin": {"listen": f"127.0.0.1:{free_port()}"}})
        rb.start()
        try:
            ready = sock.recv(4096).decode()
            assert "READY=1" in ready.splitlines(), ready
            assert f"MAINPID={rb.proc.pid}" in ready and f"127.0.0.1:{rb.smtp_port}" in ready
            with smtplib.SMTP("127.0.0.1", rb.smtp_port, timeout=10) as s:   # ready means ready
                assert s.noop()[0] == 250
            rb.proc.send_signal(signal.SIGHUP)
            assert sock.recv(4096).decode().startswith("RELOADING=1")
            assert "READY=1" in sock.recv(4096).decode().splitlines()
        finally:
            code = rb.stop()
        assert code == 0
        assert sock.recv(4096).decode().startswith("STOPPING=1")
