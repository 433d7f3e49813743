#!/bin/bash
# loopbox-sentry: owns the sandbox network namespace.
#   1. starts the packet logger (pktlog.py: NFLOG group 1 -> /audit/packets.jsonl, one JSON
#      line per packet, with the DNS question of every UDP packet that carries one)
#   2. installs the egress firewall (iptables + ip6tables, default deny)
#   3. starts dnsmasq on 127.0.0.1:54 (names from LOOPBOX_DNS_HOSTS, NXDOMAIN
#      for the rest) behind the DNS front on 127.0.0.1:53 (dnsfront.py: every
#      query name logged byte for byte to /audit/dns.jsonl), and points Docker's
#      embedded DNS address (127.0.0.11:53) at the front
#   4. starts the model gateway (gateway.py) on port $GW_PORT; the agent's
#      connections to LOOPBOX_MODEL are DNATed to it, and only the gateway's
#      uid may reach the model itself
#   5. prints "loopbox-sentry: ready", then drops every capability: the
#      long-lived processes (tini, a watcher, and the four daemons, each as its
#      own unprivileged user) hold none. If a daemon dies, the sentry exits 1.
#      SIGTERM exits 0 (every daemon writes its records synchronously).
# Env: LOOPBOX_ALLOW="ip:port ..."  LOOPBOX_DNS_HOSTS="name=ip ..."
#      LOOPBOX_MODEL="ip:port" (the model; reached through the gateway only)
#      LOOPBOX_GW_MAX_BODY, LOOPBOX_GW_MAX_TOKENS, LOOPBOX_GW_TOKEN_BUDGET,
#      LOOPBOX_GW_TOKENS_USED (passed to the gateway)
#      LOOPBOX_GW_ESCALATE="ip:port" (model.escalate: the gateway sends every request there
#      instead; only the gateway's uid may reach it) and LOOPBOX_GW_ESCALATE_* (gateway.py).
#      The escalation key is never in the environment: the host copies it into
#      /run/loopbox-escalate.key (root, 0400) before the start; the gateway reads it as root
#      and this script deletes the file once the gateway listens.
#      LOOPBOX_NO_FIREWALL=1 (tests only: no rules at all; DNS still runs)
#      LOOPBOX_IPTABLES=nft|legacy (optional: force the iptables backend)
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

AUDIT=/audit
RUNDIR=/run/loopbox
GROUP=1
GW_PORT=81
GW_USER=lbxgw
DNS_USER=lbxdns
LOG_USER=lbxlog
DNSMASQ_PORT=54
# The bash running this script is PID 1 until it execs the watcher: when it exits, the kernel
# kills every process of the container, daemons included.
die() {
	echo "loopbox-sentry: error: $*"
	exit 1
}
trap 'exit 0' TERM INT

# A daemon that dropped to its own uid cannot be signalled without CAP_KILL, which the
# sentry does not have: liveness comes from /proc (a zombie counts as dead).
alive() {
	local st
	read -r _ _ st _ <"/proc/$1/stat" 2>/dev/null && [ "$st" != Z ]
}

# Waits (10 s at most) for a daemon's start-up line; dies with its last output line if it exits
# or never says it listens. Usage: await_listening PID OUTFILE LINE-PREFIX WHAT
await_listening() {
	local pid=$1 out=$2 line=$3 what=$4
	for _ in $(seq 1 200); do
		alive "$pid" || die "$what exited during start-up: $(tail -n 1 "$out")"
		grep -q "^$line" "$out" && return 0
		sleep 0.05
	done
	die "$what is not listening"
}

# ---------------------------------------------------------------- checks ---
capeff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
for cap in 12:NET_ADMIN 10:NET_BIND_SERVICE 7:SETUID 6:SETGID 0:CHOWN; do
	(((0x${capeff:-0} >> ${cap%%:*}) & 1)) || die "CAP_${cap#*:} missing (run with --cap-add ${cap#*:})"
done
mkdir -p "$RUNDIR" || die "cannot create $RUNDIR"
[ -d "$AUDIT" ] || die "$AUDIT is not mounted"
GW_UID=$(id -u "$GW_USER") || die "no user $GW_USER in the image"
DNS_UID=$(id -u "$DNS_USER") || die "no user $DNS_USER in the image"
# Each daemon opens its file as root, before it drops to its own user, and keeps the handle.
touch "$AUDIT/packets.jsonl" "$AUDIT/dns.log" "$AUDIT/dns.jsonl" "$AUDIT/gateway.jsonl" 2>/dev/null ||
	die "$AUDIT is not writable by uid $(id -u)"

