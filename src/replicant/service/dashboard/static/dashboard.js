// replicant dashboard: reads and acts through /api/v1 with the session cookie; no build step.
"use strict";
(function () {
  const meta = (n) => (document.querySelector(`meta[name="${n}"]`) || {}).content || "";
  const CSRF = meta("csrf-token");
  const CAN = new Set(meta("can").split(" ").filter(Boolean));
  const POLL_MS = 1500;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k === null || k === undefined ? "" : String(k)));
    return e;
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = { "accept": "application/json" };
    if (opts.method && opts.method !== "GET") {
      headers["x-csrf-token"] = CSRF;
      headers["content-type"] = "application/json";
    }
    const r = await fetch("/api/v1" + path, { credentials: "same-origin", method: opts.method || "GET", headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
    if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
    const data = r.headers.get("content-type", "").includes("json") ? await r.json() : null;
    if (!r.ok) throw new Error((data && data.detail) || r.statusText);
    return data;
  }

  function say(text, error) {
    const s = document.getElementById("status");
    if (s) { s.textContent = text; s.className = error ? "error" : "muted"; }
  }

  const when = (t) => (t ? new Date(t).toLocaleString() : "—");
  const enc = encodeURIComponent;

  function fill(tbody, rows, empty, cols) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: cols, class: "muted" }, empty))]));
  }

  async function act(label, path, body) {
    say(label + "…");
    try {
      await api(path, { method: "POST", body: body === undefined ? {} : body });
      say(label + ": done.");
    } catch (e) { say(label + ": " + e.message, true); }
    refresh();
  }

  // -- the pipelines list --------------------------------------------------------------------
  async function index() {
    const tbody = document.querySelector("#pipelines tbody");
    const list = await api("/pipelines");
    const rows = await Promise.all(list.map(async (p) => {
      if (p.error) return el("tr", {}, el("td", {}, p.name), el("td", { class: "error" }, "error: " + p.error), el("td"), el("td"), el("td"));
      let lag = "—";
      try {
        const st = await api(`/pipelines/${enc(p.name)}/status`);
        lag = st.destinations.reduce((n, d) => n + Math.max(0, d.lag), 0);
      } catch (e) { /* shown as unknown */ }
      const last = p.last_run;
      return el("tr", {},
        el("td", {}, el("a", { href: "/pipelines/" + enc(p.name) }, p.name)),
        el("td", {}, p.paused ? "paused" : "active"),
        el("td", {}, last ? `${last.status} · ${when(last.finished_at || last.started_at)}` : "never"),
        el("td", {}, p.next_run ? when(p.next_run) : (p.schedule ? String(p.schedule.kind || "on demand") : "on demand")),
        el("td", { class: "num" }, lag));
    }));
    fill(tbody, rows, "No pipelines.", 5);
    say(`${list.length} pipeline(s) · updated ${new Date().toLocaleTimeString()}`);
  }

  // -- one pipeline ------------------------------------------------------------------------------
  const history = {};

  function lagChart(dest, points) {
    const W = 320, H = 80;
    const max = Math.max(1, ...points.map((p) => p[1]));
    const t0 = points.length ? points[0][0] : 0, t1 = points.length ? points[points.length - 1][0] : 1;
    const x = (t) => (t1 === t0 ? W : ((t - t0) / (t1 - t0)) * W);
    const y = (v) => H - (v / max) * (H - 4) - 2;
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W); svg.setAttribute("height", H);
    svg.setAttribute("role", "img");
    const last = points.length ? points[points.length - 1][1] : 0;
    svg.setAttribute("aria-label", `Lag of ${dest} over time: now ${last} records, at most ${max}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", "#0b57d0"); line.setAttribute("stroke-width", "2");
    svg.append(line);
    const fig = el("figure", { class: "chart" }, el("figcaption", {}, `${dest}: lag ${last} records`));
    fig.append(svg);
    if (CAN.has("replay")) fig.append(el("button", { type: "button", "data-replay": dest,
      onclick: () => act(`Replay ${dest}`, `/pipelines/${enc(NAME)}/destinations/${enc(dest)}/replay`, { from_start: true }) },
      `Replay ${dest} from start`));
    return fig;
  }

  const seconds = (t) => (t < 120 ? `${Math.round(t)} s` : `${Math.round(t / 60)} min`);

  // a stream's snapshot as the service reports it: "42% · ETA 12 s", "100% · done", or null without an estimate
  function streamProgressText(p) {
    if (!p || p.percent === null || p.percent === undefined) return null;
    if (p.finished) return "100% · done";
    return `${p.percent}%` + (p.eta_seconds === null || p.eta_seconds === undefined ? "" : ` · ETA ${seconds(p.eta_seconds)}`);
  }

  function runProgress(run, streams) {
    const box = document.getElementById("run-progress");
    if (!run) { box.textContent = "No run yet."; return; }
    let pct = 0, eta = "";
    if (run.status === "succeeded") pct = 100;
    else if (run.status === "running" && run.started_at) {
      const started = Date.parse(run.started_at);
      const sized = streams.filter((s) => s.progress && s.progress.estimate !== null);
      let part, whole;
      if (sized.length) { // rows read over the sum of the streams' estimates
        whole = sized.reduce((n, s) => n + Math.max(1, s.progress.estimate), 0);
        part = sized.reduce((n, s) => n + (s.progress.finished ? Math.max(1, s.progress.estimate)
          : Math.min(s.progress.rows, s.progress.estimate)), 0);
      } else { // no estimate: the streams done in this run
        whole = streams.length;
        part = streams.filter((s) => s.updated_at && Date.parse(s.updated_at) >= started).length;
      }
      pct = whole ? Math.min(99, Math.floor((100 * part) / whole)) : 0;
      if (pct > 0) eta = ` · ETA ${seconds(((Date.now() - started) / 1000) * (100 - pct) / pct)}`;
    }
    const label = `Run ${run.id} (${run.command}): ${run.status} · ${pct}%${eta}`;
    box.replaceChildren(el("progress", { max: 100, value: pct, "aria-label": `Progress of run ${run.id}`, id: "run-bar" }),
      el("span", { id: "run-label" }, " " + label),
      run.error ? el("p", { class: "error" }, run.error) : "");
  }

  async function showRun(id) {
    const box = document.getElementById("run-detail");
    const r = await api(`/runs/${id}?lines=50`);
    box.replaceChildren(el("h3", {}, `Run ${r.id}: ${r.status}`), r.error ? el("p", { class: "error" }, r.error) : "",
      el("pre", { class: "log", tabindex: 0, "aria-label": `Log of run ${r.id}` }, r.log.join("\n") || "(no log lines)"));
  }

  let NAME = "";
  async function pipeline() {
    const [d, st, runs, letters] = await Promise.all([api(`/pipelines/${enc(NAME)}`), api(`/pipelines/${enc(NAME)}/status`),
      api(`/runs?pipeline=${enc(NAME)}&limit=20`), api(`/pipelines/${enc(NAME)}/dead-letters?limit=100`)]);
    const paused = (tenant, stream) => d.pauses.some((c) => (c.tenant || null) === (tenant || null) && c.stream === stream);
    const lag = {}, drift = {};
    for (const x of st.destinations) {
      const k = x.stream + "\u0000" + (x.tenant || "");
      lag[k] = (lag[k] || 0) + Math.max(0, x.lag);
      if (x.paused) drift[k] = `${x.destination}: ${x.paused}`;
    }
    const current = runs[0] && runs[0].status === "running" && runs[0].started_at ? Date.parse(runs[0].started_at) : null;
    const progress = (s) => {
      const text = streamProgressText(s.progress);
      if (text !== null) { // determinate: the service knows the rows expected
        const pct = s.progress.finished ? 100 : s.progress.percent;
        return el("span", { class: "stream-progress" },
          el("progress", { max: 100, value: pct, "aria-label": `${s.name}: ${text}` }), el("span", { class: "pct" }, " " + text));
      }
      if (current === null) return "—";
      const done = s.updated_at && Date.parse(s.updated_at) >= current;
      return el("progress", { max: 100, value: done ? 100 : null, "aria-label": `${s.name}: ${done ? "done" : "reading"}` });
    };
    const rows = st.streams.map((s) => {
      const k = s.name + "\u0000" + (s.tenant || "");
      const isPaused = paused(s.tenant, s.name);
      const q = s.tenant ? `?tenant=${enc(s.tenant)}` : "";
      const acts = el("td", { class: "acts" });
      if (CAN.has(isPaused ? "resume" : "pause")) acts.append(el("button", { type: "button", "data-stream": s.name,
        "data-act": isPaused ? "resume" : "pause",
        onclick: () => act(`${isPaused ? "Resume" : "Pause"} ${s.name}`, `/pipelines/${enc(NAME)}/streams/${enc(s.name)}/${isPaused ? "resume" : "pause"}${q}`) },
        `${isPaused ? "Resume" : "Pause"} ${s.name}`));
      if (CAN.has("resync")) acts.append(el("button", { type: "button", "data-stream": s.name, "data-act": "resync",
        onclick: () => act(`Resync ${s.name}`, `/pipelines/${enc(NAME)}/streams/${enc(s.name)}/resync${q}`) }, `Resync ${s.name}`));
      return el("tr", { "data-stream": s.name }, el("td", {}, s.name), el("td", {}, s.tenant || "—"), el("td", { class: "num" }, s.rows),
        el("td", {}, progress(s)),
        el("td", { class: "num" }, lag[k] || 0),
        el("td", { class: "state" }, isPaused ? "paused" : (drift[k] ? "drift: " + drift[k] : (s.updated_at ? "ok" : "snapshot pending"))),
        acts);
    });
    fill(document.querySelector("#streams tbody"), rows, "No streams yet.", 7);

    const now = Date.now();
    const perDest = {};
    for (const x of st.destinations) perDest[x.destination] = (perDest[x.destination] || 0) + Math.max(0, x.lag);
    const charts = [];
    const sampled = d.lag_history || {};
    for (const [dest, v] of Object.entries(perDest)) {
      // the service's samples (up to an hour), then what this page saw since the newest of them
      const server = (sampled[dest] || []).map(([t, n]) => [Date.parse(t), n]);
      const newest = server.length ? server[server.length - 1][0] : 0;
      const h = (history[dest] = (history[dest] || []).filter((p) => p[0] > newest).concat([[now, v]]).slice(-200));
      charts.push(lagChart(dest, server.concat(h)));
    }
    try { sessionStorage.setItem("lag:" + NAME, JSON.stringify(history)); } catch (e) { /* private mode */ }
    document.getElementById("lag-charts").replaceChildren(...(charts.length ? charts : [el("p", { class: "muted" }, "No destination has data yet.")]));

    document.getElementById("tenants").replaceChildren(...(d.tenants.filter(Boolean).length ? d.tenants.filter(Boolean).map((t) =>
      el("li", {}, t, paused(t, null) ? " (paused)" : "")) : [el("li", { class: "muted" }, "No tenants.")]));

    fill(document.querySelector("#runs tbody"), runs.map((r) => el("tr", {},
      el("td", {}, el("button", { type: "button", class: "link", onclick: () => showRun(r.id), "aria-label": `Show run ${r.id}` }, "#" + r.id)),
      el("td", {}, r.command + (r.tenant ? ` (${r.tenant})` : "")), el("td", {}, r.status), el("td", {}, when(r.started_at)),
      el("td", {}, when(r.finished_at)), el("td", { class: "error" }, r.error || ""))), "No runs yet.", 6);
    runProgress(runs[0], st.streams);

    fill(document.querySelector("#dead-letters tbody"), letters.map((x) => {
      const acts = el("td", { class: "acts" });
      if (CAN.has("dead_letters.retry")) acts.append(el("button", { type: "button", "data-retry": x.id,
        onclick: () => act(`Retry dead letter ${x.id}`, `/pipelines/${enc(NAME)}/dead-letters/retry`, { ids: [x.id], tenant: x.tenant || null }) }, "Retry"));
      if (CAN.has("dead_letters.discard")) acts.append(el("button", { type: "button", "data-discard": x.id,
        onclick: () => act(`Discard dead letter ${x.id}`, `/pipelines/${enc(NAME)}/dead-letters/discard`, { ids: [x.id], tenant: x.tenant || null }) }, "Discard"));
      return el("tr", {}, el("td", {}, x.id), el("td", {}, x.stream + (x.tenant ? ` (${x.tenant})` : "")),
        el("td", {}, x.destination || "—"), el("td", { class: "error" }, x.reason || x.error || ""), acts);
    }), "No dead letters.", 5);
    const pState = d.paused ? "paused" : "active";
    for (const b of document.querySelectorAll("#actions button[data-action=pause], #actions button[data-action=resume]")) {
      b.hidden = (b.dataset.action === "pause") === Boolean(d.paused); // only the one that applies
    }
    say(`${pState} · last run ${d.last_run ? d.last_run.status : "never"} · next ${d.next_run ? when(d.next_run) : "on demand"} · updated ${new Date().toLocaleTimeString()}`);
  }

  function wireActions() {
    const box = document.getElementById("actions");
    if (!box) return;
    const paths = { run: ["Run", "/runs"], pause: ["Pause", "/pause"], resume: ["Resume", "/resume"], validate: ["Validate", "/validate"] };
    for (const b of box.querySelectorAll("button[data-action]")) {
      const [label, path] = paths[b.dataset.action] || [];
      if (path) b.addEventListener("click", () => act(label, `/pipelines/${enc(NAME)}${path}`));
    }
  }

  let busy = false;
  async function refresh() {
    if (busy) return;
    busy = true;
    try { await (NAME ? pipeline() : index()); } catch (e) { say(e.message, true); } finally { busy = false; }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const n = document.getElementById("pipeline-name");
    if (!document.getElementById("pipelines") && !n) return; // the login page
    if (n) {
      NAME = n.textContent;
      try { Object.assign(history, JSON.parse(sessionStorage.getItem("lag:" + NAME) || "{}")); } catch (e) { /* none */ }
      wireActions();
    }
    refresh();
    setInterval(refresh, POLL_MS);
  });
})();
