#!/bin/sh
# Prints one JSON line with exact netfilter counters of the sentry's rules:
#   allowed = sum of the allow rules (comment lbx-allow, v4+v6): outbound
#             packets/bytes to the LOOPBOX_ALLOW endpoints
#   logged  = sum of the packet counters of every NFLOG rule (v4+v6); each
#             such packet should be one record in /audit/packets.jsonl
set -eu
backend=$(cat /run/loopbox/backend 2>/dev/null || echo nft)
{
  "iptables-$backend-save" -c -t filter
  "ip6tables-$backend-save" -c -t filter 2>/dev/null || true
} | awk '
  /^\[[0-9]+:[0-9]+\] -A / {
    split(substr($1, 2, length($1) - 2), c, ":")
    if ($0 ~ /--comment "?lbx-allow"?/) { ap += c[1]; ab += c[2] }
    if ($0 ~ / -j NFLOG/) { lp += c[1] }
  }
  END { printf "{\"allowed\":{\"packets\":%d,\"bytes\":%d},\"logged\":{\"packets\":%d}}\n", ap, ab, lp }'
