#!/usr/bin/python3
"""loopbox DNS front: logs every query name the agent sends, byte for byte (issue 8, item 2).

dnsmasq logs a name with any unprintable byte as "<name unprintable>", which hides exactly the
bytes an exfiltration would carry. This front listens on 127.0.0.1:53 (udp and tcp; the
firewall DNATs 127.0.0.11:53 here too), appends one JSON line per query to
/audit/dns.jsonl with the name in DNS presentation form (printable ASCII as is, `.` and `\\`
escaped with `\\`, every other byte as `\\DDD`, RFC 1035 section 5.1), then passes the query
unchanged to dnsmasq on 127.0.0.1:$LOOPBOX_DNS_UPSTREAM_PORT, which answers, and relays the
answer. Only this front's uid may reach that port (iptables owner match).
Python stdlib only. Binds as root, then becomes LOOPBOX_DNS_USER: no capabilities left.
"""
import asyncio
import json
import os
import pwd
import socket
import struct
import sys
import time

LISTEN_PORT = int(os.environ.get("LOOPBOX_DNS_PORT", "53"))
UPSTREAM_PORT = int(os.environ.get("LOOPBOX_DNS_UPSTREAM_PORT", "54"))
RECORDS = os.environ.get("LOOPBOX_DNS_RECORDS", "/audit/dns.jsonl")
USER = os.environ.get("LOOPBOX_DNS_USER", "")
TIMEOUT = 5.0
TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 252: "AXFR", 255: "ANY"}

records = None


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def label_text(raw):
    out = []
    for b in raw:
        if b in (0x2E, 0x5C):
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append("\\%03d" % b)
    return "".join(out)


def question(msg):
    """(name, type) of the first question, or (None, None) if the message has none."""
    if len(msg) < 12 or struct.unpack(">H", msg[4:6])[0] < 1:
        return None, None
    labels, i = [], 12
    while i < len(msg) and len(labels) < 128:
        n = msg[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0 or i + 1 + n > len(msg):
            return None, None  # no compression in a question; truncated
        labels.append(label_text(msg[i + 1:i + 1 + n]))
        i += 1 + n
    else:
        return None, None
    if i + 2 > len(msg):
        return None, None
    qtype = struct.unpack(">H", msg[i:i + 2])[0]
    return ".".join(labels) or ".", TYPES.get(qtype, "TYPE%d" % qtype)


def log(msg, proto, peer):
    name, qtype = question(msg)
    entry = {"time": now_iso(), "proto": proto, "from": peer[0], "port": peer[1], "name": name, "type": qtype}
    if name is None:
        entry["raw"] = msg[:512].hex()  # not a query we can read: the bytes are the evidence
    records.write(json.dumps(entry, separators=(",", ":")) + "\n")
    records.flush()


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        log(data, "udp", addr)
        asyncio.get_running_loop().create_task(self.relay(data, addr))

    async def relay(self, data, addr):
        loop = asyncio.get_running_loop()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        try:
            await loop.sock_connect(s, ("127.0.0.1", UPSTREAM_PORT))
            await loop.sock_sendall(s, data)
            answer = await asyncio.wait_for(loop.sock_recv(s, 65535), TIMEOUT)
            self.transport.sendto(answer, addr)
        except (OSError, asyncio.TimeoutError) as e:
            print("loopbox-dns: udp relay: %s" % e, file=sys.stderr)
        finally:
            s.close()


async def tcp(reader, writer):
    peer = writer.get_extra_info("peername") or ("?", 0)
    try:
        while True:
            try:
                n = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), TIMEOUT))[0]
                msg = await asyncio.wait_for(reader.readexactly(n), TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError):
                return
            log(msg, "tcp", peer)
            ur, uw = await asyncio.open_connection("127.0.0.1", UPSTREAM_PORT)
            try:
                uw.write(struct.pack(">H", len(msg)) + msg)
                await uw.drain()
                m = struct.unpack(">H", await asyncio.wait_for(ur.readexactly(2), TIMEOUT))[0]
                answer = await asyncio.wait_for(ur.readexactly(m), TIMEOUT)
            finally:
                uw.close()
            writer.write(struct.pack(">H", len(answer)) + answer)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
        print("loopbox-dns: tcp: %s" % e, file=sys.stderr)
    finally:
        writer.close()


async def main():
    global records
    records = open(RECORDS, "a", buffering=1)
    loop = asyncio.get_running_loop()
    # No SO_REUSEADDR: nothing else may bind beside it (the port is privileged anyway).
    await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", LISTEN_PORT))
    server = await asyncio.start_server(tcp, "127.0.0.1", LISTEN_PORT, reuse_address=False)
    if USER:
        pw = pwd.getpwnam(USER)
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)  # from root to a user: the kernel clears every capability
        if os.getuid() == 0 or os.geteuid() == 0:
            raise SystemExit("loopbox-dns: still root after setuid")
    print("loopbox-dns: listening on 127.0.0.1:%d, upstream 127.0.0.1:%d" % (LISTEN_PORT, UPSTREAM_PORT), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
