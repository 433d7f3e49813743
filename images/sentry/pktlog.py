#!/usr/bin/python3
"""loopbox packet logger: one JSON line per packet the firewall logs (NFLOG), with the DNS
question of every UDP packet that carries one (issue 17, item 2).

ulogd2's JSON output, which this replaces, cannot write a packet's payload, and the payload is
where DNS exfiltration puts its data: a query sent straight to an outside resolver was logged as
a rejected UDP packet with no name. This reader binds NFLOG group $LOOPBOX_NFLOG_GROUP with the
first $LOOPBOX_NFLOG_COPY bytes of each packet copied, and writes to $LOOPBOX_PACKET_RECORDS:

  {"oob.prefix": "out-udp", "oob.family": 2, "oob.time.sec": S, "oob.time.usec": U,
   "oob.uid": 1000, "oob.gid": 1000, "ip.protocol": 17, "src_ip": ..., "dest_ip": ...,
   "src_port": ..., "dest_port": 53, "seq": N, "dns.name": "x.invalid", "dns.type": "A"}

(the keys ulogd used, so the host reads either). A UDP packet to port 53 always gets `dns.name`
and `dns.type`, or `dns.error` (and `dns.payload`, hex) when its question cannot be read; a UDP
packet to another port gets them only when it parses as a query in every header field. A TCP
packet to port 53 gets `dns.error` when it carries no DNS message (the SYN of a refused
connection carries none: the name never leaves the agent).

Accounting: the kernel numbers the group's packets (NFULNL_CFG_F_SEQ). A jump in that number
means packets the kernel could not hand over (the socket buffer overran); the reader writes
{"gap": N} for them, so the host can tell lost records from records still on their way. A recv
that fails with ENOBUFS is written as {"overrun": 1}.
Binds the group as root (that needs CAP_NET_ADMIN), then becomes $LOOPBOX_PKTLOG_USER: no
capabilities left. Python stdlib only.
"""
import errno
import json
import os
import socket
import struct
import sys
import time

from lbxsentry import drop_to, question

GROUP = int(os.environ.get("LOOPBOX_NFLOG_GROUP", "1"))
COPY = int(os.environ.get("LOOPBOX_NFLOG_COPY", "600"))
RECORDS = os.environ.get("LOOPBOX_PACKET_RECORDS", "/audit/packets.jsonl")
USER = os.environ.get("LOOPBOX_PKTLOG_USER", "")
RCVBUF = 8 * 1024 * 1024

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
NLM_F_ACK = 4
SO_RCVBUFFORCE = 33
# NFULA_CFG_* attributes and values (linux/netfilter/nfnetlink_log.h)
CFG_CMD, CFG_MODE, CFG_NLBUFSIZ, CFG_TIMEOUT, CFG_QTHRESH, CFG_FLAGS = 1, 2, 3, 4, 5, 6
CMD_BIND = 1
COPY_PACKET = 2
F_SEQ = 1
# NFULA_* attributes of a packet message
A_TIMESTAMP, A_PAYLOAD, A_PREFIX, A_UID, A_SEQ, A_GID = 3, 9, 10, 11, 12, 14


def attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def configure(sock, seq, attrs):
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", GROUP) + b"".join(attrs)
    sock.send(struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
    reply = sock.recv(4096)
    if len(reply) >= 20 and struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
        err = struct.unpack_from("=i", reply, 16)[0]
        if err:
            raise OSError(-err, "nflog config %d: %s" % (seq, os.strerror(-err)))


def open_group():
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((0, 0))
    configure(sock, 1, [attr(CFG_CMD, struct.pack("=B", CMD_BIND))])
    configure(sock, 2, [attr(CFG_MODE, struct.pack(">IBB", COPY, COPY_PACKET, 0))])
    configure(sock, 3, [attr(CFG_FLAGS, struct.pack(">H", F_SEQ))])
    # Up to 32 packets per message, held at most 10 ms: fewer wake-ups under a flood.
    configure(sock, 4, [attr(CFG_NLBUFSIZ, struct.pack(">I", 65536))])
    configure(sock, 5, [attr(CFG_QTHRESH, struct.pack(">I", 32))])
    configure(sock, 6, [attr(CFG_TIMEOUT, struct.pack(">I", 1))])
    return sock


def dns_fields(entry, data, port53, proto):
    if proto == 17:
        name, qtype, error = question(data, strict=not port53)
        if not port53 and error:
            return
    elif len(data) >= 2:  # DNS over TCP: a two-byte length, then the message
        name, qtype, error = question(data[2:])
    else:
        name, qtype, error = None, None, "TCP segment with no DNS message (a refused connection's SYN carries none)"
    entry["dns.name"] = name
    entry["dns.type"] = qtype
    if error:
        entry["dns.error"] = error
        if data:
            entry["dns.payload"] = bytes(data[:256]).hex()


def parse_ip(entry, family, pkt):
    """Header fields ulogd's BASE plugin gave, from the packet's first bytes."""
    if family == socket.AF_INET and len(pkt) >= 20:
        ihl = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        entry["ip.protocol"] = proto
        entry["src_ip"] = socket.inet_ntop(socket.AF_INET, bytes(pkt[12:16]))
        entry["dest_ip"] = socket.inet_ntop(socket.AF_INET, bytes(pkt[16:20]))
        fragment = struct.unpack_from(">H", pkt, 6)[0] & 0x1FFF
        l4 = pkt[ihl:] if not fragment else b""
    elif family == socket.AF_INET6 and len(pkt) >= 40:
        proto = pkt[6]
        entry["ip.protocol"] = proto
        entry["src_ip"] = socket.inet_ntop(socket.AF_INET6, bytes(pkt[8:24]))
        entry["dest_ip"] = socket.inet_ntop(socket.AF_INET6, bytes(pkt[24:40]))
        l4 = pkt[40:]
    else:
        return
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack_from(">HH", l4, 0)
        entry["src_port"] = sport
        entry["dest_port"] = dport
        if proto == 17:
            dns_fields(entry, l4[8:], dport == 53, proto)
        elif dport == 53 and len(l4) >= 13:
            dns_fields(entry, l4[(l4[12] >> 4) * 4:], True, proto)
    elif proto in (1, 58) and l4:
        entry["icmpv6.type" if proto == 58 else "icmp.type"] = l4[0]


def packet(view, start, end, family):
    entry = {"oob.family": family}
    seq = None
    p = start
    while p + 4 <= end:
        length, kind = struct.unpack_from("=HH", view, p)
        if length < 4:
            break
        value = view[p + 4:p + length]
        kind &= 0x3FFF
        if kind == A_PREFIX:
            entry["oob.prefix"] = bytes(value).split(b"\0", 1)[0].decode("ascii", "replace")
        elif kind == A_UID and len(value) >= 4:
            entry["oob.uid"] = struct.unpack_from(">I", value)[0]
        elif kind == A_GID and len(value) >= 4:
            entry["oob.gid"] = struct.unpack_from(">I", value)[0]
        elif kind == A_SEQ and len(value) >= 4:
            seq = struct.unpack_from(">I", value)[0]
        elif kind == A_TIMESTAMP and len(value) >= 16:
            entry["oob.time.sec"], entry["oob.time.usec"] = struct.unpack_from(">QQ", value)
        elif kind == A_PAYLOAD:
            parse_ip(entry, family, value)
        p += (length + 3) & ~3
    if "oob.time.sec" not in entry:  # locally sent packets often have no kernel timestamp
        t = time.time()
        entry["oob.time.sec"] = int(t)
        entry["oob.time.usec"] = int((t % 1) * 1_000_000)
    return entry, seq


def main():
    sock = open_group()
    out = open(RECORDS, "a", buffering=1 << 16)
    if USER:
        drop_to(USER, "loopbox-pktlog")
    print("loopbox-pktlog: listening on NFLOG group %d, copy %d bytes" % (GROUP, COPY), flush=True)
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    expected = None
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    while True:
        try:
            n = sock.recv_into(buf)
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                out.write('{"overrun":1}\n')
                out.flush()
                continue
            if e.errno == errno.EINTR:
                continue
            raise
        off = 0
        while off + 20 <= n:
            length, kind = struct.unpack_from("=IH", buf, off)
            if length < 16 or off + length > n:
                break
            if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                entry, seq = packet(view, off + 20, off + length, buf[off + 16])
                if seq is not None:
                    if expected is not None and seq != expected:
                        out.write('{"gap":%d}\n' % ((seq - expected) & 0xFFFFFFFF))
                    expected = (seq + 1) & 0xFFFFFFFF
                    entry["seq"] = seq
                out.write(dumps(entry) + "\n")
            off += (length + 3) & ~3
        out.flush()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
