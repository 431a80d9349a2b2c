#!/usr/bin/env python3
"""Token brute force (issue 20): wrong API keys at full speed against POST /api/token
from several loopback source addresses, while a right key is tried now and then from an
address that sent no wrong one. Loopback only; standard library only.

    scripts/brute_token.py URL SECONDS [--addresses 8] [--conns 4] [--good-key KEY]
                           [--round 10] [--first-address 127.0.0.50]

Each round (--round seconds, until SECONDS are up): every one of --addresses source
addresses (127.0.0.50, .51, ...) keeps --conns keep-alive connections, each sending
pipelined batches of POST /api/token with a fresh random X-API-Key and counting the
answers by status. Once a second, a fresh address (127.0.1.N, a new one each time) asks
for a token with --good-key and must get 200. One line per round:

    round 3: attempts=52311 (5231/s) 401=80 429=52231 other=0 good_key=10/10

and a `total` line at the end. Exit status 0 unless the server stopped answering.
"""
import argparse
import asyncio
import ipaddress
import os
import sys
import time
import urllib.parse

BATCH = 16  # requests pipelined per write


def parse_responses(buf):
    """Complete responses at the start of buf: ([status, ...], bytes consumed)."""
    out, pos = [], 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, pos
        head = buf[pos:end].decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        if len(buf) < end + 4 + length:
            return out, pos
        out.append(status)
        pos = end + 4 + length


def request(key):
    return (
        f"POST /api/token HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def connect(host, port, source):
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def hammer(host, port, source, counts, stop):
    """One keep-alive connection from `source` sending wrong keys until `stop`."""
    while time.monotonic() < stop:
        try:
            reader, writer = await connect(host, port, source)
        except OSError:
            counts["connect_errors"] += 1
            await asyncio.sleep(0.05)
            continue
        buf = b""
        try:
            while time.monotonic() < stop:
                writer.write(
                    b"".join(request("ak_brute_" + os.urandom(12).hex()) for _ in range(BATCH))
                )
                await writer.drain()
                got = 0
                while got < BATCH:
                    chunk = await asyncio.wait_for(reader.read(65536), 10)
                    if not chunk:
                        raise ConnectionError("closed")
                    buf += chunk
                    statuses, used = parse_responses(buf)
                    buf = buf[used:]
                    got += len(statuses)
                    for st in statuses:
                        counts[st] = counts.get(st, 0) + 1
        except (OSError, ConnectionError, asyncio.TimeoutError, ValueError, IndexError):
            counts["closed"] += 1
        finally:
            writer.close()


async def good_key(host, port, key, counts, stop, next_source):
    """Once a second, a right key from an address that never sent a wrong one."""
    while time.monotonic() < stop:
        source = next_source()
        counts["good_tries"] += 1
        try:
            reader, writer = await connect(host, port, source)
            writer.write(request(key))
            await writer.drain()
            buf = b""
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    break
                buf += chunk
                statuses, _ = parse_responses(buf)
                if statuses:
                    if statuses[0] == 200:
                        counts["good_ok"] += 1
                    else:
                        counts["good_refused"] += 1
                    break
            writer.close()
        except (OSError, asyncio.TimeoutError, ValueError, IndexError):
            counts["good_errors"] += 1
        await asyncio.sleep(1)


def summary(name, counts, seconds):
    attempts = sum(v for k, v in counts.items() if isinstance(k, int))
    other = attempts - counts.get(401, 0) - counts.get(429, 0)
    good = f" good_key={counts['good_ok']}/{counts['good_tries']}" if counts["good_tries"] else ""
    return (
        f"{name}: attempts={attempts} ({attempts / max(seconds, 1e-9):.0f}/s) "
        f"401={counts.get(401, 0)} 429={counts.get(429, 0)} other={other} "
        f"reconnects={counts['closed']}{good}"
    )


def new_counts():
    return {"closed": 0, "connect_errors": 0, "good_tries": 0, "good_ok": 0,
            "good_refused": 0, "good_errors": 0}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("seconds", type=float)
    ap.add_argument("--addresses", type=int, default=8)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--good-key")
    ap.add_argument("--round", type=float, default=10)
    ap.add_argument("--first-address", default="127.0.0.50")
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.url)
    host, port = u.hostname, u.port or 80
    first = ipaddress.IPv4Address(a.first_address)
    sources = [str(first + i) for i in range(a.addresses)]
    fresh = [0]

    def next_source():
        # 127.0.1.1, 127.0.1.2, ... then 127.0.2.1, ...: never a brute-force address.
        fresh[0] += 1
        n = fresh[0]
        return f"127.0.{1 + (n // 250) % 200}.{1 + n % 250}"

    total = new_counts()
    end = time.monotonic() + a.seconds
    n = 0
    ok = True
    while time.monotonic() < end:
        n += 1
        start = time.monotonic()
        stop = min(end, start + a.round)
        counts = new_counts()
        tasks = [hammer(host, port, s, counts, stop) for s in sources for _ in range(a.conns)]
        if a.good_key:
            tasks.append(good_key(host, port, a.good_key, counts, stop, next_source))
        await asyncio.gather(*tasks)
        took = time.monotonic() - start
        print(summary(f"round {n}", counts, took), flush=True)
        answered = sum(v for k, v in counts.items() if isinstance(k, int))
        if answered == 0:
            ok = False
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    print(summary("total", total, a.seconds), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
