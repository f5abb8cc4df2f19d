// Tool calls inside an answer bubble: one compact block per call (name, arguments as formatted
// JSON, status, duration, result or error), updated from the socket's frames (docs/gateway.md).
// A call awaiting approval gets Approve / Deny (with an optional reason) for whoever may decide and
// a read-only line for anyone else; a client call gets a small form whose output goes back as a
// tool_outputs frame. Everything a tool or model wrote is set with textContent, never as HTML.

const WAITING = ["awaiting_approval", "awaiting_output"];
const LABELS = {
  awaiting_approval: "awaiting approval",
  awaiting_output: "awaiting output",
  running: "running",
  completed: "completed",
  denied: "denied",
  expired: "expired",
  cancelled: "cancelled",
  answered: "answered",
  sent: "sent",
};

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// Arguments as indented JSON; text that is not JSON is shown as it came.
function pretty(json) {
  try {
    return JSON.stringify(JSON.parse(json || "{}"), null, 2);
  } catch {
    return json;
  }
}

// A stored (conversation) or frame call in the frames' shape: {id, name, arguments_json, status, ...}.
export function fromStored(ref, result) {
  return {
    id: ref.id,
    name: ref.name,
    arguments_json: ref.argumentsJson || "{}",
    status: result ? "completed" : "answered",
    output: result?.content || "",
    is_error: result?.metadata?.is_error === "true",
  };
}

// GetRun's pendingToolCalls (JSON names, enum names) in the frames' shape.
export function fromRun(c) {
  const short = (v, prefix) => (v || "").replace(prefix, "").toLowerCase();
  return {
    id: c.id,
    name: c.name,
    arguments_json: c.argumentsJson || "{}",
    status: short(c.status, "TOOL_CALL_STATUS_"),
    output: c.output || "",
    is_error: !!c.isError,
    duration_ms: Number(c.durationMs || 0),
    requires_approval: !!c.requiresApproval,
    execution: short(c.execution, "TOOL_EXECUTION_"),
  };
}

export class ToolCalls {
  // send(frame) -> bool: the socket's send; mayDecide(): whether this user may approve or deny.
  constructor({ send, mayDecide }) {
    this.send = send;
    this.mayDecide = mayDecide;
    this.blocks = new Map(); // call id -> {el, call, runId, sessionId}
  }

  clear() {
    this.blocks.clear();
  }

  // Adds or updates the block of `call` in the answer bubble `answer`.
  show(answer, runId, sessionId, call) {
    let b = this.blocks.get(call.id);
    if (!b || !b.el.isConnected) {
      let list = answer.querySelector(".tools");
      if (!list) {
        list = el("div", "tools");
        answer.insertBefore(list, answer.querySelector(".body"));
      }
      b = { el: el("section", "tool-call"), call: {}, runId, sessionId };
      b.el.dataset.callId = call.id;
      list.appendChild(b.el);
      this.blocks.set(call.id, b);
    }
    b.call = { ...b.call, ...call };
    this.render(b);
  }

  // The run moved on: calls of it still waiting that `keep` does not name were answered (a denial or
  // an output makes no event of its own). `status` overrides that, e.g. "cancelled" at the run's end.
  settle(runId, keep = [], status = "answered") {
    for (const b of this.blocks.values()) {
      if (b.runId !== runId || keep.includes(b.call.id)) continue;
      if (WAITING.includes(b.call.status) || b.call.status === "sent") {
        // What this page sent is what became of the call (unless the run ended without it).
        Object.assign(b.call, { status }, status === "answered" ? b.after : null);
        this.render(b);
      }
    }
  }

  // An action of the run was refused (an error frame keyed by the run id): its calls can be tried again.
  reopen(runId) {
    for (const b of this.blocks.values()) {
      if (b.runId === runId && b.call.status === "sent") {
        b.call.status = b.sentFrom;
        this.render(b);
      }
    }
  }

