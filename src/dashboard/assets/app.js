// chatixia-core operator dashboard: session, API calls, live event stream, routing.
// Plain ES module, no dependencies; views are rendered by views.js.
import { views, h, toast } from "./views.js";

const TOKEN_KEY = "chatixia.admin.token";
// Renew the admin token when this share of its lifetime is left.
const RENEW_AT_LEFT = 0.25;

const state = {
  token: null, exp: 0, peer: "", key: null, renewTimer: 0,
  view: "overview", es: null, esRetry: 0, summary: null, history: [],
  refreshTimers: {},
};

function claims(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(b64));
  } catch { return null; }
}

function setToken(token) {
  const c = claims(token);
  if (!c || c.role !== "admin") return false;
  state.token = token; state.exp = c.exp; state.peer = c.sub;
  sessionStorage.setItem(TOKEN_KEY, token);
  scheduleRenew();
  return true;
}

function scheduleRenew() {
  clearTimeout(state.renewTimer);
  const now = Date.now() / 1000;
  const c = claims(state.token);
  const life = c ? c.exp - c.iat : 300;
  const wait = Math.max(5, state.exp - now - life * RENEW_AT_LEFT);
  state.renewTimer = setTimeout(renew, wait * 1000);
}

async function exchange(key) {
  const r = await fetch("/api/token", { method: "POST", headers: { "X-API-Key": key } });
  if (r.status === 401) return { error: "That API key is not known to this server." };
  if (!r.ok) return { error: `Sign-in failed (HTTP ${r.status}).` };
  const body = await r.json();
  if (body.role !== "admin") return { error: `This key belongs to ${body.peer_id}, whose role is "${body.role}", not admin.` };
  return { token: body.token };
}

async function renew() {
  if (!state.key) {
    // After a reload only the token is kept: sign in again once it runs out.
    const left = state.exp - Date.now() / 1000;
    if (left <= 0) return logout("Your session expired. Sign in again.");
    state.renewTimer = setTimeout(renew, left * 1000);
    return;
  }
  const got = await exchange(state.key).catch(() => ({ error: "network" }));
  if (got.token) setToken(got.token);
  else state.renewTimer = setTimeout(renew, 10000);
}

export async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, ...(opts.body ? { "Content-Type": "application/json" } : {}) };
  const r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body });
  if (r.status === 401) { logout("Your session ended. Sign in again."); throw new Error("unauthorized"); }
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { error: text }; }
  if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
  return body;
}

function showLogin(message) {
  document.getElementById("app").hidden = true;
  document.getElementById("login").hidden = false;
  const err = document.getElementById("login-error");
  err.hidden = !message; err.textContent = message || "";
  document.getElementById("api-key").focus();
}

function logout(message) {
  clearTimeout(state.renewTimer);
  if (state.es) { state.es.close(); state.es = null; }
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null; state.key = null;
  showLogin(message);
}

async function onLogin(ev) {
  ev.preventDefault();
  const input = document.getElementById("api-key");
  const button = document.getElementById("login-submit");
  button.disabled = true;
  try {
    const got = await exchange(input.value.trim());
    if (got.error) { showLogin(got.error); input.select(); return; }
    state.key = input.value.trim();
    input.value = "";
    setToken(got.token);
    start();
  } catch {
    showLogin("The server cannot be reached.");
  } finally { button.disabled = false; }
}

function setLive(mode, text) {
  const el = document.getElementById("live");
  el.className = `live ${mode}`;
  document.getElementById("live-text").textContent = text;
}

function connectEvents() {
  if (state.es) state.es.close();
  const es = new EventSource(`/api/dashboard/events?token=${encodeURIComponent(state.token)}`);
  state.es = es;
  es.addEventListener("open", () => { state.esRetry = 0; setLive("on", "live"); });
  es.addEventListener("summary", (e) => onSummary(JSON.parse(e.data)));
  es.addEventListener("changes", (e) => onChanges(JSON.parse(e.data)));
  es.addEventListener("error", () => {
    // Reconnect ourselves with the current token (the browser would reuse the old URL).
    es.close();
    if (state.es !== es || !state.token) return;
    setLive("off", "reconnecting");
    state.esRetry = Math.min(state.esRetry + 1, 5);
    setTimeout(() => { if (state.es === es && state.token) connectEvents(); }, 500 * state.esRetry);
  });
}

// Samples of the per-shard counters kept for the charts (one a second: 5 minutes).
const HISTORY_MAX = 300;

function onSummary(s) {
  const prev = state.summary;
  state.summary = s;
  const sample = { t: s.time, shards: s.shards.map((x) => ({ conns: x.connections_open + x.ws_open, relayed: x.ws_relayed, rate: 0 })) };
  if (prev && s.time > prev.time) {
    const dt = s.time - prev.time;
    sample.shards.forEach((x, i) => { const p = prev.shards[i]; x.rate = p ? Math.max(0, (x.relayed - p.ws_relayed) / dt) : 0; });
  }
  state.history.push(sample);
  if (state.history.length > HISTORY_MAX) state.history.shift();
  const badge = document.getElementById("pending-badge");
  badge.hidden = !s.pairing_pending; badge.textContent = s.pairing_pending;
  views.summary(ctx, s);
}

function onChanges(c) {
  const kinds = new Set(c.events.map((e) => e.kind));
  if (c.resync) ["agent", "task", "pairing"].forEach((k) => kinds.add(k));
  for (const k of kinds) refreshSoon(k);
}

// Which views show which kind of change.
const SHOWN_BY = { agent: ["agents", "topology", "overview"], task: ["tasks"], pairing: ["pairing", "overview"] };

function refreshSoon(kind) {
  if (!(SHOWN_BY[kind] || []).includes(state.view)) return;
  clearTimeout(state.refreshTimers[kind]);
  state.refreshTimers[kind] = setTimeout(() => views.show(ctx, state.view, true), 150);
}

function route() {
  const name = (location.hash || "#overview").slice(1);
  const view = views.names.includes(name) ? name : "overview";
  state.view = view;
  for (const a of document.querySelectorAll("#tabs a")) a.setAttribute("aria-selected", String(a.dataset.view === view));
  for (const sec of document.querySelectorAll(".view")) sec.hidden = sec.id !== `view-${view}`;
  views.show(ctx, view, false);
}

const ctx = { api, state, h, toast };

function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("app").hidden = false;
  document.getElementById("who").textContent = state.peer;
  views.init(ctx);
  connectEvents();
  route();
  api("/api/dashboard/summary").then(onSummary).catch(() => {});
}

function boot() {
  document.getElementById("login-form").addEventListener("submit", onLogin);
  document.getElementById("logout").addEventListener("click", () => logout(""));
  window.addEventListener("hashchange", () => { if (state.token) route(); });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  const c = saved && claims(saved);
  if (c && c.role === "admin" && c.exp > Date.now() / 1000 + 5) { setToken(saved); start(); }
  else { sessionStorage.removeItem(TOKEN_KEY); showLogin(""); }
}

boot();
