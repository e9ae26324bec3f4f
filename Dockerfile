# syntax=docker/dockerfile:1
# relaybox container image.
#   docker build -t relaybox .
#   docker run -d --name relaybox -p 25:2525 -p 587:2587 -p 127.0.0.1:8025:8025 \
#       -v relaybox-data:/var/lib/relaybox relaybox
# See docs/operations.md. tests/test_deploy.py lints this file (hadolint) and replays its pip steps into a
# fresh venv: keep the install in `RUN /opt/relaybox/bin/pip install ...` lines and the source in /src.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a self-contained virtualenv with relaybox and its dependencies --------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/relaybox
COPY . /src
RUN /opt/relaybox/bin/pip install --no-cache-dir /src

# ---- runtime: the venv, the config, an unprivileged user, nothing else ------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="relaybox" \
      org.opencontainers.image.description="Durable outbound SMTP relay and IMAP/POP3 poller" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10025 relaybox \
 && useradd --system --uid 10025 --gid relaybox --home-dir /var/lib/relaybox --no-create-home \
            --shell /usr/sbin/nologin relaybox \
 && install -d -o relaybox -g relaybox -m 0750 /var/lib/relaybox \
 && install -d -o root -g relaybox -m 0750 /etc/relaybox
COPY --from=build /opt/relaybox /opt/relaybox
COPY --chown=root:relaybox --chmod=0640 conf/relaybox.container.toml /etc/relaybox/relaybox.toml
ENV PATH=/opt/relaybox/bin:$PATH \
    RELAYBOX_CONFIG=/etc/relaybox/relaybox.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10025:10025
WORKDIR /var/lib/relaybox
VOLUME ["/var/lib/relaybox"]
# SMTP (publish as 25), submission (publish as 587), admin API + /metrics + /healthz
EXPOSE 2525 2587 8025
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8025/healthz', timeout=4).status == 200 else 1)"]
# relaybox is PID 1: the supervisor of one worker process per CPU the container sees ([process] workers or
# `relaybox run --workers N`); it reaps and restarts its workers and drains them on SIGTERM (docker stop -t 45)
STOPSIGNAL SIGTERM
CMD ["relaybox", "run", "--config", "/etc/relaybox/relaybox.toml"]
