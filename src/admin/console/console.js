// The portico admin console. Reads GET /admin/console every second and
// GET /admin/explain on demand, with the admin token kept in sessionStorage.
//
// Every value is put on the page as text (textContent or a text node), never as
// markup: paths and hosts typed into the explain form, upstream addresses and
// error messages are all data. The Content-Security-Policy forbids inline script,
// so this file is the only code the page runs.
"use strict";

const TOKEN_KEY = "portico-admin-token";
const POLL_MS = 1000;
let timer = null;

// An element with attributes and children; strings become text nodes.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function byId(id) {
  return document.getElementById(id);
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function adminFetch(url) {
  const response = await fetch(url, {
    headers: { Authorization: "Bearer " + token() },
    cache: "no-store",
    credentials: "omit",
  });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("The admin API refused the token.");
    throw new Error("unauthorized");
  }
  return response;
}

function showLogin(message) {
  clearTimeout(timer);
  byId("main").hidden = true;
  byId("login").hidden = false;
  byId("login-error").textContent = message || "";
  byId("status").textContent = "token needed";
  byId("status").className = "pill warn";
  byId("token").focus();
}

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function percent(share) {
  return share === null || share === undefined ? "–" : (share * 100).toFixed(1) + "%";
}

function ms(value) {
  return value === null || value === undefined ? "–" : fixed(value, value < 10 ? 2 : 0) + " ms";
}

// `Deprecation: @<unix seconds>` as a date; other headers as sent.
function headerText(name, value) {
  if (name === "deprecation" && value.startsWith("@")) {
    const date = new Date(Number(value.slice(1)) * 1000);
    if (!Number.isNaN(date.getTime())) return "deprecated " + date.toISOString().slice(0, 10);
  }
  if (name === "sunset") {
    const date = new Date(value);
    if (!Number.isNaN(date.getTime())) return "sunset " + date.toISOString().slice(0, 10);
  }
  return name + ": " + value;
}

function renderRoutes(data) {
  const rows = [];
  for (const route of data.routes) {
    const targets = route.targets.length ? route.targets : [{}];
    targets.forEach((t, i) => {
      const last = t.last_minute || {};
      const deprecation = (t.deprecation || []).filter(([n]) => n !== "link");
      rows.push(el("tr", { "data-route": route.id },
        el("td", {}, i === 0 ? route.id : ""),
        el("td", {}, i === 0 ? (route.hosts.length ? route.hosts.join(", ") : "any") : ""),
        el("td", { class: "mono" }, i === 0 ? route.path + (route.prefix ? " (prefix)" : "") : ""),
        el("td", {}, i === 0 ? (route.methods.length ? route.methods.join(" ") : "any") : ""),
        el("td", {}, t.version ? "v" + t.version : "–",
          deprecation.map(([n, v]) => el("div", { class: "warn" }, headerText(n, v)))),
        el("td", {}, t.cluster || ""),
        el("td", {}, i === 0 ? route.plugins.join(", ") : ""),
        el("td", { class: "num" }, fixed(last.requests_per_second, 2)),
        el("td", { class: "num" + (last.error_share > 0 ? " bad" : "") }, percent(last.error_share)),
        el("td", { class: "num" }, ms(last.p50_ms)),
        el("td", { class: "num" }, ms(last.p99_ms))));
    });
  }
  byId("routes").tBodies[0].replaceChildren(...rows);
  const shown = data.routes.length;
  byId("routes-note").textContent =
    (shown < data.routes_total ? `busiest ${shown} of ${data.routes_total}` : `${shown}`) +
    ` · last ${data.window_seconds} s`;
}

function endpointHealth(e) {
  if (e.ejected) return "ejected";
  return e.healthy ? "healthy" : "unhealthy";
}

function renderClusters(data) {
  const blocks = data.clusters.map((c) => {
    const facts = [`${c.lb}`, `${c.available}/${c.endpoints.length} available`];
    if (c.health_check_interval_ms) facts.push(`health check every ${c.health_check_interval_ms} ms`);
    if (c.breaker) facts.push(`breaker ${c.breaker}`);
    if (c.bulkhead) {
      facts.push(`bulkhead ${c.bulkhead.in_flight}/${c.bulkhead.limit}, ${c.bulkhead.queued} queued`);
    }
    const b = c.retry_budget;
    facts.push(`retry budget ${b.retries}/${Math.floor(b.allowed)} used (10 s, ${b.requests} requests)`);
    const rows = c.endpoints.map((e) => {
      const health = endpointHealth(e);
      // A DNS-discovered endpoint: its name and the address it resolved to.
      const label = e.addr && e.addr !== e.address ? e.address + "@" + e.addr : e.address;
      const shown = e.priority === undefined ? label : label + " (priority " + e.priority + ")";
      return el("tr", { "data-endpoint": c.name + "/" + label, "data-health": health },
        el("td", { class: "mono" }, shown),
        el("td", {}, String(e.weight)),
        el("td", { class: "health " + health }, health),
        el("td", {}, e.ejected ? (e.ejected_for_ms / 1000).toFixed(1) + " s left" : "–"),
        el("td", {}, e.breaker || "–"),
        el("td", { class: "num" }, String(e.in_flight)));
    });
    return el("div", { class: "cluster", "data-cluster": c.name },
      el("h3", {}, c.name, " ", el("small", {}, facts.join(" · "))),
      el("table", {},
        el("thead", {}, el("tr", {},
          ["endpoint", "weight", "health", "ejection", "breaker", "in flight"].map((h) => el("th", {}, h)))),
        el("tbody", {}, rows)));
  });
  byId("clusters").replaceChildren(...blocks);
  const changes = data.changes.slice(0, 20).map((c) =>
    el("li", {}, el("time", {}, c.at), " ", c.cluster, c.endpoint ? " " + c.endpoint : "",
      ": ", c.from, " → ", c.to));
  byId("changes").replaceChildren(...(changes.length ? changes : [el("li", {}, "nothing since start")]));
}

