// StudyIn analytics dashboard: reads the authenticated query API; live items over SSE.
// No framework: a few fetches, uPlot charts (vendored) and a CSS-grid calendar.
"use strict";

const TOKEN_KEY = "studyin.analytics.token";
const REFRESH_MS = 5000;
const EPS_POINTS = 120;
const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

const $ = (id) => document.getElementById(id);
const charts = {};
let liveAbort = null;
let refreshTimer = null;
const eps = { t: [], v: [] };

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (response.status === 401) {
    signOut("token rejected: " + ((await response.json()).detail || "401"));
    throw new Error("unauthorized");
  }
  return response;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (liveAbort) liveAbort.abort();
  clearInterval(refreshTimer);
  $("views").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("status").textContent = message || "signed out";
}

function chart(id, series, data, opts = {}) {
  const el = $(id);
  const width = Math.max(el.clientWidth, 300);
  if (charts[id]) { charts[id].setData(data); return charts[id]; }
  charts[id] = new uPlot({ width, height: 200, series: [{}, ...series], legend: { show: true }, ...opts }, data, el);
  return charts[id];
}

const bars = () => uPlot.paths.bars({ size: [0.7, 40] });
const day = (iso) => Date.parse(iso + "T12:00:00Z") / 1000;

function renderHeatmap(heatmap) {
  const el = $("heatmap");
  el.replaceChildren();
  // Pad the first column so rows are weekdays (Monday first).
  const first = new Date(heatmap.days.length ? heatmap.days[0].day + "T12:00:00Z" : Date.now());
  for (let i = 0; i < (first.getUTCDay() + 6) % 7; i++) el.appendChild(document.createElement("div")).style.visibility = "hidden";
  for (const d of heatmap.days) {
    const cell = document.createElement("div");
    cell.className = "l" + d.level;
    cell.title = `${d.day}: ${d.minutes.toFixed(1)} min, ${d.sessions} sessions`;
    cell.dataset.day = d.day;
    cell.dataset.level = d.level;
    el.appendChild(cell);
  }
  el.dataset.activeDays = heatmap.active_days;
}

async function loadLearner() {
  const [overview, heatmap, progress] = await Promise.all([
    api("/api/analytics/learning/overview?days=30").then((r) => r.json()),
    api(`/api/analytics/learning/heatmap?tz=${encodeURIComponent(tz)}`).then((r) => r.json()),
    api("/api/analytics/gamification/progress?days=30").then((r) => r.json()),
  ]);
  $("fig-level").textContent = progress.level;
  $("fig-xp").textContent = progress.xp_total;
  $("fig-streak").textContent = overview.current_streak;
  $("fig-minutes").textContent = overview.study_minutes.toFixed(1);
  renderHeatmap(heatmap);
  // The x axis spans the requested window, however few days had activity.
  const windowRange = { x: { time: true, range: () => [day(overview.since) - 43200, day(overview.until) + 43200] } };
  const daily = overview.daily;
  chart("chart-minutes", [{ label: "minutes", stroke: "#2f6fed", fill: "#2f6fed55", paths: bars() }],
    [daily.map((d) => day(d.day)), daily.map((d) => d.study_minutes)], { scales: windowRange });
  const trend = progress.xp_trend;
  chart("chart-xp", [{ label: "cumulative XP", stroke: "#239a3b", width: 2, points: { size: 6 } }],
    [trend.map((p) => day(p.day)), trend.map((p) => p.cumulative_xp)], { scales: windowRange });
  $("chart-minutes").dataset.points = daily.length;
  $("chart-xp").dataset.points = trend.length;
  $("achievements").replaceChildren(...progress.achievements.map((a) => {
    const li = document.createElement("li"); li.textContent = a; return li;
  }));
}

