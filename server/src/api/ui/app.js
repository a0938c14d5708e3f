// The phxkv console. Plain JavaScript with no dependencies: it is compiled
// into the server binary and must work offline. It uses only the public API
// of the node that served it (relative URLs, so it also works behind a
// proxy that mounts the node under a path), and shows the API's errors as
// they are: `{"error": {"code", "message"}}` with the HTTP status.
"use strict";

// ---------------------------------------------------------------- helpers

const $ = id => document.getElementById(id);

// Builds an element; children may be strings (always text, never HTML),
// nodes, or nested arrays of either; null and undefined are skipped.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

// Shows `text` in a message box of kind "ok", "error" or "info"; hides it for null.
function say(box, kind, text) {
  if (text === null || text === undefined) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.className = "message " + kind;
  box.textContent = text;
  box.hidden = false;
}

function fmtInt(n) {
  return n === null || n === undefined ? "\u2014" : Number(n).toLocaleString("en-US");
}

function fmtSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "\u2014";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " \u00b5s";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

function fmtRate(r) {
  if (r === null || r === undefined || !isFinite(r)) return "\u2014";
  return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
}

// ------------------------------------------------------------------ bytes

const utf8Decoder = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

// An input the user typed that cannot be read as the chosen encoding.
class InputError extends Error {}

function utf8OrNull(bytes) {
  try {
    return utf8Decoder.decode(bytes);
  } catch (_) {
    return null;
  }
}

function bytesToHex(bytes) {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

function bytesToB64(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

function b64ToBytes(text, what) {
  const clean = text.replace(/\s+/g, "");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 === 1) {
    throw new InputError(what + " is not valid base64");
  }
  let bin;
  try {
    bin = atob(clean);
  } catch (_) {
    throw new InputError(what + " is not valid base64");
  }
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function hexToBytes(text, what) {
  const clean = text.replace(/\s+/g, "");
  if (!/^([0-9a-fA-F]{2})*$/.test(clean)) {
    throw new InputError(what + " is not valid hex (pairs of 0-9, a-f)");
  }
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.substr(i * 2, 2), 16);
  return out;
}

// Reads what the user typed as bytes, in the encoding picked next to it.
function parseBytes(text, encoding, what) {
  if (encoding === "hex") return hexToBytes(text, what);
  if (encoding === "base64") return b64ToBytes(text, what);
  return utf8Encoder.encode(text);
}

// Renders bytes in an encoding, for showing or for putting back in an input.
function renderBytes(bytes, encoding) {
  if (encoding === "hex") return bytesToHex(bytes);
  if (encoding === "base64") return bytesToB64(bytes);
  const text = utf8OrNull(bytes);
  return text === null ? null : text;
}

// Percent-encodes every byte except unreserved characters, so any byte
// string (slashes, `?`, `#`, invalid UTF-8) reaches the server intact.
function percentEncode(bytes) {
  let out = "";
  for (const b of bytes) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-_~]/.test(c) ? c : "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

// Whether text looks fine printed as is (no control characters).
function printable(text) {
  return text !== null && !/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text);
}

// Whether a key can be shown and typed as one line of text: a line break
// would be dropped by the key field (and read as a space in a cell), so
// such a key is shown and edited as hex.
function printableKey(text) {
  return printable(text) && !/[\r\n\t]/.test(text);
}

// A key or value from JSON (base64 plus optional `*_utf8`) for a table cell:
// the text when it is printable, otherwise hex marked as such.
function bytesCell(b64, utf8, max, isKey) {
  if (utf8 !== undefined && utf8 !== null && (isKey ? printableKey(utf8) : printable(utf8))) {
    const shown = utf8.length > max ? utf8.slice(0, max) + "\u2026" : utf8;
    return el("span", { class: "mono", title: utf8.length > max ? utf8.slice(0, 2000) : null }, shown);
  }
  const bytes = b64ToBytes(b64, "server data");
  const hex = bytesToHex(bytes.subarray(0, Math.ceil(max / 2)));
  return el("span", { class: "mono" }, hex + (bytes.length > max / 2 ? "\u2026" : ""),
    el("span", { class: "tag" }, "hex"));
}

// ------------------------------------------------------------- the token

const TOKEN_KEY = "phxkv.token";

function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch (_) {
    return "";
  }
}

function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) {
    // Storage disabled: the token lasts until the page is reloaded.
  }
  memoryToken = value;
  showTokenState();
}

let memoryToken = "";

function currentToken() {
  return token() || memoryToken;
}

function showTokenState() {
  $("token-state").textContent = currentToken() ? "token set (this tab only)" : "no token";
  $("token-clear").disabled = !currentToken();
}

// -------------------------------------------------------------------- API

