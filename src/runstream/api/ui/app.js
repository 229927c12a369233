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

let following = 0; // which follow() is current: an older one's events are dropped

async function follow(runId) {
  const generation = ++following;
  if (source) source.close();
  source = null;
  $("run-id").textContent = runId;
  $("run-status").textContent = "connecting";
  $("run-status").className = "status";
  $("events").replaceChildren();
  let last = 0; // the last seq shown
  let finished = false;
  let queue = Promise.resolve(); // events are handled one after another, in order
  const current = () => generation === following;

  const handle = async (type, data) => {
    if (!current() || data.seq <= last) return; // another run now, or already shown
    // EventSource dispatches by type and the page cannot listen for types it does not
    // know: whatever came in between is read from the JSON pages of the same log.
    while (data.seq > last + 1) {
      const before = last;
      const page = await call("GET", `runs/${runId}/events?after=${last}&limit=500`);
      for (const missed of page.events) {
        if (missed.seq >= data.seq) break;
        await handle(missed.type, missed);
      }
      if (!current() || last === before) break; // nothing more to read: show what came
    }
    if (!current()) return;
    last = data.seq;
    show(type, data);
    if (type === "status") {
      $("run-status").textContent = data.status;
      $("run-status").className = `status status-${data.status}`;
      if (data.status !== "running") {
        finished = true;
        mine.close();
        loadRuns();
      }
    }
  };

  const open = async () => {
    // A ticket, valid for this run's stream only, so no key ever goes into a URL. A
    // fresh one for every connection: EventSource's own reconnects reuse the URL, and
    // an expired ticket is refused for good (then we come back here with ?after=).
    const { ticket } = await call("POST", `runs/${runId}/ticket`);
    if (!current()) return null;
    const url = new URL(`runs/${runId}/stream`, api);
    url.searchParams.set("ticket", ticket);
    if (last) url.searchParams.set("after", String(last));
    return new EventSource(url);
  };

  let mine = await open();
  if (!mine) return;
  const attach = (es) => {
    source = es;
    const onEvent = (message) => {
      const data = JSON.parse(message.data);
      queue = queue.then(() => handle(message.type, data)).catch((error) => {
        if (current()) $("run-status").textContent = error.message;
      });
    };
    for (const type of ["status", "gap", "token", "tick", "message"]) es.addEventListener(type, onEvent);
    es.onopen = () => {
      if (current() && !finished) $("run-status").textContent = "running";
    };
    es.onerror = () => {
      if (!current() || finished || es.readyState !== EventSource.CLOSED) return;
      // Closed for good (an expired ticket, a 4xx): reconnect ourselves after a pause.
      setTimeout(async () => {
        if (!current() || finished) return;
        const next = await open().catch(() => null);
        if (next && current()) {
          mine = next;
          attach(next);
        }
      }, 1000);
    };
  };
  attach(mine);
}

window.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("runstream-token") || "";
  $("start-form").addEventListener("submit", start);
  $("refresh").addEventListener("click", loadRuns);
  $("token").addEventListener("change", () => { loadAgents(); loadRuns(); });
  loadAgents();
  loadRuns();
});
