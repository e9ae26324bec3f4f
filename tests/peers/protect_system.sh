#!/bin/sh
# Run a command with the file-system view a systemd unit with ProtectSystem=strict, ProtectHome=yes,
# PrivateTmp=yes and StateDirectory= gives it (tests only; run inside `unshare --mount --propagation private`):
#   protect_system.sh STATE_DIR MOUNTPOINT -- COMMAND [ARGS...]
# STATE_DIR is bound read-write at MOUNTPOINT (an existing empty directory such as /srv), every other
# mount becomes read-only, /tmp is a private tmpfs, and the directories in $PROTECT_HOME (default
# "/home /root /run/user") are hidden behind empty inaccessible tmpfs mounts.
set -e
state=$1 mountpoint=$2
[ "$3" = "--" ] || { echo "usage: $0 STATE_DIR MOUNTPOINT -- COMMAND..." >&2; exit 2; }
shift 3
mount --bind "$state" "$mountpoint"
# REPO_BIND=SRC:DST makes a source tree under /tmp or a home directory (a CI clone) visible at DST, the way
# a real install lives in /opt, before /tmp and the homes are hidden
if [ -n "${REPO_BIND-}" ]; then mount --bind "${REPO_BIND%%:*}" "${REPO_BIND#*:}"; fi
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r mp; do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$mountpoint") continue;; esac
  # the bound source tree stays read-only like everything else
  mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
mount -t tmpfs -o mode=1777 tmpfs /tmp
for d in ${PROTECT_HOME-/home /root /run/user}; do
  if [ -d "$d" ]; then mount -t tmpfs -o mode=000 tmpfs "$d"; fi
done
exec "$@"