async function loadStaff() {
  const response = await api("/api/analytics/system/metrics?window=1h");
  if (response.status === 403) {
    $("staff-denied").hidden = false;
    $("staff-content").hidden = true;
    return false;
  }
  const metrics = await response.json();
  $("staff-denied").hidden = true;
  $("staff-content").hidden = false;
  $("learner").hidden = true;
  $("fig-active").textContent = metrics.active_users;
  $("fig-lag").textContent = metrics.pipeline.entries_behind;
  $("fig-requests").textContent = metrics.routes.reduce((n, r) => n + r.requests, 0);
  const routes = metrics.routes.slice(0, 12);
  const tbody = $("routes").querySelector("tbody");
  tbody.replaceChildren(...routes.map((r) => {
    const tr = document.createElement("tr");
    const cells = [`${r.method} ${r.route}`, r.requests, fmt(r.p50_ms), fmt(r.p95_ms), fmt(r.p99_ms),
      (100 * r.error_rate).toFixed(1) + " %"];
    for (const c of cells) { const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }
    return tr;
  }));
  const xs = routes.map((_, i) => i);
  chart("chart-latency", [
    { label: "p50 ms", stroke: "#2f6fed", fill: "#2f6fed44", paths: bars() },
    { label: "p95 ms", stroke: "#f79009", width: 2 },
    { label: "p99 ms", stroke: "#c4320a", width: 2 },
  ], [xs, routes.map((r) => r.p50_ms), routes.map((r) => r.p95_ms), routes.map((r) => r.p99_ms)], {
    scales: { x: { time: false } },
    axes: [{
      splits: () => xs, rotate: -25, size: 90,
      values: (u, splits) => splits.map((i) => (routes[i] ? `${routes[i].method} ${shortRoute(routes[i].route)}` : "")),
    }, { label: "ms" }],
  });
  $("chart-latency").dataset.points = routes.length;
  if (window.loadAnalysis) window.loadAnalysis();
  return true;
}

const shortRoute = (route) => (route.length > 28 ? "…" + route.slice(-27) : route);
const fmt = (v) => (v === null || v === undefined ? "–" : v.toFixed(1));

function onLive(event, data) {
  if (event === "activity") {
    const li = document.createElement("li");
    li.className = "new";
    const fields = Object.entries(data.fields).map(([k, v]) => `${k}=${v}`).join(" ");
    li.textContent = `${data.time.slice(11, 19)} ${data.type} ${fields}`;
    li.dataset.type = data.type;
    $("live-activity").prepend(li);
    while ($("live-activity").children.length > 50) $("live-activity").lastChild.remove();
  } else if (event === "rate") {
    eps.t.push(data.time); eps.v.push(data.events_per_s);
    if (eps.t.length > EPS_POINTS) { eps.t.shift(); eps.v.shift(); }
    $("fig-eps").textContent = data.events_per_s.toFixed(1);
    if (!$("staff-content").hidden) {
      chart("chart-eps", [{ label: "events/s", stroke: "#7a5af8", width: 2, fill: "#7a5af822" }], [eps.t, eps.v], {
        // From our own data: uPlot pads a single point's range by 1000 days.
        scales: { x: { time: true, range: () => [eps.t[eps.t.length - 1] - EPS_POINTS, eps.t[eps.t.length - 1] + 1] } },
      });
    }
  } else if (event === "hello") {
    $("status").textContent = `signed in (${data.role}), live`;
    document.body.dataset.live = data.role;
  } else if (event === "end" && data.reason === "token_expired") {
    signOut("token expired: sign in again");
  }
}

async function live() {
  liveAbort = new AbortController();
  try {
    const response = await fetch("/api/analytics/live", {
      headers: { Authorization: `Bearer ${token()}` }, signal: liveAbort.signal,
    });
    if (response.status === 401) {
      signOut("token rejected: " + ((await response.json()).detail || "401"));
      return;
    }
    if (!response.ok) { // 429 / 503: too many feeds open; try again later
      const wait = Number(response.headers.get("Retry-After")) || 5;
      if (token()) setTimeout(live, wait * 1000);
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onLive(event, JSON.parse(data));
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
  }
  if (token()) setTimeout(live, 2000); // reconnect after a dropped stream
}

async function refresh() {
  try {
    const staff = await loadStaff();
    if (!staff) await loadLearner();
    document.body.dataset.ready = "1";
  } catch (err) {
    if (err.message !== "unauthorized") $("status").textContent = "refresh failed: " + err.message;
  }
}

async function start() {
  $("sign-in").hidden = true;
  $("views").hidden = false;
  $("sign-out").hidden = false;
  $("status").textContent = "signed in";
  await refresh();
  refreshTimer = setInterval(refresh, REFRESH_MS);
  live();
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  start();
});
$("sign-out").addEventListener("click", () => signOut());
// A sign-in link (`/dashboard#token=...`, as `demo --serve` prints it): the fragment never reaches
// a server; it is moved to session storage and taken out of the address bar.
const linked = new URLSearchParams(location.hash.slice(1)).get("token");
if (linked) {
  sessionStorage.setItem(TOKEN_KEY, linked);
  history.replaceState(null, "", location.pathname);
}
if (token()) start();
