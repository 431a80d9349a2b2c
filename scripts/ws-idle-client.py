#!/usr/bin/env python3
"""An independent idle-signaling client (issue 26): N peers, each fetching its JWT with its
API key (`POST /api/token`), upgrading `/ws?token=…` by hand, sending `register` in its
own segment once the 101 is in, and then reading only the first bytes of its `peer_list`
(`--read-bytes`, default 16); the connections are then held idle. With `--server-pid`
it prints the server's RSS before the first connection and once all are registered, and
the bytes per connection. Python asyncio, standard library only (not our load generator:
its own segmentation and reads).

  scripts/ws-idle-client.py --url http://127.0.0.1:PORT --keys KEYS.json \
      --connections 10000 [--read-bytes 16] [--hold 2] [--server-pid PID] [--concurrency 256]
"""
import argparse, asyncio, base64, json, os, resource, struct, sys, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def http_token(host, port, key):
    r, w = await asyncio.open_connection(host, port)
    w.write(f"POST /api/token HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
    await w.drain()
    data = await r.read()
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"token: {head[:80]!r}")
    return json.loads(body)["token"]


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def peer(host, port, peer_id, token, read_bytes, held):
    r, w = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"upgrade: {head[:80]!r}")
    # register, in its own segment (the 101 is in first)
    w.write(masked_text(json.dumps({"type": "register", "peer_id": peer_id}).encode()))
    await w.drain()
    await r.readexactly(read_bytes)
    held.append((r, w))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--connections", type=int, required=True)
    ap.add_argument("--read-bytes", type=int, default=16)
    ap.add_argument("--hold", type=float, default=2.0)
    ap.add_argument("--server-pid", type=int)
    ap.add_argument("--concurrency", type=int, default=256)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    hostport = a.url.split("//", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    port = int(port)
    keys = json.load(open(a.keys))["keys"]
    peers = [(k, v["peer_id"]) for k, v in keys.items() if v.get("role") != "admin"][: a.connections]
    if len(peers) < a.connections:
        sys.exit(f"the keys file has {len(peers)} peers, fewer than --connections")
    sem = asyncio.Semaphore(a.concurrency)

    async def token_of(k):
        async with sem:
            return await http_token(host, port, k)

    tokens = await asyncio.gather(*(token_of(k) for k, _ in peers))
    before = rss_kib(a.server_pid) if a.server_pid else None
    held = []
    t0 = time.monotonic()

    async def one(i):
        async with sem:
            await peer(host, port, peers[i][1], tokens[i], a.read_bytes, held)

    await asyncio.gather(*(one(i) for i in range(len(peers))))
    took = time.monotonic() - t0
    await asyncio.sleep(a.hold)
    out = {"connections": len(held), "connect_seconds": round(took, 2)}
    if a.server_pid:
        after = rss_kib(a.server_pid)
        out.update(rss_before_kib=before, rss_after_kib=after,
                   bytes_per_connection=round((after - before) * 1024 / len(held)))
    print(json.dumps(out))
    for _, w in held:
        w.close()


asyncio.run(main())
