#!/usr/bin/env python3
"""Memory per stored task and per agent against the bytes the budgets count (issue 20,
finding 3). For each payload size: a fresh release server (--cores 1, a fresh data dir,
budgets large enough that nothing is refused), RSS idle, then COUNT tasks (or agents)
created over keep-alive connections, RSS after (malloc_trim runs every second), the
counted bytes (from /metrics where the server has them, else the formula of
`hub::task_bytes`), the durable store's size; then a restart on the same data dir and
RSS once the tasks are loaded again.

    scripts/bench-store-memory.py [--bin target/release/chatixia-core] [--count 20000]
        [--sizes tiny,1024,16384,65536] [--agents 20000]

Prints one line per case and a Markdown table. Loopback only.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Conn:
    def __init__(self, port, src="127.0.0.1"):
        self.s = socket.socket()
        self.s.bind((src, 0))
        self.s.connect(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, method, path, body=b"", headers=()):
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        self.s.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        h, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(h.split(b" ", 2)[1])
        m = re.search(rb"(?i)content-length:\s*(\d+)", h)
        n = int(m.group(1)) if m else 0
        while len(rest) < n:
            rest += self.s.recv(65536)
        self.buf = rest[n:]
        return status, rest[:n]


def start(bin_, data, port, extra):
    log = open(os.path.join(os.path.dirname(data), "server.log"), "ab")
    p = subprocess.Popen(
        [bin_, "--cores", "1", "--listen", f"127.0.0.1:{port}", "--stun-url", "none",
         "--data-dir", data, "--malloc-trim-interval", "1"] + extra,
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "RUST_LOG": "warn"})
    for _ in range(600):
        try:
            c = Conn(port)
            if c.request("GET", "/healthz")[0] == 200:
                return p
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("server did not start")


def settle(pid, secs=3.0):
    """RSS after the heap trim has run a few times (the minimum of the last samples)."""
    time.sleep(secs)
    return min(rss_kb(pid) for _ in range(3) if time.sleep(0.5) is None)


def metric(port, name):
    _, body = Conn(port).request("GET", "/metrics")
    total, found = 0, False
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return int(total) if found else None


def fill(port, count, make_body, path, threads=8):
    done = [0]
    lock = threading.Lock()
    errors = []

    def worker(k):
        c = Conn(port)
        for i in range(k, count, threads):
            st, b = c.request("POST", path, make_body(i), [("Content-Type", "application/json")])
            if st != 200:
                errors.append((st, b[:200]))
                return
            with lock:
                done[0] += 1

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit(f"refused: {errors[0]}")
    return done[0]


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def case(bin_, label, count, make_body, path, restart):
    tmp = tempfile.mkdtemp(prefix="chatixia-mem-")
    data = os.path.join(tmp, "data")
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    big = ["--task-store-bytes-max", str(1 << 40), "--task-client-bytes-max", str(1 << 40),
           "--task-client-tasks-max", str(1 << 30), "--agent-store-bytes-max", str(1 << 40),
           "--agent-client-bytes-max", str(1 << 40), "--agent-client-agents-max", str(1 << 30),
           "--data-bytes-max", str(1 << 40), "--anonymous-share-percent", "100"]
    extra = big + EXTRA
    p = start(bin_, data, port, extra)
    try:
        c = Conn(port)
        for _ in range(50):  # warm the request path
            c.request("GET", "/healthz")
        before = settle(p.pid)
        t0 = time.time()
        n = fill(port, count, make_body, path)
        secs = time.time() - t0
        after = settle(p.pid)
        counted = metric(port, "chatixia_task_store_bytes" if "tasks" in path else "chatixia_agent_store_bytes")
        disk = du(data)
        row = {"case": label, "n": n, "rss_before_kb": before, "rss_after_kb": after,
               "counted": counted, "disk": disk, "records": metric(port, "chatixia_store_data_bytes"),
               "secs": round(secs, 1)}
        if restart:
            p.terminate(); p.wait(30)
            p = start(bin_, data, port, extra)
            before_r = before
            after_r = settle(p.pid, 5.0)
            row["rss_restart_kb"] = after_r
            row["counted_restart"] = metric(port, "chatixia_task_store_bytes")
        return row
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


EXTRA = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/chatixia-core")
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--sizes", default="tiny,1024,16384,65536")
    ap.add_argument("--agents", type=int, default=16000)
    ap.add_argument("--extra", default="", help="more server flags, space-separated")
    a = ap.parse_args()
    EXTRA.extend(a.extra.split())
    rows = []
    for size in a.sizes.split(","):
        if not size:
            continue
        if size == "tiny":
            mk = lambda i: json.dumps({"skill": "s", "payload": {"n": i}, "ttl": 604800}).encode()
        else:
            blob = "x" * (int(size) - 2)  # the payload's JSON text is `size` bytes
            pre = json.dumps({"skill": "s", "ttl": 604800})[:-1].encode() + b', "payload": "'
            mk = lambda i, blob=blob.encode(), pre=pre: pre + blob + b'"}'
        r = case(a.bin, f"tasks payload={size}", a.count, mk, "/api/hub/tasks", True)
        print(json.dumps(r), flush=True)
        rows.append(r)
    if a.agents:
        mk = lambda i: json.dumps({"agent_id": f"agent-{i:08d}", "hostname": "host-1",
                                   "ip": "10.0.0.1", "capabilities": {"skills": ["a", "b"]}}).encode()
        r = case(a.bin, "agents", a.agents, mk, "/api/registry/agents", False)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print()
    print("| case | n | RSS growth (MiB) | counted (MiB) | RSS growth / counted | RSS growth per item (B) | "
          "RSS after restart, growth (MiB) | records (MiB) | data dir (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        grow = (r["rss_after_kb"] - r["rss_before_kb"]) * 1024
        cnt = r["counted"]
        ratio = f"{grow / cnt:.2f}" if cnt else "n/a"
        rs = ""
        if "rss_restart_kb" in r:
            rs = f"{(r['rss_restart_kb'] - r['rss_before_kb']) / 1024:.1f}"
        rec = f"{r['records'] / 2**20:.1f}" if r.get("records") is not None else "n/a"
        print(f"| {r['case']} | {r['n']} | {grow / 2**20:.1f} | "
              f"{(cnt or 0) / 2**20:.1f} | {ratio} | {grow // max(r['n'], 1)} | "
              f"{rs} | {rec} | {r['disk'] / 2**20:.1f} |")


if __name__ == "__main__":
    main()
