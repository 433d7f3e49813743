#!/bin/bash
# loopbox-sentry: owns the sandbox network namespace.
#   1. starts ulogd2 (NFLOG group 1 -> /audit/packets.jsonl, JSON, synced)
#   2. installs the egress firewall (iptables + ip6tables, default deny)
#   3. starts dnsmasq on 127.0.0.1:53 (names from LOOPBOX_DNS_HOSTS, NXDOMAIN
#      for the rest, every query logged to /audit/dns.log) and points
#      Docker's embedded DNS address (127.0.0.11:53) at it
#   4. prints "loopbox-sentry: ready", then waits; SIGTERM stops both daemons
#      (records flushed) and exits 0.
# Env: LOOPBOX_ALLOW="ip:port ..."  LOOPBOX_DNS_HOSTS="name=ip ..."
#      LOOPBOX_NO_FIREWALL=1 (tests only: no rules at all; DNS still runs)
#      LOOPBOX_IPTABLES=nft|legacy (optional: force the iptables backend)
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

AUDIT=/audit
RUNDIR=/run/loopbox
GROUP=1
ULOGD_PID=
DNSMASQ_PID=
STOPPING=0

stop_children() {
	local p
	for p in $DNSMASQ_PID $ULOGD_PID; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in $DNSMASQ_PID $ULOGD_PID; do
		wait "$p" 2>/dev/null
	done
}

die() {
	echo "loopbox-sentry: error: $*"
	stop_children
	exit 1
}

on_term() {
	STOPPING=1
	stop_children
	exit 0
}
trap on_term TERM INT

# ---------------------------------------------------------------- checks ---
capeff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
(((0x${capeff:-0} >> 12) & 1)) || die "CAP_NET_ADMIN missing (run with --cap-add NET_ADMIN)"
mkdir -p "$RUNDIR" || die "cannot create $RUNDIR"
[ -d "$AUDIT" ] || die "$AUDIT is not mounted"
touch "$AUDIT/packets.jsonl" "$AUDIT/dns.log" 2>/dev/null ||
	die "$AUDIT is not writable by uid $(id -u)"

