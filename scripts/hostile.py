#!/usr/bin/env python3
"""Hostile clients for scripts/soak.sh (stdlib only; loopback only; every count bounded).

    scripts/hostile.py URL SECONDS [--api-key KEY]

Runs, in rounds until SECONDS have passed, one of each:
  slowloris   connections that trickle a request's headers one byte a second
              (the server's header deadline must close them),
  flood       a burst of connections from several loopback addresses that send half a
              request line and stay (per-IP caps, fd pressure), then drop,
  bad frames  WebSocket connections (/ws with a token, and /ws-echo when enabled) that
              send protocol violations: unmasked, reserved bits, bad UTF-8, an
              oversized control frame, a huge declared length,
  non-readers a WebSocket that has the echo endpoint send it far more than its
              outbound limit and never reads; an HTTP client that pipelines requests
              and never reads the answers.
Prints one line per round with what the server answered; never fails on the server's
refusals (they are the point), only on its absence.
"""

import asyncio
import base64
import json
import os
import sys
import time
import urllib.request

SLOWLORIS_CONNECTIONS = 50
FLOOD_CONNECTIONS = 1500
FLOOD_SOURCE_IPS = 4
FLOOD_HOLD_S = 3.0
NONREADER_BYTES_MAX = 8 * 1024 * 1024
HTTP_PIPELINE_REQUESTS = 2000
ROUND_PAUSE_S = 1.0
CONNECT_TIMEOUT_S = 5.0


def ws_upgrade(path, host):
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: Upgrade\r\n"
        f"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
        f"sec-websocket-key: {key}\r\n\r\n"
    ).encode()


