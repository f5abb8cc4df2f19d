// The user's sessions (ListSessions), reopening one (its history from ListMessages and its
// unfinished run from ListRuns), renaming (UpdateSession), ending (EndSession) and deleting one
// (DeleteSession), and search across conversations.
import { api } from "./api.js";

const $ = (sel) => document.querySelector(sel);
// A run waiting for a client's tool output or a person's approval is unfinished too: its page shows
// the pending calls so they can be answered after a reload or from a second tab.
export const WAITING = ["RUN_STATE_REQUIRES_ACTION", "RUN_STATE_REQUIRES_APPROVAL"];
const LIVE = ["RUN_STATE_RUNNING", "RUN_STATE_QUEUED", ...WAITING];

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
}

export async function listSessions() {
  const { sessions } = await api.call("OrchestrationService.ListSessions", { pageSize: 50 });
  return sessions;
}

// The session's newest run that is still QUEUED, RUNNING or waiting (ListRuns is newest first); a
// waiting one as GetRun has it, with its pendingToolCalls.
export async function activeRun(sessionId) {
  const { runs } = await api.call("OrchestrationService.ListRuns", { sessionId, pageSize: 5 });
  const run = runs.find((r) => LIVE.includes(r.state)) || null;
  if (!run || !WAITING.includes(run.state)) return run;
  return (await api.call("OrchestrationService.GetRun", { runId: run.id })).run;
}

export async function history(conversationId) {
  const { messages } = await api.call("ConversationService.ListMessages", { conversationId, pageSize: 500 });
  const shown = ["MESSAGE_ROLE_USER", "MESSAGE_ROLE_ASSISTANT", "MESSAGE_ROLE_TOOL"];
  return messages.filter((m) => shown.includes(m.role));
}

export async function endSession(sessionId) {
  await api.call("OrchestrationService.EndSession", { sessionId });
}

export async function renameSession(sessionId, title) {
  await api.call("OrchestrationService.UpdateSession", { session: { id: sessionId, title }, updateMask: "title" });
}

export async function deleteSession(sessionId) {
  await api.call("OrchestrationService.DeleteSession", { sessionId });
}

// Renders the list; open(session) reopens one, end(session) ends it, rename(session, title) and
// remove(session) rename and delete it.
export function renderSessions(sessions, { agentName, currentId, open, end, rename, remove }) {
  const list = $("#sessions");
  list.textContent = "";
  for (const s of sessions) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "session" + (s.id === currentId ? " active" : "");
    b.dataset.sessionId = s.id;
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = s.title || agentName(s.agentId);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent =
      (s.title ? agentName(s.agentId) + " · " : "") +
      (s.state === "SESSION_STATE_ENDED" ? "ended · " : "") +
      when(s.updateTime || s.createTime);
    b.append(title, meta);
    b.onclick = () => open(s);
    li.appendChild(b);
    const name = s.title || agentName(s.agentId);
    const actions = document.createElement("span");
    actions.className = "session-actions";
    actions.append(
      small("Rename", "Rename session " + name, () => renameForm(li, s, rename)),
      ...(s.state === "SESSION_STATE_ENDED" ? [] : [small("End", "End session " + name, () => end(s))]),
      small("Delete", "Delete session " + name, () => {
        // Deleting erases the conversation for good: asked once more.
        if (window.confirm(`Delete the session "${name}" and its messages? This cannot be undone.`)) remove(s);
      }),
    );
    li.appendChild(actions);
    list.appendChild(li);
  }
}

function small(text, label, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.onclick = onclick;
  return b;
}

// The list item becomes a form with the title; Enter saves, Escape or Cancel gives up.
function renameForm(li, s, rename) {
  const form = document.createElement("form");
  form.className = "rename-form";
  const id = "rename-" + s.id;
  const label = document.createElement("label");
  label.className = "sr-only";
  label.htmlFor = id;
  label.textContent = "New session title";
  const input = document.createElement("input");
  input.id = id;
  input.name = "title";
  input.maxLength = 256;
  input.value = s.title || "";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "small";
  save.textContent = "Save";
  const cancel = small("Cancel", "Cancel renaming", () => form.replaceWith(...kept));
  const kept = [...li.childNodes];
  form.append(label, input, save, cancel);
  form.onsubmit = (e) => {
    e.preventDefault();
    rename(s, input.value.trim());
  };
  input.onkeydown = (e) => {
    if (e.key === "Escape") {
      e.stopPropagation();
      form.replaceWith(...kept);
    }
  };
  li.textContent = "";
  li.appendChild(form);
  input.focus();
}

export async function search(query) {
  const { results } = await api.call("ConversationService.SearchConversations", { query, pageSize: 20 });
  return results;
}

// Search results; each opens its conversation's session. The snippet marks hits with [[ ]]:
// shown as <mark> built from text nodes, never as HTML.
export function renderResults(results, open) {
  const list = $("#search-results");
  list.textContent = "";
  if (!results.length) {
    const li = document.createElement("li");
    li.textContent = "No matches.";
    list.appendChild(li);
  }
  for (const r of results) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "result";
    const parts = (r.snippet || r.message?.content || "").split(/\[\[|\]\]/);
    parts.forEach((p, i) => {
      if (i % 2) {
        const m = document.createElement("mark");
        m.textContent = p;
        b.appendChild(m);
      } else b.appendChild(document.createTextNode(p));
    });
    b.onclick = () => open(r);
    li.appendChild(b);
    list.appendChild(li);
  }
}
