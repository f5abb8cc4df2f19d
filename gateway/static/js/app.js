// The page's wiring: sign-in and sign-out, the views, the chat frames, the keyboard.
import { api, claims } from "./api.js";
import { ChatSocket, TERMINAL } from "./ws.js";
import { bubble, setText, appendText, finish, stored, scrollDown } from "./render.js";
import * as sessions from "./sessions.js";
import { listAgents, renderAgents, AgentEditor } from "./agents.js";
import { ToolCalls, fromRun, fromStored } from "./tools.js";
import { decorate, editForm, cutFrom } from "./branches.js";

const store = window.sessionStorage;
const $ = (sel) => document.querySelector(sel);
const EDITORS = ["owner", "admin"];

let socket = null;
let page = { demo: null, models: {} };
let current = JSON.parse(store.getItem("session") || "null");
let activeRun = null;
let agents = [];
const bubbles = new Map(); // run_id -> element
// A waiting run's state read at (re)load: {last: its last event id, pending: ids of calls still
// waiting}. Replayed frames up to `last` must not reopen a call that was answered since.
const snapshots = new Map();
// Runs of an edit or a regenerate: when they end, the history is read again (the new branch with
// its switcher replaces the bubbles shown meanwhile).
const reloadAfter = new Set();

function toast(text, kind = "error") {
  const el = $("#toast");
  el.textContent = text;
  el.className = kind;
  el.hidden = false;
  clearTimeout(toast.timer);
  // Success goes away quickly; an error stays long enough to read.
  toast.timer = setTimeout(() => (el.hidden = true), kind === "ok" ? 2000 : 6000);
}
function clearToast() {
  clearTimeout(toast.timer);
  $("#toast").hidden = true;
}

function setPill(state) {
  const pill = $("#socket-state");
  pill.textContent = state;
  pill.className = "pill " + state;
}

const canEdit = () => (claims(api.token() || "").roles || []).some((r) => EDITORS.includes(r));
// Orchestration lets the session's user or an owner or admin decide; anyone else sees read-only.
const mayDecide = () => canEdit() || (!!current?.userId && current.userId === claims(api.token() || "").sub);
const tools = new ToolCalls({
  send: (frame) => socket?.send(frame) || (toast("Not connected yet; try again in a moment."), false),
  mayDecide,
});
const agentName = (id) => agents.find((a) => a.id === id)?.displayName || "Agent " + (id || "").slice(0, 8);

function setRunning(runId) {
  activeRun = runId;
  $("#stop").disabled = !runId;
}

// ---- chat frames ----
function runBubble(runId) {
  let el = bubbles.get(runId);
  if (!el) {
    el = bubble("assistant", "", { streaming: true });
    bubbles.set(runId, el);
  }
  return el;
}

function showCalls(m, calls) {
  const el = runBubble(m.run_id);
  const snap = snapshots.get(m.run_id);
  for (const call of calls) {
    const stale = snap && m.event_id <= snap.last && !snap.pending.has(call.id);
    tools.show(el, m.run_id, m.session_id, stale && call.status.startsWith("awaiting") ? { ...call, status: "answered" } : call);
  }
  scrollDown();
}

// The run waits for a person: the calls named are the ones still waiting, earlier ones were answered.
function waiting(m) {
  if (!current || m.session_id !== current.id) return;
  tools.settle(m.run_id, m.tool_calls.map((c) => c.id));
  showCalls(m, m.tool_calls);
}

const handlers = {
  error(m) {
    if (m.error_code === "UNAUTHENTICATED") return; // the socket refreshes and reconnects
    if (m.request_id) tools.reopen(m.request_id); // a refused decision or output is keyed by its run id
    toast(`${m.error_code}: ${m.error_message}` + (m.retry_after ? ` (retry in ${m.retry_after}s)` : ""));
  },
  system_event(m) {
    if (!current || m.session_id !== current.id) return;
    if (m.event === "run_created" || m.event === "run_started") {
      setRunning(m.run_id);
      runBubble(m.run_id);
    } else if (TERMINAL.includes(m.event)) {
      const expired = m.error?.code === "DEADLINE_EXCEEDED";
      tools.settle(m.run_id, [], m.event === "run_completed" ? "answered" : expired ? "expired" : "cancelled");
      const el = bubbles.get(m.run_id);
      if (el) finish(el, m.event, m.error);
      if (m.event === "run_failed") toast("The answer failed: " + (m.error?.message || "unknown error"));
      if (activeRun === m.run_id) setRunning(null);
      if (reloadAfter.delete(m.run_id)) showSession().catch((e) => toast(e.message));
      refreshSessions();
    }
  },
  agent_response(m) {
    if (!current || m.session_id !== current.id) return;
    const el = runBubble(m.run_id);
    tools.settle(m.run_id);
    if (m.delta !== undefined) appendText(el, m.delta);
    if (m.final !== undefined) setText(el, m.final);
    scrollDown();
  },
  approval_requested: waiting,
  tool_calls_requested: waiting,
  tool_call(m) {
    if (!current || m.session_id !== current.id) return;
    tools.settle(m.run_id, [m.tool_call.id]);
    showCalls(m, [m.tool_call]);
  },
  pong() {},
};

