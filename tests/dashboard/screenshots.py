"""Seeds a chatixia-core started with --test-clock (agents in every health, tasks in
every state, pairings, signaling traffic) and saves a screenshot of each dashboard view
(1280 px wide) into OUT. Run by scripts/dashboard-screenshots.sh.

Environment: BASE, ADMIN_KEY, OUT.
"""
import json
import os
import threading
import time
import urllib.request

from playwright.sync_api import sync_playwright, expect
from websockets.sync.client import connect

BASE = os.environ["BASE"]
OUT = os.environ["OUT"]
ADMIN_KEY = os.environ["ADMIN_KEY"]
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def call(method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req) as r:
        text = r.read()
        return json.loads(text) if text else None


SKILLS = [["translate", "summarize"], ["search"], ["ocr", "vision"], ["code-review"], ["search", "rank"], []]
HOSTS = ["gpu-node-1", "laptop-ana", "edge-pi-3", "build-box", "nas-home"]


def agents(prefix, n):
    for i in range(n):
        call("POST", "/api/registry/agents", {
            "agent_id": f"{prefix}-{i:02d}", "hostname": HOSTS[i % len(HOSTS)], "ip": f"10.0.{i // 10}.{i + 10}",
            "port": 8000 + i, "mode": ["auto", "manual"][i % 2], "sidecar_peer_id": f"{prefix}-{i:02d}-sidecar",
            "capabilities": {"skills": SKILLS[i % len(SKILLS)]}})


def seed():
    agents("ingest", 4)
    call("POST", "/debug/clock", {"advance_secs": 200})
    agents("worker", 5)
    call("POST", "/debug/clock", {"advance_secs": 100})
    agents("agent", 9)
    ids = []
    for i, skill in enumerate(["translate", "search", "ocr", "summarize", "search", "code-review", "translate", "rank"]):
        ids.append(call("POST", "/api/hub/tasks", {"skill": skill, "source_agent_id": f"agent-{i % 3:02d}",
                                                  "payload": {"n": i}})["task_id"])
    call("POST", "/api/hub/heartbeat", {"agent_id": "agent-01", "hostname": "laptop-ana", "skill_names": ["search", "rank"]})
    call("POST", f"/api/hub/tasks/{ids[1]}", {"state": "completed", "result": "3 documents found: rfc9110, rfc6455, rfc8259"})
    call("POST", f"/api/hub/tasks/{ids[4]}", {"state": "failed", "error": "upstream index unavailable (503)"})
    auth = {"X-API-Key": ADMIN_KEY}
    for name in ["kitchen-display", "edge-camera-02", "field-tablet"]:
        code = call("POST", "/api/pairing/generate-code", headers=auth)["code"]
        call("POST", "/api/pairing/pair", {"code": code, "agent_name": name})
    token = call("POST", "/api/token", headers=auth)["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    pending = call("GET", "/api/pairing/pending", headers=bearer)
    call("POST", f"/api/pairing/{pending[0]['id']}/approve", headers=bearer)


def traffic(stop):
    """Two signaling peers relaying offers, for the live chart."""
    socks = []
    for peer in ["chart-a", "chart-b"]:
        tok = call("POST", "/api/token", headers={"X-API-Key": f"ak_{peer.replace('-', '_')}"})["token"]
        ws = connect(BASE.replace("http", "ws") + f"/ws?token={tok}")
        ws.send(json.dumps({"type": "register", "peer_id": peer}))
        socks.append(ws)
    i = 0
    while not stop.is_set():
        i += 1
        a, b = ("chart-a", "chart-b") if i % 2 else ("chart-b", "chart-a")
        burst = 20 + (i % 40)
        for _ in range(burst):
            socks[0 if a == "chart-a" else 1].send(json.dumps({"type": "offer", "peer_id": a, "target_id": b, "payload": {}}))
        for ws in socks:
            try:
                while True:
                    ws.recv(timeout=0)
            except TimeoutError:
                pass
        time.sleep(0.05)
    for ws in socks:
        ws.close()


def shoot(page, view, name, ready):
    page.click(f"#tabs a[data-view={view}]")
    expect(page.locator(ready).first).to_be_visible()
    time.sleep(0.6)
    page.screenshot(path=os.path.join(OUT, f"{name}.png"), full_page=True)


def main():
    seed()
    stop = threading.Event()
    t = threading.Thread(target=traffic, args=(stop,), daemon=True)
    t.start()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
        for scheme in ["light", "dark"]:
            page = browser.new_page(viewport={"width": 1280, "height": 860}, color_scheme=scheme)
            expect.set_options(timeout=15000)
            page.goto(BASE + "/")
            if scheme == "light":
                page.screenshot(path=os.path.join(OUT, "login.png"))
            page.fill("#api-key", ADMIN_KEY)
            page.keyboard.press("Enter")
            expect(page.locator("#app")).to_be_visible()
            suffix = "" if scheme == "light" else "-dark"
            time.sleep(25 if scheme == "light" else 8)  # let the charts fill
            shoot(page, "overview", f"overview{suffix}", "#stat-cards .card")
            if scheme == "dark":
                break
            shoot(page, "agents", "agents", "tr[data-agent]")
            shoot(page, "tasks", "tasks", "tr[data-task]")
            shoot(page, "topology", "topology", "#topology g.node")
            page.click("#tabs a[data-view=pairing]")
            expect(page.locator("#pending-list .card").first).to_be_visible()
            page.click("#new-code")
            expect(page.locator("#invite .code")).to_be_visible()
            time.sleep(1.2)
            page.screenshot(path=os.path.join(OUT, "pairing.png"), full_page=True)
            shoot(page, "shards", "shards", "#shards-table tbody tr")
            # Beyond 60 agents the topology is drawn aggregated.
            agents("fleet", 70)
            page.click("#tabs a[data-view=overview]")
            shoot(page, "topology", "topology-aggregated", "#topology g.group")
        browser.close()
    stop.set()
    print("screenshots in", OUT)


if __name__ == "__main__":
    main()
