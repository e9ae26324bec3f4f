"""Config loading: typed sections, errors naming the key, the shipped sample is valid."""

import os
import subprocess
import sys

import pytest

from relay.configtypes import ConfigError, parse_duration, parse_size
from relaybox.settings import load, parse

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_config_is_valid_and_matches_defaults():
    s = load(os.path.join(REPO, "conf", "relaybox.toml"))
    assert s.relay.smtp.max_message_size == 20_000_000
    assert s.relay.smtp.listen == ["127.0.0.1:2525"]
    assert s.relay.storage.min_free == 0.05


def test_errors_name_the_key():
    with pytest.raises(ConfigError) as exc:
        parse({"smtp": {"max_message_size": "big", "nope": 1, "bare_lf": "maybe"}, "bogus": {}})
    text = str(exc.value)
    assert 'smtp.max_message_size: expected a size like "20MB", got \'big\'' in text
    assert "smtp.nope: unknown key" in text
    assert "bogus: unknown section" in text


def test_units():
    assert parse_size("20MB") == 20_000_000 and parse_size("1KiB") == 1024 and parse_size(5) == 5
    assert parse_duration("5m") == 300 and parse_duration("5d") == 432000 and parse_duration("500ms") == 0.5
    for bad in ("-1", "x", "5 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_check_config_command_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nmax_message_size = "big"\n')
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert 'smtp.max_message_size: expected a size like "20MB"' in out.stdout
    good = subprocess.run([sys.executable, "-m", "relaybox.cli", "check-config", "conf/relaybox.toml"],
                          capture_output=True, text=True, cwd=REPO)
    assert good.returncode == 0, good.stdout + good.stderr


def test_check_config_finds_semantic_problems(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[dkim]\nenabled = true\n[dkim.domains."example.com"]\nselector = "s1"\n'
                   'key_file = "/nonexistent/dkim.key"\n[[channels]]\nname = "c"\nhost = "h"\nuser = "u"\n'
                   'default_campaign = "nope"\n')
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "check-config", str(bad)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert "/nonexistent/dkim.key" in out.stdout and "unknown default campaign 'nope'" in out.stdout
    run = subprocess.run([sys.executable, "-m", "relaybox.cli", "run", "--config", str(bad)],
                         capture_output=True, text=True, cwd=str(tmp_path), timeout=30)
    assert run.returncode == 2 and "config error:" in run.stderr and "Traceback" not in run.stderr


def test_storage_commit_delay_is_bounded_seconds():
    from relay.config import StorageConfig

    assert StorageConfig().commit_delay == 0.002
    assert StorageConfig(commit_delay=0).commit_delay == 0
    for bad in (-0.001, 0.5):
        with pytest.raises(ValueError, match="storage.commit_delay"):
            StorageConfig(commit_delay=bad)
