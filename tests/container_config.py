"""conf/relaybox.container.toml is conf/relaybox.toml with the container's values; this renders it.

    .venv/bin/python -m tests.container_config      # rewrite conf/relaybox.container.toml from the sample

Run it after editing conf/relaybox.toml. tests/test_deploy.py checks that the shipped file agrees with the
sample key by key and that the substitutions below still find their lines.
"""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEADER = """\
# relaybox configuration for the container image (installed as /etc/relaybox/relaybox.toml).
# A copy of conf/relaybox.toml (which documents every key with its default) with the container's values:
# listeners on 0.0.0.0 on unprivileged ports (publish them as 25/587: `docker run -p 25:2525 -p 587:2587`),
# the admin API on 0.0.0.0:8025 (publish it on the host's loopback only: `-p 127.0.0.1:8025:8025`), the
# database on the volume /var/lib/relaybox. Mount your own file over this one to change it.
"""

# (line in the sample, replacement): each must occur exactly once
SUBSTITUTIONS = [
    ('listen = ["127.0.0.1:2525"]', 'listen = ["0.0.0.0:2525", "0.0.0.0:2587"]'),
    ("implicit_tls_listen = []",
     "implicit_tls_listen = []\n"
     '# with a certificate mounted and smtp.tls set: implicit_tls_listen = ["0.0.0.0:2465"]'),
    ('allowlist = ["127.0.0.1/32", "::1/128"]',
     'allowlist = ["127.0.0.1/32", "::1/128"]\n'
     "# Containers reach relaybox from their network (e.g. a compose network 172.28.0.0/16): add it here or\n"
     "# with `docker exec relaybox relaybox allowlist add 172.28.0.0/16 --note compose`."),
    ('path = "var/relaybox.db"', 'path = "/var/lib/relaybox/relaybox.db"'),
    ('listen = "127.0.0.1:8025"',
     "# In the container: all interfaces of the container, published on the host's loopback only; "
     "the image's\n"
     '# HEALTHCHECK asks http://127.0.0.1:8025/healthz.\nlisten = "0.0.0.0:8025"'),
    ("allow_insecure_listen = false",
     "# plain HTTP on the container's interfaces: publish the port on the host's loopback only, or set the\n"
     "# tls_* keys above and make this false\nallow_insecure_listen = true"),
    ('token_file = ""',
     'token_file = ""\n# e.g. token_file = "/etc/relaybox/secrets/admin-tokens" (a read-only mount)'),
]


def render(sample: str) -> str:
    out = sample
    for old, new in SUBSTITUTIONS:
        count = out.count(old)
        if count != 1:
            raise ValueError(f"conf/relaybox.toml: expected one line {old!r}, found {count}")
        out = out.replace(old, new)
    return HEADER + out


def main() -> None:
    with open(os.path.join(REPO, "conf", "relaybox.toml"), encoding="utf-8") as fh:
        text = render(fh.read())
    with open(os.path.join(REPO, "conf", "relaybox.container.toml"), "w", encoding="utf-8") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
