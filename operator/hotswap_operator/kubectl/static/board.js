// kubectl hotswap dashboard: draws the plugin's document (/events, Server-Sent Events).
// No library, no build step. Pods are small squares grouped by revision and state,
// coloured by revision; one element per pod is kept and only its changes are written,
// and at most one draw happens per animation frame, whatever the event rate.
"use strict";

const PHASES = ["fetch", "parse", "load", "validate", "shadow", "activate"];
// Edits asked once more on the page before they are made: [question, the yes button].
const CONFIRM = {
  abort: (st) => [`Abort revision ${st.revisions.candidate}? Every pod returns to revision ` +
    `${st.revisions.stable ?? "-"} now.`, `Abort revision ${st.revisions.candidate}`],
};
const TOKEN = document.querySelector('meta[name="hotswap-token"]').content;
const cells = new Map(); // pod name -> its square
const groups = new Map(); // "revision|state" -> {box, count, list}
const board = { applied: 0, shownAt: {}, document: null }; // read by the browser tests
window.hotswapBoard = board;
let pending = null;
let picked = null;
let asked = null; // the edit whose confirmation is open

function $(id) { return document.getElementById(id); }

function colour(revision) {
  if (revision === null || revision === undefined) return "#9aa3ab";
  return `hsl(${(Number(revision) * 137) % 360}, 60%, 45%)`;
}

function el(tag, props, ...children) {
  const node = Object.assign(document.createElement(tag), props || {});
  node.append(...children);
  return node;
}

function groupKey(pod) {
  const rev = pod.state === "Loading" || pod.state === "Failed" ? pod.targetRevision ?? pod.revision : pod.revision;
  return [rev ?? "none", pod.state];
}

function group(revision, state) {
  const key = `${revision}|${state}`;
  let g = groups.get(key);
  if (!g) {
    const count = el("span", { className: "count" });
    const title = state === "Loading" ? `loading revision ${revision}` :
      state === "Failed" ? `failed revision ${revision}` : `revision ${revision}`;
    const box = el("div", { className: "group" },
      el("h3", {}, el("span", { className: "swatch", style: `background:${colour(revision === "none" ? null : revision)}` }),
        ` ${title} · ${state} · `, count),
      el("div", { className: "cells" }));
    box.dataset.revision = String(revision);
    box.dataset.state = state;
    g = { box, count, list: [] };
    groups.set(key, g);
  }
  return g;
}

function drawPods(pods) {
  const seen = new Set();
  for (const g of groups.values()) g.list = [];
  const now = Date.now();
  for (const pod of pods) {
    seen.add(pod.name);
    let cell = cells.get(pod.name);
    if (!cell) {
      cell = el("div", { className: "pod", title: pod.name });
      cell.dataset.pod = pod.name;
      cell.addEventListener("click", () => pick(pod.name));
      cells.set(pod.name, cell);
    }
    const rev = String(pod.revision ?? "none");
    if (cell.dataset.revision !== rev || cell.dataset.state !== pod.state) {
      cell.dataset.revision = rev;
      cell.dataset.state = pod.state;
      cell.dataset.target = String(pod.targetRevision ?? "");
      cell.className = `pod ${pod.state}${picked === pod.name ? " picked" : ""}`;
      const shown = pod.state === "Loading" ? pod.targetRevision : pod.revision;
      cell.style.setProperty("--c", colour(shown));
      cell.style.background = colour(pod.revision);
      cell.title = `${pod.name}: ${pod.state}, revision ${rev}`;
      board.shownAt[pod.name] = now;
    }
    const [r, s] = groupKey(pod);
    group(r, s).list.push(cell);
  }
  for (const [name, cell] of cells) if (!seen.has(name)) { cell.remove(); cells.delete(name); }
  const order = [...groups.entries()].filter(([, g]) => g.list.length)
    .sort(([a], [b]) => b.localeCompare(a, undefined, { numeric: true }));
  for (const [key, g] of groups) {
    if (!g.list.length) { g.box.remove(); groups.delete(key); continue; }
    g.count.textContent = String(g.list.length);
    g.box.dataset.count = String(g.list.length);
    const holder = g.box.lastChild;
    const same = holder.children.length === g.list.length && g.list.every((c, i) => holder.children[i] === c);
    if (!same) holder.replaceChildren(...g.list);
  }
  const container = $("groups");
  const boxes = order.map(([, g]) => g.box);
  if (boxes.some((b, i) => container.children[i] !== b) || container.children.length !== boxes.length) {
    container.replaceChildren(...boxes);
  }
  $("total").textContent = `· ${pods.length}`;
  $("total").dataset.count = String(pods.length);
}

function drawLegend(status) {
  const served = status.revisions.served || {};
  const items = Object.entries(served).map(([rev, n]) =>
    el("span", {}, el("span", { className: "swatch", style: `background:${colour(rev === "null" ? null : rev)}` }), ` ${rev}: ${n}`));
  items.push(el("span", { className: "muted" }, "striped: loading, red edge: failed, grey: no report"));
  $("legend").replaceChildren(...items);
}

