// connscope dashboard: plain JS, hand-made SVG charts, no dependencies.
// It reads the classifier's API on the same origin:
//   /radar/tcp_resets_timeouts/{summary,timeseries_groups}  (Radar's shapes)
//   /api/v1/{tags,signatures}/summary, /api/v1/anomalies, /api/v1/dimensions
// Filters live in the page's query string, so a view can be linked.
// For tests: <body data-state="loading|ready" data-generation="N"> changes
// when every panel of a refresh has been drawn.
"use strict";

(function () {
  const SVGNS = "http://www.w3.org/2000/svg"; // XML namespace name, not fetched

  // Radar's stage names (the API's strings), labels and what they mean
  // (method.md §4 and §8).
  const STAGES = [
    { key: "post_syn", label: "Post SYN", what: "Reset or silence right after the SYN. Mostly scanners and spoofed SYN floods; their geolocation is unreliable." },
    { key: "post_ack", label: "Post ACK", what: "Handshake done, then a reset or silence before any data: middlebox tampering shows here." },
    { key: "post_psh", label: "Post PSH", what: "One data packet (ClientHello, HTTP request), then a reset or silence: drops or injected RSTs after the SNI or Host." },
    { key: "later_in_flow", label: "Later in flow", what: "Reset after two or more data packets: mostly applications closing (browser tabs)." },
    { key: "no_match", label: "No match", what: "Every other connection: FIN closes, connections that reached the cap, later timeouts." },
  ];
  const STAGE = Object.fromEntries(STAGES.map((s) => [s.key, s]));

  // The tag hierarchy of method.md §5, for ordering and indentation.
  const TAGS = [
    ["timeout", 0, "No reset: the connection went silent."],
    ["reset", 0, "The connection ended in one or more RSTs."],
    ["fin", 1, "At least one FIN as well as the RST(s)."],
    ["single_rst", 1, "Exactly one RST (ACK clear)."],
    ["multiple_rsts", 1, "Two or more RSTs (ACK clear)."],
    ["acknumsame", 2, "RST acknowledgement numbers all equal and non-zero."],
    ["acknumsame0", 2, "RST acknowledgement numbers all zero."],
    ["acknumdiff", 2, "RST acknowledgement numbers differ, none zero."],
    ["acknumdiff0", 2, "RST acknowledgement numbers differ, one or more zero."],
    ["single_rstack", 1, "Exactly one RST+ACK."],
    ["multiple_rstacks", 1, "Two or more RST+ACKs."],
    ["rst_and_rstacks", 1, "Both RSTs and RST+ACKs."],
    ["zmap", 0, "SYN looks like ZMap's (IP ID 54321, window 65535)."],
    ["masscan", 0, "SYN looks like masscan's (window 1024, IP ID from address, port and sequence)."],
    ["nmap", 0, "SYN looks like an nmap -sS probe (window 1024, MSS only, DF clear)."],
    ["ttl_jump", 0, "An RST's TTL differs from the client's packets: possibly injected."],
    ["ipid_jump", 0, "An RST's IP ID jumps from the client's packets: possibly injected."],
  ];
  const TAG = Object.fromEntries(TAGS.map((t, i) => [t[0], { order: i, depth: t[1], what: t[2] }]));
  const SCANNER_TAGS = new Set(["zmap", "masscan", "nmap"]);
  const EVIDENCE_TAGS = new Set(["ttl_jump", "ipid_jump"]);

  const FILTERS = ["dateRange", "aggInterval", "location", "asn", "node", "port", "policy", "ipVersion"];
  const DEFAULTS = { dateRange: "7d", aggInterval: "1h" };

  const $ = (sel, root) => (root || document).querySelector(sel);
  const form = $("#filters");
  const state = {
    mode: "stacked",
    hidden: new Set(),
    generation: 0,
    inflight: 0,
    series: null,
    summary: null,
    timer: null,
  };

  // ---------- small DOM helpers ----------
  function h(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const k of kids.flat()) if (k != null) e.append(k.nodeType ? k : String(k));
    return e;
  }
  function s(tag, attrs, ...kids) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    for (const k of kids.flat()) if (k != null) e.append(k.nodeType ? k : String(k));
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === "class") e.setAttribute("class", v);
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
  }
  const num = (v) => {
    const n = typeof v === "number" ? v : parseFloat(v);
    return Number.isFinite(n) ? n : 0;
  };
  const fmtPct = (v) => {
    const n = num(v);
    if (n === 0) return "0";
    if (n < 0.1) return n.toFixed(2);
    if (n < 10) return n.toFixed(1);
    return n.toFixed(1);
  };
  const fmtInt = (n) => Number(n || 0).toLocaleString("en-US");

  let regionNames = null;
  try { regionNames = new Intl.DisplayNames(["en"], { type: "region" }); } catch (_) { /* old browser */ }
  function countryName(cc) {
    if (!cc) return "unknown";
    try { return regionNames ? regionNames.of(cc) : cc; } catch (_) { return cc; }
  }

  // ---------- filters <-> query string ----------
  function readFilters() {
    const f = {};
    for (const name of FILTERS) {
      const v = form.elements[name].value;
      if (v) f[name] = v;
    }
    for (const name of ["location", "asn"]) {
      if (f[name] && form.elements[name + "-exclude"].checked) f[name] = "-" + f[name];
    }
    return f;
  }
  function queryOf(f, extra) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) q.set(k, v);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, v);
    return q.toString();
  }
  function ensureOption(select, value, label) {
    if (!value) return;
    if (![...select.options].some((o) => o.value === value)) select.append(h("option", { value, text: label || value }));
  }
  function applyFilters(params) {
    for (const name of FILTERS) {
      const el = form.elements[name];
      let v = params.get(name) || DEFAULTS[name] || "";
      if (name === "location" || name === "asn") {
        const excl = v.startsWith("-");
        form.elements[name + "-exclude"].checked = excl;
        if (excl) v = v.slice(1);
      }
      ensureOption(el, v);
      el.value = v;
    }
    markActive();
  }
  function markActive() {
    for (const name of FILTERS) {
      const el = form.elements[name];
      el.classList.toggle("active", !!el.value && !(name in DEFAULTS));
    }
  }
  function syncURL(f) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (DEFAULTS[k] !== v) q.set(k, v);
    const qs = q.toString();
    history.replaceState(null, "", location.pathname + (qs ? "?" + qs : ""));
  }

  // ---------- fetching ----------
  class RequestError extends Error {
    constructor(url, message) { super(message); this.url = url; }
  }
  async function getJSON(path) {
    let res;
    try {
      res = await fetch(path, { headers: { Accept: "application/json" } });
    } catch (e) {
      throw new RequestError(path, "network error: " + e.message);
    }
    const text = await res.text();
    let body = null;
    try { body = JSON.parse(text); } catch (_) { /* not JSON */ }
    if (!res.ok || !body || body.success === false) {
      let msg = "HTTP " + res.status + (res.statusText ? " " + res.statusText : "");
      const errs = body && Array.isArray(body.errors) ? body.errors : [];
      const detail = errs.map((e) => (typeof e === "string" ? e : e && e.message)).filter(Boolean).join("; ");
      if (detail) msg += ": " + detail;
      else if (!body && text) msg += ": " + text.slice(0, 200).trim();
      else if (res.ok && !body) msg += ": response is not JSON";
      throw new RequestError(path, msg);
    }
    if (!body.result || typeof body.result !== "object") throw new RequestError(path, "response has no result object");
    return body.result;
  }

  function showErrors(errs) {
    const box = $("#errors");
    box.textContent = "";
    if (!errs.length) { box.hidden = true; return; }
    box.append(h("strong", { text: errs.length === 1 ? "A request to the classifier failed; its panel may be stale or empty." : errs.length + " requests to the classifier failed; their panels may be stale or empty." }));
    box.append(h("ul", null, errs.map((e) => h("li", null, h("code", { text: "GET " + e.url }), " — " + e.message))));
    box.hidden = false;
  }

  // ---------- dimensions ----------
  async function loadDimensions(errors) {
    let d;
    try {
      d = await getJSON("/api/v1/dimensions");
    } catch (e) {
      errors.push(e);
      return false;
    }
    const fill = (name, values, label) => {
      const el = form.elements[name];
      const cur = el.value;
      const vals = (values || []).map(String);
      if (cur) ensureOption(el, cur);
      const existing = new Set([...el.options].map((o) => o.value));
      for (const v of vals) if (!existing.has(v)) el.append(h("option", { value: v, text: label ? label(v) : v }));
      // Re-label what was created from the query string.
      for (const o of el.options) if (o.value && label) o.textContent = label(o.value);
      el.value = cur;
    };
    fill("location", (d.countries || []).slice().sort((a, b) => countryName(a).localeCompare(countryName(b))), (cc) => cc + " · " + countryName(cc));
    fill("asn", (d.asns || []).slice().sort((a, b) => a - b), (a) => "AS" + a);
    fill("node", (d.nodes || []).slice().sort());
    fill("port", (d.ports || []).slice().sort((a, b) => a - b));
    fill("policy", (d.policies || []).slice().sort());
    return true;
  }

  // ---------- refresh ----------
  async function refresh() {
    const gen = ++state.generation;
    document.body.dataset.state = "loading";
    const f = readFilters();
    syncURL(f);
    markActive();
    $("#csv").href = "/radar/tcp_resets_timeouts/timeseries_groups?" + queryOf(f, { format: "CSV" });
    const errors = [];
    // The filter lists: loaded once, retried on every refresh until they load.
    if (!state.dimsLoaded) state.dimsLoaded = await loadDimensions(errors);
    const req = (path, extra) => path + "?" + queryOf(f, extra);
    const guard = (p) => p.catch((e) => { errors.push(e instanceof RequestError ? e : new RequestError("?", String(e))); return null; });

    const [summary, series, tags, sigs, anomalies, tagSeries, sigSeries] = await Promise.all([
      guard(getJSON(req("/radar/tcp_resets_timeouts/summary"))),
      guard(getJSON(req("/radar/tcp_resets_timeouts/timeseries_groups"))),
      guard(getJSON(req("/api/v1/tags/summary"))),
      guard(getJSON(req("/api/v1/signatures/summary"))),
      guard(getJSON(req("/api/v1/anomalies", { limit: "100" }))),
      guard(getJSON(req("/api/v1/tags/timeseries_groups"))),
      guard(getJSON(req("/api/v1/signatures/timeseries_groups"))),
    ]);
    if (gen !== state.generation) return; // a newer refresh superseded this one

    state.summary = summary ? (summary.summary_0 || {}) : null;
    state.series = series ? (series.serie_0 || { timestamps: [] }) : null;
    const meta = (series && series.meta) || (summary && summary.meta) || {};
    renderRange(meta, f);
    renderCards();
    renderStageChart();
    renderTags(tags, tagSeries);
    renderSignatures(sigs, sigSeries);
    renderAnomalies(anomalies);
    showErrors(errors);
    $("#updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    document.body.dataset.state = "ready";
    document.body.dataset.errors = String(errors.length);
    document.body.dataset.generation = String(gen);
  }

  function renderRange(meta, f) {
    const dr = Array.isArray(meta.dateRange) && meta.dateRange[0];
    const interval = (meta.aggInterval || f.aggInterval || "").toString();
    let txt;
    if (dr && dr.startTime && dr.endTime) {
      txt = fmtTime(dr.startTime, "1h") + " – " + fmtTime(dr.endTime, "1h") + " UTC";
    } else {
      txt = form.elements.dateRange.selectedOptions[0].textContent;
    }
    if (interval) txt += " · " + interval + " buckets";
    $("#range-label").textContent = txt;
  }

  // ---------- stage cards ----------
  function renderCards() {
    const box = $("#stage-cards");
    box.textContent = "";
    const sum = state.summary;
    const has = sum && STAGES.some((st) => sum[st.key] != null);
    const early = has ? STAGES.filter((st) => st.key !== "no_match").reduce((a, st) => a + num(sum[st.key]), 0) : null;
    box.append(h("div", { class: "card total", "data-stage": "total" },
      h("div", { class: "name", text: "Ended early" }),
      h("div", { class: "value" }, has ? fmtPct(early) : "—", has ? h("span", { class: "unit", text: "%" }) : null),
      h("div", { class: "what", text: "Share of classified connections that reset or timed out before completing (all stages but No match)." })));
    for (const st of STAGES) {
      const v = has ? sum[st.key] : null;
      const card = h("div", {
        class: "card c-" + st.key + (state.hidden.has(st.key) ? " off" : ""),
        "data-stage": st.key, role: "button", tabindex: "0",
        title: "Click to " + (state.hidden.has(st.key) ? "show" : "hide") + " " + st.label + " in the chart",
        onclick: () => toggleStage(st.key),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggleStage(st.key); } },
      },
      h("div", { class: "name", text: st.label }),
      h("div", { class: "value" }, v != null ? fmtPct(v) : "—", v != null ? h("span", { class: "unit", text: "%" }) : null),
      h("div", { class: "what", text: st.what }));
      box.append(card);
    }
  }
  function toggleStage(key) {
    if (state.hidden.has(key)) state.hidden.delete(key);
    else if (state.hidden.size < STAGES.length - 1) state.hidden.add(key);
    renderCards();
    renderStageChart();
  }

  // ---------- time formatting ----------
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  function fmtTime(t, interval) {
    const d = t instanceof Date ? t : new Date(t);
    if (isNaN(d)) return String(t);
    const day = MONTHS[d.getUTCMonth()] + " " + d.getUTCDate();
    if (interval === "1d" || interval === "1w") return day;
    return day + " " + String(d.getUTCHours()).padStart(2, "0") + ":" + String(d.getUTCMinutes()).padStart(2, "0");
  }
  function timeTicks(t0, t1, maxTicks) {
    const HOUR = 3600e3, DAY = 24 * HOUR;
    const steps = [HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY];
    const span = Math.max(t1 - t0, 1);
    const step = steps.find((st) => span / st <= maxTicks) || steps[steps.length - 1];
    const out = [];
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
    return { ticks: out, step };
  }
  function tickLabel(t, step) {
    const d = new Date(t);
    const hh = String(d.getUTCHours()).padStart(2, "0") + ":00";
    if (step >= 24 * 3600e3) return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate();
    if (d.getUTCHours() === 0) return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate();
    return hh;
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  // ---------- the stage chart ----------
  function renderStageChart() {
    const box = $("#stage-chart");
    box.textContent = "";
    const ser = state.series;
    const ts = ser && Array.isArray(ser.timestamps) ? ser.timestamps : [];
    if (!ser) {
      box.append(h("div", { class: "empty", text: "The stage time series could not be loaded (see the error above)." }));
      return;
    }
    if (!ts.length) {
      box.append(h("div", { class: "empty", text: "No classified connections match these filters in this date range." }));
      return;
    }
    const interval = form.elements.aggInterval.value;
    const times = ts.map((t) => Date.parse(t));
    const early = state.mode === "early";
    const visible = STAGES.filter((st) => !state.hidden.has(st.key) && !(early && st.key === "no_match"));
    const vals = {};
    for (const st of STAGES) vals[st.key] = times.map((_, i) => num((ser[st.key] || [])[i]));

    const W = Math.max(box.clientWidth || 900, 320), H = 300;
    const m = { l: 46, r: 14, t: 10, b: 28 };
    const iw = W - m.l - m.r, ih = H - m.t - m.b;
    const stacked = state.mode !== "lines";
    let yMax;
    if (stacked) {
      const sums = times.map((_, i) => visible.reduce((a, st) => a + vals[st.key][i], 0));
      yMax = visible.length === STAGES.length ? 100 : niceMax(Math.max(...sums));
    } else {
      yMax = niceMax(Math.max(...visible.map((st) => Math.max(...vals[st.key]))));
    }
    yMax = Math.min(yMax, 100) || 100;
    const t0 = times[0], t1 = times[times.length - 1];
    const x = (t) => m.l + (t1 === t0 ? iw / 2 : ((t - t0) / (t1 - t0)) * iw);
    const y = (v) => m.t + ih - (Math.min(v, yMax) / yMax) * ih;

    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img", "aria-label": "Stage shares over time, " + state.mode });
    svg.append(s("title", { text: "Stage shares over time" }));
    // Y axis.
    const ya = s("g", { class: "axis y" });
    for (let i = 0; i <= 4; i++) {
      const v = (yMax * i) / 4;
      ya.append(s("line", { class: i === 0 ? "base" : "grid", x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
      ya.append(s("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end", text: (Number.isInteger(v) ? v : v.toFixed(1)) + "%" }));
    }
    svg.append(ya);
    // X axis.
    const xa = s("g", { class: "axis x" });
    const { ticks, step } = timeTicks(t0, t1, Math.max(2, Math.floor(iw / 90)));
    for (const t of ticks) {
      xa.append(s("line", { class: "grid", x1: x(t), x2: x(t), y1: m.t, y2: m.t + ih }));
      xa.append(s("text", { x: x(t), y: H - 8, "text-anchor": "middle", text: tickLabel(t, step) }));
    }
    svg.append(xa);

    // Series.
    const plot = s("g", { class: "series" });
    const single = times.length === 1;
    if (stacked) {
      let base = times.map(() => 0);
      for (const st of visible) {
        const top = base.map((b, i) => b + vals[st.key][i]);
        let d;
        if (single) {
          const cx = x(times[0]);
          d = "M" + (cx - 20) + "," + y(base[0]) + "H" + (cx + 20) + "V" + y(top[0]) + "H" + (cx - 20) + "Z";
        } else {
          d = "M" + times.map((t, i) => x(t).toFixed(1) + "," + y(top[i]).toFixed(1)).join("L") +
            "L" + times.map((t, i) => [t, i]).reverse().map(([t, i]) => x(t).toFixed(1) + "," + y(base[i]).toFixed(1)).join("L") + "Z";
        }
        plot.append(s("path", { class: "area " + st.key, "data-stage": st.key, d }, s("title", { text: st.label })));
        base = top;
      }
    } else {
      for (const st of visible) {
        const d = single
          ? "M" + (x(times[0]) - 20) + "," + y(vals[st.key][0]) + "H" + (x(times[0]) + 20)
          : "M" + times.map((t, i) => x(t).toFixed(1) + "," + y(vals[st.key][i]).toFixed(1)).join("L");
        plot.append(s("path", { class: "line " + st.key, "data-stage": st.key, d }, s("title", { text: st.label })));
      }
    }
    svg.append(plot);

    // Hover: a rule, dots and a tooltip at the nearest bucket.
    const hover = s("g", { class: "hover", visibility: "hidden" });
    const rule = s("line", { class: "hover-rule", y1: m.t, y2: m.t + ih });
    hover.append(rule);
    svg.append(hover);
    const tip = $("#tooltip");
    const catcher = s("rect", { x: m.l, y: m.t, width: iw, height: ih, fill: "transparent" });
    catcher.addEventListener("mousemove", (ev) => {
      const r = svg.getBoundingClientRect();
      const px = ((ev.clientX - r.left) / r.width) * W;
      let best = 0;
      for (let i = 1; i < times.length; i++) if (Math.abs(x(times[i]) - px) < Math.abs(x(times[best]) - px)) best = i;
      const cx = x(times[best]);
      rule.setAttribute("x1", cx); rule.setAttribute("x2", cx);
      hover.setAttribute("visibility", "visible");
      tip.textContent = "";
      tip.append(h("div", { class: "t", text: fmtTime(times[best], interval) + " UTC" }));
      for (const st of STAGES.slice().reverse()) {
        if (!visible.includes(st)) continue;
        tip.append(h("div", { class: "r" },
          h("span", null, h("i", { class: "dot c-" + st.key }), st.label),
          h("b", { text: fmtPct(vals[st.key][best]) + "%" })));
      }
      tip.hidden = false;
      const tw = tip.offsetWidth, th = tip.offsetHeight;
      let left = ev.clientX + 14;
      if (left + tw > window.innerWidth - 8) left = ev.clientX - tw - 14;
      tip.style.left = left + "px";
      tip.style.top = Math.max(8, ev.clientY - th / 2) + "px";
    });
    catcher.addEventListener("mouseleave", () => { hover.setAttribute("visibility", "hidden"); tip.hidden = true; });
    svg.append(catcher);
    box.append(svg);
  }

  // ---------- bars ----------
  function bars(container, rows, emptyText, what) {
    container.textContent = "";
    if (!rows.length) {
      container.append(h("div", { class: "empty", text: emptyText }));
      return;
    }
    container.append(h("div", { class: "bars-head", "aria-hidden": "true" },
      h("span", { text: what }), h("span", { text: "share of connections" }), h("span", { text: "% · count" }), h("span", { text: "trend" })));
    const max = Math.max(...rows.map((r) => r.pct), 0) || 1;
    for (const r of rows) {
      const w = Math.max(0, Math.min(100, (r.pct / max) * 100));
      container.append(h("div", { class: "bar-row", "data-key": r.key, title: r.title || r.label },
        h("span", { class: "label" + (r.mono ? " mono" : "") + (r.depth === 1 ? " child" : r.depth >= 2 ? " grandchild" : ""), text: r.label }),
        s("svg", { viewBox: "0 0 100 14", preserveAspectRatio: "none", "aria-hidden": "true" },
          s("rect", { class: "track", x: 0, y: 2, width: 100, height: 10, rx: 0 }),
          s("rect", { class: "fill " + (r.cls || ""), x: 0, y: 2, width: w.toFixed(2), height: 10 })),
        h("span", { class: "val" }, fmtPct(r.pct) + "%", r.count != null ? h("span", { class: "n", text: fmtInt(r.count) }) : null),
        sparkline(r.spark, r.cls)));
    }
  }
  // sparkline draws a row's share over the date range, on its own scale.
  function sparkline(values, cls) {
    const W = 64, H = 16;
    const svg = s("svg", { class: "spark", viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none" });
    if (!values || values.length < 2) return svg;
    // At most 28 points (bucket means): a trend, not every wiggle.
    const bins = Math.min(28, values.length);
    if (values.length > bins) {
      const out = [];
      for (let b = 0; b < bins; b++) {
        const part = values.slice(Math.floor((b * values.length) / bins), Math.floor(((b + 1) * values.length) / bins));
        out.push(part.reduce((a, v) => a + v, 0) / part.length);
      }
      values = out;
    }
    const max = Math.max(...values);
    if (!(max > 0)) return svg;
    const pts = values.map((v, i) => (i * W / (values.length - 1)).toFixed(1) + "," + (H - 1 - (v / max) * (H - 2)).toFixed(1));
    svg.append(s("title", { text: "Over the date range (own scale); peak " + fmtPct(max) + "%" }),
      s("polyline", { class: "spark-line " + (cls || ""), points: pts.join(" ") }));
    return svg;
  }
  function breakdown(result, series) {
    if (!result) return null;
    const shares = result.summary_0 || {};
    const counts = result.counts || {};
    const serie = (series && series.serie_0) || {};
    const keys = new Set([...Object.keys(shares), ...Object.keys(counts)]);
    return [...keys].map((k) => ({
      key: k, pct: num(shares[k]), count: counts[k] != null ? counts[k] : null,
      spark: Array.isArray(serie[k]) ? serie[k].map(num) : null,
    }));
  }
  function renderTags(result, series) {
    const el = $("#tags");
    const rows = breakdown(result, series);
    if (!rows) { el.textContent = ""; el.append(h("div", { class: "empty", text: "Tags could not be loaded (see the error above)." })); return; }
    rows.sort((a, b) => {
      const ta = TAG[a.key], tb = TAG[b.key];
      if (ta && tb) return ta.order - tb.order;
      if (ta) return -1;
      if (tb) return 1;
      return b.pct - a.pct || a.key.localeCompare(b.key);
    });
    bars(el, rows.filter((r) => r.pct > 0 || (r.count || 0) > 0).map((r) => {
      const t = TAG[r.key];
      return {
        ...r, label: r.key, mono: true, depth: t ? t.depth : 0, title: r.key + (t ? ": " + t.what : ""),
        cls: SCANNER_TAGS.has(r.key) ? "scanner" : EVIDENCE_TAGS.has(r.key) ? "evidence" : "",
      };
    }), "No tagged connections match these filters.", "tag");
  }
  function signatureStage(sig) {
    if (sig.startsWith("SYN; ACK")) return "post_ack";
    if (sig.startsWith("SYN")) return "post_syn";
    if (sig.startsWith("PSH+ACK; Data")) return "later_in_flow";
    if (sig.startsWith("PSH+ACK")) return "post_psh";
    return "";
  }
  function renderSignatures(result, series) {
    const el = $("#signatures");
    const rows = breakdown(result, series);
    if (!rows) { el.textContent = ""; el.append(h("div", { class: "empty", text: "Signatures could not be loaded (see the error above)." })); return; }
    rows.sort((a, b) => b.pct - a.pct || (b.count || 0) - (a.count || 0) || a.key.localeCompare(b.key));
    bars(el, rows.filter((r) => r.pct > 0 || (r.count || 0) > 0).map((r) => {
      const st = signatureStage(r.key);
      return { ...r, label: r.key || "(no signature)", mono: true, cls: st, title: (r.key || "(no signature)") + (st ? " · " + STAGE[st].label : "") };
    }), "No signatures match these filters.", "signature");
    const legend = h("div", { class: "legend-mini" }, STAGES.filter((st) => st.key !== "no_match").map((st) =>
      h("span", null, h("i", { class: "dot c-" + st.key }), st.label)));
    if (rows.length) el.append(legend);
  }

  // ---------- anomalies ----------
  function renderAnomalies(result) {
    const tbody = $("#anomalies tbody");
    tbody.textContent = "";
    const cols = 9;
    if (!result) {
      tbody.append(h("tr", null, h("td", { class: "empty", colspan: cols, text: "Anomalous connections could not be loaded (see the error above)." })));
      return;
    }
    const conns = Array.isArray(result.connections) ? result.connections : [];
    if (!conns.length) {
      tbody.append(h("tr", null, h("td", { class: "empty", colspan: cols, text: "No anomalous connections match these filters." })));
      return;
    }
    const link = (name, value, text) => h("a", { class: "f", href: "?" + name + "=" + encodeURIComponent(value), title: "Filter by " + text, onclick: (e) => { e.preventDefault(); setFilter(name, String(value)); } }, text);
    for (const c of conns) {
      const st = STAGE[c.stage];
      const tags = Array.isArray(c.tags) ? c.tags : [];
      tbody.append(h("tr", { "data-node": c.node || "" },
        h("td", { class: "num", title: c.time || "" , text: fmtClock(c.time) }),
        h("td", { class: "mono", text: c.client || "" }),
        h("td", { class: "num" }, c.server_port != null ? link("port", c.server_port, String(c.server_port)) : ""),
        h("td", null, c.node ? link("node", c.node, c.node) : ""),
        h("td", { title: countryName(c.country) }, c.country ? link("location", c.country, c.country) : "—"),
        h("td", { class: "num" }, c.asn ? link("asn", c.asn, "AS" + c.asn) : "—"),
        h("td", null, h("span", { class: "pill" }, h("i", { class: "dot c-" + (c.stage || "") }), st ? st.label : (c.stage || "—"))),
        h("td", { class: "mono", text: c.signature || "—" }),
        h("td", null, tags.map((t) => h("span", { class: "chip" + (SCANNER_TAGS.has(t) ? " scanner" : EVIDENCE_TAGS.has(t) ? " evidence" : ""), title: TAG[t] ? TAG[t].what : t, text: t })))));
    }
    $("#anomalies-note").textContent = "The latest " + conns.length + " connection" + (conns.length === 1 ? "" : "s") + " that ended in a reset or timeout before completing. Click a country, ASN, node or port to filter by it.";
  }
  function fmtClock(t) {
    const d = new Date(t);
    if (isNaN(d)) return t || "";
    return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate() + " " + d.toISOString().slice(11, 19);
  }
  function setFilter(name, value) {
    const el = form.elements[name];
    ensureOption(el, value);
    el.value = value;
    if (form.elements[name + "-exclude"]) form.elements[name + "-exclude"].checked = false;
    refresh();
  }

  // ---------- wiring ----------
  form.addEventListener("change", () => refresh());
  form.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  $("#refresh").addEventListener("click", () => refresh());
  $("#reset-filters").addEventListener("click", () => {
    applyFilters(new URLSearchParams());
    refresh();
  });
  for (const b of document.querySelectorAll(".seg button")) {
    b.addEventListener("click", () => {
      state.mode = b.dataset.mode;
      for (const o of document.querySelectorAll(".seg button")) o.classList.toggle("on", o === b);
      renderStageChart();
    });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderStageChart, 120);
  });
  function schedule() {
    clearInterval(state.timer);
    if ($("#auto-refresh").checked) state.timer = setInterval(() => { if (!document.hidden) refresh(); }, 60000);
  }
  $("#auto-refresh").addEventListener("change", schedule);

  (async function start() {
    applyFilters(new URLSearchParams(location.search));
    await refresh();
    schedule();
  })();
})();