// A failed API call: the HTTP status and the API's error body, if any.
class ApiError extends Error {
  constructor(status, error, retryAfter) {
    super((error && error.message) || "HTTP " + status);
    this.status = status;
    this.error = error || {};
    this.retryAfter = retryAfter;
  }

  describe() {
    if (this.status === 0) return "Could not reach the node: " + this.message;
    const e = this.error;
    let text = this.status + (e.code ? " " + e.code : "") + ": " + this.message;
    if (e.current_version !== undefined) {
      text += " (current version " + e.current_version +
        ", current mod revision " + e.current_mod_revision + ")";
    }
    if (this.status === 401 && !token()) {
      text += "\nThis node needs a token: paste the cluster token (or an API token) in the field at the top right.";
    } else if (this.status === 401) {
      text += "\nThe token in the field at the top right was refused: paste a valid one.";
    } else if (this.status === 403) {
      text += "\nThe token in use does not grant this: use the cluster token or one with an admin role.";
    }
    if (this.retryAfter) text += "\nRetry after " + this.retryAfter + " s.";
    return text;
  }
}

function describe(err) {
  if (err instanceof ApiError) return err.describe();
  if (err instanceof InputError) return err.message;
  return "Unexpected error: " + (err && err.message ? err.message : String(err));
}

// Reads a failed response as an ApiError, whatever its body.
async function failure(resp) {
  let error = null;
  const text = await resp.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "object") error = body.error;
  } catch (_) {
    // Not JSON: keep the text as the message.
  }
  if (!error) error = { message: text.slice(0, 500) || resp.statusText || "request failed" };
  return new ApiError(resp.status, error, resp.headers.get("retry-after"));
}

// Calls the API; `path` is relative to the page (no leading slash).
// Resolves to the Response when it is 2xx; rejects with an ApiError.
async function call(method, path, options) {
  const opts = options || {};
  const headers = Object.assign({}, opts.headers || {});
  const t = currentToken();
  if (t) headers["Authorization"] = "Bearer " + t;
  let body = opts.body;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/octet-stream";
  }
  let resp;
  try {
    resp = await fetch(path, { method, headers, body, cache: "no-store", signal: opts.signal });
  } catch (e) {
    if (e && e.name === "AbortError") throw e;
    throw new ApiError(0, { message: e && e.message ? e.message : String(e) });
  }
  if (!resp.ok) throw await failure(resp);
  return resp;
}

async function callJson(method, path, options) {
  const resp = await call(method, path, options);
  return resp.json();
}

// ------------------------------------------------------------------ views

const VIEWS = ["overview", "keys", "watch", "members"];

