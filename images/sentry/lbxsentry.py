"""Shared by the sentry's daemons (pktlog.py, dnsfront.py): giving up root, the time format, and
reading the question of a DNS message, which the agent wrote and so is hostile input (issue 17).

Installed into /usr/lib/python3/dist-packages, which stays on sys.path under `python3 -I`.
Python stdlib only.
"""
import os
import pwd
import struct
import time

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 252: "AXFR", 255: "ANY"}
# A name is at most 255 bytes on the wire (RFC 1035 2.3.4); past that we stop reading it. A
# compression pointer may be followed a few times, never in a circle.
MAX_WIRE_NAME = 255
MAX_POINTERS = 16
# Question classes a real query uses (IN, CH, HS, NONE, ANY): with a port other than 53, only a
# message that looks like a query in every header field counts as one.
QUERY_CLASSES = {1, 3, 4, 254, 255}


def now_iso(t=None):
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def drop_to(user, who):
    """From root to `user`: the kernel clears every capability. Exits if it did not work."""
    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("%s: still root after setuid" % who)


def label_text(raw):
    """A label in DNS presentation form: printable ASCII as is, `.` and `\\` escaped, other bytes `\\DDD`."""
    out = []
    for b in raw:
        if b in (0x2E, 0x5C):
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append("\\%03d" % b)
    return "".join(out)


def question(msg, strict=False):
    """(name, type, error) of a DNS message's first question.

    error is None when the question was read whole. Otherwise it says what was wrong, and name
    is what could be read before that (None if nothing): a malformed name can carry data too.
    With strict, a message that does not look like a query in every header field gives
    (None, None, "not a query") (used for packets to ports other than 53).
    """
    n = len(msg)
    if n < 12:
        return None, None, "short message (%d bytes, a DNS header has 12)" % n
    flags, qdcount, ancount, nscount = struct.unpack_from(">HHHH", msg, 2)
    if strict and (flags & 0x8000 or (flags >> 11) & 0xF or qdcount != 1 or ancount or nscount):
        return None, None, "not a query"
    if qdcount < 1:
        return None, None, "no question"
    labels, i, wire, end, hops = [], 12, 1, None, 0
    seen = set()
    error = None
    while True:
        if i >= n:
            error = "name runs past the end of the message"
            break
        length = msg[i]
        if length == 0:
            i += 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if i + 1 >= n:
                error = "compression pointer runs past the end of the message"
                break
            target = ((length & 0x3F) << 8) | msg[i + 1]
            if end is None:
                end = i + 2
            if target in seen or hops >= MAX_POINTERS:
                error = "compression pointer loop"
                break
            seen.add(target)
            hops += 1
            i = target
            continue
        if kind:
            error = "label type 0x%02x is not a length" % kind
            break
        if i + 1 + length > n:
            error = "label of %d bytes runs past the end of the message" % length
            break
        if wire + length + 1 > MAX_WIRE_NAME:
            error = "name longer than %d bytes" % MAX_WIRE_NAME
            break
        labels.append(label_text(msg[i + 1:i + 1 + length]))
        wire += length + 1
        i += 1 + length
    name = ".".join(labels) if labels else None
    if error:
        return name, None, error
    pos = end if end is not None else i
    if pos + 4 > n:
        return name or ".", None, "question has no type and class"
    qtype, qclass = struct.unpack_from(">HH", msg, pos)
    if strict and qclass not in QUERY_CLASSES:
        return None, None, "not a query"
    return name or ".", TYPES.get(qtype, "TYPE%d" % qtype), None
