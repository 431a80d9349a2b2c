#!/usr/bin/env python3
"""Claim cost in a cluster (issue 25; docs/BENCHMARKS.md): usage scripts/bench-cluster-claim.py BIN [N].
Claim cost in a cluster: one node, one redis; N rounds of (post one task, one
heartbeat that claims it). Prints the claiming heartbeat's latency (p50/p99), Redis
commands per claimed task (INFO commandstats), and the node's CPU per round."""
import json, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1]; N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
tmp = tempfile.mkdtemp()
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
rport = free_port()
redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
time.sleep(0.3)
keys = {"keys": {"ak_poster": {"peer_id": "poster", "role": "agent"}, "ak_w": {"peer_id": "w", "role": "agent"}}}
open(f"{tmp}/keys.json", "w").write(json.dumps(keys)); os.chmod(f"{tmp}/keys.json", 0o600)
env = dict(os.environ, API_KEYS_FILE=f"{tmp}/keys.json", SIGNALING_SECRET="s", CHATIXIA_DATA_DIR=f"{tmp}/d", RUST_LOG="warn")
node = subprocess.Popen([BIN, "--cores", "1", "--stun-url", "none", "--listen", "127.0.0.1:0", "--port-file", f"{tmp}/port",
                         "--cluster", f"redis://127.0.0.1:{rport}", "--node-id", "a"], env=env, stderr=subprocess.DEVNULL)
for _ in range(200):
    if os.path.exists(f"{tmp}/port") and open(f"{tmp}/port").read().strip(): break
    time.sleep(0.05)
base = "http://" + open(f"{tmp}/port").read().strip()
for _ in range(200):
    try:
        if urllib.request.urlopen(base + "/readyz").status == 200: break
    except Exception: pass
    time.sleep(0.05)
def post(path, body, key):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json", "x-api-key": key})
    return json.loads(urllib.request.urlopen(req).read())
def cpu():
    f = open(f"/proc/{node.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
def evalsha():
    out = subprocess.run(["redis-cli", "-p", str(rport), "INFO", "commandstats"], capture_output=True, text=True).stdout
    for l in out.splitlines():
        if l.startswith("cmdstat_evalsha:"):
            return int(l.split("calls=")[1].split(",")[0])
    return 0
post("/api/hub/heartbeat", {"agent_id": "w", "skill_names": []}, "ak_w")
lat = []; c0 = cpu(); e0 = evalsha(); claimed = 0
for i in range(N):
    post("/api/hub/tasks", {"skill": "s", "payload": i}, "ak_poster")
    t = time.perf_counter()
    r = post("/api/hub/heartbeat", {"agent_id": "w", "skill_names": ["s"]}, "ak_w")
    lat.append((time.perf_counter() - t) * 1e6)
    claimed += len(r["pending_tasks"])
c1 = cpu(); e1 = evalsha()
lat.sort()
print(f"{BIN}: claimed {claimed}/{N}  claiming heartbeat p50 {lat[len(lat)//2]:.0f} us p99 {lat[int(len(lat)*0.99)]:.0f} us  "
      f"EVALSHA per round (post + claiming heartbeat) {(e1-e0)/N:.2f}  node CPU per round {(c1-c0)/N*1e6:.0f} us")
node.terminate(); redis.terminate(); node.wait(); redis.wait()