function showView() {
  const wanted = location.hash.replace(/^#/, "");
  const view = VIEWS.includes(wanted) ? wanted : "overview";
  for (const v of VIEWS) $("view-" + v).hidden = v !== view;
  for (const a of document.querySelectorAll("nav#tabs a[data-view]")) {
    a.classList.toggle("active", a.dataset.view === view);
  }
  if (view === "overview") requestAnimationFrame(drawCharts);
}

// --------------------------------------------------------------- overview

const POLL_MS = 2000;
let cluster = null;

function summaryItem(label, value, id) {
  return el("div", {}, el("dt", {}, label), el("dd", { id }, value));
}

function renderSummary(info, ready) {
  const master = info.master || "none";
  let lease;
  if (info.read_mode === "quorum") lease = "not used (quorum reads)";
  else if (info.lease_remaining_ms !== null && info.lease_remaining_ms !== undefined) {
    lease = fmtInt(info.lease_remaining_ms) + " ms";
  } else lease = "held by " + master;
  const readiness = ready.ok
    ? [el("span", { class: "dot ok" }), "ready"]
    : [el("span", { class: "dot bad" }), ready.reason || "not ready"];
  const state = info.node_state === "member" ? "member" : info.node_state.replace(/_/g, " ");
  $("summary").replaceChildren(
    summaryItem("Cluster", info.cluster_id, "sum-cluster"),
    summaryItem("This node", [info.node, " ", el("span", { class: "tag" }, state)], "sum-node"),
    summaryItem("Master", master, "sum-master"),
    summaryItem("Master lease", lease, "sum-lease"),
    summaryItem("Read mode", info.read_mode, "sum-read-mode"),
    summaryItem("Revision", fmtInt(info.revision), "sum-revision"),
    summaryItem("Applied / commit index",
      fmtInt(info.applied_index) + " / " + fmtInt(info.commit_index), "sum-index"),
    summaryItem("Readiness", readiness, "sum-ready"));
  if (info.divergence) {
    $("summary").append(summaryItem("Divergence",
      "this replica's state differs from the majority's; it must be replaced", "sum-diverged"));
  }
  if (info.node_state_reason) {
    $("summary").append(summaryItem("Why", info.node_state_reason, "sum-state-reason"));
  }
}

function roleCell(m) {
  return [m.role, m.is_master ? el("span", { class: "tag master" }, "master") : null,
    m.role === "learner" ? el("span", { class: "tag learner" }, "learner") : null];
}

function healthCell(m) {
  return m.healthy
    ? [el("span", { class: "dot ok" }), "up"]
    : [el("span", { class: "dot bad" }), "not reporting"];
}

function renderOverviewMembers(info) {
  const known = info.members.map(m => m.commit_index).filter(c => c !== null && c !== undefined);
  const top = known.length ? Math.max(...known) : null;
  const rows = info.members.map(m => {
    const lag = m.commit_index === null || m.commit_index === undefined || top === null
      ? "\u2014" : fmtInt(top - m.commit_index);
    return el("tr", { "data-member": m.name },
      el("td", {}, el("b", {}, m.name), m.name === info.node ? el("span", { class: "tag" }, "this node") : null),
      el("td", {}, roleCell(m)),
      el("td", {}, healthCell(m)),
      el("td", { class: "num" }, fmtInt(m.commit_index)),
      el("td", { class: "num" }, lag),
      el("td", { class: "mono" }, m.id || "\u2014"),
      el("td", { class: "mono" }, m.peer_url));
  });
  $("overview-members").tBodies[0].replaceChildren(...rows);
}

async function readiness() {
  try {
    const resp = await fetch("readyz", { cache: "no-store" });
    const body = await resp.json().catch(() => ({}));
    return { ok: resp.ok, reason: body.reason };
  } catch (e) {
    return { ok: false, reason: "no answer" };
  }
}

async function refreshCluster() {
  try {
    const [info, ready] = await Promise.all([callJson("GET", "v1/cluster"), readiness()]);
    cluster = info;
    say($("overview-error"), "error", null);
    $("node-label").textContent = info.node + " \u00b7 " + info.cluster_id +
      (info.master ? " \u00b7 master " + info.master : " \u00b7 no master");
    renderSummary(info, ready);
    renderOverviewMembers(info);
    renderMembersView(info);
  } catch (e) {
    say($("overview-error"), "error", "Cluster status: " + describe(e));
    $("node-label").textContent =
      e instanceof ApiError && e.status === 401 ? "needs a token" :
      e instanceof ApiError && e.status !== 0 ? "answered " + e.status : "not answering";
  }
}

// ---------------------------------------------------------------- metrics

const WINDOW_MS = 5 * 60 * 1000;
// The routes clients use for data; the console's own polling is left out.
const KV_ROUTE = /^\/v1\/(kv|txn|watch)/;
const samples = [];
let lastScrape = null;

// Parses the Prometheus / OpenMetrics text format into name -> [{labels, value}].
function parseMetrics(text) {
  const out = new Map();
  const line = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const label = /([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    if (!raw || raw[0] === "#") continue;
    const m = line.exec(raw);
    if (!m) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(label)) labels[l[1]] = l[2].replace(/\\(.)/g, "$1");
    const value = m[3] === "+Inf" ? Infinity : Number(m[3]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value });
  }
  return out;
}

function sumOf(metrics, name, filter) {
  let total = 0;
  for (const s of metrics.get(name) || []) if (!filter || filter(s.labels)) total += s.value;
  return total;
}

// Cumulative bucket counts by upper bound, summed over matching series.
function bucketsOf(metrics, name, filter) {
  const byLe = new Map();
  for (const s of metrics.get(name + "_bucket") || []) {
    if (filter && !filter(s.labels)) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  return [...byLe.entries()].sort((a, b) => a[0] - b[0]);
}

// The q-quantile of the observations between two scrapes of a histogram,
// interpolating linearly inside the bucket, as Prometheus'
// histogram_quantile does. null when nothing was observed in between.
function quantile(q, now, before) {
  const prev = new Map(before);
  const deltas = now.map(([le, c]) => [le, c - (prev.get(le) || 0)]);
  const total = deltas.length ? deltas[deltas.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, count] of deltas) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      const inBucket = count - below;
      return inBucket > 0 ? lower + (le - lower) * ((rank - below) / inBucket) : le;
    }
    lower = le;
    below = count;
  }
  return lower;
}

function scrapeOf(metrics, at) {
  const kv = l => KV_ROUTE.test(l.route || "");
  const status = prefix => l => kv(l) && (l.status || "").startsWith(prefix);
  return {
    at,
    ok: sumOf(metrics, "phxkv_http_requests_total", l => kv(l) && /^[123]/.test(l.status || "")),
    client: sumOf(metrics, "phxkv_http_requests_total", status("4")),
    server: sumOf(metrics, "phxkv_http_requests_total", status("5")),
    latency: bucketsOf(metrics, "phxkv_http_request_duration_seconds", kv),
    commit: bucketsOf(metrics, "phxkv_commit_latency_seconds"),
    fsync: bucketsOf(metrics, "phxkv_fsync_duration_seconds"),
  };
}