// ---- sessions ----
async function refreshSessions() {
  try {
    const list = await sessions.listSessions();
    if (!api.token()) return;
    sessions.renderSessions(list, {
      agentName,
      currentId: current?.id,
      open: openSession,
      end: endSession,
      rename: renameSession,
      remove: deleteSession,
    });
  } catch (e) {
    toast(e.message);
  }
}

const chatTitle = () =>
  current.title ? `${current.title} · ${agentName(current.agentId)}` : "Chat with " + agentName(current.agentId);

function showChat() {
  $("#agent-view").hidden = true;
  $("#chat-view").hidden = false;
}

// Shows a session: its stored history, then its unfinished run (if any) continued over the socket
// from the last event the page has, so a reload or a second tab picks the answer up where it is.
async function showSession() {
  showChat();
  $("#messages").textContent = "";
  bubbles.clear();
  tools.clear();
  snapshots.clear();
  setRunning(null);
  if (!current) return;
  $("#chat-title").textContent = chatTitle();
  const ended = current.state === "SESSION_STATE_ENDED";
  $("#composer").disabled = ended;
  $("#send").disabled = ended;
  const shown = current.id;
  const [messages, run] = await Promise.all([
    sessions.history(current.conversationId),
    sessions.activeRun(current.id).catch(() => null), // no run to continue is the safe answer
  ]);
  if (!api.token() || current?.id !== shown) return;
  showStored(messages, run);
  if (run) {
    setRunning(run.id);
    const el = runBubble(run.id);
    if (sessions.WAITING.includes(run.state)) {
      // The pending calls come from the run itself; the replay below adds the calls before them.
      const pending = (run.pendingToolCalls || []).map(fromRun);
      snapshots.set(run.id, { last: Number(run.lastEventId || 0), pending: new Set(pending.map((c) => c.id)) });
      for (const call of pending) tools.show(el, run.id, current.id, call);
    }
    socket.follow(run.id, current.id, 0);
  }
}

// The stored history: a run's tool calls (an assistant message's toolCalls, each answered by a tool
// message) and its answer in one bubble, as they were shown live.
function showStored(messages, run) {
  const results = new Map(messages.filter((m) => m.role === "MESSAGE_ROLE_TOOL").map((m) => [m.toolCallId, m]));
  const byRun = new Map();
  const decorated = [];
  for (const m of messages) {
    // The live run's answer is not stored yet, except as a partial; it streams in below instead.
    if (run && m.metadata?.run_id === run.id) continue;
    if (m.role === "MESSAGE_ROLE_TOOL") continue;
    const runId = m.metadata?.run_id;
    let el = m.role === "MESSAGE_ROLE_ASSISTANT" && runId ? byRun.get(runId) : null;
    if (el && m.content) setText(el, m.content);
    if (!el) {
      el = stored(m);
      decorated.push([el, m]); // a run's first answer message carries its siblings
    }
    if (m.role === "MESSAGE_ROLE_ASSISTANT" && runId) byRun.set(runId, el);
    for (const ref of m.toolCalls || []) tools.show(el, runId, current.id, fromStored(ref, results.get(ref.id)));
  }
  const enabled = current.state !== "SESSION_STATE_ENDED";
  for (const [el, m] of decorated) decorate(el, m, { edit: editMessage, regenerate, switchTo: switchBranch, enabled });
}

// ---- branches ----
function idle() {
  if (!activeRun) return true;
  toast("Wait for the answer to finish (or stop it) first.");
  return false;
}

