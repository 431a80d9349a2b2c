// The dashboard's views. DOM is built with h() (text only: no HTML from data).
const SVG = "http://www.w3.org/2000/svg";

export function h(tag, attrs = {}, ...kids) {
  const el = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  return el;
}

let toastTimer = 0;
export function toast(msg, bad = false) {
  const el = document.getElementById("toast");
  el.textContent = msg; el.className = bad ? "toast bad" : "toast"; el.hidden = false;
  clearTimeout(toastTimer); toastTimer = setTimeout(() => { el.hidden = true; }, 3500);
}

const $ = (id) => document.getElementById(id);
// Server clock minus the browser's (ages are computed against the server's time).
let clockSkew = 0;
const now = () => Date.now() / 1000 + clockSkew;
function age(t) {
  const s = Math.max(0, now() - t);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}
const fmt = (n) => Number(n).toLocaleString("en-US");
function fill(tbody, rows, cols, emptyText) {
  tbody.replaceChildren(...(rows.length ? rows : [h("tr", { class: "empty" }, h("td", { colspan: cols, text: emptyText }))]));
}

// ---------- paged lists (agents, tasks) ----------
function pager(el, page, cursors, onMove) {
  const n = cursors.length;
  const from = page.items.length ? (n - 1) * page.limit + 1 : 0;
  el.replaceChildren(
    h("span", { text: page.items.length ? `${fmt(from)}–${fmt(from + page.items.length - 1)} of ${fmt(page.total)}` : `0 of ${fmt(page.total)}` }),
    h("span", { class: "btns" },
      h("button", { type: "button", class: "btn", disabled: n <= 1, onclick: () => onMove(-1), text: "← Previous" }),
      h("button", { type: "button", class: "btn", disabled: !page.next_cursor, onclick: () => onMove(1, page.next_cursor), text: "Next →" })));
}

const LIMIT = 50;
// Sorting and paging are the server's (GET /api/dashboard/agents): fast at any size.
const agents = { cursors: [""], sort: "id", desc: false, page: null, seq: 0 };
const tasks = { cursors: [""], page: null, seq: 0 };

async function loadAgents(ctx) {
  const p = new URLSearchParams({ limit: LIMIT, sort: agents.sort, order: agents.desc ? "desc" : "asc" });
  const c = agents.cursors[agents.cursors.length - 1];
  if (c) p.set("cursor", c);
  if ($("agents-q").value.trim()) p.set("q", $("agents-q").value.trim());
  if ($("agents-health").value) p.set("health", $("agents-health").value);
  const seq = ++agents.seq;
  const page = await ctx.api(`/api/dashboard/agents?${p}`);
  if (seq !== agents.seq) return; // a newer request (filter, sort, page) was sent since
  page.limit = LIMIT; agents.page = page;
  renderAgents(ctx);
}

function renderAgents(ctx) {
  const page = agents.page;
  $("agents-total").textContent = fmt(page.total);
  const rows = page.items.map((a) => h("tr", { "data-agent": a.agent_id },
    h("td", { class: "mono", title: a.agent_id, text: a.agent_id }),
    h("td", {}, h("span", { class: `pill h-${a.health}`, text: a.health })),
    h("td", { title: a.skills.join(", ") }, a.skills.length ? a.skills.slice(0, 4).map((s) => h("span", { class: "chip", text: s })) : h("span", { class: "muted", text: "none" }),
      a.skills.length > 4 ? h("span", { class: "chip", text: `+${a.skills.length - 4}` }) : null),
    h("td", { title: `${a.hostname} ${a.ip}:${a.port}` }, a.hostname, h("span", { class: "muted small mono", text: a.ip ? ` ${a.ip}:${a.port}` : "" })),
    h("td", { text: a.mode || "—" }),
    h("td", { class: "num", "data-age": a.last_heartbeat, text: age(a.last_heartbeat) })));
  fill(document.querySelector("#agents-table tbody"), rows, 6, "No agents match.");
  pager($("agents-pager"), page, agents.cursors, (d, c) => {
    if (d > 0) agents.cursors.push(c); else agents.cursors.pop();
    loadAgents(ctx).catch((e) => toast(e.message, true));
  });
  for (const b of document.querySelectorAll("#agents-table th button")) {
    if (b.dataset.sort === agents.sort) b.dataset.dir = agents.desc ? "desc" : "asc"; else delete b.dataset.dir;
    b.closest("th").setAttribute("aria-sort", b.dataset.sort === agents.sort ? (agents.desc ? "descending" : "ascending") : "none");
  }
}

