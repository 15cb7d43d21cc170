// Stock Bazaar dashboard: polls /api/dashboard once a second, draws the market,
// the cluster and a chart; the forms call the JSON API. No framework, no build.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function text(tag, content, className) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (className) el.className = className;
  return el;
}

// Calls the front end's API; resolves to data or throws an Error with the API's message.
async function api(path, options) {
  let resp;
  try {
    resp = await fetch(path, Object.assign({ headers: { Accept: "application/json" } }, options));
  } catch (err) {
    throw new Error("The front end cannot be reached (" + err.message + ").");
  }
  let body = null;
  try { body = await resp.json(); } catch (err) { body = null; }
  if (body && body.data !== undefined && resp.ok) return body.data;
  if (body && body.error && body.error.message) {
    throw new Error(body.error.message + " (HTTP " + resp.status + ")");
  }
  if (body && body.data !== undefined) return body.data; // e.g. /health's 503 with a body
  throw new Error("Unexpected answer from the front end (HTTP " + resp.status + ").");
}

const fmtPrice = (p) => (typeof p === "number" ? p.toFixed(2) : "–");

function renderMarket(stocks) {
  const body = $("market").tBodies[0];
  const list = $("stock-names");
  body.replaceChildren();
  if (!stocks) {
    const row = body.insertRow();
    const cell = text("td", "The catalog does not answer right now.", "down");
    cell.colSpan = 4;
    row.append(cell);
    return;
  }
  const names = [];
  for (const s of stocks) {
    const row = body.insertRow();
    row.dataset.stock = s.name;
    row.append(text("th", s.name), text("td", fmtPrice(s.price), "num"),
      text("td", String(s.quantity), "num"), text("td", String(s.volume), "num"));
    row.cells[0].scope = "row";
    names.push(s.name);
  }
  if (list.children.length !== names.length) {
    list.replaceChildren(...names.map((n) => { const o = document.createElement("option"); o.value = n; return o; }));
  }
}

function renderCluster(c) {
  const status = $("status");
  status.textContent = c.status;
  status.className = "badge " + c.status;
  $("cluster-leader").textContent = c.order.leader == null ? "none" : "replica " + c.order.leader;
  $("cluster-epoch").textContent = String(c.order.epoch);
  const cat = $("cluster-catalog");
  // Up but unable to write (a full disk): it answers lookups, refuses trades.
  const readOnly = c.catalog.up && c.catalog.writable === false;
  cat.textContent = !c.catalog.up ? "down" : readOnly ? "up, cannot write (disk full?)" : "up";
  cat.className = c.catalog.up && !readOnly ? "up" : "down";
  const hits = c.cache.hits || 0, misses = c.cache.misses || 0;
  $("cluster-cache").textContent = hits + misses ? ((100 * hits) / (hits + misses)).toFixed(1) + " %" +
    " (" + hits + " hits, " + misses + " misses)" : "no lookups yet";
  $("cluster-elections").textContent = String(c.elections);
  const body = $("replicas").tBodies[0];
  body.replaceChildren();
  for (const [id, r] of Object.entries(c.order.replicas)) {
    const row = body.insertRow();
    row.id = "replica-" + id;
    const leader = String(c.order.leader) === id;
    // Up for the front end, but the leader has not heard from it lately: it gets no orders.
    const cut = r.up && r.replicating === false;
    const state = !r.up ? "down" : cut ? "up, not replicating" : "up";
    row.append(text("th", id + (leader ? " (leader)" : "")), text("td", state, r.up && !cut ? "up" : "down"),
      text("td", r.role || "–"), text("td", r.last_number == null ? "–" : String(r.last_number), "num"),
      text("td", r.lag == null ? "–" : String(r.lag), "num"));
    row.cells[0].scope = "row";
  }
}

