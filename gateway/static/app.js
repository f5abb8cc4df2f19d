// agentmesh chat page. The REST client is generic: routes come from /v1/_routes (built from the
// protos), so a new RPC with an http rule is callable here as api.call("Service.Method", params).
"use strict";

const store = window.sessionStorage;
const $ = (sel) => document.querySelector(sel);

function camel(name) {
  return name.split(".").map((p) => p.replace(/_([a-z])/g, (_, c) => c.toUpperCase())).join(".");
}

function take(obj, path) {
  const parts = camel(path).split(".");
  let cur = obj;
  for (let i = 0; i < parts.length - 1; i++) {
    if (cur == null) return undefined;
    cur = cur[parts[i]];
  }
  if (cur == null) return undefined;
  const value = cur[parts[parts.length - 1]];
  delete cur[parts[parts.length - 1]];
  return value;
}

class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

const api = {
  routes: {},
  token: () => store.getItem("token"),
  async load() {
    const res = await fetch("/v1/_routes");
    for (const r of (await res.json()).routes) if (!(r.name in this.routes)) this.routes[r.name] = r;
  },
  async call(name, params = {}) {
    const route = this.routes[name];
    if (!route) throw new Error(`unknown RPC ${name}`);
    const rest = structuredClone(params);
    let path = route.path.replace(/\{([^}=]+)(=[^}]*)?\}/g, (_, v) => encodeURIComponent(take(rest, v) ?? ""));
    let body;
    if (route.body === "*") body = JSON.stringify(rest);
    else if (route.body) body = JSON.stringify(rest[camel(route.body)] ?? {});
    else {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(rest)) if (v !== undefined && v !== "") q.append(k, v);
      if ([...q].length) path += "?" + q;
    }
    const headers = { "Content-Type": "application/json" };
    if (this.token()) headers.Authorization = "Bearer " + this.token();
    const res = await fetch(path, { method: route.method, headers, body });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  },
};

function toast(text) {
  const el = $("#toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), 4000);
}

// ---- chat socket: reconnects by itself and resumes unfinished runs from their last event id ----
class ChatSocket {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.runs = new Map(); // run_id -> {session_id, last, done}
    this.backoff = 500;
    this.closedByUs = false;
  }
  open() {
    this.closedByUs = false;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
    this.ws = new WebSocket(url, ["agentmesh.v1", "bearer." + api.token()]);
    this.ws.onmessage = (e) => this.receive(JSON.parse(e.data));
    this.ws.onclose = (e) => {
      $("#socket-state").textContent = "offline";
      $("#socket-state").classList.remove("online");
      if (this.closedByUs || e.code === 4401) {
        if (e.code === 4401) signOut("Your session expired; please sign in again.");
        return;
      }
      setTimeout(() => this.open(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 8000);
    };
  }
  close() {
    this.closedByUs = true;
    if (this.ws) this.ws.close(1000);
  }
  receive(m) {
    if (this.closedByUs) return; // a frame already in flight when the user signed out
    if (m.type === "system_event" && m.event === "connected") {
      this.backoff = 500;
      $("#socket-state").textContent = "online";
      $("#socket-state").classList.add("online");
      for (const [run_id, r] of this.runs) {
        if (!r.done) this.send({ type: "resume", session_id: r.session_id, run_id, after_event_id: r.last });
      }
      return;
    }
    if (m.run_id) {
      const r = this.runs.get(m.run_id) || { session_id: m.session_id, last: 0, done: false };
      if (m.event_id <= r.last) return; // already seen: never show a duplicate
      r.last = m.event_id;
      if (["run_completed", "run_failed", "run_cancelled"].includes(m.event)) r.done = true;
      this.runs.set(m.run_id, r);
    }
    this.onMessage(m);
  }
  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }
}

// ---- the page ----
let socket = null;
let current = JSON.parse(store.getItem("session") || "null");
let activeRun = null;
const bubbles = new Map(); // run_id -> element

function bubble(role, text) {
  const el = document.createElement("div");
  el.className = "msg " + role;
  el.textContent = text;
  $("#messages").appendChild(el);
  $("#messages").scrollTop = $("#messages").scrollHeight;
  return el;
}

function setRunning(runId) {
  activeRun = runId;
  $("#stop").disabled = !runId;
}

function onSocketMessage(m) {
  if (m.type === "error") {
    toast(`${m.error_code}: ${m.error_message}` + (m.retry_after ? ` (retry in ${m.retry_after}s)` : ""));
    return;
  }
  if (current && m.session_id && m.session_id !== current.id) return;
  let el = m.run_id ? bubbles.get(m.run_id) : null;
  if (m.type === "system_event" && (m.event === "run_created" || m.event === "run_started")) {
    setRunning(m.run_id);
    if (!el) {
      el = bubble("assistant streaming", "");
      bubbles.set(m.run_id, el);
    }
  } else if (m.type === "agent_response") {
    if (!el) {
      el = bubble("assistant streaming", "");
      bubbles.set(m.run_id, el);
    }
    if (m.delta !== undefined) el.textContent += m.delta;
    if (m.final !== undefined) el.textContent = m.final;
    $("#messages").scrollTop = $("#messages").scrollHeight;
  } else if (m.type === "system_event" && ["run_completed", "run_failed", "run_cancelled"].includes(m.event)) {
    if (el) {
      el.classList.remove("streaming");
      if (m.event !== "run_completed") el.classList.add("partial");
    }
    if (m.event === "run_failed") toast("The answer failed: " + (m.error?.message || "unknown error"));
    setRunning(null);
  }
}