def frame(opcode, payload, fin=True, mask=True, rsv=0, declared=None):
    head = bytearray([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload) if declared is None else declared
    m = 0x80 if mask else 0
    if n < 126:
        head.append(m | n)
    elif n < 65536:
        head.append(m | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(m | 127)
        head += n.to_bytes(8, "big")
    if mask:
        k = os.urandom(4)
        head += k
        payload = bytes(b ^ k[i & 3] for i, b in enumerate(payload))
    return bytes(head) + payload


BAD_FRAMES = [
    frame(1, b"hello", mask=False),  # unmasked: 1002
    frame(1, b"hello", rsv=0x40),  # reserved bit: 1002
    frame(1, b"\xff\xfe\xfd"),  # not UTF-8: 1007
    frame(9, b"x" * 126),  # control frame over 125: 1002
    frame(1, b"", declared=1 << 40),  # declared length far over the limit: 1009
    frame(3, b""),  # reserved opcode: 1002
    frame(0, b"orphan"),  # continuation without a message: 1002
]


async def open_conn(host, port, local_ip=None):
    return await asyncio.wait_for(
        asyncio.open_connection(
            host, port, local_addr=(local_ip, 0) if local_ip else None
        ),
        CONNECT_TIMEOUT_S,
    )


async def close(w):
    try:
        w.close()
        await asyncio.wait_for(w.wait_closed(), 2)
    except Exception:
        pass


async def slowloris(host, port, seconds):
    """Trickle headers; count how many the server closed before `seconds` ran out."""
    req = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 10_000
    closed = 0

    async def one():
        nonlocal closed
        try:
            r, w = await open_conn(host, port)
        except Exception:
            return
        try:
            for i in range(int(seconds)):
                w.write(req[i : i + 1])
                await w.drain()
                try:
                    data = await asyncio.wait_for(r.read(4096), 1.0)
                    if data or r.at_eof():
                        closed += 1
                        return
                except asyncio.TimeoutError:
                    pass
        except Exception:
            closed += 1
        finally:
            await close(w)

    await asyncio.gather(*(one() for _ in range(SLOWLORIS_CONNECTIONS)))
    return f"slowloris closed={closed}/{SLOWLORIS_CONNECTIONS}"


async def flood(host, port):
    conns, failed = [], 0
    for i in range(FLOOD_CONNECTIONS):
        ip = f"127.0.0.{2 + i % FLOOD_SOURCE_IPS}"
        try:
            r, w = await open_conn(host, port, ip)
            w.write(b"GET /healthz HT")
            conns.append(w)
        except Exception:
            failed += 1
    await asyncio.sleep(FLOOD_HOLD_S)
    for w in conns:
        w.transport.abort()
    return f"flood open={len(conns)} failed={failed}"


async def read_close_code(r):
    """Reads until a close frame (returns its code), EOF or a timeout."""
    buf = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(r.read(65536), 1.0)
        except asyncio.TimeoutError:
            continue
        except Exception:
            return "reset"
        if not data:
            return "eof"
        buf += data
        i = buf.find(b"\r\n\r\n")
        if i < 0:
            continue
        status = buf.split(b" ", 2)[1].decode(errors="replace")
        if status != "101":
            return f"http {status}"
        body = buf[i + 4 :]
        j = 0
        while j + 2 <= len(body):
            op, n = body[j] & 0x0F, body[j + 1] & 0x7F
            hl = 2
            if n == 126:
                n, hl = int.from_bytes(body[j + 2 : j + 4], "big"), 4
            elif n == 127:
                n, hl = int.from_bytes(body[j + 2 : j + 10], "big"), 10
            if op == 8 and j + hl + 2 <= len(body):
                return str(int.from_bytes(body[j + hl : j + hl + 2], "big"))
            j += hl + n
    return "timeout"


async def bad_frames(host, port, token, echo):
    codes = []
    paths = []
    if token:
        paths.append(f"/ws?token={token}")
    if echo:
        paths.append("/ws-echo")
    for path in paths:
        for f in BAD_FRAMES:
            try:
                r, w = await open_conn(host, port)
            except Exception:
                codes.append("connect-failed")
                continue
            w.write(ws_upgrade(path, host) + f)
            codes.append(await read_close_code(r))
            await close(w)
    return "bad-frames closes=" + ",".join(codes)


async def nonreaders(host, port, echo):
    out = []
    if echo:
        try:
            r, w = await open_conn(host, port)
            w.write(ws_upgrade("/ws-echo", host))
            msg = frame(2, b"z" * 60_000)
            sent = 0
            try:
                while sent < NONREADER_BYTES_MAX:
                    w.write(msg)
                    await asyncio.wait_for(w.drain(), 2)
                    sent += len(msg)
            except Exception:
                pass
            out.append(f"ws-nonreader sent={sent}")
            await asyncio.sleep(2)
            w.transport.abort()
        except Exception as e:
            out.append(f"ws-nonreader error={e!r}")
    try:
        r, w = await open_conn(host, port)
        w.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n" * HTTP_PIPELINE_REQUESTS)
        try:
            await asyncio.wait_for(w.drain(), 3)
        except Exception:
            pass
        await asyncio.sleep(2)
        w.transport.abort()
        out.append("http-nonreader done")
    except Exception as e:
        out.append(f"http-nonreader error={e!r}")
    return " ".join(out)


def get_token(base, api_key):
    if not api_key:
        return None
    req = urllib.request.Request(
        base + "/api/token", data=b"", headers={"X-API-Key": api_key}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)["token"]


async def main():
    base, seconds = sys.argv[1].rstrip("/"), float(sys.argv[2])
    api_key = None
    echo = "--echo" in sys.argv
    if "--api-key" in sys.argv:
        api_key = sys.argv[sys.argv.index("--api-key") + 1]
    hostport = base.split("://", 1)[1]
    host, port = hostport.rsplit(":", 1)
    port = int(port)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        try:
            token = get_token(base, api_key)
        except Exception as e:
            print(f"round {n}: token failed: {e!r}", flush=True)
            token = None
        results = await asyncio.gather(
            slowloris(host, port, 15),
            flood(host, port),
            bad_frames(host, port, token, echo),
            nonreaders(host, port, echo),
            return_exceptions=True,
        )
        print(f"round {n}: " + " | ".join(map(str, results)), flush=True)
        await asyncio.sleep(ROUND_PAUSE_S)


if __name__ == "__main__":
    asyncio.run(main())