function drawChart(samples) {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 34;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "12px system-ui, sans-serif";
  const n = samples.length;
  const rate = samples.map((s) => s.orders);
  const p50 = samples.map((s) => s.p50_ms), p99 = samples.map((s) => s.p99_ms);
  const maxRate = Math.max(1, ...rate);
  const maxMs = Math.max(1, ...p99.filter((v) => v != null));
  const x = (i) => pad + ((w - 2 * pad) * i) / Math.max(1, n - 1);
  const yRate = (v) => h - pad - ((h - 2 * pad) * v) / maxRate;
  const yMs = (v) => h - pad - ((h - 2 * pad) * v) / maxMs;
  ctx.strokeStyle = "#d0d7de";
  ctx.strokeRect(pad, pad, w - 2 * pad, h - 2 * pad);
  ctx.fillStyle = "#a7d3b0";
  const bw = Math.max(1, (w - 2 * pad) / Math.max(1, n) - 0.5);
  rate.forEach((v, i) => { if (v) ctx.fillRect(x(i) - bw / 2, yRate(v), bw, h - pad - yRate(v)); });
  const line = (values, color) => {
    ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    let open = false;
    values.forEach((v, i) => {
      if (v == null) { open = false; return; }
      if (open) ctx.lineTo(x(i), yMs(v)); else ctx.moveTo(x(i), yMs(v));
      open = true;
    });
    ctx.stroke();
  };
  line(p50, "#0b57d0");
  line(p99, "#b3261e");
  ctx.fillStyle = "#59636e";
  ctx.fillText(maxRate + " orders/s", 2, pad - 8);
  ctx.textAlign = "right";
  ctx.fillText(maxMs.toFixed(1) + " ms", w - 2, pad - 8);
  ctx.fillText("now", w - pad, h - 10);
  ctx.textAlign = "left";
  ctx.fillText("-" + n + " s", pad, h - 10);
  const recent = samples.slice(-10);
  const orders = recent.reduce((a, s) => a + s.orders, 0) / Math.max(1, recent.length);
  const last = [...samples].reverse().find((s) => s.p50_ms != null);
  $("chart-summary").textContent = "Green bars: orders per second (last 10 s average " + orders.toFixed(1) +
    "). Blue: p50 latency, red: p99 latency of API requests" +
    (last ? " (latest " + last.p50_ms.toFixed(2) + " ms / " + last.p99_ms.toFixed(2) + " ms)." : ".");
}

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const d = await api("/api/dashboard");
    $("banner").hidden = true;
    renderMarket(d.market);
    renderCluster(d.cluster);
    drawChart(d.samples);
  } catch (err) {
    const banner = $("banner");
    banner.textContent = err.message;
    banner.hidden = false;
    $("status").textContent = "no data";
    $("status").className = "badge unavailable";
  } finally {
    polling = false;
  }
}

function show(el, message, ok) {
  el.replaceChildren();
  el.textContent = message;
  el.className = "result " + (ok ? "ok" : "error");
}

$("order-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target, out = $("order-result"), button = form.querySelector("button");
  const name = form.elements.name.value.trim();
  const quantityText = form.elements.quantity.value.trim();
  const type = form.elements.type.value;
  if (!name) { show(out, "Enter a stock name.", false); form.elements.name.focus(); return; }
  if (!/^[0-9]+$/.test(quantityText) || Number(quantityText) < 1) {
    show(out, "Quantity must be a whole number of at least 1.", false);
    form.elements.quantity.focus();
    return;
  }
  button.disabled = true;
  show(out, "Placing order…", true);
  try {
    const data = await api("/orders", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ name: name, quantity: Number(quantityText), type: type }),
    });
    show(out, "Order placed: number " + data.transaction_number + " (" + type + " " + quantityText + " " + name + ").", true);
    out.dataset.number = String(data.transaction_number);
    $("lookup-number").value = String(data.transaction_number);
    poll();
  } catch (err) {
    show(out, "Order failed: " + err.message, false);
  } finally {
    button.disabled = false;
  }
});

$("lookup-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("lookup-result");
  const number = $("lookup-number").value.trim();
  if (!/^[0-9]+$/.test(number)) { show(out, "Enter an order number (0, 1, 2, …).", false); return; }
  try {
    const o = await api("/orders/" + number);
    show(out, "Order " + o.number + ": " + o.type + " " + o.quantity + " " + o.name + ".", true);
  } catch (err) {
    show(out, "Lookup failed: " + err.message, false);
  }
});

poll();
setInterval(poll, POLL_MS);