// A run of an edit or a regenerate: the bubbles from `el` on give way to its answer as it streams.
function followBranch(run, el, userText) {
  cutFrom(el);
  if (userText !== undefined) bubble("user", userText);
  reloadAfter.add(run.id);
  setRunning(run.id);
  runBubble(run.id);
  socket.follow(run.id, current.id, 0);
}

function editMessage(el, m) {
  if (!idle()) return;
  editForm(el, m.content, {
    cancel: () => showSession().catch((e) => toast(e.message)),
    save: async (text) => {
      try {
        const { run } = await api.call("OrchestrationService.EditMessage", {
          sessionId: current.id,
          messageId: m.id,
          text,
          requestId: crypto.randomUUID(),
        });
        followBranch(run, el, text);
      } catch (e) {
        toast(e.message);
      }
    },
  });
}

async function regenerate(el, m) {
  if (!idle()) return;
  try {
    const { run } = await api.call("OrchestrationService.RegenerateAnswer", {
      sessionId: current.id,
      messageId: m.id,
      requestId: crypto.randomUUID(),
    });
    followBranch(run, el);
  } catch (e) {
    toast(e.message);
  }
}

async function switchBranch(messageId) {
  if (!idle()) return;
  try {
    await api.call("OrchestrationService.SwitchBranch", { sessionId: current.id, messageId });
    await showSession();
  } catch (e) {
    toast(e.message);
  }
}

async function openSession(s) {
  current = {
    id: s.id,
    userId: s.userId,
    conversationId: s.conversationId,
    agentId: s.agentId,
    title: s.title || "",
    state: s.state,
  };
  store.setItem("session", JSON.stringify(current));
  try {
    await showSession();
    await refreshSessions();
    renderAgentList();
  } catch (e) {
    toast(e.message);
  }
}

async function endSession(s) {
  try {
    await sessions.endSession(s.id);
    if (current?.id === s.id) {
      current.state = "SESSION_STATE_ENDED";
      store.setItem("session", JSON.stringify(current));
      $("#composer").disabled = true;
      $("#send").disabled = true;
    }
    toast("Session ended", "ok");
    await refreshSessions();
  } catch (e) {
    toast(e.message);
  }
}

async function renameSession(s, title) {
  try {
    await sessions.renameSession(s.id, title);
    if (current?.id === s.id) {
      current.title = title;
      store.setItem("session", JSON.stringify(current));
      $("#chat-title").textContent = chatTitle();
    }
    toast("Session renamed", "ok");
    await refreshSessions();
  } catch (e) {
    toast(e.message);
  }
}

async function deleteSession(s) {
  try {
    await sessions.deleteSession(s.id);
    if (current?.id === s.id) {
      current = null;
      store.removeItem("session");
      $("#messages").textContent = "";
      $("#chat-title").textContent = "Pick an agent to start a session";
      $("#composer").disabled = true;
      $("#send").disabled = true;
      setRunning(null);
    }
    toast("Session deleted", "ok");
    await refreshSessions();
  } catch (e) {
    toast(e.message);
  }
}

async function startSession(agent) {
  try {
    const { session } = await api.call("OrchestrationService.StartSession", { agentId: agent.id });
    await openSession(session);
  } catch (e) {
    toast(e.message);
  }
}

// ---- agents ----
function renderAgentList() {
  renderAgents(agents, { currentAgentId: current?.agentId, canEdit: canEdit(), chat: startSession, edit: editAgent });
}

async function loadAgents() {
  const list = await listAgents();
  if (!api.token()) return; // signed out while the list was on its way
  agents = list;
  renderAgentList();
}

const editor = new AgentEditor({ toast, changed: () => loadAgents().catch((e) => toast(e.message)) });

async function editAgent(agent) {
  try {
    const tier = (claims(api.token()).tier || "").toLowerCase();
    await editor.open(agent, { canEdit: canEdit(), models: page.models[tier] || [] });
    $("#chat-view").hidden = true;
    $("#agent-view").hidden = false;
    $("#f-displayName").focus();
  } catch (e) {
    toast(e.message);
  }
}

// ---- signing in and out ----
// Empties everything a signed-in user saw, so the next person at this browser sees nothing of it.
function clearView() {
  for (const id of ["#agents", "#sessions", "#search-results", "#messages", "#versions", "#diff"]) $(id).textContent = "";
  bubbles.clear();
  tools.clear();
  agents = [];
  setRunning(null);
  $("#chat-title").textContent = "Pick an agent to start a session";
  for (const f of ["#chat-form", "#create-agent", "#signin-form", "#search-form", "#agent-form"]) $(f).reset();
  $("#composer").disabled = true;
  $("#send").disabled = true;
  showChat();
}

