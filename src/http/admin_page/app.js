// ccgate operator page. Plain script, no build step, no third-party code.
// The admin key lives in this tab's sessionStorage only and goes out as
// `Authorization: Bearer` on same-origin fetches; every value from the server is written
// with textContent (never parsed as HTML).
"use strict";
(() => {
  const KEY = "ccgate.adminKey";
  const REFRESH_MS = 5000;
  const COLORS = ["#3056d3", "#12805c", "#c2410c", "#7c3aed", "#0e7490", "#be185d", "#4d7c0f", "#a16207"];
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let rulesSha = null;
  const sections = {}; // which optional admin endpoints this gateway has (from /admin/overview)

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  function pill(text, cls) { return el("span", { class: "pill " + cls }, text); }
  function fmtNum(n) { return n === undefined || n === null ? "–" : Number(n).toLocaleString("en-US"); }
  function fmtTime(t) {
    if (!t) return "never";
    const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
    return isNaN(d) ? String(t) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }
  function fmtIn(seconds) {
    if (seconds <= 0) return "now";
    const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600),
      m = Math.floor((seconds % 3600) / 60), s = Math.floor(seconds % 60);
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${s}s`;
    return `${s}s`;
  }

  async function api(path, options) {
    const headers = { Authorization: "Bearer " + (sessionStorage.getItem(KEY) || "") };
    if (options && options.body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, { ...(options || {}), headers, cache: "no-store", credentials: "omit" });
    let body = null;
    try { body = await resp.json(); } catch (_) { body = null; }
    if (!resp.ok) {
      const err = new Error((body && body.error && body.error.message) || `HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  // ---- sign-in ---------------------------------------------------------------------------
  function showLogin(message) {
    stopRefresh();
    sessionStorage.removeItem(KEY);
    $("main").classList.add("hidden");
    $("logout").classList.add("hidden");
    $("gateway-pill").classList.add("hidden");
    $("login").classList.remove("hidden");
    $("login-error").textContent = message || "";
    $("key").value = "";
  }
  async function signIn() {
    try {
      const overview = await api("/admin/overview");
      $("login").classList.add("hidden");
      $("main").classList.remove("hidden");
      $("logout").classList.remove("hidden");
      renderOverview(overview);
      await refreshOptional();
      startRefresh();
    } catch (e) {
      showLogin(e.status === 401 ? "That key is not valid." :
        e.status === 403 ? "That key is not an admin key." : `Could not reach the gateway: ${e.message}`);
    }
  }
  function startRefresh() {
    stopRefresh();
    timer = setInterval(refresh, REFRESH_MS);
  }
  function stopRefresh() { if (timer) clearInterval(timer); timer = null; }
  async function refresh() {
    try {
      renderOverview(await api("/admin/overview"));
      await refreshOptional();
    } catch (e) {
      if (e.status === 401 || e.status === 403) showLogin("The key is no longer accepted.");
      else $("refreshed").textContent = `refresh failed: ${e.message}`;
    }
  }
  async function refreshOptional() {
    if (sections.usage) await refreshUsage();
    if (sections.failures) await refreshFailures();
    if (sections.keys) await refreshKeys();
  }

  // ---- overview --------------------------------------------------------------------------
  function renderOverview(o) {
    $("version").textContent = "v" + o.version;
    Object.assign(sections, o.sections || {});
    for (const name of ["usage", "failures", "keys"]) {
      const card = $(name + "-card");
      if (card) card.classList.toggle("hidden", !sections[name]);
    }
    const gp = $("gateway-pill");
    gp.classList.remove("hidden", "ok", "bad");
    gp.classList.add(o.gateway.ready ? "ok" : "bad");
    gp.textContent = o.gateway.ready ? "ready" : "not ready";
    const h = o.gateway.cli_health || {};
    const lp = h.last_probe;
    const facts = [
      ["Ready", o.gateway.ready ? "yes" : "no"],
      ["CLI health", h.ok ? "ok" : `failing: ${h.error_kind || "unknown"}`],
      ["Last probe", lp ? `${fmtTime(lp.at)} · ${lp.outcome}${lp.kind ? " · " + lp.kind : ""} · ${lp.duration_ms} ms` : "none yet"],
      ["Last ok", fmtTime(h.last_ok_at)],
      ["Message", h.error_message || "–"],
      ["Rules", `${o.rules.kinds.length} kinds · last reload ${o.rules.reload && o.rules.reload.last_reload_ok === false ? "failed" : "ok"}`],
    ];
    $("gateway").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const p = o.processes;
    const stats = [
      [p.serving, "serving"],
      [`${p.in_flight} / ${p.max_concurrent}`, "alive"],
      [`${p.queued} / ${p.queue_size}`, "queued"],
      [p.kept, "kept"],
      [p.held, "held"],
      [p.prewarmed, "pre-warmed"],
      [fmtNum(p.spawned_total), "spawned"],
    ];
    $("processes").replaceChildren(...stats.map(([n, l]) =>
      el("div", { class: "stat", "data-stat": l }, el("div", { class: "n" }, n), el("div", { class: "l" }, l))));
    renderAccounts(o.accounts, o.now);
    if (o.rules.sha256 !== rulesSha) {
      rulesSha = o.rules.sha256;
      renderRules(o.rules);
    }
    $("refreshed").textContent = "updated " + new Date().toLocaleTimeString("en-GB");
  }

  function windowsOf(a) {
    // `windows`: {five_hour: {utilization (percent), resets_at, resets_at_unix}, …,
    // extra_usage_in_use, observed_at} from the account's last answer, or null.
    const w = a.windows;
    if (!w) return [];
    return Object.entries(w).filter(([, v]) => v && typeof v === "object").map(([name, v]) => ({ name, ...v }));
  }
  function renderAccounts(accounts, now) {
    const rows = accounts.map((a) => {
      const state = a.ok ? pill("ok", "ok") :
        a.cooldown_until ? pill("cooling down", "warn") : pill(a.error_kind || "failing", "bad");
      const detail = a.cooldown_until ? el("div", { class: "small muted" }, `until ${fmtTime(a.cooldown_until)}`) :
        (!a.ok && a.error_message ? el("div", { class: "small muted" }, a.error_message) : null);
      const lp = a.last_probe;
      const probe = lp ? [el("div", {}, `${lp.outcome}${lp.kind ? " · " + lp.kind : ""}`),
        el("div", { class: "small muted" }, `${fmtTime(lp.at)} · ${lp.duration_ms} ms`)] : ["none yet"];
      const wins = windowsOf(a);
      const winCell = wins.length ? wins.map((w) => {
        const u = Math.max(0, Math.min(100, Number(w.utilization) || 0));
        const resets = w.resets_at_unix || (w.resets_at ? Date.parse(w.resets_at) / 1000 : null);
        const bar = el("div", { class: "bar" + (u >= 90 ? " high" : u >= 70 ? " mid" : "") }, el("span"));
        bar.firstChild.style.width = u + "%";
        return el("div", { class: "window", "data-window": w.name },
          el("div", { class: "label" }, el("span", {}, `${w.name} ${u.toFixed(0)}%`),
            el("span", { class: "muted" }, resets ? "resets in " + fmtIn(resets - now) : "")),
          bar);
      }) : [el("span", { class: "muted small" }, "none reported yet (a subscription reports them with each answer)")];
      if (a.windows && a.windows.observed_at) {
        // How fresh the numbers are: an answer's report, or the scheduled get_usage read.
        const from = a.windows.source ? ` · from ${String(a.windows.source).replace(/_/g, " ")}` : "";
        winCell.push(el("div", { class: "small muted", "data-windows-seen": "" }, `as of ${fmtTime(a.windows.observed_at)}${from}`));
      }
      if (a.windows && a.windows.extra_usage_in_use) winCell.push(pill("extra usage in use", "warn"));
      return el("tr", { "data-account": a.name }, el("td", {}, el("strong", {}, a.name)),
        el("td", {}, state, detail), el("td", {}, probe), el("td", {}, winCell));
    });
    $("accounts").tBodies[0].replaceChildren(...rows);
  }

  function matchSummary(m) {
    return Object.entries(m || {}).flatMap(([k, vs]) => vs.map((v) => el("span", { class: "tag" }, `${k}: ${v}`)));
  }
  function renderRules(r) {
    $("rules-sha").textContent = r.sha256.slice(0, 12);
    const rows = r.kinds.map((k, i) => {
      const status = [k.status, k.openai_status && `openai ${k.openai_status}`,
        k.anthropic_status && `anthropic ${k.anthropic_status}`].filter(Boolean).join(" · ");
      const flags = [k.unhealthy && "unhealthy", k.account_scoped && "account-scoped",
        k.cooldown !== null && k.cooldown !== undefined && `cooldown ${k.cooldown}`, k.fallback && "fallback"].filter(Boolean);
      return el("tr", { "data-kind": k.name }, el("td", { class: "num" }, i + 1),
        el("td", {}, el("strong", { class: "mono" }, k.name), k.description ? el("div", { class: "small muted" }, k.description) : null),
        el("td", { class: "mono" }, status), el("td", {}, flags.map((f) => el("span", { class: "tag" }, f))),
        el("td", {}, k.fallback ? el("span", { class: "muted" }, "anything else") : matchSummary(k.match)));
    });
    $("rules").tBodies[0].replaceChildren(...rows);
  }

  // ---- charts ----------------------------------------------------------------------------
  // Stacked bars: buckets along x, one series per group.
  function barChart(target, buckets, series, label) {
    const W = 900, H = 220, L = 44, B = 26, T = 8;
    const totals = buckets.map((_, i) => series.reduce((s, x) => s + (x.values[i] || 0), 0));
    // Whole-number ticks: four steps of a whole size that covers the tallest bar.
    const tick = Math.max(1, Math.ceil(Math.max(...totals, 0) / 4));
    const max = tick * 4;
    const bw = (W - L - 8) / Math.max(1, buckets.length);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label, preserveAspectRatio: "none" });
    for (let g = 0; g <= 4; g++) {
      const y = T + (H - T - B) * (1 - g / 4);
      chart.append(svg("line", { x1: L, x2: W, y1: y, y2: y, stroke: "#e3e6ec" }));
      chart.append(svg("text", { x: L - 6, y: y + 3, "text-anchor": "end" }, tick * g));
    }
    buckets.forEach((b, i) => {
      let y = H - B;
      series.forEach((s, si) => {
        const v = s.values[i] || 0;
        if (!v) return;
        const h = (H - T - B) * v / max;
        y -= h;
        const r = svg("rect", { x: L + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, fill: COLORS[si % COLORS.length],
          "data-series": s.name, "data-bucket": b, "data-value": v });
        r.append(svg("title", {}, `${s.name} · ${b}: ${v}`));
        chart.append(r);
      });
      const every = Math.ceil(buckets.length / 8);
      // Labels stay inside the chart: the last ones end at its right edge.
      if (i % every === 0) chart.append(svg("text", { x: Math.min(L + i * bw + bw / 2, W - 34), y: H - 8, "text-anchor": "middle" }, shortBucket(b)));
    });
    const legend = el("div", { class: "legend" }, series.map((s, si) => {
      const sw = el("i");
      sw.style.background = COLORS[si % COLORS.length];
      return el("span", {}, sw, s.name);
    }));
    target.replaceChildren(chart, legend);
  }
  function shortBucket(b) {
    const s = String(b);
    return s.length >= 16 ? s.slice(5, s.includes("T") ? 16 : 10).replace("T", " ") : s;
  }
  // Rows [{bucket, group, value}] → every bucket of the range (empty ones too, so the
  // time axis is even) and one series per group. Buckets are keyed by their start time.
  function pivot(rows, bucket) {
    const step = bucket === "day" ? 86400 : 3600;
    const { hours } = range();
    const now = Math.floor(Date.now() / 1000);
    const last = now - (now % step);
    const first = last - Math.ceil((hours * 3600) / step) * step;
    const starts = [];
    for (let s = first; s <= last; s += step) starts.push(s);
    const at = (b) => Math.floor(Date.parse(b) / 1000);
    const groups = [...new Set(rows.map((r) => r.group))].sort();
    const series = groups.map((g) => ({
      name: g,
      values: starts.map((s) => rows.filter((r) => r.group === g && at(r.bucket) === s).reduce((sum, r) => sum + r.value, 0)),
    }));
    const labels = starts.map((s) => new Date(s * 1000).toISOString().replace(".000Z", "Z"));
    return { buckets: labels, series };
  }

  // ---- usage, failures, keys (sections the overview lists) -------------------------------
  function range() {
    const hours = Number(($("usage-range") || {}).value || 24);
    const to = new Date();
    const from = new Date(to.getTime() - hours * 3600 * 1000);
    return { from: from.toISOString(), to: to.toISOString(), hours };
  }
  async function refreshUsage() {
    const dim = $("usage-by").value;
    const bucket = $("usage-bucket").value;
    const { from, to } = range();
    const q = (g) => `/admin/usage?group_by=${g}&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`;
    const [series, totals] = await Promise.all([api(q(`${dim},${bucket}`)), api(q(dim))]);
    const rows = series.rows.map((r) => ({ bucket: r[bucket], group: String(r[dim] ?? "–"), value: r.requests }));
    const { buckets, series: s } = pivot(rows, bucket);
    barChart($("usage-chart"), buckets, s, `requests by ${dim} per ${bucket}`);
    $("usage-table").tBodies[0].replaceChildren(...totals.rows.map((r) => el("tr", { "data-group": r[dim] ?? "–" },
      el("td", {}, String(r[dim] ?? "–")), el("td", { class: "num", "data-col": "requests" }, fmtNum(r.requests)),
      el("td", { class: "num" }, fmtNum(r.input_tokens)), el("td", { class: "num" }, fmtNum(r.output_tokens)),
      el("td", { class: "num" }, fmtNum(r.cache_read_tokens)), el("td", { class: "num" }, fmtNum(r.errors)))));
  }
  async function refreshFailures() {
    const bucket = $("usage-bucket").value;
    const { from, to } = range();
    const f = await api(`/admin/failures?bucket=${bucket}&from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
    const { buckets, series } = pivot(f.by_kind.map((r) => ({ bucket: r.bucket, group: r.kind, value: r.count })), bucket);
    barChart($("failures-chart"), buckets, series, `failures by kind per ${bucket}`);
    $("failures-table").tBodies[0].replaceChildren(...f.latest.map((r) => el("tr", {},
      // A row may count several alike failures of one second; the id is the first's.
      el("td", {}, fmtTime(r.time)), el("td", { class: "mono small" }, r.request_id || "–",
        r.requests > 1 ? el("span", { class: "muted", "data-requests": r.requests }, ` and ${fmtNum(r.requests - 1)} alike`) : null),
      el("td", {}, r.key || "–"),
      el("td", { class: "mono" }, r.kind), el("td", { class: "num" }, r.status))));
  }
  // Which `usage` counter of GET /admin/keys each limit is measured against.
  const USAGE_OF_LIMIT = {
    concurrent: "in_flight", requests_per_minute: "requests_this_minute",
    tokens_per_minute: "tokens_this_minute", tokens_per_day: "tokens_today",
    window_share: "window_share",
  };
  // A limit and its use as text: `window_share` is a fraction (0-1) shown in percent.
  function limitText(name, used, limit) {
    const f = name === "window_share" ? (x) => `${(Number(x) * 100).toFixed(1).replace(/\.0$/, "")}%` : fmtNum;
    return used !== undefined && used !== null ? `${name}: ${f(used)} / ${f(limit)}` : `${name}: ${f(limit)}`;
  }
  async function refreshKeys() {
    const k = await api("/admin/keys");
    $("keys-table").tBodies[0].replaceChildren(...k.keys.map((key) => {
      const limits = Object.entries(key.limits || {}).map(([n, v]) => {
        const used = key.usage && key.usage[USAGE_OF_LIMIT[n]];
        return el("span", { class: "tag", "data-limit": n }, limitText(n, used, v));
      });
      return el("tr", { "data-key": key.name }, el("td", {}, el("strong", {}, key.name)), el("td", {}, key.role),
        el("td", {}, limits.length ? limits : el("span", { class: "muted" }, "none")),
        el("td", {}, key.expires ? fmtTime(key.expires) : "–"));
    }));
  }

  // ---- classify playground ---------------------------------------------------------------
  function classifyInput() {
    const capture = $("cl-capture").value.trim();
    if (capture) return { input: capture };
    const facts = {};
    const stderr = $("cl-stderr").value;
    if (stderr.trim()) facts.stderr_tail = stderr;
    const exit = $("cl-exit").value;
    if (exit !== "") facts.exit_code = Number(exit);
    const status = $("cl-api-status").value;
    if (status !== "") { facts.api_error_status = Number(status); facts.result_seen = true; facts.result_is_error = true; }
    const type = $("cl-api-type").value.trim();
    if (type) { facts.api_error_type = type; facts.result_seen = true; facts.result_is_error = true; }
    const text = $("cl-api-text").value.trim();
    if (text) { facts.result_text = text; facts.result_seen = true; facts.result_is_error = true; }
    return { facts };
  }
  async function classify(ev) {
    ev.preventDefault();
    $("cl-error").textContent = "";
    try {
      const r = await api("/admin/classify", { method: "POST", body: JSON.stringify(classifyInput()) });
      $("cl-result").classList.remove("hidden");
      $("cl-kind").textContent = r.openai.kind;
      $("cl-matched").textContent = r.openai.matched ? `matched ${r.openai.matched}` : "";
      for (const f of ["openai", "anthropic"]) {
        $(`cl-${f}-status`).textContent = r[f].status !== undefined ? r[f].status : "success";
        $(`cl-${f}-body`).textContent = JSON.stringify(r[f].body !== undefined ? r[f].body : r[f], null, 2);
      }
    } catch (e) {
      if (e.status === 401 || e.status === 403) showLogin("The key is no longer accepted.");
      else $("cl-error").textContent = e.message;
    }
  }

  // ---- wiring ----------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("key").value);
      $("key").value = "";
      signIn();
    });
    $("logout").addEventListener("click", () => showLogin(""));
    $("classify-form").addEventListener("submit", classify);
    for (const id of ["usage-by", "usage-bucket", "usage-range"]) {
      const c = $(id);
      if (c) c.addEventListener("change", () => refreshOptional().catch((e) => { $("refreshed").textContent = e.message; }));
    }
    if (sessionStorage.getItem(KEY)) signIn();
  });
})();
