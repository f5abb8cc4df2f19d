// The chat WebSocket (/v1/ws, docs/gateway.md): reconnects by itself and resumes every unfinished
// run from the last event id the page has. Frames go to handlers by type, so a new frame type
// (tool calls, branches) is one more entry in the handlers object, not a change here.

export const TERMINAL = ["run_completed", "run_failed", "run_cancelled"];

export class ChatSocket {
  // handlers: {[frame type]: (frame) => void}; onState("online" | "reconnecting" | "offline").
  constructor({ token, handlers, onState, onAuthFailed }) {
    this.token = token;
    this.handlers = handlers;
    this.onState = onState;
    this.onAuthFailed = onAuthFailed;
    this.runs = new Map(); // run_id -> {session_id, last, done}
    this.backoff = 500;
    this.closedByUs = false;
    this.ws = null;
    this.ready = false; // this.ws has said `connected`
    // Frames the user sent while no socket was ready (a token swap, a reconnect): sent on the
    // next one, in order, instead of being dropped.
    this.queue = [];
    // chat_message frames whose run the page has not seen yet. The socket they went out on may be
    // closed before the run's first frame reaches the page (a swap right after the send), so each
    // new socket sends them again: orchestration answers a repeated request_id with the first run,
    // streamed from its start, never a second run.
    this.unacked = [];
  }

  open() {
    this.closedByUs = false;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/ws";
    const ws = new WebSocket(url, ["agentmesh.v1", "bearer." + this.token()]);
    this.ws = ws;
    this.ready = false;
    ws.onmessage = (e) => this.receive(ws, JSON.parse(e.data));
    ws.onclose = (e) => {
      if (ws !== this.ws) return; // a socket replaced by reopen()
      if (this.closedByUs) return this.onState("offline");
      if (e.code === 4401) {
        // The token was refused: a refresh gets a new one (or signs out), then try again.
        this.onState("reconnecting");
        this.onAuthFailed().then(
          () => this.open(),
          () => this.onState("offline"),
        );
        return;
      }
      this.onState("reconnecting");
      setTimeout(() => !this.closedByUs && this.open(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 8000);
    };
  }

  // A new token: the socket keeps the one it was opened with for the streams it opens later, so
  // it is replaced; unfinished runs resume on the new one.
  reopen() {
    if (this.closedByUs) return;
    const old = this.ws;
    this.open();
    if (old) old.close(1000);
  }

  close() {
    this.closedByUs = true;
    this.queue = [];
    this.unacked = [];
    if (this.ws) this.ws.close(1000);
  }

  // Follows a run the page learned of elsewhere (ListRuns after a reload) from `after`.
  follow(runId, sessionId, after = 0) {
    const r = this.runs.get(runId) || { session_id: sessionId, last: after, done: false };
    this.runs.set(runId, r);
    this.send({ type: "resume", session_id: sessionId, run_id: runId, after_event_id: r.last });
  }

  receive(ws, m) {
    if (this.closedByUs || ws !== this.ws) return; // in flight when the user signed out or we reopened
    if (m.type === "system_event" && m.event === "connected") {
      this.backoff = 500;
      this.ready = true;
      this.onState("online");
      for (const [run_id, r] of this.runs) {
        if (!r.done) this.send({ type: "resume", session_id: r.session_id, run_id, after_event_id: r.last });
      }
      for (const frame of this.unacked) this.write(frame);
      for (const frame of this.queue.splice(0)) this.write(frame);
      return;
    }
    if (m.type === "error" && this.resumeAfterCut(m)) return;
    if (m.type === "error" && m.request_id) this.ack((f) => f.request_id === m.request_id);
    if (m.run_id && m.event_id) {
      // A run new to the page is the answer to this session's oldest message still unanswered:
      // one session runs one message at a time, in the order they were sent.
      if (!this.runs.has(m.run_id)) this.ack((f) => f.session_id === m.session_id);
      const r = this.runs.get(m.run_id) || { session_id: m.session_id, last: 0, done: false };
      if (m.event_id <= r.last) return; // already seen: never show a duplicate
      r.last = m.event_id;
      if (TERMINAL.includes(m.event)) r.done = true;
      this.runs.set(m.run_id, r);
    }
    const handler = this.handlers[m.type];
    if (handler) handler(m);
  }

  // Orchestration cut this session's stream because the page read too slowly (a busy tab): the error
  // names the run (ErrorInfo SLOW_READER) and the socket stays open, so every unfinished run of
  // the session resumes on it from the last event the page has. Nothing to show the user.
  resumeAfterCut(m) {
    const info = (m.details || []).find((d) => d.reason === "SLOW_READER");
    const cut = info && this.runs.get(info.metadata?.run_id);
    if (!cut) return false;
    for (const [run_id, r] of this.runs) {
      if (r.session_id === cut.session_id && !r.done) {
        this.send({ type: "resume", session_id: r.session_id, run_id, after_event_id: r.last });
      }
    }
    return true;
  }

  ack(match) {
    const i = this.unacked.findIndex(match);
    if (i >= 0) this.unacked.splice(i, 1);
  }

  // True when the frame is sent or will be once a socket is ready; false after close().
  send(obj) {
    if (this.closedByUs || !this.ws) return false;
    if (obj.type === "chat_message") this.unacked.push(obj);
    if (this.ready && this.ws.readyState === WebSocket.OPEN) this.write(obj);
    // A resume needs no queue: every socket resumes the unfinished runs once it is connected.
    else if (obj.type !== "chat_message" && obj.type !== "resume") this.queue.push(obj);
    return true;
  }

  write(obj) {
    this.ws.send(JSON.stringify(obj));
  }
}
