// The live page of `harness serve`: polls api/dashboard once a second and redraws.
// Every value goes into the page with textContent (bot names and ids come from users), and every
// request is same-origin with credentials, so the harness_token cookie set by /?token=… goes along.
"use strict";

const POLL_MS = 1000;
const TICK_MS = 100;
let clockOffsetMs = 0; // server clock minus this browser's clock, from the last snapshot
let countdowns = []; // [{cell, meter, deadlineMs, timeoutS}]

// A token in the address bar has done its job once the server set the cookie: keep it out of
// the history, bookmarks and screenshots.
if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(null, "", location.pathname);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function replaceRows(tableId, rows, emptyText, columns) {
  const body = document.querySelector(`#${tableId} tbody`);
  if (rows.length === 0) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, emptyText)));
  } else {
    body.replaceChildren(...rows);
  }
}

function seconds(value) {
  return value == null ? "–" : `${Number(value).toFixed(value < 10 ? 2 : 1)} s`;
}

// Times are the server's ISO 8601 UTC strings, shown as 24-hour UTC (HH:MM:SS), the full value on hover.
function time(iso) {
  return iso ? el("span", { class: "nowrap", title: iso }, `${iso.slice(11, 19)}`) : "–";
}

function utcNow() {
  return new Date().toISOString().slice(11, 19);
}

// -- the rate chart: counter deltas between polls, in 10-second buckets, the last 10 minutes ----
const BUCKET_MS = 10_000;
const BUCKETS = 60;
const SERIES = [["success", "succeeded", "#067647"], ["failure", "failed", "#b42318"], ["refused", "refused_calls", "#b54708"]];
let lastCounters = null;
const buckets = new Map(); // bucket start (ms) -> {success, failure, refused}

function countRates(counters, nowMs) {
  if (lastCounters !== null) {
    const start = Math.floor(nowMs / BUCKET_MS) * BUCKET_MS;
    const bucket = buckets.get(start) || { success: 0, failure: 0, refused: 0 };
    for (const [name, counter] of SERIES) bucket[name] += Math.max(0, (counters[counter] || 0) - (lastCounters[counter] || 0));
    buckets.set(start, bucket);
    for (const key of buckets.keys()) if (key < start - BUCKETS * BUCKET_MS) buckets.delete(key);
  }
  lastCounters = counters;
  drawRates(nowMs);
}

function drawRates(nowMs) {
  const canvas = document.getElementById("rates");
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const last = Math.floor(nowMs / BUCKET_MS) * BUCKET_MS;
  const starts = Array.from({ length: BUCKETS }, (_, i) => last - (BUCKETS - 1 - i) * BUCKET_MS);
  const rows = starts.map((start) => buckets.get(start) || { success: 0, failure: 0, refused: 0 });
  const top = Math.max(1, ...rows.map((row) => row.success + row.failure + row.refused));
  const barWidth = width / BUCKETS;
  rows.forEach((row, i) => {
    let y = height - 14;
    for (const [name, , color] of SERIES) {
      const h = (row[name] / top) * (height - 24);
      context.fillStyle = color;
      context.fillRect(i * barWidth + 1, y - h, Math.max(1, barWidth - 2), h);
      y -= h;
    }
  });
  context.fillStyle = "#667085";
  context.font = "10px system-ui, sans-serif";
  context.fillText(`max ${top} per 10 s`, 4, 10);
  context.fillText(new Date(starts[0]).toISOString().slice(11, 16), 2, height - 2);
  const end = new Date(last + BUCKET_MS).toISOString().slice(11, 16);
  context.fillText(end, width - context.measureText(end).width - 2, height - 2);
}

// -- deliveries and the conversation behind one ---------------------------------------------
let selectedKey = null;

function renderDeliveries(deliveries) {
  replaceRows("deliveries", deliveries.map((d) => {
    const ok = d.status < 300;
    const row = el("tr", d.conversation_key ? { class: `link${d.conversation_key === selectedKey ? " selected" : ""}`,
      tabindex: "0", title: "show this conversation" } : {},
      el("td", { class: "time" }, time(d.at)),
      el("td", {}, el("span", { class: `badge ${ok ? "success" : "refused"}` }, String(d.status))),
      el("td", {}, d.bot), el("td", {}, d.block),
      el("td", { class: "key" }, d.key ? `${d.key}…` : "–"),
      el("td", {}, ok ? d.outcome : d.error));
    if (d.conversation_key) {
      const open = () => showConversation(d.conversation_key);
      row.addEventListener("click", open);
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
    }
    return row;
  }), "no webhook call yet", 6);
}

function table(headers, rows, emptyText) {
  const body = rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: String(headers.length) }, emptyText))];
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))), el("tbody", {}, ...body));
}

async function showConversation(key) {
  selectedKey = key;
  const section = document.getElementById("conversation");
  const body = document.getElementById("conversation-body");
  section.hidden = false;
  document.getElementById("conversation-key").textContent = `${key.slice(0, 8)}…`;
  const response = await fetch(`api/conversations/${encodeURIComponent(key)}`, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    body.replaceChildren(el("p", { class: "status error" }, `the gate answered ${response.status} (a finished conversation may have left memory)`));
    return;
  }
  const c = await response.json();
  body.replaceChildren(
    el("p", {}, `bot ${c.bot} · status ${c.status}` + (c.block ? ` · at ${c.block}` : "")),
    el("h3", {}, "Transcript"),
    c.transcript.length ? el("ol", { id: "transcript" }, ...c.transcript.map((m) => el("li", {}, `${m.block}: ${m.text}`)))
      : el("p", { class: "note" }, "no message yet"),
    el("h3", {}, "Waits"),
    table(["block", "opened", "deadline", "outcome", "reason", "waited"], c.waits.map((w) => el("tr", {},
      el("td", {}, w.block), el("td", { class: "time" }, time(w.opened_at)), el("td", { class: "time" }, time(w.deadline)),
      el("td", {}, w.outcome ? badge(w.outcome) : "open"), el("td", {}, w.reason || "–"), el("td", {}, seconds(w.waited_s)))),
      "no wait"),
    el("h3", {}, "Late calls"),
    table(["at", "block", "after the deadline"], (c.late_calls || []).map((l) => el("tr", {},
      el("td", { class: "time" }, time(l.at)), el("td", {}, l.block), el("td", {}, seconds(l.after_deadline_s)))), "none"),
    el("h3", {}, "Early calls"),
    table(["at", "block", "outcome"], (c.early_calls || []).map((e) => el("tr", {},
      el("td", { class: "time" }, time(e.at)), el("td", {}, e.block), el("td", {}, e.outcome))), "none"));
}