// One chart point from two consecutive scrapes, or null after a counter
// reset (the node restarted) so the chart does not show a negative rate.
function pointOf(now, before) {
  const secs = (now.at - before.at) / 1000;
  if (secs <= 0) return null;
  const rate = (a, b) => (a - b) / secs;
  const ok = rate(now.ok, before.ok);
  const client = rate(now.client, before.client);
  const server = rate(now.server, before.server);
  if (ok < 0 || client < 0 || server < 0) return null;
  return {
    at: now.at,
    throughput: [ok, client, server],
    latency: [0.5, 0.9, 0.99].map(q => quantile(q, now.latency, before.latency)),
    commit: [quantile(0.5, now.commit, before.commit), quantile(0.99, now.commit, before.commit),
      quantile(0.99, now.fsync, before.fsync)],
  };
}

async function sampleMetrics() {
  try {
    const resp = await call("GET", "metrics");
    const scrape = scrapeOf(parseMetrics(await resp.text()), Date.now());
    if (lastScrape) {
      const point = pointOf(scrape, lastScrape);
      if (point) samples.push(point);
    }
    lastScrape = scrape;
    while (samples.length && samples[0].at < Date.now() - WINDOW_MS) samples.shift();
    say($("metrics-error"), "error", null);
    if (!$("view-overview").hidden) drawCharts();
  } catch (e) {
    say($("metrics-error"), "error", "Metrics: " + describe(e));
  }
}

const COLORS = ["#2f7ed8", "#c77c11", "#c8443b", "#2e9b5f"];

const CHARTS = [
  { id: "throughput", field: "throughput", names: ["ok", "4xx", "5xx"], fmt: fmtRate, unit: "/s" },
  { id: "latency", field: "latency", names: ["p50", "p90", "p99"], fmt: fmtSeconds, unit: "" },
  { id: "commit", field: "commit", names: ["commit p50", "commit p99", "fsync p99"], fmt: fmtSeconds, unit: "" },
];

// A round axis maximum at or above `v`: 1, 2 or 5 times a power of ten.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function drawChart(spec) {
  const canvas = $("chart-" + spec.id);
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const left = 62, right = 8, top = 8, bottom = 20;
  const plotW = width - left - right, plotH = height - top - bottom;
  let max = 0;
  for (const s of samples) for (const v of s[spec.field]) if (v !== null && isFinite(v)) max = Math.max(max, v);
  max = niceMax(max);
  const now = Date.now();
  const x = at => left + plotW * (1 - (now - at) / WINDOW_MS);
  const y = v => top + plotH * (1 - v / max);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#5b6473";
  ctx.strokeStyle = "#eceef2";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    const yy = Math.round(y(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, yy);
    ctx.lineTo(left + plotW, yy);
    ctx.stroke();
    ctx.fillText(spec.fmt(v) + spec.unit, left - 6, yy);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  for (let m = 0; m <= 5; m++) {
    const at = now - m * 60000;
    ctx.fillText(m === 0 ? "now" : "-" + m + " min", Math.min(Math.max(x(at), left + 14), left + plotW - 14), top + plotH + 5);
  }

  spec.names.forEach((_, i) => {
    ctx.strokeStyle = COLORS[i];
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    let drawing = false;
    for (const s of samples) {
      const v = s[spec.field][i];
      if (v === null || !isFinite(v)) {
        drawing = false;
        continue;
      }
      if (drawing) ctx.lineTo(x(s.at), y(v));
      else ctx.moveTo(x(s.at), y(v));
      drawing = true;
    }
    ctx.stroke();
  });

  const last = samples.length ? samples[samples.length - 1][spec.field] : [];
  $("legend-" + spec.id).replaceChildren(...spec.names.map((name, i) =>
    el("span", {}, el("span", { class: "swatch s" + i }), name + " ",
      el("b", {}, last[i] === null || last[i] === undefined ? "\u2014" : spec.fmt(last[i]) + spec.unit))));
}

function drawCharts() {
  for (const spec of CHARTS) drawChart(spec);
  const note = $("charts-note");
  const base = "sampled from /metrics every 2\u00a0s, last 5 minutes";
  note.textContent = cluster && cluster.master && cluster.master !== cluster.node
    ? base + "; commit latency is recorded where writes are proposed, on the master (" + cluster.master + ")"
    : base;
}

// ------------------------------------------------------------ key browser

const list = { afters: [null], page: 0, prefix: null, limit: 50, consistency: "linearizable" };

function listQuery(after) {
  const q = ["limit=" + list.limit];
  if (list.prefix && list.prefix.length) q.push("prefix=" + percentEncode(list.prefix));
  if (after) q.push("after=" + percentEncode(after));
  if (list.consistency !== "linearizable") q.push("consistency=" + list.consistency);
  return "v1/kv?" + q.join("&");
}

