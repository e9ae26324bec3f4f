#!/usr/bin/env bash
# Installs the real protocol peers the tests start themselves (Dovecot, dnsmasq, Postfix tools, swaks,
# DKIM verifiers). Idempotent and quiet when everything is present. Package scripts are kept from starting
# system services (policy-rc.d, only while we install); nothing is ever stopped here: a Dovecot or Postfix
# already running on this machine is not ours, and the tests start their own peers on free high ports.
set -euo pipefail
need=()
command -v dovecot >/dev/null || need+=(dovecot-imapd dovecot-pop3d)
[ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v opendkim-testmsg >/dev/null || need+=(opendkim-tools)
perl -MMail::DKIM::Verifier -e1 2>/dev/null || need+=(libmail-dkim-perl)
command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ] || need+=(postfix)
command -v swaks >/dev/null || need+=(swaks)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)      # opendkim test: netns loopback
perl -MNet::DNS::Resolver -e1 2>/dev/null || need+=(libnet-dns-perl)   # Mail::DKIM custom resolver
command -v openssl >/dev/null || need+=(openssl)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v chromium >/dev/null || need+=(chromium)                       # tracking e2e: headless browser
command -v chromedriver >/dev/null || need+=(chromium-driver)
# PostgreSQL, the store's second backend: tests/peers/postgres.py runs initdb + pg_ctl itself; the package's
# own cluster is not started (policy-rc.d below)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)   # alert rule tests, real scrape
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # keep package scripts from starting system services (Dovecot on 143/993, Postfix on 25)
  # (ours only while we install: a policy-rc.d left behind would stop later upgrades restarting services)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >/dev/null
fi
exit 0
