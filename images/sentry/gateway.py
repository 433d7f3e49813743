#!/usr/bin/python3
"""loopbox model gateway: the agent's only way to the model (issue 8, item 1).

Runs in the sentry's network namespace. The firewall DNATs every connection that a uid
other than this gateway's makes to the model's ip:port here, and lets only this uid reach the
model itself (iptables owner match). Per request it:
  - forwards only the inference API (ALLOWED below); anything else gets 403;
  - caps the request body (LOOPBOX_GW_MAX_BODY bytes) and max_tokens (LOOPBOX_GW_MAX_TOKENS);
  - refuses with 429 once the loop's token budget (LOOPBOX_GW_TOKEN_BUDGET) is used;
  - streams the response through as it arrives (never buffers a whole body), keeping only a
    bounded tail to read the token counts from (`timings` or `usage`, the last one seen);
  - appends one JSON line to /audit/gateway.jsonl (time, method, path, status, duration,
    tokens, and why it was refused).
Escalated (model.escalate, issue 20): when LOOPBOX_GW_ESCALATE is set, every request goes to
that endpoint instead (TLS with the system CA store when LOOPBOX_GW_ESCALATE_TLS=1), with the
agent's Authorization header dropped and the gateway's own key added. The key never comes
through the environment: the host puts it in ESCALATE_KEY_FILE (root, 0400) before the sentry
starts, the gateway reads it while still root, and the entrypoint deletes the file once the
gateway listens. It lives in this process's memory only. Escalated tokens are capped by
LOOPBOX_GW_ESCALATE_BUDGET (429 `escalate-budget` past it).
Python stdlib only (asyncio). It binds its port as root, then becomes LOOPBOX_GW_USER: no
capabilities are left once it serves (see docs/security-model.md).
"""
import asyncio
import json
import os
import pwd
import re
import ssl
import sys
import time

LISTEN_PORT = int(os.environ.get("LOOPBOX_GW_PORT", "81"))
UPSTREAM = os.environ.get("LOOPBOX_GW_UPSTREAM", "")
MAX_BODY = int(os.environ.get("LOOPBOX_GW_MAX_BODY", str(8 * 1024 * 1024)))
MAX_TOKENS = int(os.environ.get("LOOPBOX_GW_MAX_TOKENS", "0")) or None
BUDGET = int(os.environ.get("LOOPBOX_GW_TOKEN_BUDGET", "0")) or None
USED_BEFORE = int(os.environ.get("LOOPBOX_GW_TOKENS_USED", "0"))
RECORDS = os.environ.get("LOOPBOX_GW_RECORDS", "/audit/gateway.jsonl")
USER = os.environ.get("LOOPBOX_GW_USER", "")
ESCALATE = os.environ.get("LOOPBOX_GW_ESCALATE", "")
ESC_HOST = os.environ.get("LOOPBOX_GW_ESCALATE_HOST", "")
ESC_TLS = os.environ.get("LOOPBOX_GW_ESCALATE_TLS", "") == "1"
ESC_BASE = os.environ.get("LOOPBOX_GW_ESCALATE_BASE", "/v1").rstrip("/")
ESC_MODEL = os.environ.get("LOOPBOX_GW_ESCALATE_MODEL", "")
ESC_BUDGET = int(os.environ.get("LOOPBOX_GW_ESCALATE_BUDGET", "0")) or None
ESC_USED_BEFORE = int(os.environ.get("LOOPBOX_GW_ESCALATE_USED", "0"))
# Tests outside the sentry point it elsewhere; the sentry's entrypoint deletes the default path.
ESCALATE_KEY_FILE = os.environ.get("LOOPBOX_GW_ESCALATE_KEY_FILE", "/run/loopbox-escalate.key")
# The name the certificate must carry (SNI too): the Host header without its port.
ESC_SNI = re.sub(r":[0-9]+$", "", ESC_HOST)