async function loadPage(page) {
  const box = $("list-message");
  const after = list.afters[page];
  let body;
  try {
    body = await callJson("GET", listQuery(after));
  } catch (e) {
    say(box, "error", describe(e));
    return;
  }
  say(box, "info", body.kvs.length ? null : "No keys" + (list.prefix && list.prefix.length ? " with this prefix." : "."));
  list.page = page;
  list.afters.length = page + 1;
  if (body.more && body.next_after) list.afters.push(b64ToBytes(body.next_after, "next_after"));
  const rows = body.kvs.map(kv => {
    const row = el("tr", { class: "clickable", title: "Open this key" },
      el("td", {}, bytesCell(kv.key, kv.key_utf8, 60, true)),
      el("td", {}, bytesCell(kv.value, kv.value_utf8, 40)),
      el("td", { class: "num" }, fmtInt(kv.version)),
      el("td", { class: "num" }, fmtInt(kv.mod_revision)));
    row.addEventListener("click", () => openKey(kv));
    return row;
  });
  $("list-table").tBodies[0].replaceChildren(...rows);
  $("list-first").disabled = page === 0;
  $("list-prev").disabled = page === 0;
  $("list-next").disabled = !body.more;
  $("list-page").textContent = "page " + (page + 1) + " \u00b7 " + body.kvs.length + " keys" +
    (body.more ? ", more follow" : "") + " \u00b7 revision " + fmtInt(body.revision);
}

function startListing() {
  try {
    list.prefix = parseBytes($("list-prefix").value, $("list-prefix-enc").value, "the prefix");
  } catch (e) {
    say($("list-message"), "error", describe(e));
    return;
  }
  list.limit = Number($("list-limit").value);
  list.consistency = $("list-consistency").value;
  list.afters = [null];
  loadPage(0);
}

// Puts a listed key into the editor (as text when it is printable text,
// otherwise as hex) and reads it.
function openKey(kv) {
  if (kv.key_utf8 !== undefined && printableKey(kv.key_utf8)) {
    $("kv-key").value = kv.key_utf8;
    $("kv-key-enc").value = "text";
  } else {
    $("kv-key").value = bytesToHex(b64ToBytes(kv.key, "key"));
    $("kv-key-enc").value = "hex";
  }
  getKey();
}

let shown = null; // { bytes, version } of the last value read

function editorKey() {
  const text = $("kv-key").value;
  const key = parseBytes(text, $("kv-key-enc").value, "the key");
  if (!key.length) throw new InputError("Enter a key.");
  return key;
}

// The key in a request path. A key that is exactly "." or ".." would be
// removed from the URL by the browser as a path segment, so such keys go
// through a transaction instead.
function keyPath(key) {
  return "v1/kv/" + percentEncode(key);
}

function isDotSegment(key) {
  return (key.length === 1 && key[0] === 0x2e) || (key.length === 2 && key[0] === 0x2e && key[1] === 0x2e);
}

function casQuery() {
  const kind = $("kv-cas-kind").value;
  if (!kind) return "";
  const raw = $("kv-cas-value").value.trim();
  if (!/^\d+$/.test(raw)) {
    throw new InputError("Enter the expected " + (kind === "if_version" ? "version" : "mod revision") +
      " as a whole number (0: the key must not exist).");
  }
  return "?" + kind + "=" + raw;
}

function casCompare(key) {
  const kind = $("kv-cas-kind").value;
  if (!kind) return [];
  const raw = $("kv-cas-value").value.trim();
  casQuery();
  const target = kind === "if_version" ? "version" : "mod_revision";
  return [{ key_b64: bytesToB64(key), target, [target]: Number(raw) }];
}

function showValue() {
  if (!shown) return;
  const enc = $("kv-view-enc").value;
  const text = renderBytes(shown.bytes, enc);
  const view = $("kv-view");
  if (text === null) {
    view.textContent = "Not valid UTF-8 (" + shown.bytes.length + " bytes); showing hex:\n" + bytesToHex(shown.bytes);
  } else {
    view.textContent = text;
  }
}

function showKv(meta) {
  $("kv-meta").replaceChildren(...meta.map(([k, v]) => el("span", {}, k + " ", el("b", {}, fmtInt(v)))));
  $("kv-result").hidden = false;
  showValue();
}

// A failed transaction compare, reported like the single-key endpoints do.
function compareFailed(kv) {
  return new ApiError(409, {
    code: "compare_failed",
    message: "the key's current state does not match the condition",
    current_version: kv ? kv.version : 0,
    current_mod_revision: kv ? kv.mod_revision : 0,
  });
}

async function txnGet(key) {
  const body = await callJson("POST", "v1/txn", { json: { success: [{ get: { key_b64: bytesToB64(key) } }] } });
  const kv = body.responses[0].get.kv;
  if (!kv) throw new ApiError(404, { code: "key_not_found", message: "no such key" });
  return { kv, revision: body.revision };
}