async function loadAgents() {
  const { agents } = await api.call("AgentService.ListAgents", { pageSize: 100 });
  if (!api.token()) return; // signed out while the list was on its way
  const list = $("#agents");
  list.textContent = "";
  for (const a of agents) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.textContent = a.displayName || a.id;
    b.dataset.agentId = a.id;
    if (current && current.agentId === a.id) b.classList.add("active");
    b.onclick = () => startSession(a);
    li.appendChild(b);
    list.appendChild(li);
  }
}

async function startSession(agent) {
  try {
    const { session } = await api.call("OrchestrationService.StartSession", { agentId: agent.id });
    current = { id: session.id, conversationId: session.conversationId, agentId: agent.id, title: agent.displayName };
    store.setItem("session", JSON.stringify(current));
    await showSession();
    await loadAgents();
  } catch (e) {
    toast(e.message);
  }
}

async function showSession() {
  $("#messages").textContent = "";
  bubbles.clear();
  if (!current) return;
  $("#chat-title").textContent = "Chat with " + (current.title || current.agentId);
  $("#chat-form input").disabled = false;
  $("#send").disabled = false;
  const { messages } = await api.call("ConversationService.ListMessages", {
    conversationId: current.conversationId,
    pageSize: 200,
  });
  if (!api.token()) return;
  for (const m of messages) {
    const el = bubble(m.role === "MESSAGE_ROLE_USER" ? "user" : "assistant", m.content);
    if (m.metadata?.partial === "true") el.classList.add("partial");
  }
}

// Empties everything a signed-in user saw, so the next person at this browser sees nothing of it.
function clearView() {
  $("#agents").textContent = "";
  $("#messages").textContent = "";
  bubbles.clear();
  setRunning(null);
  $("#chat-title").textContent = "Pick an agent to start a session";
  $("#chat-form").reset();
  $("#chat-form input").disabled = true;
  $("#send").disabled = true;
  $("#create-agent").reset();
  $("#signin-form").reset();
}

function signOut(reason) {
  store.clear();
  if (socket) socket.close();
  socket = null;
  current = null;
  clearView();
  $("#app-view").hidden = true;
  $("#signin-view").hidden = false;
  $("#signout").hidden = true;
  $("#whoami").textContent = "";
  if (reason) toast(reason);
}

async function enter() {
  $("#signin-view").hidden = true;
  $("#app-view").hidden = false;
  $("#signout").hidden = false;
  $("#whoami").textContent = store.getItem("user") || "";
  socket = new ChatSocket(onSocketMessage);
  socket.open();
  try {
    await loadAgents();
    await showSession();
  } catch (e) {
    if (e.status === 401) signOut("Please sign in again.");
    else toast(e.message);
  }
}

// The embedded mode (agentmesh up) publishes its demo sign-in; a production gateway publishes none.
async function loadPage() {
  const { demo } = await (await fetch("/v1/_page")).json();
  if (!demo) return;
  const form = $("#signin-form");
  form.tenant.defaultValue = demo.tenant;
  form.username.defaultValue = demo.users[0].username;
  const hint = $("#demo-hint");
  hint.textContent =
    `Demo (agentmesh up): tenant ${demo.tenant}, ` + demo.users.map((u) => `${u.username} / ${u.password}`).join(" or ");
  hint.hidden = false;
}

document.addEventListener("DOMContentLoaded", async () => {
  await Promise.all([api.load(), loadPage()]);
  $("#signin-form").onsubmit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const reply = await api.call("IdentityService.Login", {
        tenant: f.get("tenant"),
        username: f.get("username"),
        password: f.get("password"),
      });
      store.setItem("token", reply.tokens.accessToken);
      store.setItem("user", f.get("username") + " @ " + f.get("tenant"));
      e.target.reset(); // no password left in the page
      await enter();
    } catch (err) {
      toast(err.message);
    }
  };
  $("#create-agent").onsubmit = async (e) => {
    e.preventDefault();
    const input = e.target.displayName;
    try {
      // A new agent starts from the built-in assistant template (echo model), ready to chat.
      await api.call("AgentService.CreateAgent", {
        agent: { displayName: input.value },
        templateId: "builtin-assistant",
        requestId: crypto.randomUUID(),
      });
      input.value = "";
      await loadAgents();
    } catch (err) {
      toast(err.message);
    }
  };
  $("#chat-form").onsubmit = (e) => {
    e.preventDefault();
    const input = e.target.content;
    const content = input.value.trim();
    if (!content || !current) return;
    if (!socket.send({ type: "chat_message", session_id: current.id, content, request_id: crypto.randomUUID() })) {
      toast("Not connected yet; try again in a moment.");
      return;
    }
    bubble("user", content);
    input.value = "";
  };
  $("#stop").onclick = () => {
    if (activeRun) socket.send({ type: "cancel", run_id: activeRun, session_id: current?.id });
  };
  $("#signout").onclick = () => signOut();
  if (api.token()) await enter();
});