# (method, path) pairs forwarded; the query string is not part of the match.
ALLOWED = {
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
}
# Requests whose JSON body names a completion length: that key is capped.
GENERATING = {"/v1/chat/completions", "/v1/completions"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "content-length", "expect"}
MAX_HEAD = 64 * 1024
TAIL = 64 * 1024
# The last `timings` / `usage` object in the response (one level of nesting inside, for
# usage.prompt_tokens_details). A quote inside generated text is escaped (\"), so a match
# cannot come from the model's output.
TIMINGS_RE = re.compile(rb'(?<!\\)"timings"\s*:\s*(\{[^{}]*\})')
USAGE_RE = re.compile(rb'(?<!\\)"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')

used = USED_BEFORE
reserved = 0
esc_used = ESC_USED_BEFORE
esc_key = None
records = None


def now_iso():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def record(entry):
    records.write(json.dumps(entry, separators=(",", ":")) + "\n")
    records.flush()


def escape(text):
    """Printable, bounded form of what the agent sent (evidence, not to be trusted)."""
    return text.encode("unicode_escape", "backslashreplace").decode("ascii")[:512]


def last_json(regex, tail):
    """The last JSON object `regex` finds in `tail`, parsed, or None."""
    m = None
    for m in regex.finditer(tail):
        pass
    if m:
        try:
            return json.loads(m.group(1))
        except ValueError:
            return None
    return None


def tokens_from(tail):
    """(prompt, cached, completion) from the last timings/usage object, or None."""
    t = last_json(TIMINGS_RE, tail)
    if t is not None:
        try:
            cached = int(t.get("cache_n", 0))
            return int(t.get("prompt_n", 0)) + cached, cached, int(t.get("predicted_n", 0))
        except (ValueError, TypeError, AttributeError):
            pass
    u = last_json(USAGE_RE, tail)
    if u is not None:
        try:
            details = u.get("prompt_tokens_details") or {}
            return int(u.get("prompt_tokens", 0)), int(details.get("cached_tokens", 0) or 0), int(u.get("completion_tokens", 0))
        except (ValueError, TypeError, AttributeError):
            pass
    return None


def simple_response(status, reason, message):
    body = json.dumps({"error": {"code": status, "type": "loopbox_gateway", "message": message}}).encode()
    head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (status, reason, len(body))
    return head.encode() + body


async def handle(reader, writer):
    try:
        await serve_one(reader, writer)
    except Exception as e:  # one bad request never stops the gateway
        print("loopbox-gateway: %s: %s" % (type(e).__name__, e), file=sys.stderr)
    finally:
        writer.close()