async function getKey() {
  const box = $("kv-message");
  try {
    const key = editorKey();
    const consistency = $("kv-consistency").value;
    let bytes, version, create, mod, revision;
    if (isDotSegment(key)) {
      const { kv, revision: rev } = await txnGet(key);
      bytes = b64ToBytes(kv.value, "value");
      [version, create, mod, revision] = [kv.version, kv.create_revision, kv.mod_revision, rev];
    } else {
      const q = consistency === "linearizable" ? "" : "?consistency=" + consistency;
      const resp = await call("GET", keyPath(key) + q);
      bytes = new Uint8Array(await resp.arrayBuffer());
      const h = name => Number(resp.headers.get(name));
      [version, create, mod, revision] = [h("x-phxkv-version"), h("x-phxkv-create-revision"),
        h("x-phxkv-mod-revision"), h("x-phxkv-revision")];
    }
    shown = { bytes, version };
    // Each read starts in the natural view: text when it is UTF-8, else hex.
    $("kv-view-enc").value = utf8OrNull(bytes) === null ? "hex" : "text";
    say(box, "ok", "Read " + bytes.length + " bytes.");
    showKv([["version", version], ["created at", create], ["modified at", mod], ["read at revision", revision]]);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      shown = null;
      $("kv-result").hidden = true;
    }
    say(box, "error", describe(e));
  }
}

async function putKey() {
  const box = $("kv-message");
  try {
    const key = editorKey();
    const value = parseBytes($("kv-value").value, $("kv-value-enc").value, "the value");
    let result;
    if (isDotSegment(key)) {
      const compare = casCompare(key);
      const body = await callJson("POST", "v1/txn", { json: {
        compare,
        success: [{ put: { key_b64: bytesToB64(key), value_b64: bytesToB64(value) } }],
        failure: [{ get: { key_b64: bytesToB64(key) } }],
      } });
      if (!body.succeeded) throw compareFailed(body.responses[0].get.kv);
      result = { revision: body.revision, version: null };
    } else {
      result = await callJson("PUT", keyPath(key) + casQuery(), { body: value });
    }
    say(box, "ok", "Stored " + value.length + " bytes at revision " + result.revision +
      (result.version !== null ? "; the key's version is now " + result.version + "." : "."));
    if ($("kv-cas-kind").value === "if_version" && result.version !== null) {
      $("kv-cas-value").value = String(result.version);
    }
    shown = { bytes: value, version: result.version };
    $("kv-result").hidden = true;
  } catch (e) {
    say(box, "error", describe(e));
  }
}

async function deleteKey() {
  const box = $("kv-message");
  try {
    const key = editorKey();
    let result;
    if (isDotSegment(key)) {
      const body = await callJson("POST", "v1/txn", { json: {
        compare: casCompare(key),
        success: [{ delete: { key_b64: bytesToB64(key) } }],
        failure: [{ get: { key_b64: bytesToB64(key) } }],
      } });
      if (!body.succeeded) throw compareFailed(body.responses[0].get.kv);
      result = { revision: body.revision, deleted: body.responses[0].delete.deleted };
    } else {
      result = await callJson("DELETE", keyPath(key) + casQuery());
    }
    say(box, "ok", result.deleted
      ? "Deleted at revision " + result.revision + "."
      : "There was no such key; nothing changed (revision " + result.revision + ").");
    shown = null;
    $("kv-result").hidden = true;
  } catch (e) {
    say(box, "error", describe(e));
  }
}

// ------------------------------------------------------------------ watch

const MAX_EVENTS = 500;
// Bytes of a single unfinished event the reader buffers before giving up.
const MAX_PENDING = 8 * 1024 * 1024;
const watch = { controller: null, lastRevision: null, prefix: null, retry: 0, timer: null };

function watchStatus(text, kind) {
  const s = $("watch-status");
  s.replaceChildren(el("span", { class: "dot " + (kind || "") }), text);
}

function addEvent(name, data) {
  const body = $("watch-table").tBodies[0];
  const row = el("tr", { class: "event-" + name },
    el("td", {}, el("span", { class: "tag " + name }, name)),
    el("td", { class: "num" }, fmtInt(data.revision)),
    el("td", {}, bytesCell(data.key, data.key_utf8, 60, true)),
    el("td", {}, name === "delete" ? el("span", { class: "muted" }, "\u2014") : bytesCell(data.value, data.value_utf8, 60)),
    el("td", { class: "num" }, name === "delete" ? "\u2014" : fmtInt(data.version)),
    el("td", { class: "muted" }, new Date().toLocaleTimeString()));
  body.prepend(row);
  while (body.rows.length > MAX_EVENTS) body.deleteRow(body.rows.length - 1);
}

