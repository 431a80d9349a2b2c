#!/usr/bin/env python3
"""Soak, many-addresses store fill (issue 20, finding 3): what the finding did (80
loopback source addresses, each creating 64 KiB tasks with a 7-day ttl until refused),
against a release server in its DEFAULT configuration (only --cores and a fresh data
dir), then:

  * RSS, the counted bytes (/metrics), the durable store's records and file, against
    the budgets;
  * 40 ordinary tasks without credentials and 40 with an API key (the finding: 16 of 40
    ordinary tasks got 503);
  * a restart on the same data dir: RSS once the tasks are loaded, and an
    authenticated task again.

PASS when every authenticated request got 200, the anonymous bytes stayed within the
anonymous share, the records within --data-bytes-max, and RSS growth within
RSS_FACTOR x the counted bytes plus the durable store's page cache (32 MiB) and
SLACK_MB (the shards' buffer pools, the allocator), before and after the restart.

    scripts/soak-fill.py [--bin target/release/chatixia-core] [--cores 2]
        [--addresses 80] [--payload 65536] [--out DIR]

Loopback only; every load is bounded (each address stops at its first refusal on each
skill).
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

RSS_FACTOR = float(os.environ.get("RSS_FACTOR", "1.5"))
SLACK_MB = float(os.environ.get("SLACK_MB", "24"))
CACHE_MB = 32
SKILLS = [f"fill-{k}" for k in range(8)]  # spread over the shards by shard_of(skill)
KEYS = {
    "keys": {
        "ak_fill_agent": {"peer_id": "fill-agent", "role": "agent"},
        "ak_fill_admin": {"peer_id": "fill-admin", "role": "admin"},
    }
}


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
        self.s.settimeout(30)
        self.buf = b""

    def request(self, method, path, body=b"", headers=()):
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        for k, v in headers:
            head += f"{k}: {v}\r\n"
        self.s.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise ConnectionError("closed")
            self.buf += d
        h, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(h.split(b" ", 2)[1])
        m = re.search(rb"(?i)content-length:\s*(\d+)", h)
        n = int(m.group(1)) if m else 0
        while len(rest) < n:
            rest += self.s.recv(65536)
        self.buf = rest[n:]
        return status, rest[:n]

    def post(self, path, obj, headers=()):
        return self.request("POST", path, obj if isinstance(obj, bytes) else json.dumps(obj).encode(),
                            [("Content-Type", "application/json")] + list(headers))


def metrics(port):
    _, body = Conn(port).request("GET", "/metrics")
    out = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, v = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        out[base] = out.get(base, 0) + float(v)
    return out


def du(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def start(args, data, port, log):
    env = {**os.environ, "RUST_LOG": "warn", "API_KEYS_FILE": os.path.join(os.path.dirname(data), "keys.json")}
    p = subprocess.Popen([args.bin, "--cores", str(args.cores), "--listen", f"127.0.0.1:{port}",
                          "--stun-url", "none", "--data-dir", data],
                         stdout=subprocess.DEVNULL, stderr=log, env=env)
    for _ in range(1200):
        try:
            if Conn(port).request("GET", "/healthz")[0] == 200:
                return p
        except OSError:
            pass
        if p.poll() is not None:
            raise SystemExit("server exited at start")
        time.sleep(0.05)
    raise SystemExit("server did not start")


def settled_rss(pid, secs=12.0):
    """RSS after the default heap trim (every 10 s) has run: the lowest of a few samples."""
    time.sleep(secs)
    samples = []
    for _ in range(4):
        samples.append(rss_kb(pid))
        time.sleep(0.5)
    return min(samples)


def fill(port, addresses, payload):
    blob = b'"' + b"x" * (payload - 2) + b'"'
    statuses = {}
    lock = threading.Lock()
    todo = list(range(addresses))

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            src = f"127.0.0.{10 + i}"
            c = Conn(port, src)
            for skill in SKILLS:
                body = b'{"skill":"' + skill.encode() + b'","ttl":604800,"payload":' + blob + b"}"
                while True:
                    st, b = c.post("/api/hub/tasks", body)
                    with lock:
                        statuses[st] = statuses.get(st, 0) + 1
                    if st != 200:
                        break

    ts = [threading.Thread(target=worker) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return statuses


def ordinary(port, n, src, headers):
    c = Conn(port, src)
    out = {}
    for i in range(n):
        st, _ = c.post("/api/hub/tasks", {"skill": SKILLS[i % len(SKILLS)], "payload": {"i": i}}, headers)
        out[st] = out.get(st, 0) + 1
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/chatixia-core")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--addresses", type=int, default=80)
    ap.add_argument("--payload", type=int, default=65536)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="chatixia-fill-")
    out = args.out or tmp
    os.makedirs(out, exist_ok=True)
    data = os.path.join(tmp, "data")
    with open(os.path.join(tmp, "keys.json"), "w") as f:
        json.dump(KEYS, f)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    log = open(os.path.join(out, "fill-server.log"), "ab")
    key = [("X-API-Key", "ak_fill_agent")]
    r = {"addresses": args.addresses, "payload": args.payload, "cores": args.cores}
    p = start(args, data, port, log)
    try:
        r["rss_idle_kb"] = settled_rss(p.pid)
        t0 = time.time()
        r["fill_statuses"] = fill(port, args.addresses, args.payload)
        r["fill_secs"] = round(time.time() - t0, 1)
        r["rss_filled_kb"] = settled_rss(p.pid)
        m = metrics(port)
        for k in ["chatixia_task_store_tasks", "chatixia_task_store_anonymous_tasks",
                  "chatixia_task_store_bytes", "chatixia_task_store_anonymous_bytes",
                  "chatixia_store_data_bytes", "chatixia_store_data_bytes_max",
                  "chatixia_store_file_bytes", "chatixia_store_refused_anonymous_total",
                  "chatixia_store_refused_full_total", "chatixia_budget_refused_total"]:
            r[k] = int(m.get(k, 0))
        r["data_dir_bytes"] = du(data)
        r["ordinary_anonymous"] = ordinary(port, 40, "127.0.0.250", [])
        r["ordinary_authenticated"] = ordinary(port, 40, "127.0.0.251", key)
        p.terminate(); p.wait(60)
        p = start(args, data, port, log)
        r["rss_restart_kb"] = settled_rss(p.pid)
        r["task_store_bytes_restart"] = int(metrics(port).get("chatixia_task_store_bytes", 0))
        r["authenticated_after_restart"] = ordinary(port, 10, "127.0.0.252", key)
    finally:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    # The default budgets, per shard: tasks 256 MiB, anonymous share 50 %; records 1 GiB.
    share = args.cores * 256 * 2**20 // 2
    allowed_kb = (RSS_FACTOR * r["chatixia_task_store_bytes"]) / 1024 + (CACHE_MB + SLACK_MB) * 1024
    growth = r["rss_filled_kb"] - r["rss_idle_kb"]
    growth_restart = r["rss_restart_kb"] - r["rss_idle_kb"]
    checks = {
        "authenticated all 200": r["ordinary_authenticated"] == {200: 40}
        and r["authenticated_after_restart"] == {200: 10},
        "anonymous within the share": r["chatixia_task_store_anonymous_bytes"] <= share,
        "records within --data-bytes-max": r["chatixia_store_data_bytes"] <= r["chatixia_store_data_bytes_max"],
        "RSS within the budgets": growth <= allowed_kb,
        "RSS after restart within the budgets": growth_restart <= allowed_kb,
    }
    r["rss_allowed_growth_kb"] = int(allowed_kb)
    r["checks"] = checks
    with open(os.path.join(out, "fill.json"), "w") as f:
        json.dump(r, f, indent=1)
    print(json.dumps(r))
    ok = all(checks.values())
    print(("PASS" if ok else "FAIL") + ": fill: "
          f"{args.addresses} addresses, statuses {r['fill_statuses']}; "
          f"counted {r['chatixia_task_store_bytes'] / 2**20:.1f} MiB "
          f"(anonymous {r['chatixia_task_store_anonymous_bytes'] / 2**20:.1f} of a {share / 2**20:.0f} MiB share); "
          f"RSS idle {r['rss_idle_kb'] / 1024:.1f} MiB, filled {r['rss_filled_kb'] / 1024:.1f} MiB, "
          f"after restart {r['rss_restart_kb'] / 1024:.1f} MiB (growth allowed {allowed_kb / 1024:.1f} MiB); "
          f"records {r['chatixia_store_data_bytes'] / 2**20:.1f} MiB, file {r['chatixia_store_file_bytes'] / 2**20:.1f} MiB, "
          f"data dir {r['data_dir_bytes'] / 2**20:.1f} MiB; ordinary anonymous {r['ordinary_anonymous']}, "
          f"authenticated {r['ordinary_authenticated']}, after restart {r['authenticated_after_restart']}; "
          + ", ".join(k for k, v in checks.items() if not v))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