async def serve_one(reader, writer):
    global used, reserved
    started = time.monotonic()
    entry = {"time": now_iso(), "method": None, "path": None, "status": None}

    def finish(status, reason=None, tokens=None):
        entry["status"] = status
        entry["durationMs"] = round((time.monotonic() - started) * 1000, 3)
        if reason:
            entry["denied"] = reason
        if tokens:
            entry["promptTokens"], entry["cachedTokens"], entry["completionTokens"] = tokens
        record(entry)

    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        writer.write(simple_response(431, "Request Header Fields Too Large", "request head too large"))
        finish(431, "head-too-large")
        return
    except asyncio.IncompleteReadError:
        return  # connection closed before a request: nothing to record
    lines = head.decode("latin-1").split("\r\n")
    # A lone CR or LF (or NUL) is refused, not passed on: an upstream may take a lone LF as a line
    # end (RFC 9112 2.2) and read a header, or a second request carrying the key added below,
    # that this gateway never saw.
    if any(c in line for line in lines for c in "\r\n\0"):
        entry["method"], entry["path"] = escape(lines[0][:64]), ""
        writer.write(simple_response(400, "Bad Request", "a lone CR or LF in the request head"))
        finish(400, "malformed")
        return
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        entry["method"], entry["path"] = escape(lines[0][:64]), ""
        writer.write(simple_response(400, "Bad Request", "not an HTTP/1.x request"))
        finish(400, "malformed")
        return
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    entry["method"], entry["path"] = escape(method), escape(target)
    headers = []
    length = 0
    chunked = False
    expect_continue = False
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        value = value.strip()
        if key == "content-length":
            if not value.isdigit():
                writer.write(simple_response(400, "Bad Request", "bad Content-Length"))
                finish(400, "bad-length")
                return
            length = int(value)
        elif key == "transfer-encoding":
            chunked = True
        elif key == "expect" and value.lower() == "100-continue":
            expect_continue = True
        if ESCALATE and key in ("authorization", "host"):
            continue  # the agent's own key (if any) never goes out; the Host is the endpoint's
        if key not in HOP_BY_HOP:
            headers.append((name.strip(), value))

    if (method, path) not in ALLOWED:
        writer.write(simple_response(403, "Forbidden", "loopbox gateway: %s %s is not forwarded to the model" % (method, path)))
        finish(403, "path")
        return
    if chunked:
        writer.write(simple_response(411, "Length Required", "send the body with Content-Length"))
        finish(411, "chunked-body")
        return
    if length > MAX_BODY:
        writer.write(simple_response(413, "Payload Too Large", "request body over %d bytes" % MAX_BODY))
        finish(413, "body-too-large")
        return
    if expect_continue and length:
        # curl waits a second for this before it sends a body over 1 KiB.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await reader.readexactly(length) if length else b""

    reservation = 0
    if path in GENERATING:
        try:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError:
            writer.write(simple_response(400, "Bad Request", "body is not a JSON object"))
            finish(400, "bad-json")
            return
        if BUDGET is not None and used + reserved >= BUDGET:
            writer.write(simple_response(429, "Too Many Requests", "token budget of %d used (%d)" % (BUDGET, used)))
            finish(429, "token-budget")
            return
        if ESCALATE and ESC_BUDGET is not None and esc_used + reserved >= ESC_BUDGET:
            writer.write(simple_response(429, "Too Many Requests", "escalation token budget of %d used (%d)" % (ESC_BUDGET, esc_used)))
            finish(429, "escalate-budget")
            return
        # The completion length: at most the cap, and at most what is left of the budget
        # (less what requests in flight may still use).
        limit = MAX_TOKENS
        if BUDGET is not None:
            left = BUDGET - used - reserved
            limit = left if limit is None else min(limit, left)
        if ESCALATE and ESC_BUDGET is not None:
            left = ESC_BUDGET - esc_used - reserved
            limit = left if limit is None else min(limit, left)
        if ESCALATE and ESC_MODEL:
            # The escalation endpoint's model, whatever the agent named (it was set up for the local one).
            doc["model"] = ESC_MODEL
            body = json.dumps(doc).encode()
        if limit is not None:
            asked = [doc[k] for k in ("max_tokens", "max_completion_tokens", "n_predict") if isinstance(doc.get(k), int) and doc[k] >= 0]
            want = min(asked) if asked else limit
            doc["max_tokens"] = min(want, limit)
            doc.pop("max_completion_tokens", None)
            doc.pop("n_predict", None)
            body = json.dumps(doc).encode()
            reservation = doc["max_tokens"]
            reserved += reservation
    try:
        await forward(method, target, headers, body, writer, entry, finish)
    finally:
        reserved -= reservation


def escalated_target(target):
    """/v1/chat/completions -> <endpoint's path>/chat/completions; other paths as they are."""
    if target == "/v1" or target.startswith("/v1/") or target.startswith("/v1?"):
        return ESC_BASE + target[3:]
    return target