// Handles one server-sent event block; returns false when the stream
// reported an error and must not be resumed.
function handleBlock(block) {
  let name = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line[0] === ":") continue;
    const at = line.indexOf(":");
    const field = at < 0 ? line : line.slice(0, at);
    let value = at < 0 ? "" : line.slice(at + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return true;
  let parsed;
  try {
    parsed = JSON.parse(data.join("\n"));
  } catch (_) {
    say($("watch-message"), "error", "The watch sent data that is not JSON: " + data.join("\n").slice(0, 200));
    return true;
  }
  if (name === "error") {
    const err = new ApiError(200, parsed.error || { message: "the watch failed" });
    say($("watch-message"), "error", "The node ended the watch: " + (err.error.code || "error") + ": " + err.message);
    return false;
  }
  if (name === "put" || name === "delete") {
    addEvent(name, parsed);
    if (id !== null && /^\d+$/.test(id)) watch.lastRevision = Number(id);
    else if (parsed.revision) watch.lastRevision = parsed.revision;
  }
  return true;
}

async function runWatch(start) {
  const controller = new AbortController();
  watch.controller = controller;
  const q = [];
  if (watch.prefix.length) q.push("prefix=" + percentEncode(watch.prefix));
  if (start !== null) q.push("start_revision=" + start);
  watchStatus(start === null ? "connecting" : "connecting from revision " + start, "warn");
  let resp;
  try {
    resp = await call("GET", "v1/watch" + (q.length ? "?" + q.join("&") : ""), {
      signal: controller.signal,
      headers: { Accept: "text/event-stream" },
    });
  } catch (e) {
    if (controller.signal.aborted) return;
    if (e instanceof ApiError && e.status !== 0 && e.status !== 503) {
      // The request itself was refused (bad prefix, compacted revision): retrying cannot help.
      say($("watch-message"), "error", describe(e));
      stopWatch("stopped");
      return;
    }
    scheduleResume(describe(e));
    return;
  }
  say($("watch-message"), "error", null);
  watch.retry = 0;
  watchStatus("watching" + (watch.prefix.length ? "" : " all keys"), "ok");
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = pending.indexOf("\n\n")) >= 0) {
        const block = pending.slice(0, end);
        pending = pending.slice(end + 2);
        if (!handleBlock(block)) {
          controller.abort();
          stopWatch("stopped by the node");
          return;
        }
      }
      if (pending.length > MAX_PENDING) {
        controller.abort();
        say($("watch-message"), "error", "An event was larger than " + MAX_PENDING + " bytes; the watch was stopped.");
        stopWatch("stopped");
        return;
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
    scheduleResume(describe(e));
    return;
  }
  if (!controller.signal.aborted) scheduleResume("the stream ended");
}

// Reconnects after a dropped stream, from the revision after the last event
// seen so nothing is missed, backing off up to 10 s.
function scheduleResume(why) {
  if (!watch.controller) return;
  watch.retry = Math.min(watch.retry + 1, 5);
  const delay = Math.min(10000, 500 * Math.pow(2, watch.retry - 1));
  watchStatus("reconnecting in " + Math.round(delay / 1000) + " s (" + why + ")", "warn");
  watch.timer = setTimeout(() => {
    watch.timer = null;
    if (!watch.controller) return;
    runWatch(watch.lastRevision === null ? watch.start : watch.lastRevision + 1);
  }, delay);
}

function startWatch() {
  stopWatch(null);
  const box = $("watch-message");
  let start = null;
  try {
    watch.prefix = parseBytes($("watch-prefix").value, $("watch-prefix-enc").value, "the prefix");
    const raw = $("watch-start").value.trim();
    if (raw) {
      if (!/^\d+$/.test(raw)) throw new InputError("The start revision must be a whole number.");
      start = Number(raw);
    }
  } catch (e) {
    say(box, "error", describe(e));
    return;
  }
  say(box, "error", null);
  watch.start = start;
  watch.lastRevision = null;
  watch.retry = 0;
  $("watch-start-btn").disabled = true;
  $("watch-stop-btn").disabled = false;
  runWatch(start);
}

function stopWatch(status) {
  if (watch.timer) clearTimeout(watch.timer);
  watch.timer = null;
  const controller = watch.controller;
  watch.controller = null;
  if (controller) controller.abort();
  $("watch-start-btn").disabled = false;
  $("watch-stop-btn").disabled = true;
  if (status) watchStatus(status, "");
}

// --------------------------------------------------------------- members

// A button that asks for a second click within 4 s before it acts.
function confirmButton(label, armedLabel, action) {
  const button = el("button", { type: "button", class: "danger" }, label);
  let timer = null;
  button.addEventListener("click", () => {
    if (!button.classList.contains("armed")) {
      button.classList.add("armed");
      button.textContent = armedLabel;
      timer = setTimeout(() => {
        button.classList.remove("armed");
        button.textContent = label;
      }, 4000);
      return;
    }
    clearTimeout(timer);
    button.classList.remove("armed");
    button.textContent = label;
    action(button);
  });
  return button;
}

