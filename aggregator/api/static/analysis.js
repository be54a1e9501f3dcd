// Staff dashboard: a learning funnel (uPlot bars) and a weekly retention triangle (table), from
// POST /api/analytics/analysis/funnels and /retention. The funnel is the first saved funnel (a pathway
// staff saved, GET .../saved-funnels/{name}) when there is one, else the generic learning funnel of the
// last 30 days. Suppressed cells (null) are drawn as hidden, never as numbers. Reloaded at most once a
// minute (the store refreshes on its own).
"use strict";

const ANALYSIS_EVERY_MS = 60000;
const PATHWAY = ["session_start", "material_view", "material_progress", "material_complete", "xp_awarded"];
let analysisAt = 0;

async function get(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function stepLabel(step) {
  const values = (step.filters || []).flatMap((f) => f.values);
  return values.length ? `${step.event.replace(/^material_/, "")} ${values.join("|")}` : step.event;
}

// {title, labels, result}: the first saved funnel, or the generic one over [start, end).
async function loadFunnel(start, end) {
  const saved = await get("/api/analytics/analysis/saved-funnels");
  if (saved.length) {
    const answer = await get(`/api/analytics/analysis/saved-funnels/${encodeURIComponent(saved[0].name)}`);
    const d = answer.definition;
    const days = Math.round(d.window_s / 86400);
    return { title: `Saved funnel "${answer.name}" (${d.start.slice(0, 10)} to ${d.end.slice(0, 10)}, ${days}-day window)`,
      labels: d.steps.map(stepLabel), result: answer.result };
  }
  const result = await post("/api/analytics/analysis/funnels", {
    steps: PATHWAY.map((event) => ({ event })), start: start.toISOString(), end: end.toISOString(),
  });
  return { title: null, labels: PATHWAY, result };
}

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { Authorization: `Bearer ${token()}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function mondayWeeksAgo(weeks) {
  const d = new Date();
  d.setUTCHours(0, 0, 0, 0);
  d.setUTCDate(d.getUTCDate() - ((d.getUTCDay() + 6) % 7) - 7 * weeks);
  return d.toISOString().slice(0, 10);
}

function renderFunnel({ title, labels, result }) {
  if (title) $("funnel-title").textContent = title;
  const steps = result.groups.length ? result.groups[0].steps : [];
  const xs = steps.map((_, i) => i);
  const shown = steps.map((s) => s.learners); // null (hidden): no bar, never a number
  chart("chart-funnel", [{ label: "learners", stroke: "#2f6fed", fill: "#2f6fed88", paths: bars() }], [xs, shown], {
    scales: { x: { time: false, range: [-0.5, steps.length - 0.5] }, y: { range: (u, lo, hi) => [0, Math.max(hi, 1)] } },
    axes: [{ splits: () => xs, values: (u, splits) => splits.map((i) => (steps[i] ? labels[i] : "")), size: 60 }, { label: "learners" }],
  });
  const el = $("chart-funnel");
  el.dataset.steps = steps.length;
  el.dataset.learners = JSON.stringify(steps.map((s) => s.learners));
  el.dataset.suppressed = steps.filter((s) => s.suppressed).length;
  $("funnel-note").textContent = steps.map((s, i) => {
    if (s.suppressed) return `${labels[i]}: hidden (fewer than ${result.min_group_size} learners, or fewer than ${result.min_group_size} dropping off)`;
    const conv = s.conversion_from_start === null ? "" : ` (${(100 * s.conversion_from_start).toFixed(1)} %)`;
    return `${labels[i]}: ${s.learners}${conv}`;
  }).join(" · ");
}

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function renderRetention(result) {
  const table = $("retention");
  const periods = result.cohorts.length ? result.cohorts[0].cells.length : 0;
  const head = document.createElement("tr");
  head.append(cell("th", "cohort (week of)"), cell("th", "learners"));
  for (let n = 1; n < periods; n++) head.append(cell("th", `+${n}`));
  table.tHead.replaceChildren(head);
  const rows = result.cohorts.map((c, i) => {
    const tr = document.createElement("tr");
    tr.dataset.cohort = c.cohort;
    tr.append(cell("td", c.cohort), cell("td", c.size === null ? "·" : String(c.size), c.size === null ? "hidden" : ""));
    // A triangle: cohort i has result.cohorts.length - 1 - i later weeks so far.
    for (let n = 1; n < periods && n < result.cohorts.length - i; n++) {
      const x = c.cells[n];
      if (x.suppressed) tr.append(cell("td", "·", "hidden"));
      else if (x.rate === null) tr.append(cell("td", "–")); // an empty cohort has no rate
      else tr.append(cell("td", `${(100 * x.rate).toFixed(0)} %`, "r" + Math.min(4, Math.floor(x.rate * 5))));
    }
    return tr;
  });
  table.tBodies[0].replaceChildren(...rows);
  table.dataset.cohorts = result.cohorts.length;
  table.dataset.hidden = table.querySelectorAll("td.hidden").length;
  $("retention-k").textContent = result.min_group_size;
}

window.loadAnalysis = async function loadAnalysis() {
  if (Date.now() - analysisAt < ANALYSIS_EVERY_MS) return;
  analysisAt = Date.now();
  const end = new Date();
  const start = new Date(end.getTime() - 30 * 86400000);
  const weeks = 8;
  try {
    const [funnel, retention] = await Promise.all([
      loadFunnel(start, end),
      post("/api/analytics/analysis/retention", { start: mondayWeeksAgo(weeks - 1), cohorts: weeks, periods: weeks - 1, period: "week" }),
    ]);
    renderFunnel(funnel);
    renderRetention(retention);
    document.body.dataset.analysis = "1";
  } catch (err) {
    analysisAt = 0;
    $("funnel-note").textContent = "funnel and retention unavailable: " + err.message;
  }
};
