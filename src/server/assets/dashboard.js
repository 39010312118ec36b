// tidewatch's dashboard: reads one snapshot a second from GET /events (server-sent
// events) and draws it. Plain JS and SVG/canvas, nothing fetched from elsewhere.
"use strict";

const KEEP = 120; // seconds of history in the charts
const history = []; // {t, fps, aps, queue, p50, p99, score99}
let previous = null;

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 1) => (x == null || !isFinite(x) ? "–" : x.toFixed(digits));

// The q-quantile of the latencies between two cumulative bucket snapshots, as
// Prometheus' histogram_quantile does: linear within the bucket the rank falls in.
function quantile(q, les, now, before) {
  if (!now) return null;
  const cum = now.map((n, i) => n - (before ? before[i] : 0));
  const total = cum[cum.length - 1];
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < les.length; i++) {
    if (cum[i] >= rank) {
      const lo = i === 0 ? 0 : les[i - 1];
      const below = i === 0 ? 0 : cum[i - 1];
      const inBucket = cum[i] - below;
      return inBucket > 0 ? lo + (les[i] - lo) * (rank - below) / inBucket : les[i];
    }
  }
  return les[les.length - 1];
}

function line(svg, series, max, colour) {
  const pts = series
    .map((v, i) => (v == null ? null : `${(i / (KEEP - 1)) * 600},${160 - (v / max) * 150}`))
    .filter((p) => p != null)
    .join(" ");
  const el = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  el.setAttribute("points", pts);
  el.setAttribute("stroke", colour);
  svg.appendChild(el);
}

function chart(id, keys, colours) {
  const svg = $(id);
  svg.textContent = "";
  const rows = history.slice(-KEEP);
  const pad = Array(KEEP - rows.length).fill(null);
  let max = 0, any = false;
  for (const r of rows) for (const k of keys) if (r[k] != null) { max = Math.max(max, r[k]); any = true; }
  const top = max;
  max = max > 0 ? max * 1.1 : 1;
  keys.forEach((k, i) => line(svg, pad.concat(rows.map((r) => r[k])), max, colours[i]));
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", 4);
  label.setAttribute("y", 12);
  label.textContent = any ? "max " + fmt(top, top < 10 ? 2 : 0) : "no data yet";
  svg.appendChild(label);
}

function heat(h) {
  const canvas = $("heat");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#0f1620";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!h) return;
  const side = Math.ceil(Math.sqrt(h.cells));
  const px = canvas.width / side;
  const top = Math.max(1, ...h.counts.map((c) => c[1]));
  // the cells drawn, for a reader (or test) that cannot see the canvas
  canvas.dataset.cells = h.counts.map((c) => c[0]).join(" ");
  canvas.dataset.perCell = h.per_cell;
  for (const [cell, n] of h.counts) {
    const x = cell % side, y = Math.floor(cell / side);
    const a = 0.25 + 0.75 * Math.log1p(n) / Math.log1p(top);
    ctx.fillStyle = `rgba(255, 112, 67, ${a})`;
    ctx.fillRect(x * px, y * px, Math.max(px, 1), Math.max(px, 1));
  }
  $("heat-scale").textContent =
    `${h.n_features} features, ${h.per_cell} per cell, ${side}×${side}; brightest ${top}`;
  const hottest = $("hottest");
  hottest.textContent = "";
  for (const [cell, n] of [...h.counts].sort((a, b) => b[1] - a[1]).slice(0, 5)) {
    const lo = cell * h.per_cell, hi = Math.min(h.n_features, lo + h.per_cell) - 1;
    const li = document.createElement("li");
    li.textContent = lo === hi ? `feature ${lo}: ${n}` : `features ${lo}–${hi}: ${n}`;
    li.dataset.cell = cell;
    hottest.appendChild(li);
  }
}

function alerts(recent) {
  const body = $("alerts").querySelector("tbody");
  body.textContent = "";
  for (const a of recent || []) {
    const tr = document.createElement("tr");
    const top = a.top.map(([i, name, s]) => `#${i} ${name} (${fmt(s, 2)})`).join(", ");
    for (const text of [a.seq, new Date(a.received_ms).toLocaleTimeString(), a.n_features, top]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tr.dataset.features = a.top.map(([i]) => i).join(" ");
    body.appendChild(tr);
  }
}

function facts(ready) {
  if (!ready) return;
  const m = ready.model, d = ready.device;
  $("model").textContent =
    `model ${m.path || "(loaded)"} · ${m.kind} · ${m.n_features} features · window ${m.window} · v${m.version}`;
  $("device").textContent = `device ${d.used}${d.gpu ? " (" + d.gpu.name + ")" : ""} · ${ready.workers} worker(s) · ${ready.dataflow}`;
  const c = ready.controls;
  const rows = {
    threshold: fmt(m.threshold, 3) + (c.threshold_override == null ? " (model's)" : " (set)"),
    muted: c.muted.length ? c.muted.join(", ") : "none",
    "model version": m.version,
    "reloaded at": m.reloaded_at_ms ? new Date(m.reloaded_at_ms).toLocaleString() : "never",
    "last change": c.changed_at_ms ? new Date(c.changed_at_ms).toLocaleString() : "none",
  };
  const dl = $("controls");
  dl.textContent = "";
  for (const [k, v] of Object.entries(rows)) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dd.id = "control-" + k.replace(/ /g, "-");
    dl.append(dt, dd);
  }
}

function update(s) {
  const status = $("status");
  status.textContent = s.status;
  status.className = "pill " + s.status;
  const c = s.counters;
  let row = { t: s.t_ms, queue: s.queue ? s.queue.queued : null };
  if (previous) {
    const dt = Math.max(1e-3, (s.t_ms - previous.t_ms) / 1000);
    row.fps = (c.frames_scored - previous.counters.frames_scored) / dt;
    row.aps = (c.anomalous_frames - previous.counters.anomalous_frames) / dt;
    const les = s.buckets_s;
    const st = s.stages, pst = previous.stages;
    const ms = (q, stage) => {
      const v = quantile(q, les, st[stage], pst[stage]);
      return v == null ? null : v * 1000;
    };
    row.p50 = ms(0.5, "receive_to_scored");
    row.p99 = ms(0.99, "receive_to_scored");
    row.score99 = ms(0.99, "score");
  }
  history.push(row);
  if (history.length > KEEP) history.shift();
  previous = s;
  $("fps").textContent = fmt(row.fps);
  $("aps").textContent = fmt(row.aps);
  $("queue").textContent = s.queue ? `${s.queue.queued} / ${s.queue.capacity}` : "–";
  $("scored").textContent = c.frames_scored;
  $("anomalous").textContent = c.anomalous_frames;
  $("sent").textContent = c.alerts_sent;
  chart("rate-chart", ["fps", "aps"], ["#4fc3f7", "#ff8a65"]);
  chart("latency-chart", ["p50", "p99", "score99"], ["#4fc3f7", "#ff8a65", "#aed581"]);
  chart("queue-chart", ["queue"], ["#4fc3f7"]);
  heat(s.heat);
  alerts(s.recent);
  facts(s.ready);
  document.body.dataset.snapshots = Number(document.body.dataset.snapshots || 0) + 1;
}

const events = new EventSource("/events");
events.onmessage = (e) => update(JSON.parse(e.data));
events.onerror = () => {
  $("status").textContent = "disconnected";
  $("status").className = "pill disconnected";
};
