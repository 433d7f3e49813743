#!/bin/sh
# Prints one JSON line with exact netfilter counters of the sentry's rules:
#   allowed = sum of the allow rules (comment lbx-allow, v4+v6): outbound
#             packets/bytes to the LOOPBOX_ALLOW endpoints
#   logged  = sum of the packet counters of every NFLOG rule (v4+v6), and the
#             same per rule (its NFLOG prefix); each such packet should be one
#             record in /audit/packets.jsonl
#   dns     = packets that reached the DNS front's port 127.0.0.1:53 (udp, tcp:
#             rules lbx-dns-udp/-tcp), and the kernel's drop counter of the
#             front's UDP socket (/proc/net/udp of this namespace): each udp
#             packet should be one line of /audit/dns.jsonl (issue 17, item 1)
set -eu
backend=$(cat /run/loopbox/backend 2>/dev/null || echo nft)
# /proc/net/udp: local address 0100007F:0035 is 127.0.0.1:53; the last field is "drops".
drops=$(awk '$2 == "0100007F:0035" { d += $NF } END { printf "%d", d }' /proc/net/udp 2>/dev/null || echo 0)
{
  "iptables-$backend-save" -c -t filter
  "ip6tables-$backend-save" -c -t filter 2>/dev/null || true
} | awk -v drops="$drops" '
  /^\[[0-9]+:[0-9]+\] -A / {
    split(substr($1, 2, length($1) - 2), c, ":")
    if ($0 ~ /--comment "?lbx-allow"?/) { ap += c[1]; ab += c[2] }
    if ($0 ~ /--comment "?lbx-dns-udp"?/) du += c[1]
    if ($0 ~ /--comment "?lbx-dns-tcp"?/) dt += c[1]
    if ($0 ~ / -j NFLOG/) {
      lp += c[1]
      if (match($0, /--nflog-prefix "?[A-Za-z0-9_-]+/)) {
        p = substr($0, RSTART + 15, RLENGTH - 15); sub(/^"/, "", p)
        if (!(p in rule)) order[++n] = p
        rule[p] += c[1]
      }
    }
  }
  END {
    printf "{\"allowed\":{\"packets\":%d,\"bytes\":%d},\"logged\":{\"packets\":%d,\"rules\":{", ap, ab, lp
    for (i = 1; i <= n; i++) printf "%s\"%s\":%d", (i > 1 ? "," : ""), order[i], rule[order[i]]
    printf "}},\"dns\":{\"udp\":%d,\"tcp\":%d,\"drops\":%d}}\n", du, dt, drops
  }'
