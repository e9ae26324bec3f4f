"""Deployment artefacts: the systemd unit (systemd-analyze verify + security), the Dockerfile (hadolint,
structure) and the image's root filesystem rebuilt from the Dockerfile's own steps and run for real."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib

import pytest

from tests import dockerfile
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNIT = os.path.join(REPO, "systemd", "relaybox.service")
DOCKERFILE = os.path.join(REPO, "Dockerfile")
VENV_BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=VENV_BIN)
    if not path:
        pytest.fail(f"{name} is missing: run .ci/install-peers.sh / pip install -e '.[test]'")
    return path


def relaybox_exe() -> str:
    return shutil.which("relaybox", path=VENV_BIN) or tool("relaybox")


def unit_for_verify(tmp_path, text: str | None = None) -> str:
    """The unit with its executables pointed at this checkout's relaybox (verify checks they exist)."""
    text = text if text is not None else open(UNIT).read()
    path = tmp_path / "relaybox.service"
    path.write_text(text.replace("/opt/relaybox/bin/relaybox", relaybox_exe()))
    return str(path)


def read_unit() -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in open(UNIT):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out[section] = {}
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


# ---- systemd -----------------------------------------------------------------------------------------
def test_unit_passes_systemd_analyze_verify(tmp_path):
    exe = tool("systemd-analyze")
    res = subprocess.run([exe, "verify", unit_for_verify(tmp_path)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    # verify only warns about unknown keys and bad values: any line naming the unit is a defect
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "relaybox.service" in ln]
    assert problems == []


def test_verify_would_catch_a_broken_unit(tmp_path):
    """Control for the test above: the same check flags a misspelt key and a bad value."""
    exe = tool("systemd-analyze")
    text = open(UNIT).read().replace("ProtectSystem=strict", "ProtectSystem=strickt\nProtectSystm=yes")
    res = subprocess.run([exe, "verify", unit_for_verify(tmp_path, text)], capture_output=True, text=True,
                         timeout=30)
    out = res.stdout + res.stderr
    assert "ProtectSystm" in out and "protect system" in out.lower()


def test_unit_security_exposure_is_low(tmp_path):
    exe = tool("systemd-analyze")
    path = unit_for_verify(tmp_path)
    res = subprocess.run([exe, "security", "--offline=yes", "--threshold=25", path], capture_output=True,
                         text=True, timeout=30)
    score = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert res.returncode == 0 and score, res.stdout[-2000:] + res.stderr
    assert float(score.group(1)) <= 2.5


def test_unit_runs_unprivileged_with_the_promised_hardening():
    svc = read_unit()["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["User"] == "relaybox" and one["StateDirectory"] == "relaybox"
    assert one["ConfigurationDirectory"] == "relaybox"
    assert one["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert one["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("NoNewPrivileges", "yes"), ("Restart", "on-failure"), ("KillSignal", "SIGTERM")):
        assert one[key] == value, key
    assert "@system-service" in svc["SystemCallFilter"]
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "--config /etc/relaybox/relaybox.toml" in one["ExecStart"]
    assert one["Type"] in ("simple", "notify")


def test_sysusers_and_tmpfiles_snippets_apply_to_an_empty_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = tool("systemd-sysusers")
    res = subprocess.run([sysusers, f"--root={root}", os.path.join(REPO, "systemd/relaybox.sysusers.conf")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    passwd = (root / "etc/passwd").read_text()
    entry = next(ln for ln in passwd.splitlines() if ln.startswith("relaybox:"))
    assert entry.endswith(":/var/lib/relaybox:/usr/sbin/nologin")
    assert 0 < int(entry.split(":")[2]) < 1000          # a system user
    tmpfiles = tool("systemd-tmpfiles")
    res = subprocess.run([tmpfiles, f"--root={root}", "--create",
                          os.path.join(REPO, "systemd/relaybox.tmpfiles.conf")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    state = os.stat(root / "var/lib/relaybox")
    assert oct(state.st_mode & 0o777) == "0o750"
    if os.geteuid() == 0:                               # only root can hand the directory over
        assert state.st_uid == int(entry.split(":")[2])


# ---- Dockerfile --------------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint():
    res = subprocess.run([tool("hadolint"), "--no-color", DOCKERFILE], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def container_config() -> dict:
    with open(os.path.join(REPO, "conf/relaybox.container.toml"), "rb") as fh:
        return tomllib.load(fh)


def test_dockerfile_structure_matches_the_container_config():
    _, stages = dockerfile.parse(open(DOCKERFILE).read())
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    final = stages[-1]
    assert "slim" in final.base and "3.11" in final.base
    user = final.all("USER")[-1].args.split(":")[0]
    assert user not in ("root", "0")
    # the numeric user owns the data directory created in the same image
    assert any("useradd" in r.args and f"--uid {user}" in r.args and "/var/lib/relaybox" in r.args
               for r in final.all("RUN"))
    cfg = container_config()
    volume = final.all("VOLUME")[-1].words()
    assert os.path.dirname(cfg["storage"]["path"]) in volume
    exposed = {int(p.split("/")[0]) for ins in final.all("EXPOSE") for p in ins.words()}
    addresses = cfg["smtp"]["listen"] + cfg["smtp"]["implicit_tls_listen"]
    listen_ports = {int(a.rsplit(":", 1)[1]) for a in addresses}
    assert listen_ports and listen_ports <= exposed
    assert all(a.startswith("0.0.0.0:") for a in cfg["smtp"]["listen"])
    assert 8025 in exposed
    health = final.all("HEALTHCHECK")[-1].args
    assert "/healthz" in health and "curl" not in health and "wget" not in health
    assert final.all("STOPSIGNAL")[-1].args == "SIGTERM"
    cmd = final.all("CMD")[-1].words()
    config_dest = next(i.words()[-1] for i in final.all("COPY") if "relaybox.container.toml" in i.args)
    assert cmd[:2] == ["relaybox", "run"] and cmd[cmd.index("--config") + 1] == config_dest


def test_dockerignore_keeps_sources_and_drops_local_state():
    files = set(dockerfile.context_files(REPO))
    for needed in ("pyproject.toml", "store/sqlite.py", "store/migrations/m0001_core.py", "relaybox/cli.py",
                   "conf/relaybox.container.toml"):
        assert needed in files, needed
    for f in files:
        assert not f.startswith((".git/", ".venv/", "var/", "tests/")), f
        assert not f.endswith((".db", ".pyc", ".pem", ".key")), f


def test_container_config_is_the_sample_with_container_values():
    """Same keys as conf/relaybox.toml (no invented ones), same values except the documented overrides."""
    with open(os.path.join(REPO, "conf/relaybox.toml"), "rb") as fh:
        sample = tomllib.load(fh)
    cont = container_config()
    overrides = {("smtp", "listen"), ("storage", "path"), ("admin", "listen"),
                 ("admin", "allow_insecure_listen")}
    for section, values in cont.items():
        if section not in sample or not isinstance(values, dict):
            continue           # a section the sample does not show yet: check-config validates it
        for key, value in values.items():
            assert key in sample[section], f"{section}.{key} is not in conf/relaybox.toml"
            if (section, key) not in overrides and not isinstance(value, dict):
                assert value == sample[section][key], f"{section}.{key} differs from the sample"
    assert cont["storage"]["path"] == "/var/lib/relaybox/relaybox.db"


def test_container_config_can_be_rendered_from_the_current_sample():
    """`python -m tests.container_config` still finds every line it substitutes, and its output is valid."""
    from relaybox.settings import parse
    from tests.container_config import render

    rendered = render(open(os.path.join(REPO, "conf/relaybox.toml")).read())
    settings = parse(tomllib.loads(rendered))
    assert settings.relay.storage.path == "/var/lib/relaybox/relaybox.db"
    assert all(a.startswith("0.0.0.0:") for a in settings.relay.smtp.listen)


def test_compose_example_matches_the_image():
    import yaml

    with open(os.path.join(REPO, "docker-compose.yml")) as fh:
        compose = yaml.safe_load(fh)
    _, stages = dockerfile.parse(open(DOCKERFILE).read())
    final = stages[-1]
    exposed = {int(p.split("/")[0]) for ins in final.all("EXPOSE") for p in ins.words()}
    svc = compose["services"]["relaybox"]
    assert svc["build"] == "." and svc["restart"] == "unless-stopped"
    published = {}
    for spec in svc["ports"]:
        parts = str(spec).split(":")
        published[int(parts[-1])] = parts[:-1]
    assert set(published) <= exposed
    assert published[8025][0] == "127.0.0.1", "the admin API must not be published on every interface"
    volume = final.all("VOLUME")[-1].words()[0]
    name, target = svc["volumes"][0].split(":")[:2]
    assert target == volume and name in compose["volumes"]
    grace = int(str(svc["stop_grace_period"]).rstrip("s"))
    assert grace > 30, "longer than the 30 s drain"
    app = compose["services"]["app"]
    assert app["depends_on"]["relaybox"]["condition"] == "service_healthy"   # needs the image HEALTHCHECK
    subnet = compose["networks"]["mail"]["ipam"]["config"][0]["subnet"]
    assert subnet in open(os.path.join(REPO, "docker-compose.yml")).read().split("allowlist add", 1)[1]


# ---- the image's root filesystem, built from the Dockerfile's steps -------------------------------------
class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _healthcheck_argv(port: int) -> list[str]:
    _, stages = dockerfile.parse(open(DOCKERFILE).read())
    args = stages[-1].all("HEALTHCHECK")[-1].args
    cmd = args[args.index(" CMD ") + 5:].strip()
    assert cmd.startswith("["), "HEALTHCHECK CMD in exec form (no shell in the check)"
    argv = json.loads(cmd)
    return [a.replace("127.0.0.1:8025", f"127.0.0.1:{port}") for a in argv]


def test_healthcheck_command_reports_health_without_curl():
    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = _healthcheck_argv(port)
        assert argv[0] == "python"
        argv[0] = sys.executable
        assert subprocess.run(argv, capture_output=True, timeout=15).returncode == 0
        _Health.status = 503
        assert subprocess.run(argv, capture_output=True, timeout=15).returncode != 0
    finally:
        _Health.status = 200
        server.shutdown()
        server.server_close()
    # nothing listening: unhealthy
    assert subprocess.run([sys.executable] + _healthcheck_argv(port)[1:], capture_output=True,
                          timeout=15).returncode != 0


def _wait_banner(port: int, proc: subprocess.Popen, log_path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"relaybox exited {proc.returncode}: {open(log_path).read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(200).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no SMTP banner on {port}: {open(log_path).read()[-3000:]}")


def test_image_rootfs_from_the_dockerfile_installs_and_runs(tmp_path):
    rootfs = str(tmp_path / "rootfs")
    commands = dockerfile.replay(DOCKERFILE, REPO, rootfs)
    assert any("pip install" in c for c in commands)
    _, stages = dockerfile.parse(open(DOCKERFILE).read())
    final = stages[-1]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for key, value in final.env().items():
        env[key] = re.sub(r"(^|:)/", lambda m: m.group(1) + rootfs + "/", value).replace(
            "$PATH", os.environ.get("PATH", "")) if key in ("PATH", "RELAYBOX_CONFIG") else value
    exe = os.path.join(rootfs, "opt/relaybox/bin/relaybox")
    assert shutil.which("relaybox", path=env["PATH"]) == exe
    workdir = rootfs + final.all("WORKDIR")[-1].args
    os.makedirs(workdir, exist_ok=True)
    # the installed copy is used, not this checkout
    where = subprocess.run([os.path.join(rootfs, "opt/relaybox/bin/python"), "-c",
                            "import store.sqlite, relaybox.cli; print(store.sqlite.__file__)"],
                           cwd=workdir, env=env, capture_output=True, text=True, timeout=30)
    assert where.returncode == 0 and where.stdout.startswith(rootfs), where.stderr
    res = subprocess.run([exe, "--help"], cwd=workdir, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "check-config" in res.stdout and "backup" in res.stdout
    etc_config = rootfs + "/etc/relaybox/relaybox.toml"
    res = subprocess.run([exe, "check-config", etc_config], cwd=workdir, env=env, capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr

    # run it: the image's config with its paths under rootfs and free loopback ports instead of 0.0.0.0
    text = open(etc_config).read().replace('"/var/lib/relaybox', f'"{rootfs}/var/lib/relaybox')
    ports: dict[int, int] = {}
    text = re.sub(r'"0\.0\.0\.0:(\d+)"',
                  lambda m: f'"127.0.0.1:{ports.setdefault(int(m.group(1)), free_port())}"', text)
    run_config = tmp_path / "run.toml"
    run_config.write_text(text)
    log_path = str(tmp_path / "run.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([exe, "run", "--config", str(run_config)], cwd=workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        smtp_port = ports[2525]
        _wait_banner(smtp_port, proc, log_path)
        assert os.path.exists(f"{rootfs}/var/lib/relaybox/relaybox.db")
        if 8025 in ports:          # the admin API is configured: the image's HEALTHCHECK must pass
            deadline = time.monotonic() + 20
            argv = [sys.executable] + _healthcheck_argv(ports[8025])[1:]
            while subprocess.run(argv, capture_output=True, timeout=15).returncode != 0:
                assert proc.poll() is None, open(log_path).read()[-3000:]
                assert time.monotonic() < deadline, "HEALTHCHECK never passed: " + \
                    open(log_path).read()[-3000:]
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)     # the image's STOPSIGNAL
        assert proc.wait(30) == 0, open(log_path).read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