async function memberAction(button, what, method, path) {
  const box = $("members-message");
  button.disabled = true;
  say(box, "info", what + "\u2026");
  try {
    const body = await callJson(method, path);
    if (body.members) {
      say(box, "ok", what + ": done.");
      cluster = body;
      renderMembersView(body);
      refreshCluster();
    } else {
      say(box, "ok", what + ": " + (body.message || body.state));
      refreshCluster();
    }
  } catch (e) {
    say(box, "error", what + " failed: " + describe(e));
  } finally {
    button.disabled = false;
  }
}

let membersSignature = "";

function renderMembersView(info) {
  // Rebuilding the rows every poll would disarm a pending confirmation.
  const signature = JSON.stringify(info.members);
  if (signature === membersSignature) return;
  membersSignature = signature;
  const rows = info.members.map(m => {
    const name = encodeURIComponent(m.name);
    const actions = el("td", {});
    if (m.role === "learner") {
      const promote = el("button", { type: "button" }, "Promote");
      promote.addEventListener("click", () =>
        memberAction(promote, "Promote " + m.name, "POST", "v1/cluster/members/" + name + "/promote"));
      actions.append(promote, " ");
    }
    actions.append(confirmButton("Replace", "Confirm replace", b =>
      memberAction(b, "Replace " + m.name, "POST", "v1/cluster/members/" + name + "/replace")), " ");
    actions.append(confirmButton("Remove", "Confirm remove " + m.name, b =>
      memberAction(b, "Remove " + m.name, "DELETE", "v1/cluster/members/" + name)));
    return el("tr", { "data-member": m.name },
      el("td", {}, el("b", {}, m.name)),
      el("td", {}, roleCell(m)),
      el("td", {}, healthCell(m)),
      el("td", { class: "num" }, fmtInt(m.commit_index)),
      el("td", { class: "mono" }, m.peer_url),
      actions);
  });
  $("members-table").tBodies[0].replaceChildren(...rows);
}

async function addMember() {
  const box = $("members-message");
  const name = $("add-name").value.trim();
  const peerUrl = $("add-peer-url").value.trim();
  const button = $("add-submit");
  button.disabled = true;
  say(box, "info", "Adding " + name + "\u2026");
  try {
    const body = await callJson("POST", "v1/cluster/members", { json: { name, peer_url: peerUrl } });
    say(box, "ok", "Added " + name + " as a learner; promote it once it has caught up.");
    cluster = body;
    renderMembersView(body);
    refreshCluster();
  } catch (e) {
    say(box, "error", "Adding " + name + " failed: " + describe(e));
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ start

function on(id, event, handler) {
  $(id).addEventListener(event, e => {
    if (event === "submit") e.preventDefault();
    handler(e);
  });
}

function start() {
  memoryToken = token();
  showTokenState();
  on("token-form", "submit", () => {
    const value = $("token-input").value.trim();
    if (value) setToken(value);
    $("token-input").value = "";
  });
  on("token-clear", "click", () => setToken(""));

  on("list-form", "submit", startListing);
  on("list-first", "click", () => loadPage(0));
  on("list-prev", "click", () => loadPage(Math.max(0, list.page - 1)));
  on("list-next", "click", () => loadPage(list.page + 1));

  on("kv-form", "submit", putKey);
  on("kv-get", "click", getKey);
  on("kv-delete", "click", deleteKey);
  on("kv-view-enc", "change", showValue);
  on("kv-use-version", "click", () => {
    if (!shown || shown.version === null) return;
    $("kv-cas-kind").value = "if_version";
    $("kv-cas-value").value = String(shown.version);
  });
  on("kv-edit", "click", () => {
    if (!shown) return;
    const text = utf8OrNull(shown.bytes);
    const enc = text === null ? "base64" : "text";
    $("kv-value-enc").value = enc;
    $("kv-value").value = renderBytes(shown.bytes, enc);
  });

  on("watch-form", "submit", startWatch);
  on("watch-stop-btn", "click", () => stopWatch("stopped"));
  on("watch-clear-btn", "click", () => $("watch-table").tBodies[0].replaceChildren());

  on("add-form", "submit", addMember);

  window.addEventListener("hashchange", showView);
  window.addEventListener("resize", () => { if (!$("view-overview").hidden) drawCharts(); });
  showView();

  // Polling pauses while the tab is hidden; the charts show the gap.
  const tick = () => {
    if (document.hidden) return;
    refreshCluster();
    sampleMetrics();
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      lastScrape = null;
      tick();
    }
  });
  tick();
  setInterval(tick, POLL_MS);
  startListing();
}

start();