function renderBots(bots) {
  const own = bots.filter((bot) => !bot.derived_from);
  const derived = bots.filter((bot) => bot.derived_from);
  const row = (bot) => el("tr", {},
    el("td", { class: "key" }, bot.id), el("td", {}, bot.name),
    el("td", { class: "url" }, ...Object.entries(bot.webhooks).map(([block, url]) => el("div", { title: block }, url))));
  replaceRows("bots", own.map(row), "no bot registered", 3);
  const details = document.getElementById("derived");
  details.hidden = derived.length === 0;
  document.getElementById("derived-summary").textContent =
    `${derived.length} derived ${derived.length === 1 ? "copy" : "copies"} registered by live runs (timeout overrides)`;
  document.getElementById("derived-rows").replaceChildren(...derived.map(row));
}

function renderCounters(counters, botCount) {
  const items = [
    ["open waits", counters.open_waits],
    ["waits opened", counters.waits_opened],
    ["succeeded", counters.succeeded],
    ["timed out", counters.timed_out],
    ["late calls", counters.late_calls],
    ["refused calls", counters.refused_calls],
    ["bots", botCount],
  ];
  document.getElementById("counters").replaceChildren(
    ...items.map(([label, value]) => el("div", { "data-counter": label }, el("dt", {}, label), el("dd", {}, value))));
}

function renderWaits(openWaits) {
  countdowns = [];
  const rows = openWaits.shown.map((wait) => {
    const left = el("span");
    const meter = el("meter", { min: "0", max: String(wait.timeout_s), value: String(wait.timeout_s) });
    const cell = el("td", { class: "countdown" }, meter, left);
    countdowns.push({ cell, left, meter, deadlineMs: wait.deadline_unix * 1000, timeoutS: wait.timeout_s });
    return el("tr", {}, el("td", { class: "key" }, wait.conversation), el("td", {}, wait.bot),
      el("td", {}, wait.block), el("td", {}, `${wait.timeout_s} s`), cell);
  });
  replaceRows("waits", rows, "no conversation is waiting", 5);
  const shown = openWaits.shown.length;
  document.getElementById("waits-note").textContent =
    openWaits.count > shown ? `(the ${shown} soonest of ${openWaits.count})` : `(${openWaits.count})`;
  tick();
}

function tick() {
  const now = Date.now() + clockOffsetMs;
  for (const countdown of countdowns) {
    const leftS = Math.max(0, (countdown.deadlineMs - now) / 1000);
    countdown.left.textContent = leftS > 0 ? seconds(leftS) : "deadline passed";
    countdown.meter.value = leftS;
    countdown.cell.classList.toggle("soon", leftS < Math.min(10, countdown.timeoutS / 4));
  }
}

function badge(outcome) {
  return el("span", { class: `badge ${outcome === "success" ? "success" : "failure"}` }, outcome);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("conversation-close").addEventListener("click", () => {
    selectedKey = null;
    document.getElementById("conversation").hidden = true;
  });
});

function render(data) {
  clockOffsetMs = data.now_unix * 1000 - Date.now();
  renderCounters(data.counters, data.bots.filter((bot) => !bot.derived_from).length);
  countRates(data.counters, data.now_unix * 1000);
  renderDeliveries(data.deliveries || []);
  renderWaits(data.open_waits);
  replaceRows("resolutions", data.recent_resolutions.map((r) => el("tr", {},
    el("td", { class: "time" }, time(r.at)), el("td", { class: "key" }, r.conversation), el("td", {}, r.bot), el("td", {}, r.block),
    el("td", {}, badge(r.outcome)), el("td", {}, r.reason), el("td", {}, seconds(r.waited_s)))),
    "nothing resolved yet", 7);
  replaceRows("late", data.recent_late_calls.map((call) => el("tr", {},
    el("td", { class: "time" }, time(call.at)), el("td", { class: "key" }, call.conversation), el("td", {}, call.bot),
    el("td", {}, call.block), el("td", {}, seconds(call.after_deadline_s)))),
    "no late call", 5);
  renderBots(data.bots);
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function poll() {
  try {
    const response = await fetch("api/dashboard", { credentials: "same-origin", cache: "no-store",
      headers: { Accept: "application/json" } });
    if (response.status === 401) {
      setStatus("unauthorized: open this page as /?token=YOUR_TOKEN", true);
    } else if (!response.ok) {
      setStatus(`the gate answered ${response.status}`, true);
    } else {
      render(await response.json());
      setStatus(`live · updated ${utcNow()} UTC`, false);
    }
  } catch (error) {
    setStatus(`cannot reach the gate (${error.message}); retrying`, true);
  }
  setTimeout(poll, POLL_MS);
}

poll();
setInterval(tick, TICK_MS);
