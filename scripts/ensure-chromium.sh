#!/usr/bin/env bash
# Installs Debian's chromium for the report's browser test (test/docker/report.test.ts) when it
# is missing. The test drives it with playwright-core: no browser download, only the distro
# package. Root only (apt-get); otherwise it says what to install and fails.
set -euo pipefail

CHROMIUM="${LOOPBOX_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-chromium: $CHROMIUM is missing; install Debian's chromium package (apt-get install -y chromium) as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >/tmp/loopbox-ensure-chromium.log 2>&1; then
  apt-get update >>/tmp/loopbox-ensure-chromium.log 2>&1
  apt-get install -y --no-install-recommends chromium >>/tmp/loopbox-ensure-chromium.log 2>&1 || {
    echo "ensure-chromium: apt-get install chromium failed; see /tmp/loopbox-ensure-chromium.log" >&2
    tail -n 20 /tmp/loopbox-ensure-chromium.log >&2
    exit 1
  }
fi
"$CHROMIUM" --version >&2