async function loadTasks(ctx) {
  const p = new URLSearchParams({ limit: LIMIT });
  const c = tasks.cursors[tasks.cursors.length - 1];
  if (c) p.set("cursor", c);
  if ($("tasks-state").value) p.set("state", $("tasks-state").value);
  if ($("tasks-agent").value.trim()) p.set("agent", $("tasks-agent").value.trim());
  const seq = ++tasks.seq;
  const page = await ctx.api(`/api/dashboard/tasks?${p}`);
  if (seq !== tasks.seq) return;
  page.limit = LIMIT; tasks.page = page;
  $("tasks-total").textContent = fmt(page.total);
  const rows = page.items.map((t) => h("tr", { "data-task": t.id },
    h("td", { class: "mono", title: t.id, text: t.id }),
    h("td", {}, h("span", { class: `pill st-${t.state}`, text: t.state })),
    h("td", { text: t.skill || "—" }),
    h("td", { class: "mono", title: t.source_agent_id, text: t.source_agent_id || "—" }),
    h("td", { class: "mono", title: t.assigned_agent_id || t.target_agent_id, text: t.assigned_agent_id || (t.target_agent_id ? `→ ${t.target_agent_id}` : "—") }),
    h("td", { class: "num", text: age(t.created_at) }),
    h("td", { class: t.error ? "v-bad" : "", title: t.error || t.result, text: t.error || t.result || "—" })));
  fill(document.querySelector("#tasks-table tbody"), rows, 7, "No tasks match.");
  pager($("tasks-pager"), page, tasks.cursors, (d, cur) => {
    if (d > 0) tasks.cursors.push(cur); else tasks.cursors.pop();
    loadTasks(ctx).catch((e) => toast(e.message, true));
  });
}

// ---------- overview ----------
function card(label, value, cls, sub) {
  return h("div", { class: "card" }, h("div", { class: "label", text: label }), h("div", { class: `value ${cls}`, text: fmt(value) }), sub ? h("div", { class: "sub", text: sub }) : null);
}

