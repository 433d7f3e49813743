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
import socket
import struct
import sys

from lbxsentry import drop_to, now_iso, question

LISTEN_PORT = int(os.environ.get("LOOPBOX_DNS_PORT", "53"))
UPSTREAM_PORT = int(os.environ.get("LOOPBOX_DNS_UPSTREAM_PORT", "54"))
RECORDS = os.environ.get("LOOPBOX_DNS_RECORDS", "/audit/dns.jsonl")
USER = os.environ.get("LOOPBOX_DNS_USER", "")
TIMEOUT = 5.0
# Under a flood the front logs every query it reads but relays at most this many at once; the
# rest get no answer (issue 17: one task and one socket per query exhausted the process).
MAX_RELAYS = 64
# A larger receive buffer (needs CAP_NET_ADMIN, held while binding) drops fewer queries in a
# burst; what the kernel still drops is counted by the firewall and the host reports it lost.
RCVBUF = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33

records = None
relays = 0
flush_pending = False


def flush():
    global flush_pending
    flush_pending = False
    records.flush()


def log(msg, proto, peer):
    """One line per query; written out once the event loop has nothing else ready (one write
    per burst, not per query), before the loop waits again."""
    global flush_pending
    name, qtype, error = question(msg)
    entry = {"time": now_iso(), "proto": proto, "from": peer[0], "port": peer[1], "name": name, "type": qtype}
    if error:
        entry["error"] = error
        entry["raw"] = msg[:512].hex()  # not a query we can read whole: the bytes are the evidence
    records.write(json.dumps(entry, separators=(",", ":")) + "\n")
    if not flush_pending:
        flush_pending = True
        asyncio.get_running_loop().call_soon(flush)


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        global relays
        log(data, "udp", addr)
        if relays < MAX_RELAYS:
            relays += 1
            asyncio.get_running_loop().create_task(self.relay(data, addr))

    async def relay(self, data, addr):
        global relays
        loop = asyncio.get_running_loop()
        s = None
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", UPSTREAM_PORT))
            await loop.sock_sendall(s, data)
            answer = await asyncio.wait_for(loop.sock_recv(s, 65535), TIMEOUT)
            self.transport.sendto(answer, addr)
        except (OSError, asyncio.TimeoutError) as e:
            print("loopbox-dns: udp relay: %s" % e, file=sys.stderr)
        finally:
            relays -= 1
            if s is not None:
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
    records = open(RECORDS, "a", buffering=1 << 16)
    loop = asyncio.get_running_loop()
    # No SO_REUSEADDR: nothing else may bind beside it (the port is privileged anyway).
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        pass
    udp.bind(("127.0.0.1", LISTEN_PORT))
    await loop.create_datagram_endpoint(Udp, sock=udp)
    server = await asyncio.start_server(tcp, "127.0.0.1", LISTEN_PORT, reuse_address=False)
    if USER:
        drop_to(USER, "loopbox-dns")
    print("loopbox-dns: listening on 127.0.0.1:%d, upstream 127.0.0.1:%d" % (LISTEN_PORT, UPSTREAM_PORT), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
