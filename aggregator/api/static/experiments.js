// StudyIn analytics dashboard: the experiments view (staff). Reads GET /api/analytics/experiments and
// /experiments/{key}/analysis; draws the per-variant table, each treatment's relative lift with its interval
// (uPlot, vendored), the sample-ratio warning (prominent: it makes every result untrustworthy) and the sample
// size so far against the size needed. Variants under k learners arrive without numbers and show "suppressed".
"use strict";

(() => {
  const TOKEN_KEY = "studyin.analytics.token";
  const REFRESH_MS = 10000;
  const el = (id) => document.getElementById(id);
  let liftChart = null;
  let loading = false;

  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %");
  const num = (v, digits = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  async function get(path) {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` } });
    return response.ok ? response.json() : null;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function renderTable(analysis) {
    const thead = el("exp-variants").querySelector("thead tr");
    const tbody = el("exp-variants").querySelector("tbody");
    thead.replaceChildren();
    for (const name of ["variant", "learners", ...analysis.metrics.map((m) => m.label)]) {
      const th = document.createElement("th"); th.textContent = name; thead.appendChild(th);
    }
    tbody.replaceChildren(...analysis.variants.map((v, i) => {
      const tr = document.createElement("tr");
      tr.dataset.variant = v.variant;
      cell(tr, v.variant + (v.control ? " (control)" : ""));
      cell(tr, v.learners === null ? "suppressed" : String(v.learners), v.learners === null ? "suppressed" : "");
      for (const metric of analysis.metrics) {
        const row = metric.variants[i];
        if (row.status === "suppressed") cell(tr, "suppressed", "suppressed");
        else cell(tr, metric.kind === "rate" ? pct(row.mean) : num(row.mean));
      }
      return tr;
    }));
  }

  function renderLift(analysis) {
    const points = [];
    for (const metric of analysis.metrics) {
      for (const c of metric.comparisons) {
        const cmp = c.comparison;
        if (cmp.relative_lift === null || cmp.relative_lift === undefined) continue;
        const iv = cmp.relative_lift_interval;
        points.push({ label: `${metric.metric} ${c.variant}`, lift: 100 * cmp.relative_lift,
          low: iv ? 100 * iv.low : null, high: iv ? 100 * iv.high : null });
      }
    }
    const chartEl = el("chart-lift");
    chartEl.dataset.points = points.length;
    const xs = points.map((_, i) => i);
    const data = [xs, points.map((p) => p.lift), points.map((p) => p.low), points.map((p) => p.high)];
    const dot = { show: true, size: 9 };
    const opts = {
      width: Math.max(chartEl.clientWidth, 300), height: 220, legend: { show: true },
      scales: { x: { time: false, range: () => [-0.5, Math.max(points.length - 0.5, 0.5)] } },
      series: [{}, { label: "lift %", stroke: "#2f6fed", width: 0, points: dot },
        { label: "interval low %", stroke: "#98a2b3", width: 0, points: { show: true, size: 6 } },
        { label: "interval high %", stroke: "#98a2b3", width: 0, points: { show: true, size: 6 } }],
      axes: [{ splits: () => xs, values: (u, s) => s.map((i) => (points[i] ? points[i].label : "")), size: 60 },
        { label: "relative lift %" }],
    };
    if (liftChart) liftChart.destroy();
    liftChart = new uPlot(opts, data, chartEl);
  }

  function renderSampleSize(analysis) {
    const primary = analysis.metrics.find((m) => m.primary);
    const items = (primary ? primary.comparisons : []).map((c) => {
      const s = c.sample_size || {};
      const li = document.createElement("li");
      li.dataset.variant = c.variant;
      li.textContent = s.status === "ok"
        ? `${c.variant}: ${s.current_treatment} of ${s.required_treatment} learners (control ${s.current_control} of ` +
          `${s.required_control}), ${pct(s.progress)} of the planned size`
        : `${c.variant}: ${s.status || "–"} (${s.reason || ""})`;
      return li;
    });
    el("exp-sample").replaceChildren(...items);
  }

  function render(analysis) {
    const srm = analysis.sample_ratio;
    el("srm-warning").hidden = srm.mismatch !== true;
    el("srm-warning").textContent = srm.mismatch === true
      ? `Sample ratio mismatch (p = ${srm.p_value === null ? "hidden" : srm.p_value.toExponential(1)}): the split ` +
        "between variants differs from the weights beyond chance. Every result below is untrustworthy."
      : "";
    el("exp-suppressed").hidden = !analysis.suppressed;
    el("exp-title").textContent = `${analysis.key} v${analysis.version} (${analysis.status})`;
    renderTable(analysis);
    renderLift(analysis);
    renderSampleSize(analysis);
    el("experiments").dataset.ready = analysis.key;
  }

  async function load() {
    if (loading || el("staff-content").hidden || !sessionStorage.getItem(TOKEN_KEY)) return;
    loading = true;
    try {
      const listing = await get("/api/analytics/experiments");
      if (!listing) return;
      const select = el("exp-select");
      const chosen = select.value;
      select.replaceChildren(...listing.experiments.map((e) => {
        const option = document.createElement("option");
        option.value = e.key; option.textContent = `${e.key} (v${e.version}, ${e.status})`;
        return option;
      }));
      el("experiments").hidden = listing.experiments.length === 0;
      if (!listing.experiments.length) return;
      if (chosen && listing.experiments.some((e) => e.key === chosen)) select.value = chosen;
      const analysis = await get(`/api/analytics/experiments/${encodeURIComponent(select.value)}/analysis`);
      if (analysis) render(analysis);
    } finally {
      loading = false;
    }
  }

  el("exp-select").addEventListener("change", load);
  new MutationObserver(load).observe(el("staff-content"), { attributes: true, attributeFilter: ["hidden"] });
  setInterval(load, REFRESH_MS);
})();
