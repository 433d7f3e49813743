#!/usr/bin/env bash
# Make a Docker engine available for tests, the demo and CI.
# - If `docker info` answers, use that engine and say so.
# - Else, on Debian as root: install docker.io + iptables if missing, start dockerd in the
#   background (setsid, log to $LOOPBOX_DOCKERD_LOG), and wait (bounded) until it answers.
# - Elsewhere: a clear error that says how to get Docker.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }
wait_s=${LOOPBOX_DOCKERD_WAIT:-60}
dlog=${LOOPBOX_DOCKERD_LOG:-/var/log/loopbox-dockerd.log}

if timeout 10 docker info >/dev/null 2>&1; then
  log "using the running Docker engine ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown))"
  exit 0
fi

if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ]; then
  cat >&2 <<'MSG'
ensure-docker: no Docker engine answers `docker info`, and this is not a Debian machine where
I may install one as root. Install Docker Engine (https://docs.docker.com/engine/install/),
start it, make sure your user can reach the socket (`docker info` must work), and try again.
MSG
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io and iptables from Debian (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends docker.io iptables debootstrap >&2
fi
# debootstrap makes base images when no registry answers (images build --offline).
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  log "starting dockerd in the background (log: $dlog)"
  setsid dockerd >"$dlog" 2>&1 < /dev/null &
fi

for _ in $(seq 1 "$wait_s"); do
  if timeout 5 docker info >/dev/null 2>&1; then
    log "Docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
    exit 0
  fi
  sleep 1
done
log "dockerd did not answer within ${wait_s}s; last lines of $dlog:"
tail -n 20 "$dlog" >&2 || true
exit 1