async def forward(method, target, headers, body, writer, entry, finish):
    global used, esc_used
    host, _, port = (ESCALATE or UPSTREAM).rpartition(":")
    extra = []
    if ESCALATE:
        entry["escalated"] = True
        entry["model"] = ESC_MODEL
        entry["upstream"] = ESCALATE
        target = escalated_target(target)
        extra.append("Host: %s" % (ESC_HOST or ESCALATE))
        if esc_key:
            extra.append("Authorization: Bearer %s" % esc_key)
    try:
        if ESCALATE and ESC_TLS:
            ctx = ssl.create_default_context()  # the system CA store, hostname checked
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port), ssl=ctx, server_hostname=ESC_SNI or None)
        else:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
    except (OSError, ssl.SSLError) as e:
        writer.write(simple_response(502, "Bad Gateway", "model unreachable: %s" % e))
        finish(502, "upstream")
        return
    try:
        out = ["%s %s HTTP/1.1" % (method, target)]
        out += ["%s: %s" % (k, v) for k, v in headers] + extra
        out += ["Content-Length: %d" % len(body), "Connection: close", "", ""]
        up_writer.write("\r\n".join(out).encode("latin-1") + body)
        await up_writer.drain()
        # Response head: passed on with Connection: close; the body is relayed as it comes.
        try:
            head = await up_reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.write(simple_response(502, "Bad Gateway", "bad response from the model"))
            finish(502, "upstream")
            return
        status_line, _, rest = head.decode("latin-1").partition("\r\n")
        try:
            status = int(status_line.split(" ")[1])
        except (IndexError, ValueError):
            status = 502
        kept = [line for line in rest.split("\r\n") if line and line.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
        writer.write(("\r\n".join([status_line] + kept + ["Connection: close", "", ""])).encode("latin-1"))
        # The raw body (chunked or not) goes through unchanged; token counts are read from a
        # bounded tail of it (the chunk-size lines in between do not break a JSON object, which
        # llama-server sends whole in one SSE event).
        tail = b""
        while True:
            data = await up_reader.read(65536)
            if not data:
                break
            writer.write(data)
            tail = (tail + data)[-TAIL:]
            await writer.drain()
        tokens = tokens_from(tail)
        if tokens:
            used += tokens[0] - tokens[1] + tokens[2]
            if ESCALATE:
                esc_used += tokens[0] - tokens[1] + tokens[2]
        finish(status, None, tokens)
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        finish(entry.get("status") or 499, "client-or-upstream-closed: %s" % type(e).__name__)
    finally:
        up_writer.close()


def drop_to(user):
    pw = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)  # from root to a user: the kernel clears every capability
    if os.getuid() == 0 or os.geteuid() == 0:
        raise SystemExit("loopbox-gateway: still root after setuid")


def read_key():
    """The escalation key, from the file the host put in the sentry (root, 0400), read as root."""
    global esc_key
    try:
        with open(ESCALATE_KEY_FILE, "r", encoding="utf-8") as f:
            key = f.read().strip()
    except FileNotFoundError:
        return
    if not key or any(c in key for c in "\r\n\0"):
        raise SystemExit("loopbox-gateway: the escalation key is empty or not one line")
    esc_key = key


async def main():
    global records
    records = open(RECORDS, "a", buffering=1)
    if ESCALATE:
        read_key()
    # Every local address: connections to the model are DNATed to the sentry's own address on
    # the model network. The firewall drops whatever comes from outside the namespace.
    server = await asyncio.start_server(handle, "0.0.0.0", LISTEN_PORT, limit=MAX_HEAD, reuse_address=False)
    if USER:
        drop_to(USER)
    print("loopbox-gateway: listening on port %d, upstream %s%s" % (LISTEN_PORT, UPSTREAM, ", escalated to %s (%s, %s)" % (ESCALATE, ESC_MODEL, "key" if esc_key else "no key") if ESCALATE else ""), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if not UPSTREAM:
        raise SystemExit("loopbox-gateway: LOOPBOX_GW_UPSTREAM is not set")
    asyncio.run(main())