MODEL_IP=
MODEL_PORT=
if [ -n "${LOOPBOX_MODEL:-}" ]; then
	MODEL_IP=${LOOPBOX_MODEL%:*}
	MODEL_PORT=${LOOPBOX_MODEL##*:}
	[[ "$MODEL_IP" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ && "$MODEL_PORT" =~ ^[0-9]{1,5}$ ]] ||
		die "bad LOOPBOX_MODEL (want ipv4:port): $LOOPBOX_MODEL"
	# The agent's connections to the model are DNATed to the sentry's own address on the route
	# to the model, not to 127.0.0.1: a packet that already has a non-loopback source is not
	# rerouted to loopback (route_localnet=0).
	GW_IP=$(python3 -I -c 'import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((sys.argv[1], 9)); print(s.getsockname()[0])' "$MODEL_IP") ||
		die "no route to the model at $MODEL_IP"
fi

ESC_IP=
ESC_PORT=
ESC_KEY_FILE=/run/loopbox-escalate.key
if [ -n "${LOOPBOX_GW_ESCALATE:-}" ]; then
	[ -n "$MODEL_IP" ] || die "LOOPBOX_GW_ESCALATE needs LOOPBOX_MODEL (the gateway)"
	ESC_IP=${LOOPBOX_GW_ESCALATE%:*}
	ESC_PORT=${LOOPBOX_GW_ESCALATE##*:}
	[[ "$ESC_IP" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ && "$ESC_PORT" =~ ^[0-9]{1,5}$ ]] ||
		die "bad LOOPBOX_GW_ESCALATE (want ipv4:port): $LOOPBOX_GW_ESCALATE"
fi

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

# ---------------------------------------------------------- packet logger ---
# Started before the rules exist, and bound to the NFLOG group before any NFLOG rule can match,
# so that every logged packet becomes a record. It binds the group as root (that needs
# NET_ADMIN), then becomes its own user: no capabilities.
LOOPBOX_NFLOG_GROUP=$GROUP LOOPBOX_PACKET_RECORDS="$AUDIT/packets.jsonl" LOOPBOX_PKTLOG_USER=$LOG_USER \
	python3 -I /usr/local/lib/loopbox/pktlog.py >"$RUNDIR/pktlog.out" 2>&1 &
PKTLOG_PID=$!
bound=0
for _ in $(seq 1 100); do
	alive "$PKTLOG_PID" || die "packet logger exited during start-up: $(tail -n 1 "$RUNDIR/pktlog.out")"
	# /proc/net/netfilter/nfnetlink_log: "<group> <portid> ..." per bound group
	if awk -v g="$GROUP" '$1 == g { f = 1 } END { exit !f }' /proc/net/netfilter/nfnetlink_log 2>/dev/null &&
		grep -q '^loopbox-pktlog: listening' "$RUNDIR/pktlog.out"; then
		bound=1
		break
	fi
	sleep 0.05
done
[ "$bound" = 1 ] || die "the packet logger did not bind NFLOG group $GROUP"

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
	# Docker's embedded resolver answers container names on its real (random) port without a
	# log line: nothing may talk to 127.0.0.11 but the DNATed port 53, which by now points at
	# 127.0.0.1:53 (issue 8, item 2).
	echo "-A OUTPUT -d 127.0.0.11/32 $(nflog out-resolver)"
	echo '-A OUTPUT -d 127.0.0.11/32 -p tcp -j REJECT --reject-with tcp-reset'
	echo '-A OUTPUT -d 127.0.0.11/32 -j REJECT --reject-with icmp-port-unreachable'
	# dnsmasq itself answers only the DNS front, which logged the query first.
	local p
	for p in udp tcp; do
		echo "-A OUTPUT -o lo -p $p -m $p --dport $DNSMASQ_PORT -m owner ! --uid-owner $DNS_UID $(nflog out-resolver)"
		echo "-A OUTPUT -o lo -p $p -m $p --dport $DNSMASQ_PORT -m owner ! --uid-owner $DNS_UID -j REJECT $([ $p = tcp ] && echo '--reject-with tcp-reset')"
	done
	# Every query that reaches the DNS front's port is counted here (after the nat DNAT): the
	# host compares the count with the front's records, so a query the kernel dropped at the
	# front's socket under a flood is reported lost, never silently missing (issue 17, item 1).
	echo '-A OUTPUT -d 127.0.0.1/32 -p udp -m udp --dport 53 -m comment --comment lbx-dns-udp -j ACCEPT'
	echo '-A OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport 53 -m comment --comment lbx-dns-tcp -j ACCEPT'
	echo '-A OUTPUT -o lo -j ACCEPT'
	local e
	# The model: the gateway's uid only; everyone else is REDIRECTed to the gateway (nat).
	if [ -n "$MODEL_IP" ]; then
		# LOCAL_OUT hooks see the interface of the route before DNAT (eth0), so "-o lo" misses
		# the DNATed connection to the gateway: accept it by its conntrack origin.
		echo "-A OUTPUT -d $GW_IP/32 -p tcp -m tcp --dport $GW_PORT -m conntrack --ctstate DNAT --ctorigdst $MODEL_IP --ctorigdstport $MODEL_PORT -m comment --comment lbx-gateway -j ACCEPT"
		echo "-A OUTPUT -d $MODEL_IP/32 -p tcp -m tcp --dport $MODEL_PORT -m owner --uid-owner $GW_UID -m comment --comment lbx-allow -j ACCEPT"
	fi
	# The escalation endpoint (model.escalate): the gateway's uid only, which adds the key.
	# Anyone else's attempt falls through to the logged REJECT below.
	if [ -n "$ESC_IP" ]; then
		echo "-A OUTPUT -d $ESC_IP/32 -p tcp -m tcp --dport $ESC_PORT -m owner --uid-owner $GW_UID -m comment --comment lbx-escalate -j ACCEPT"
	fi
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
	if [ -n "$MODEL_IP" ]; then
		err=$("$IPT" -t nat -I OUTPUT 1 -d "$MODEL_IP/32" -p tcp --dport "$MODEL_PORT" -m owner ! --uid-owner "$GW_UID" \
			-m comment --comment lbx-gateway -j DNAT --to-destination "$GW_IP:$GW_PORT" 2>&1) ||
			die "iptables nat DNAT to the gateway ($backend): $err"
	fi
fi

# --------------------------------------------------------------- dnsmasq ---
{
	echo "port=$DNSMASQ_PORT"
	echo 'listen-address=127.0.0.1'
	echo 'bind-interfaces'
	# binds :53 as root, then becomes user dnsmasq and gives up every capability
	echo 'user=dnsmasq'
	echo 'group=nogroup'
	echo 'pid-file='
	echo 'no-resolv'
	echo 'no-poll'
	echo 'no-hosts'
	echo 'no-negcache'
	echo 'local-ttl=60'
	# Queries are logged by the DNS front, which keeps unprintable names as evidence.
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
	alive "$DNSMASQ_PID" ||
		die "dnsmasq exited during start-up: $(cat "$RUNDIR/dnsmasq.err" <(grep -v 'FAILED to start up' "$AUDIT/dns.log") | tail -n 1)"
	# 0100007F:0036 = 127.0.0.1:54; tcp state 0A = LISTEN, udp state 07 = bound
	if grep -q ' 0100007F:0036 00000000:0000 0A ' /proc/net/tcp &&
		grep -q ' 0100007F:0036 00000000:0000 07 ' /proc/net/udp; then
		up=1
		break
	fi
	sleep 0.05
done
[ "$up" = 1 ] || die "dnsmasq is not listening on 127.0.0.1:$DNSMASQ_PORT"
# dnsmasq made its log file its own, mode 0660: the host, which may run loopbox as any user,
# could not read it. Give it back to root, readable by all; dnsmasq keeps its open handle.
# dnsmasq hands the file to its user around the time it starts listening: wait (2 s at most)
# until it has, or a later chown of its own would undo ours.
for _ in $(seq 1 40); do
	[ "$(stat -c %u "$AUDIT/dns.log")" != 0 ] && break
	sleep 0.05
done
chown 0:0 "$AUDIT/dns.log" && chmod 0644 "$AUDIT/dns.log" || die "cannot make $AUDIT/dns.log readable"

# ------------------------------------------------------------- DNS front ---
LOOPBOX_DNS_UPSTREAM_PORT=$DNSMASQ_PORT LOOPBOX_DNS_USER=$DNS_USER LOOPBOX_DNS_RECORDS="$AUDIT/dns.jsonl" \
	python3 -I /usr/local/lib/loopbox/dnsfront.py >"$RUNDIR/dnsfront.out" 2>&1 &
DNSFRONT_PID=$!
await_listening "$DNSFRONT_PID" "$RUNDIR/dnsfront.out" 'loopbox-dns: listening' 'DNS front (127.0.0.1:53)'

# --------------------------------------------------------------- gateway ---
GW_PID=
if [ -n "$MODEL_IP" ]; then
	LOOPBOX_GW_PORT=$GW_PORT LOOPBOX_GW_UPSTREAM="$MODEL_IP:$MODEL_PORT" LOOPBOX_GW_USER=$GW_USER \
		LOOPBOX_GW_RECORDS="$AUDIT/gateway.jsonl" python3 -I /usr/local/lib/loopbox/gateway.py >"$RUNDIR/gateway.out" 2>&1 &
	GW_PID=$!
	await_listening "$GW_PID" "$RUNDIR/gateway.out" 'loopbox-gateway: listening' "gateway (port $GW_PORT)"
fi
# The gateway has read the escalation key (if any) into its memory: the file goes.
rm -f "$ESC_KEY_FILE" && [ ! -e "$ESC_KEY_FILE" ] || die "cannot delete $ESC_KEY_FILE"

echo "loopbox-sentry: ready"

# ------------------------------------------------------------------ wait ---
# From here on no process holds a capability (issue 8, item 5): the bounding set is emptied
# and tini (PID 1 from now, so it reaps the daemons) runs the watcher. If a daemon dies, the
# audit trail is incomplete: fail loudly. The rules stay in the namespace (default deny) for
# as long as anything holds it.
exec setpriv --bounding-set=-all --inh-caps=-all --reuid=65534 --regid=65534 --clear-groups -- \
	/usr/bin/tini -s -- /usr/local/bin/loopbox-sentry-watch "$PKTLOG_PID:packet-logger" "$DNSMASQ_PID:dnsmasq" "$DNSFRONT_PID:dns-front" ${GW_PID:+"$GW_PID:gateway"}
