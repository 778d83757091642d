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

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

function renderCounters(counters, botCount) {
  const items = [
    ["open waits", counters.open_waits],
    ["waits opened", counters.waits_opened],
    ["succeeded", counters.succeeded],
    ["timed out", counters.timed_out],
    ["late calls", counters.late_calls],
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

function render(data) {
  clockOffsetMs = data.now_unix * 1000 - Date.now();
  renderCounters(data.counters, data.bots.length);
  renderWaits(data.open_waits);
  replaceRows("resolutions", data.recent_resolutions.map((r) => el("tr", {},
    el("td", {}, time(r.at)), el("td", { class: "key" }, r.conversation), el("td", {}, r.bot), el("td", {}, r.block),
    el("td", {}, badge(r.outcome)), el("td", {}, r.reason), el("td", {}, seconds(r.waited_s)))),
    "nothing resolved yet", 7);
  replaceRows("late", data.recent_late_calls.map((call) => el("tr", {},
    el("td", {}, time(call.at)), el("td", { class: "key" }, call.conversation), el("td", {}, call.bot),
    el("td", {}, call.block), el("td", {}, seconds(call.after_deadline_s)))),
    "no late call", 5);
  replaceRows("bots", data.bots.map((bot) => el("tr", {},
    el("td", { class: "key" }, bot.id), el("td", {}, bot.name),
    el("td", { class: "url" }, ...Object.entries(bot.webhooks).map(([block, url]) => el("div", { title: block }, url))))),
    "no bot registered", 3);
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
      setStatus(`live · updated ${new Date().toLocaleTimeString()}`, false);
    }
  } catch (error) {
    setStatus(`cannot reach the gate (${error.message}); retrying`, true);
  }
  setTimeout(poll, POLL_MS);
}

poll();
setInterval(tick, TICK_MS);