function chart(el, history, pick, unit) {
  const W = 560, H = 190, L = 44, B = 18, T = 8;
  const n = history.length;
  const span = Math.min(HISTORY, Math.max(60, n));
  const shards = n ? history[n - 1].shards.length : 0;
  let max = 1;
  for (const s of history) for (const x of s.shards) max = Math.max(max, pick(x));
  max = niceMax(max);
  const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${unit} per shard over the last minutes` });
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * (i / 4);
    svg.append(h("svg:line", { class: "axis", x1: L, x2: W, y1: y, y2: y }));
    svg.append(h("svg:text", { x: L - 6, y: y + 3, "text-anchor": "end", text: fmtShort(max * (1 - i / 4)) }));
  }
  svg.append(h("svg:text", { x: L, y: H - 4, text: span >= HISTORY ? "−5 min" : `−${span} s` }), h("svg:text", { x: W, y: H - 4, "text-anchor": "end", text: "now" }));
  for (let s = 0; s < shards; s++) {
    const pts = history.map((smp, i) => {
      const x = L + (W - L) * ((span - n + i) / (span - 1));
      const v = smp.shards[s] ? pick(smp.shards[s]) : 0;
      return `${x.toFixed(1)},${(T + (H - T - B) * (1 - v / max)).toFixed(1)}`;
    });
    if (pts.length) svg.append(h("svg:polyline", { class: `series s${s % 8}`, points: pts.join(" ") }));
  }
  const legend = h("div", { class: "chart-legend" }, ...Array.from({ length: shards }, (_, s) => h("span", {}, h("i", { class: `s${s % 8}` }), `shard ${s}`)));
  el.replaceChildren(svg, legend);
}
const HISTORY = 300;
function niceMax(v) { const p = 10 ** Math.floor(Math.log10(v)); for (const m of [1, 2, 4, 8, 10]) if (v <= m * p) return m * p; return v; }
function fmtShort(v) { return v >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : v >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : v >= 10 || v === 0 ? Math.round(v) : v.toFixed(1); }

function renderSummary(ctx, s) {
  const t = s.tasks || {};
  const taskTotal = Object.values(t).reduce((a, b) => a + b, 0);
  $("stat-cards").replaceChildren(
    card("Agents online", s.agents.active, "v-ok", `${fmt(s.agents.active + s.agents.stale + s.agents.offline)} registered`),
    card("Stale", s.agents.stale, "v-warn", "silent > 90 s"),
    card("Offline", s.agents.offline, "v-bad", "silent > 270 s"),
    card("Signaling peers", s.signaling_peers, "v-accent", "WebSocket connected"),
    card("Tasks", taskTotal, "", `${fmt(t.pending || 0)} pending`),
    card("Awaiting approval", s.pairing_pending, s.pairing_pending ? "v-warn" : "", `${fmt(s.pairing_approved)} approved`),
    ...(s.cluster ? [card("Cluster nodes", s.cluster.nodes.length, s.cluster.up ? "v-ok" : "v-bad",
      `${s.cluster.up ? "" : "Redis down · "}this: ${s.cluster.node} · ${s.cluster.nodes.join(", ")}`)] : []));
  const states = ["pending", "assigned", "completed", "failed", ...Object.keys(t).filter((k) => !["pending", "assigned", "completed", "failed"].includes(k))];
  $("task-states").replaceChildren(...states.map((k) => {
    const fillEl = h("span", { class: `fill bg-${k}` });
    fillEl.style.width = `${(100 * (t[k] || 0)) / Math.max(1, taskTotal)}%`;
    return h("div", { class: "bar", role: "img", "aria-label": `${k}: ${t[k] || 0}` }, h("span", {}, h("span", { class: `pill st-${k}`, text: k })),
      h("span", { class: "track" }, fillEl), h("span", { class: "n", text: fmt(t[k] || 0) }));
  }));
  chart($("chart-relayed"), ctx.state.history, (x) => x.rate, "relayed messages per second");
  chart($("chart-conns"), ctx.state.history, (x) => x.conns, "open connections");
  renderShards(ctx, s);
}

function renderShards(ctx, s) {
  $("shards-count").textContent = s.shards.length;
  const last = ctx.state.history[ctx.state.history.length - 1];
  fill(document.querySelector("#shards-table tbody"), s.shards.map((x, i) => h("tr", {},
    h("td", { class: "mono", text: x.shard }), h("td", {}, h("span", { class: "chip", text: x.io_driver })),
    ...[x.connections_open, x.connections_accepted, x.requests_served, x.ws_open].map((v) => h("td", { class: "num", text: fmt(v) })),
    h("td", { class: "num", text: last && last.shards[i] ? fmtShort(last.shards[i].rate) : "0" }),
    ...[x.ws_relayed, x.mailbox_sent, x.mailbox_received, x.mailbox_refused_full, x.mailbox_wakeups].map((v) => h("td", { class: "num", text: fmt(v) })))), 12, "No shards.");
}

// ---------- pairing ----------
let inviteTimer = 0;
// Only the answer to the latest request of each kind is drawn (answers can cross).
const latest = {};
async function fetchLatest(ctx, kind, path) {
  const seq = (latest[kind] = (latest[kind] || 0) + 1);
  const body = await ctx.api(path);
  if (seq !== latest[kind]) throw new Error("superseded");
  return body;
}

async function loadPairing(ctx) {
  const all = await fetchLatest(ctx, "pairing", "/api/pairing/all");
  const pending = all.filter((e) => e.status === "pending_approval");
  const approved = all.filter((e) => e.status === "approved");
  const history = all.filter((e) => e.status === "rejected" || e.status === "revoked").sort((a, b) => b.updated_at - a.updated_at);
  const act = (e, what) => async (ev) => {
    ev.target.disabled = true;
    try { await ctx.api(`/api/pairing/${encodeURIComponent(e.id)}/${what}`, { method: "POST" }); toast(`${e.agent_name}: ${what === "approve" ? "approved" : what === "reject" ? "rejected" : "revoked"}`); }
    catch (err) { toast(err.message, true); }
    await loadPairing(ctx).catch(() => {});
  };
  const pendingCards = pending.map((e) => h("div", { class: "card", "data-entry": e.id },
    h("div", { class: "name" }, h("span", { class: "pill st-pending", text: e.agent_name }), h("span", { class: "muted small mono", text: `${age(e.created_at)} ago` })),
    h("div", { class: "mono small muted", text: `id: ${e.id}` }), h("div", { class: "mono small muted", text: `peer: ${e.peer_id}` }),
    h("div", { class: "actions" }, h("button", { type: "button", class: "btn ok", onclick: act(e, "approve"), text: "Approve", "aria-label": `Approve ${e.agent_name}` }),
      h("button", { type: "button", class: "btn danger", onclick: act(e, "reject"), text: "Reject", "aria-label": `Reject ${e.agent_name}` }))));
  $("pending-count").textContent = pending.length;
  $("pending-list").replaceChildren(...(pendingCards.length ? pendingCards : [h("div", { class: "empty-note", text: "Nothing is waiting for approval." })]));
  $("approved-count").textContent = approved.length;
  fill(document.querySelector("#approved-table tbody"), approved.map((e) => h("tr", { "data-entry": e.id },
    h("td", { text: e.agent_name }), h("td", { class: "mono", text: e.id }), h("td", { class: "mono", text: e.peer_id }),
    h("td", { class: "num", text: `${age(e.updated_at)} ago` }),
    h("td", { class: "num" }, h("button", { type: "button", class: "btn danger", onclick: act(e, "revoke"), text: "Revoke", "aria-label": `Revoke ${e.agent_name}` })))), 5, "No approved devices.");
  fill(document.querySelector("#history-table tbody"), history.slice(0, 20).map((e) => h("tr", {},
    h("td", { text: e.agent_name }), h("td", { class: "mono", text: e.id }), h("td", {}, h("span", { class: `pill st-${e.status}`, text: e.status })),
    h("td", { class: "num", text: `${age(e.updated_at)} ago` }))), 4, "No rejected or revoked devices.");
  return pending;
}

async function newCode(ctx) {
  const r = await ctx.api("/api/dashboard/invite", { method: "POST" });
  const until = now() + r.expires_in;
  const box = $("invite");
  const left = h("b", {}), bar = h("progress", { max: r.expires_in, value: r.expires_in });
  // Six digits (--pair-code-format digits6): what `chatixia pair` 0.4.3 accepts. A long
  // code (the default) is redeemed with any HTTP client; 0.4.3's CLI refuses it.
  const six = /^\d{6}$/.test(r.code);
  const how = six
    ? [h("div", { class: "muted small", text: "Give it to the device: chatixia pair <code>. It works once." })]
    : [h("div", { class: "muted small", text: "Give it to the device; it works once. chatixia pair 0.4.3 takes six-digit codes only: redeem it with" }),
      h("div", { class: "mono small redeem", text: `curl -X POST ${location.origin}/api/pairing/pair -H 'Content-Type: application/json' -d '{"code":"${r.code}","agent_name":"NAME"}'` })];
  box.replaceChildren(h("div", {}, h("div", { class: "muted small", text: "Invite code" }), h("div", { class: six ? "code" : "code long", "data-code": r.code, text: r.code })),
    h("div", { class: "expiry" }, h("div", {}, "Expires in ", left), bar, ...how));
  box.hidden = false;
  clearInterval(inviteTimer);
  const tick = () => {
    const s = Math.max(0, Math.round(until - now()));
    left.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; bar.value = s;
    if (!s) { clearInterval(inviteTimer); box.querySelector(".code").classList.add("muted"); left.textContent = "expired"; }
  };
  tick(); inviteTimer = setInterval(tick, 1000);
}

// ---------- topology ----------
// Beyond this many agents the drawing groups them by health (and host) instead.
const TOPOLOGY_NODES_MAX = 60;
async function loadTopology(ctx) {
  const topo = await fetchLatest(ctx, "topology", "/api/hub/network/topology");
  const nodes = topo.nodes;
  $("topo-count").textContent = `${fmt(nodes.length)} agents · ${fmt(topo.mesh_edges.length)} links`;
  const W = 1100, H = 600, cx = W / 2, cy = H / 2;
  const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Mesh of ${nodes.length} agents` });
  const reg = h("svg:g", { class: "registry" }, h("svg:circle", { cx, cy, r: 22 }), h("svg:text", { x: cx, y: cy + 40, text: "REGISTRY" }));
  if (nodes.length <= TOPOLOGY_NODES_MAX) {
    const R = Math.min(250, 110 + nodes.length * 5);
    const pos = new Map();
    nodes.forEach((n, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, nodes.length);
      pos.set(n.sidecar_peer_id || `#${n.agent_id}`, { x: cx + R * 1.55 * Math.cos(a), y: cy + R * Math.sin(a), n });
    });
    for (const p of pos.values()) svg.append(h("svg:line", { class: "spoke", x1: cx, y1: cy, x2: p.x, y2: p.y }));
    for (const e of topo.mesh_edges) {
      const a = pos.get(e.from_peer), b = pos.get(e.to_peer);
      if (!a || !b) continue;
      const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
      const qx = mx + (cx - mx) * 0.35, qy = my + (cy - my) * 0.35;
      svg.append(h("svg:path", { class: "edge", d: `M${a.x},${a.y} Q${qx},${qy} ${b.x},${b.y}` }));
    }
    svg.append(reg);
    const small = nodes.length > 24;
    for (const p of pos.values()) {
      const n = p.n;
      const g = h("svg:g", { class: `node ${n.health}`, tabindex: 0, "data-agent": n.agent_id },
        h("svg:title", { text: `${n.agent_id} · ${n.health} · ${n.hostname} ${n.ip}:${n.port} · ${n.skills_count} skills` }),
        h("svg:circle", { cx: p.x, cy: p.y, r: small ? 7 : 10 }),
        h("svg:text", { x: p.x, y: p.y + (small ? 19 : 25), text: n.agent_id.length > 18 ? `${n.agent_id.slice(0, 17)}…` : n.agent_id }));
      if (!small) g.append(h("svg:text", { class: "sub", x: p.x, y: p.y + 37, text: `${n.skills_count} skills` }));
      svg.append(g);
    }
  } else {
    // Aggregated: one bubble per health, sized by count, mesh links summarised.
    const groups = ["active", "stale", "offline"].map((hl) => ({ hl, n: nodes.filter((x) => x.health === hl) })).filter((g) => g.n.length);
    const max = Math.max(...groups.map((g) => g.n.length));
    groups.forEach((g, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / groups.length;
      const x = cx + 330 * Math.cos(a), y = cy + 200 * Math.sin(a);
      const r = 24 + 60 * Math.sqrt(g.n.length / max);
      const hosts = new Set(g.n.map((n) => n.hostname)).size;
      const d = Math.hypot(x - cx, y - cy) || 1;
      svg.append(h("svg:line", { class: "spoke", x1: cx, y1: cy, x2: x - ((x - cx) * r) / d, y2: y - ((y - cy) * r) / d }),
        h("svg:g", { class: `group ${g.hl}`, tabindex: 0 }, h("svg:title", { text: `${g.n.length} ${g.hl} agents on ${hosts} hosts` }),
          h("svg:circle", { cx: x, cy: y, r }), h("svg:text", { x, y: y + 4, text: `${fmt(g.n.length)} ${g.hl}` }),
          h("svg:text", { class: "sub", x, y: y + r + 14, text: `${fmt(hosts)} hosts` })));
    });
    svg.append(reg, h("svg:text", { class: "sub", x: cx, y: cy + 56, text: `${fmt(topo.mesh_edges.length)} mesh links among ${fmt(nodes.filter((n) => n.mesh_peers.length).length)} members` }));
  }
  $("topology").replaceChildren(svg);
}

