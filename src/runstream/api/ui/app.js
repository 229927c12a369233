// runstream's page: list your runs, start one, follow one live over Server-Sent Events.
// Every text from the API is set with textContent, never parsed as HTML.
"use strict";

const api = new URL("../", window.location.href); // the API this page is served by
const $ = (id) => document.getElementById(id);
let source = null; // the EventSource of the run being followed

function headers(extra = {}) {
  const token = $("token").value.trim();
  sessionStorage.setItem("runstream-token", token);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function call(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(new URL(path, api), init);
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(`${data.error.message} (${data.error.code})`);
  return data;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  row.appendChild(td);
  return td;
}

async function loadAgents() {
  try {
    const { agents } = await call("GET", "agents");
    $("agent").replaceChildren(...agents.map((a) => {
      const option = document.createElement("option");
      option.value = a.name;
      option.textContent = a.description ? `${a.name}: ${a.description}` : a.name;
      return option;
    }));
  } catch (error) {
    $("start-error").textContent = error.message;
  }
}

async function loadRuns() {
  $("runs-error").textContent = "";
  try {
    const { runs } = await call("GET", "runs?limit=20");
    $("run-rows").replaceChildren(...runs.map((run) => {
      const row = document.createElement("tr");
      row.dataset.runId = run.id;
      cell(row, run.id);
      cell(row, run.agent);
      cell(row, run.status).className = `status-${run.status}`;
      cell(row, run.created_at);
      const button = document.createElement("button");
      button.textContent = "Follow";
      button.addEventListener("click", () => follow(run.id));
      cell(row, "").appendChild(button);
      return row;
    }));
  } catch (error) {
    $("runs-error").textContent = error.message;
  }
}

async function start(event) {
  event.preventDefault();
  $("start-error").textContent = "";
  let input;
  try {
    input = JSON.parse($("input").value);
  } catch (error) {
    $("start-error").textContent = `input is not JSON: ${error.message}`;
    return;
  }
  try {
    const run = await call("POST", "runs", { agent: $("agent").value, input });
    await loadRuns();
    await follow(run.id);
  } catch (error) {
    $("start-error").textContent = error.message;
  }
}

function show(type, data) {
  const item = document.createElement("li");
  item.dataset.seq = data.seq;
  item.dataset.type = type;
  if (type === "gap") {
    item.className = "gap";
    item.textContent = `gap: events ${data.from} to ${data.to} no longer exist`;
  } else if (type === "status") {
    item.textContent = `${data.seq} status ${data.status}${data.error ? `: ${data.error}` : ""}`;
  } else {
    const { seq, ts, type: _, ...rest } = data;
    item.textContent = `${seq} ${type} ${typeof rest.text === "string" ? rest.text : JSON.stringify(rest)}`;
  }
  $("events").appendChild(item);
}

async function follow(runId) {
  if (source) source.close();
  $("run-id").textContent = runId;
  $("run-status").textContent = "connecting";
  $("events").replaceChildren();
  // A ticket, valid for this run's stream only, so no key ever goes into a URL.
  const { ticket } = await call("POST", `runs/${runId}/ticket`);
  const url = new URL(`runs/${runId}/stream`, api);
  url.searchParams.set("ticket", ticket);
  source = new EventSource(url);
  let last = 0; // the last seq shown
  let queue = Promise.resolve(); // events are handled one after another, in order
  const handle = async (type, data) => {
    if (data.seq <= last) return; // already shown (a reconnection replays nothing twice)
    // EventSource dispatches by type and the page cannot listen for types it does not
    // know: whatever came in between is read from the JSON pages of the same log.
    while (data.seq > last + 1) {
      const before = last;
      const page = await call("GET", `runs/${runId}/events?after=${last}&limit=500`);
      for (const missed of page.events) {
        if (missed.seq >= data.seq) break;
        await handle(missed.type, missed);
      }
      if (last === before) break; // nothing more to read: show what came
    }
    last = data.seq;
    show(type, data);
    if (type === "status") {
      $("run-status").textContent = data.status;
      $("run-status").className = `status status-${data.status}`;
      if (data.status !== "running") {
        source.close();
        loadRuns();
      }
    }
  };
  const onEvent = (message) => {
    const data = JSON.parse(message.data);
    queue = queue.then(() => handle(message.type, data)).catch((error) => {
      $("run-status").textContent = error.message;
    });
  };
  for (const type of ["status", "gap", "token", "tick", "message"]) source.addEventListener(type, onEvent);
  source.onopen = () => { if ($("run-status").textContent === "connecting") $("run-status").textContent = "live"; };
  source.onerror = () => {
    // EventSource reconnects by itself with Last-Event-ID; a ticket that expired
    // meanwhile is refused for good, so the page asks for a new one.
    if (source.readyState === EventSource.CLOSED && !$("run-status").className.includes("status-")) {
      follow(runId);
    }
  };
}

window.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("runstream-token") || "";
  $("start-form").addEventListener("submit", start);
  $("refresh").addEventListener("click", loadRuns);
  $("token").addEventListener("change", () => { loadAgents(); loadRuns(); });
  loadAgents();
  loadRuns();
});