ALLOW_V4=()
ALLOW_V6=()
for ep in ${LOOPBOX_ALLOW:-}; do
	case "$ep" in
	\[*\]:*) ip=${ep%]:*}; ip=${ip#[}; port=${ep##*]:} ;;
	*:*:*) die "IPv6 allow entry must be [addr]:port: $ep" ;;
	*:*) ip=${ep%:*}; port=${ep##*:} ;;
	*) die "bad LOOPBOX_ALLOW entry (want ip:port): $ep" ;;
	esac
	case "$port" in '' | *[!0-9]*) die "bad port in LOOPBOX_ALLOW entry: $ep" ;; esac
	[ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "bad port in LOOPBOX_ALLOW entry: $ep"
	case "$ip" in
	*:*) [[ "$ip" =~ ^[0-9A-Fa-f:]+$ ]] || die "bad IPv6 address in LOOPBOX_ALLOW: $ep"
		ALLOW_V6+=("$ip $port") ;;
	*) [[ "$ip" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "bad IPv4 address in LOOPBOX_ALLOW: $ep"
		ALLOW_V4+=("$ip $port") ;;
	esac
done

HOST_RECORDS=()
for h in ${LOOPBOX_DNS_HOSTS:-}; do
	name=${h%%=*}
	ip=${h#*=}
	[[ "$h" == *=* && "$name" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ && "$ip" =~ ^[0-9A-Fa-f.:]+$ ]] ||
		die "bad LOOPBOX_DNS_HOSTS entry (want name=ip): $h"
	HOST_RECORDS+=("host-record=$name,$ip")
done

# iptables backend: use the one Docker used for its embedded-DNS NAT rules in
# this namespace, so our DNAT is evaluated in the same table as Docker's.
backend=${LOOPBOX_IPTABLES:-}
if [ -z "$backend" ]; then
	if iptables-nft-save -t nat 2>/dev/null | grep -q DOCKER_OUTPUT; then
		backend=nft
	elif iptables-legacy-save -t nat 2>/dev/null | grep -q DOCKER_OUTPUT; then
		backend=legacy
	else
		backend=nft
	fi
fi
case "$backend" in nft | legacy) ;; *) die "LOOPBOX_IPTABLES must be nft or legacy" ;; esac
echo "$backend" >"$RUNDIR/backend"
IPT="iptables-$backend"
IP6T="ip6tables-$backend"

# ----------------------------------------------------------------- ulogd ---
# Started before the rules exist, and bound to the NFLOG group before any
# NFLOG rule can match, so that every logged packet becomes a record.
ulogd -c /etc/loopbox/ulogd.conf &
ULOGD_PID=$!
bound=0
for _ in $(seq 1 100); do
	kill -0 "$ULOGD_PID" 2>/dev/null || die "ulogd exited during start-up"
	# /proc/net/netfilter/nfnetlink_log: "<group> <portid> ..." per bound group
	if awk -v g="$GROUP" '$1 == g { f = 1 } END { exit !f }' /proc/net/netfilter/nfnetlink_log 2>/dev/null; then
		bound=1
		break
	fi
	sleep 0.05
done
[ "$bound" = 1 ] || die "ulogd did not bind NFLOG group $GROUP"

# -------------------------------------------------------------- firewall ---
nflog() { echo "-j NFLOG --nflog-group $GROUP --nflog-prefix $1"; }

# Both families start alike: drop by default, loopback and established traffic in.
rules_head() {
	echo '*filter'
	echo ':INPUT DROP [0:0]'
	echo ':FORWARD DROP [0:0]'
	echo ':OUTPUT DROP [0:0]'
	echo '-A INPUT -i lo -j ACCEPT'
	echo '-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT'
}

rules_v4() {
	rules_head
	echo "-A INPUT $(nflog in)"
	echo '-A INPUT -j DROP'
	echo "-A FORWARD $(nflog fwd)"
	echo '-A FORWARD -j DROP'
	echo '-A OUTPUT -o lo -j ACCEPT'
	local e
	for e in "${ALLOW_V4[@]}"; do
		set -- $e
		echo "-A OUTPUT -d $1/32 -p tcp -m tcp --dport $2 -m comment --comment lbx-allow -j ACCEPT"
	done
	echo '-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT'
	echo "-A OUTPUT -p tcp $(nflog out-tcp)"
	echo '-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset'
	echo "-A OUTPUT -p udp $(nflog out-udp)"
	echo '-A OUTPUT -p udp -j REJECT --reject-with icmp-port-unreachable'
	echo "-A OUTPUT -p icmp $(nflog out-icmp)"
	echo '-A OUTPUT -p icmp -j REJECT --reject-with icmp-admin-prohibited'
	echo "-A OUTPUT $(nflog out-other)"
	echo '-A OUTPUT -j REJECT --reject-with icmp-admin-prohibited'
	echo 'COMMIT'
}

# IPv6 link control traffic the kernel sends/receives on its own (router/
# neighbour solicitation, MLD) is dropped without a log record: it is not
# agent traffic, and an unprivileged agent cannot emit it.
ND_TYPES="130 131 132 133 134 135 136 143"
rules_v6() {
	local t e
	rules_head
	for t in $ND_TYPES; do echo "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type $t -j DROP"; done
	echo "-A INPUT $(nflog in6)"
	echo '-A INPUT -j DROP'
	echo "-A FORWARD $(nflog fwd6)"
	echo '-A FORWARD -j DROP'
	echo '-A OUTPUT -o lo -j ACCEPT'
	for e in "${ALLOW_V6[@]}"; do
		set -- $e
		echo "-A OUTPUT -d $1/128 -p tcp -m tcp --dport $2 -m comment --comment lbx-allow -j ACCEPT"
	done
	echo '-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT'
	for t in $ND_TYPES; do echo "-A OUTPUT -p ipv6-icmp -m icmp6 --icmpv6-type $t -j DROP"; done
	echo "-A OUTPUT -p tcp $(nflog out6-tcp)"
	echo '-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset'
	echo "-A OUTPUT -p udp $(nflog out6-udp)"
	echo '-A OUTPUT -p udp -j REJECT --reject-with icmp6-port-unreachable'
	echo "-A OUTPUT -p ipv6-icmp $(nflog out6-icmp)"
	echo '-A OUTPUT -p ipv6-icmp -j REJECT --reject-with icmp6-adm-prohibited'
	echo "-A OUTPUT $(nflog out6-other)"
	echo '-A OUTPUT -j REJECT --reject-with icmp6-adm-prohibited'
	echo 'COMMIT'
}

if [ "${LOOPBOX_NO_FIREWALL:-}" = 1 ]; then
	echo "loopbox-sentry: warning: LOOPBOX_NO_FIREWALL=1, no firewall rules installed (test mode)" >&2
else
	err=$(rules_v4 | "$IPT-restore" 2>&1) || die "iptables-restore ($backend): $err"
	err=$(rules_v6 | "$IP6T-restore" 2>&1) || die "ip6tables-restore ($backend): $err"
fi

# Docker's embedded DNS listens on 127.0.0.11:<random> and DNATs :53 to it.
# Send 127.0.0.11:53 to our responder instead, ahead of Docker's rules, so every
# query name is answered (or refused) and logged by dnsmasq and never forwarded.
if [ "${LOOPBOX_NO_FIREWALL:-}" != 1 ]; then
	for proto in udp tcp; do
		err=$("$IPT" -t nat -I OUTPUT 1 -d 127.0.0.11/32 -p "$proto" --dport 53 \
			-m comment --comment lbx-dns -j DNAT --to-destination 127.0.0.1:53 2>&1) ||
			die "iptables nat DNAT for DNS ($backend): $err"
	done
fi

# --------------------------------------------------------------- dnsmasq ---
{
	echo 'port=53'
	echo 'listen-address=127.0.0.1'
	echo 'bind-interfaces'
	# run as root without setuid/setgid (no SETUID/SETGID capability needed)
	echo 'user=root'
	echo 'group='
	echo 'pid-file='
	echo 'no-resolv'
	echo 'no-poll'
	echo 'no-hosts'
	echo 'no-negcache'
	echo 'local-ttl=60'
	echo 'log-queries=extra'
	echo "log-facility=$AUDIT/dns.log"
	# Every name not given by a host-record below: NXDOMAIN, never forwarded.
	echo 'address=/#/'
	for r in "${HOST_RECORDS[@]}"; do echo "$r"; done
} >"$RUNDIR/dnsmasq.conf" || die "cannot write dnsmasq config"

# dnsmasq writes start-up errors (e.g. bind failures) to stderr, later ones to
# the log file.
dnsmasq --keep-in-foreground --conf-file="$RUNDIR/dnsmasq.conf" 2>"$RUNDIR/dnsmasq.err" &
DNSMASQ_PID=$!
up=0
for _ in $(seq 1 100); do
	kill -0 "$DNSMASQ_PID" 2>/dev/null ||
		die "dnsmasq exited during start-up: $(cat "$RUNDIR/dnsmasq.err" <(grep -v 'FAILED to start up' "$AUDIT/dns.log") | tail -n 1)"
	# 0100007F:0035 = 127.0.0.1:53; tcp state 0A = LISTEN, udp state 07 = bound
	if grep -q ' 0100007F:0035 00000000:0000 0A ' /proc/net/tcp &&
		grep -q ' 0100007F:0035 00000000:0000 07 ' /proc/net/udp; then
		up=1
		break
	fi
	sleep 0.05
done
[ "$up" = 1 ] || die "dnsmasq is not listening on 127.0.0.1:53"

echo "loopbox-sentry: ready"

# ------------------------------------------------------------------ wait ---
# If either daemon dies, the audit trail is incomplete: fail loudly. The rules
# stay in the namespace (default deny) for as long as anything holds it.
while :; do
	wait -n "$ULOGD_PID" "$DNSMASQ_PID"
	[ "$STOPPING" = 1 ] && exit 0
	if ! kill -0 "$ULOGD_PID" 2>/dev/null; then die "ulogd exited"; fi
	if ! kill -0 "$DNSMASQ_PID" 2>/dev/null; then die "dnsmasq exited"; fi
done