function toSignIn(reason) {
  if (socket) socket.close();
  socket = null;
  current = null;
  clearView();
  clearToast();
  setPill("offline");
  $("#app-view").hidden = true;
  $("#signin-view").hidden = false;
  $("#signout").hidden = true;
  $("#whoami").textContent = "";
  const msg = $("#signin-message");
  msg.textContent = reason || "";
  msg.hidden = !reason;
}

async function signOut() {
  await api.logout();
  toSignIn();
}

async function enter() {
  $("#signin-view").hidden = true;
  $("#signin-message").hidden = true;
  $("#app-view").hidden = false;
  $("#signout").hidden = false;
  $("#create-agent").hidden = !canEdit();
  $("#whoami").textContent = store.getItem("user") || "";
  api.schedule();
  socket = new ChatSocket({
    token: () => api.token(),
    handlers,
    onState: setPill,
    onAuthFailed: () => api.refresh(),
  });
  setPill("reconnecting");
  socket.open();
  try {
    await loadAgents();
    await Promise.all([showSession(), refreshSessions()]);
  } catch (e) {
    if (e.status === 401) toSignIn(e.message);
    else toast(e.message);
  }
}

// The embedded mode (agentmesh up) publishes its demo sign-in; a production gateway publishes none.
async function loadPage() {
  const [config, tiers] = await Promise.all([fetch("/v1/_page"), fetch("/v1/_models")].map((r) => r.then((x) => x.json())));
  page = { ...config, models: tiers.models || {} };
  const { demo } = page;
  if (!demo) return;
  const form = $("#signin-form");
  form.tenant.defaultValue = demo.tenant;
  form.username.defaultValue = demo.users[0].username;
  const hint = $("#demo-hint");
  hint.textContent =
    `Demo (agentmesh up): tenant ${demo.tenant}, ` + demo.users.map((u) => `${u.username} / ${u.password}`).join(" or ");
  hint.hidden = false;
}

function send() {
  const input = $("#composer");
  const content = input.value.trim();
  if (!content || !current || input.disabled) return;
  if (!socket.send({ type: "chat_message", session_id: current.id, content, request_id: crypto.randomUUID() })) {
    toast("Not connected yet; try again in a moment.");
    return;
  }
  // A session without a title takes its first message's beginning (the list shows it).
  if (!current.title && !$("#messages .msg")) {
    const title = content.replace(/\s+/g, " ").slice(0, 60);
    current.title = title;
    store.setItem("session", JSON.stringify(current));
    sessions.renameSession(current.id, title).then(refreshSessions, () => {});
  }
  bubble("user", content);
  input.value = "";
}

function stop() {
  if (!activeRun) return;
  if (!socket.send({ type: "cancel", run_id: activeRun, session_id: current?.id })) {
    api.call("OrchestrationService.CancelRun", { runId: activeRun }).catch((e) => toast(e.message));
  }
}

function wire() {
  api.onSignedOut = (reason) => toSignIn(reason);
  // A new access token: the socket's upstream streams must carry it from now on.
  api.onTokens = () => socket?.reopen();
  $("#signin-form").onsubmit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      const reply = await api.call("IdentityService.Login", {
        tenant: f.get("tenant"),
        username: f.get("username"),
        password: f.get("password"),
      });
      api.keep(reply.tokens);
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
  $("#search-form").onsubmit = async (e) => {
    e.preventDefault();
    try {
      const results = await sessions.search(e.target.query.value);
      const list = await sessions.listSessions();
      sessions.renderResults(results, (r) => {
        const s = list.find((x) => x.conversationId === r.conversation?.id);
        if (s) openSession(s);
        else toast("That conversation has no session of yours to open.");
      });
    } catch (err) {
      toast(err.message);
    }
  };
  $("#chat-form").onsubmit = (e) => {
    e.preventDefault();
    send();
  };
  $("#composer").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && activeRun) stop();
  });
  $("#stop").onclick = stop;
  $("#agent-close").onclick = showChat;
  $("#signout").onclick = () => signOut();
}

document.addEventListener("DOMContentLoaded", async () => {
  await Promise.all([api.load(), loadPage()]);
  wire();
  if (api.token()) await enter();
});