  render(b) {
    const { call } = b;
    const failed = call.status === "completed" && call.is_error;
    b.el.textContent = "";
    b.el.dataset.status = failed ? "error" : call.status;
    const head = el("div", "tool-head");
    head.append(el("span", "tool-name", call.name), el("span", "tool-status", failed ? "error" : LABELS[call.status] || call.status));
    if (call.duration_ms) head.append(el("span", "tool-duration", `${call.duration_ms} ms`));
    b.el.append(head);
    const args = el("pre", "tool-args");
    args.append(el("code", "", pretty(call.arguments_json)));
    args.setAttribute("aria-label", `Arguments of ${call.name}`);
    b.el.append(args);
    if (call.output && !WAITING.includes(call.status)) {
      const out = el("pre", "tool-output" + (call.is_error ? " error" : ""), call.output);
      out.setAttribute("aria-label", (call.is_error ? "Error of " : "Result of ") + call.name);
      b.el.append(out);
    }
    if (call.status === "awaiting_approval") b.el.append(this.approval(b));
    if (call.status === "awaiting_output") b.el.append(this.outputForm(b));
  }

  approval(b) {
    const { call } = b;
    if (!this.mayDecide()) {
      return el("p", "tool-note", "Waiting for the session's user or an owner or admin to approve this call.");
    }
    // Not a form: Enter in the reason field must not approve.
    const form = el("div", "tool-actions");
    form.setAttribute("role", "group");
    form.setAttribute("aria-label", `Decide ${call.name}`);
    const id = "reason-" + call.id;
    const label = el("label", "sr-only", `Reason for denying ${call.name} (optional)`);
    label.htmlFor = id;
    const reason = el("input");
    reason.id = id;
    reason.name = "reason";
    reason.placeholder = "Reason (optional)";
    const approve = el("button", "approve", "Approve");
    approve.type = "button";
    approve.setAttribute("aria-label", `Approve ${call.name}`);
    const deny = el("button", "deny", "Deny");
    deny.type = "button";
    deny.setAttribute("aria-label", `Deny ${call.name}`);
    approve.onclick = () => this.answer(b, { type: "tool_decisions", decisions: [{ tool_call_id: call.id, approve: true }] });
    deny.onclick = () => {
      const why = reason.value.trim() || "denied on the chat page";
      // The model is told "the call was denied: <reason>" (orchestration's wording).
      const after = { status: "denied", output: "the call was denied: " + why, is_error: true };
      this.answer(b, { type: "tool_decisions", decisions: [{ tool_call_id: call.id, deny_reason: why }] }, after);
    };
    form.append(approve, deny, label, reason);
    return form;
  }

  outputForm(b) {
    const { call } = b;
    const form = el("form", "tool-actions tool-output-form");
    const id = "output-" + call.id;
    const label = el("label", "", `Output of ${call.name}`);
    label.htmlFor = id;
    const output = el("textarea");
    output.id = id;
    output.name = "output";
    output.rows = 2;
    output.required = true;
    const errLabel = el("label", "check");
    const isError = el("input");
    isError.type = "checkbox";
    isError.name = "is_error";
    errLabel.append(isError, document.createTextNode(" is an error"));
    const submit = el("button", "", "Send output");
    submit.type = "submit";
    form.onsubmit = (e) => {
      e.preventDefault();
      const sent = { output: output.value, is_error: isError.checked };
      this.answer(b, { type: "tool_outputs", outputs: [{ tool_call_id: call.id, ...sent }] }, { status: "completed", ...sent });
    };
    form.append(label, output, errLabel, submit);
    return form;
  }

  // Sends a decision or an output; `after` is what the call becomes once the run moves on.
  answer(b, frame, after = null) {
    if (!this.send({ ...frame, run_id: b.runId, session_id: b.sessionId })) return false;
    b.after = after;
    b.sentFrom = b.call.status;
    b.call.status = "sent";
    this.render(b);
    return true;
  }
}