// ---------- wiring ----------
const loaders = { overview: (ctx) => loadPairingOverview(ctx), agents: loadAgents, tasks: loadTasks, topology: loadTopology, pairing: loadPairing, shards: async (ctx) => { if (ctx.state.summary) renderShards(ctx, ctx.state.summary); } };

async function loadPairingOverview(ctx) {
  const pending = await fetchLatest(ctx, "pending", "/api/pairing/pending");
  $("overview-pending").replaceChildren(...(pending.length ? pending.slice(0, 5).map((e) => h("div", { class: "pend-row" },
    h("span", { class: "pill st-pending", text: e.agent_name }), h("span", { class: "mono small muted", text: e.peer_id }), h("span", { class: "small muted", text: `${age(e.created_at)} ago` })))
    : [h("div", { class: "empty-note", text: "Nothing is waiting." })]));
}

let inited = false;
let ageTimer = 0;
export const views = {
  names: Object.keys(loaders),
  init(ctx) {
    if (inited) return;
    inited = true;
    let debounce = 0;
    const again = (list, load) => () => { clearTimeout(debounce); debounce = setTimeout(() => { list.cursors = [""]; load(ctx).catch((e) => toast(e.message, true)); }, 200); };
    $("agents-q").addEventListener("input", again(agents, loadAgents));
    $("agents-health").addEventListener("change", again(agents, loadAgents));
    $("tasks-state").addEventListener("change", again(tasks, loadTasks));
    $("tasks-agent").addEventListener("input", again(tasks, loadTasks));
    for (const f of ["agents-filter", "tasks-filter"]) $(f).addEventListener("submit", (e) => e.preventDefault());
    for (const b of document.querySelectorAll("#agents-table th button")) {
      b.addEventListener("click", () => {
        if (agents.sort === b.dataset.sort) agents.desc = !agents.desc; else { agents.sort = b.dataset.sort; agents.desc = false; }
        agents.cursors = [""];
        loadAgents(ctx).catch((e) => toast(e.message, true));
      });
    }
    $("new-code").addEventListener("click", () => newCode(ctx).catch((e) => toast(e.message, true)));
    // Heartbeat ages tick on the page without asking the server.
    clearInterval(ageTimer);
    ageTimer = setInterval(() => { for (const td of document.querySelectorAll("td[data-age]")) td.textContent = age(Number(td.dataset.age)); }, 1000);
  },
  show(ctx, view, refresh) {
    const load = loaders[view];
    if (load) load(ctx).catch((e) => { if (e.message !== "unauthorized" && e.message !== "superseded") toast(e.message, true); });
    if (!refresh) document.getElementById("main").focus({ preventScroll: true });
  },
  summary(ctx, s) { clockSkew = s.time - Date.now() / 1000; renderSummary(ctx, s); },
};