function drawHeader(doc) {
  const st = doc.status;
  $("title").textContent = `${doc.namespace}/${doc.name}`;
  const phase = st ? st.phase || "Unknown" : "not found";
  $("phase").textContent = phase;
  $("phase").className = `badge ${phase}`;
  let rollout = "";
  if (st) {
    rollout = `${st.strategy}${st.paused ? " (paused)" : ""} · latest ${st.revisions.latest ?? "-"}, stable ${st.revisions.stable ?? "-"}`;
    if (st.canary) rollout += ` · canary ${st.canary.revision} at step ${st.canary.step} of ${st.canary.steps.length}${st.canary.halted ? " (halted)" : ""}`;
  }
  $("rollout").textContent = rollout;
  $("rollout").dataset.paused = String(Boolean(st && st.paused));
  const message = st && (st.error || st.message);
  $("message").hidden = !message;
  $("message").textContent = message || "";
  $("problems").hidden = !doc.problems.length;
  $("problems").textContent = doc.problems.join(" · ");
  $("buttons").hidden = !doc.editable;
  $("readonly").hidden = doc.editable;
  const actions = doc.actions || []; // the edits that apply now (the server decides)
  for (const button of document.querySelectorAll("[data-edit]")) {
    button.hidden = !actions.includes(button.dataset.edit);
  }
  if (asked && !actions.includes(asked)) answer(false); // it no longer applies
}

function drawHistory(history) {
  const rows = (history || []).slice().reverse().map((r) => {
    const checks = (r.checks || []).map((c) => `${c.result}: ${c.message}`).join("; ");
    return el("tr", {}, el("td", {}, String(r.revision)), el("td", {}, r.createdAt || "-"),
      el("td", {}, (r.sha256 || "").slice(0, 12)), el("td", {}, r.uri),
      el("td", { className: "outcome" }, r.outcome + (r.sameContentAs ? ` (content of ${r.sameContentAs})` : "") + (checks ? ` — ${checks}` : "")));
  });
  $("history").tBodies[0].replaceChildren(...rows);
}

function seconds(value) {
  return value >= 1 ? `${value.toFixed(2)}s` : `${(value * 1000).toFixed(value < 0.01 ? 1 : 0)}ms`;
}

function drawDetail(pods) {
  const pod = pods.find((p) => p.name === picked);
  $("detail-hint").hidden = Boolean(pod);
  if (!pod) { $("detail-body").replaceChildren(); return; }
  const swap = pod.swapSeconds || {};
  const total = PHASES.reduce((sum, p) => sum + (swap[p] || 0), 0) || 1;
  let at = 0;
  const rows = PHASES.filter((p) => p in swap).map((p) => {
    const bar = el("div", { className: "bar" });
    bar.style.left = `${(at / total) * 100}%`;
    bar.style.width = `${(swap[p] / total) * 100}%`;
    at += swap[p];
    const row = el("div", { className: "bar-row" }, el("span", {}, p), el("div", { className: "track" }, bar), el("span", {}, seconds(swap[p])));
    row.dataset.phase = p;
    return row;
  });
  const facts = `${pod.name}: ${pod.state}, revision ${pod.revision ?? "-"}` +
    (pod.targetRevision != null ? `, target ${pod.targetRevision}` : "") + (pod.loadedAt ? `, loaded ${pod.loadedAt}` : "");
  $("detail-body").replaceChildren(el("p", {}, facts),
    ...(rows.length ? rows : [el("p", { className: "muted" }, "no swap recorded yet")]),
    ...(pod.message ? [el("p", { className: "muted" }, pod.message)] : []));
}

function pick(name) {
  if (picked && cells.get(picked)) cells.get(picked).classList.remove("picked");
  picked = name;
  if (cells.get(name)) cells.get(name).classList.add("picked");
  if (board.document && board.document.status) drawDetail(board.document.status.pods);
}

function draw() {
  const doc = pending;
  pending = null;
  if (!doc) return;
  board.document = doc;
  drawHeader(doc);
  const pods = doc.status ? doc.status.pods : [];
  drawPods(pods);
  if (doc.status) drawLegend(doc.status);
  drawHistory(doc.history);
  drawDetail(pods);
  board.applied += 1;
}

function receive(event) {
  const first = pending === null;
  pending = JSON.parse(event.data);
  if (first) requestAnimationFrame(draw);
}

async function edit(action) {
  const said = $("said");
  said.hidden = false;
  said.textContent = `${action}…`;
  try {
    const answer = await fetch(`/edit/${action}`, { method: "POST", headers: { "X-Hotswap-Token": TOKEN } });
    const body = await answer.json();
    said.textContent = body.message || body.error;
    said.className = answer.ok ? "said" : "problem";
  } catch (err) {
    said.textContent = `${action}: ${err}`;
    said.className = "problem";
  }
}

function press(action) {
  if (!CONFIRM[action]) { edit(action); return; }
  const st = board.document && board.document.status;
  if (!st) return;
  const [question, yes] = CONFIRM[action](st);
  asked = action;
  $("confirm-text").textContent = question;
  $("confirm-yes").textContent = yes;
  $("confirm").hidden = false;
}

function answer(yes) {
  const action = asked;
  asked = null;
  $("confirm").hidden = true;
  if (yes && action) edit(action);
}

function start() {
  for (const button of document.querySelectorAll("[data-edit]")) {
    button.addEventListener("click", () => press(button.dataset.edit));
  }
  $("confirm-yes").addEventListener("click", () => answer(true));
  $("confirm-no").addEventListener("click", () => answer(false));
  const source = new EventSource("/events");
  source.onmessage = receive;
  source.onopen = () => $("live").classList.add("on");
  source.onerror = () => $("live").classList.remove("on");
}

start();
