// The user's sessions (ListSessions), reopening one (its history from ListMessages and its
// unfinished run from ListRuns), ending one (EndSession), and search across conversations.
// Rename and delete need RPCs that do not exist yet: when OrchestrationService.UpdateSession /
// DeleteSession appear in /v1/_routes, `sessionActions` is where their buttons go.
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

// Renders the list; open(session) reopens one, end(session) ends it.
export function renderSessions(sessions, { agentName, currentId, open, end }) {
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
    title.textContent = agentName(s.agentId);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = (s.state === "SESSION_STATE_ENDED" ? "ended · " : "") + when(s.updateTime || s.createTime);
    b.append(title, meta);
    b.onclick = () => open(s);
    li.appendChild(b);
    li.append(...sessionActions(s, end, agentName(s.agentId)));
    list.appendChild(li);
  }
}

function sessionActions(s, end, name) {
  if (s.state === "SESSION_STATE_ENDED") return [];
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = "End";
  b.setAttribute("aria-label", "End session with " + name);
  b.onclick = () => end(s);
  return [b];
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