function renderConfig(data) {
  const cfg = data.config;
  const facts = [
    ["version", cfg.version],
    ["loaded at", cfg.loaded_at],
    ["source", cfg.source || "–"],
    ["upgrade required", cfg.upgrade_required || "no"],
    ["last reload error", cfg.last_reload_error || "none"],
    ["global plugins", data.global_plugins.join(", ") || "none"],
  ];
  byId("config").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const rows = cfg.reloads.map((r) => el("tr", {},
    el("td", {}, r.at),
    el("td", { class: r.error ? "bad" : "good" }, r.error ? "refused" : "ok"),
    el("td", { class: "mono" }, r.error || r.version)));
  byId("reloads").tBodies[0].replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 3 }, "no reload since start"))]));
}

function renderTokens(data) {
  const t = data.tokens;
  const parts = [el("p", {}, `verified ${t.verified} · failed ${t.failed_total} · cache hit ratio `,
    t.cache_hit_ratio === null ? "–" : percent(t.cache_hit_ratio),
    ` (${t.cache_hits} hits, ${t.cache_misses} misses)`)];
  if (t.failed.length) {
    parts.push(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "result"), el("th", {}, "reason"), el("th", {}, "count"))),
      el("tbody", {}, t.failed.map((f) =>
        el("tr", {}, el("td", {}, f.result), el("td", {}, f.reason), el("td", { class: "num" }, String(f.count)))))));
  }
  if (t.jwks.length) {
    parts.push(el("table", {},
      el("thead", {}, el("tr", {}, ["key set", "keys", "last good fetch", "fetches", "failures", "last error"]
        .map((h) => el("th", {}, h)))),
      el("tbody", {}, t.jwks.map((j) => el("tr", {},
        el("td", { class: "mono" }, j.url),
        el("td", { class: "num" }, j.keys === null ? "none yet" : String(j.keys)),
        el("td", {}, j.last_success_seconds_ago === null ? "never" : fixed(j.last_success_seconds_ago, 0) + " s ago"),
        el("td", { class: "num" }, String(j.fetches)),
        el("td", { class: "num" + (j.failures ? " bad" : "") }, String(j.failures)),
        el("td", { class: j.last_error ? "bad" : "" }, j.last_error || "–"))))));
  } else {
    parts.push(el("p", {}, "no remote key sets (JWKS) in use"));
  }
  byId("tokens").replaceChildren(...parts);
}

function render(data) {
  byId("status").textContent = data.draining ? "draining" : data.ready ? "ready" : "not ready";
  byId("status").className = "pill " + (data.ready && !data.draining ? "good" : "bad");
  byId("summary").textContent =
    `pid ${data.pid} · config ${data.config.version} · ${data.routes_total} routes · ${data.clusters.length} clusters`;
  byId("updated").textContent = "updated " + new Date().toLocaleTimeString();
  renderClusters(data);
  renderRoutes(data);
  renderConfig(data);
  renderTokens(data);
}

async function poll() {
  clearTimeout(timer);
  try {
    const response = await adminFetch("/admin/console");
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
    byId("main").hidden = false;
    byId("login").hidden = true;
  } catch (e) {
    if (e.message === "unauthorized") return;
    byId("status").textContent = "unreachable: " + e.message;
    byId("status").className = "pill bad";
  }
  timer = setTimeout(poll, POLL_MS);
}

async function explain(event) {
  event.preventDefault();
  const query = new URLSearchParams({
    method: byId("explain-method").value.trim() || "GET",
    path: byId("explain-path").value.trim(),
    host: byId("explain-host").value.trim(),
  });
  const out = byId("explain-answer");
  out.textContent = "…";
  try {
    const response = await adminFetch("/admin/explain?" + query.toString());
    const body = await response.json();
    out.textContent = response.ok ? body.text : "error: " + body.error;
    out.className = response.ok && body.answer.outcome === "routed" ? "good" : "bad";
  } catch (e) {
    if (e.message !== "unauthorized") out.textContent = "error: " + e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  byId("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, byId("token").value.trim());
    byId("token").value = "";
    poll();
  });
  byId("explain-form").addEventListener("submit", explain);
  if (token()) poll();
  else showLogin("");
});
