// The agent list and the agent editor: fields, BadRequest violations shown on their fields,
// version history with a diff between any two versions, rollback, activate/deactivate.
// Members get the same views read-only: the controls they cannot use are not rendered.
import { api } from "./api.js";

const $ = (sel) => document.querySelector(sel);
// Editor field -> the update-mask path; violations are matched to a field by this path's prefix.
const FIELDS = {
  displayName: "display_name",
  model: "config.model",
  systemPrompt: "config.system_prompt",
  temperature: "config.temperature",
  tools: "config.tools",
};
const TOOL_KEYS = ["name", "description", "parameters", "execution", "url", "timeoutMs", "requiresApproval"];

export async function listAgents() {
  const { agents } = await api.call("AgentService.ListAgents", { pageSize: 100 });
  return agents;
}

export function renderAgents(agents, { currentAgentId, canEdit, chat, edit }) {
  const list = $("#agents");
  list.textContent = "";
  for (const a of agents) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = a.displayName || a.id;
    b.dataset.agentId = a.id;
    if (a.state === "AGENT_STATE_INACTIVE") b.classList.add("inactive");
    if (currentAgentId === a.id) b.classList.add("active");
    b.onclick = () => chat(a);
    const e = document.createElement("button");
    e.type = "button";
    e.className = "small";
    e.textContent = canEdit ? "Edit" : "View";
    e.setAttribute("aria-label", (canEdit ? "Edit " : "View ") + (a.displayName || a.id));
    e.onclick = () => edit(a);
    li.append(b, e);
    list.appendChild(li);
  }
}

// The violation's field path without the request's prefix, in proto names: agent.config.tools[0].name
// -> config.tools[0].name; a path in JSON names (displayName) is accepted too.
function violationPath(field) {
  return field
    .replace(/^agent\./, "")
    .replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
}

function showViolations(violations) {
  const rest = [];
  for (const v of violations) {
    const path = violationPath(v.field);
    const key = Object.keys(FIELDS).find((k) => path === FIELDS[k] || path.startsWith(FIELDS[k] + "["));
    if (!key) {
      rest.push(`${v.field}: ${v.description}`);
      continue;
    }
    const err = $(`#err-${key}`);
    err.textContent = (err.textContent ? err.textContent + "; " : "") + (path === FIELDS[key] ? "" : path + ": ") + v.description;
    err.hidden = false;
    $(`#agent-form [name=${key}]`).setAttribute("aria-invalid", "true");
  }
  return rest;
}

function clearViolations() {
  for (const key of Object.keys(FIELDS)) {
    const err = $(`#err-${key}`);
    err.textContent = "";
    err.hidden = true;
    $(`#agent-form [name=${key}]`).removeAttribute("aria-invalid");
  }
}

function toolsJson(tools) {
  const out = (tools || []).map((t) => Object.fromEntries(TOOL_KEYS.filter((k) => k in t).map((k) => [k, t[k]])));
  return JSON.stringify(out, null, 2);
}

function pretty(value) {
  if (value === null || value === undefined) return "(unset)";
  return typeof value === "string" ? value : JSON.stringify(value);
}

export class AgentEditor {
  // models: the tier's allowed "provider:model" patterns; toast(text, kind); changed(): the list
  // needs a reload.
  constructor({ toast, changed }) {
    this.toast = toast;
    this.changed = changed;
    this.agent = null;
    this.canEdit = false;
    this.models = [];
    $("#agent-form").onsubmit = (e) => {
      e.preventDefault();
      this.save();
    };
    $("#diff-form").onsubmit = (e) => {
      e.preventDefault();
      this.diff();
    };
  }

  async open(agent, { canEdit, models }) {
    this.canEdit = canEdit;
    this.models = models;
    const { agent: fresh } = await api.call("AgentService.GetAgent", { agentId: agent.id });
    this.fill(fresh);
    await this.loadVersions();
  }

  fill(agent) {
    this.agent = agent;
    clearViolations();
    const f = $("#agent-form");
    const c = agent.config || {};
    $("#agent-heading").textContent = (this.canEdit ? "Edit " : "") + (agent.displayName || agent.id);
    f.displayName.value = agent.displayName || "";
    f.model.value = c.model || "";
    f.systemPrompt.value = c.systemPrompt || "";
    f.temperature.value = c.temperature ?? "";
    f.tools.value = toolsJson(c.tools);
    const options = $("#model-options");
    options.textContent = "";
    for (const m of new Set([c.model, ...this.models.filter((m) => !m.endsWith(":*")), "echo:default"])) {
      if (!m) continue;
      const o = document.createElement("option");
      o.value = m;
      options.appendChild(o);
    }
    $("#model-hint").textContent = this.models.length ? "Allowed on your tier: " + this.models.join(", ") : "";
    for (const el of f.querySelectorAll("input, textarea")) el.readOnly = !this.canEdit;
    $("#agent-save").hidden = !this.canEdit;
    const active = agent.state !== "AGENT_STATE_INACTIVE";
    $("#agent-state").textContent = active ? "Active" : "Inactive";
    const toggle = $("#agent-toggle");
    toggle.hidden = !this.canEdit;
    toggle.textContent = active ? "Deactivate" : "Activate";
    toggle.onclick = () => this.toggle(active);
  }

  async save() {
    clearViolations();
    const f = $("#agent-form");
    let tools;
    try {
      tools = JSON.parse(f.tools.value || "[]");
      if (!Array.isArray(tools)) throw new Error("must be a JSON array of tools");
    } catch (err) {
      showViolations([{ field: "config.tools", description: "not valid JSON: " + err.message }]);
      return;
    }
    const temperature = f.temperature.value === "" ? undefined : Number(f.temperature.value);
    const agent = {
      id: this.agent.id,
      etag: this.agent.etag,
      displayName: f.displayName.value,
      config: { model: f.model.value, systemPrompt: f.systemPrompt.value, temperature, tools },
    };
    // A FieldMask in JSON takes lowerCamelCase paths.
    const mask = Object.values(FIELDS)
      .map((f) => f.replace(/_([a-z])/g, (_, c) => c.toUpperCase()))
      .join(",");
    try {
      const reply = await api.call("AgentService.UpdateAgent", { agent, updateMask: mask });
      this.fill(reply.agent);
      await this.loadVersions();
      this.toast("Saved version " + reply.agent.version, "ok");
      this.changed();
    } catch (err) {
      const rest = err.violations ? showViolations(err.violations()) : [];
      if (!err.violations || !err.violations().length || rest.length) this.toast([err.message, ...rest].join("\n"));
    }
  }

  async toggle(active) {
    const name = active ? "AgentService.DeactivateAgent" : "AgentService.ActivateAgent";
    try {
      const reply = await api.call(name, { agentId: this.agent.id });
      this.fill(reply.agent || (await api.call("AgentService.GetAgent", { agentId: this.agent.id })).agent);
      await this.loadVersions();
      this.changed();
    } catch (err) {
      this.toast(err.message);
    }
  }

  async loadVersions() {
    const { versions } = await api.call("AgentService.ListAgentVersions", { agentId: this.agent.id, pageSize: 100 });
    const list = $("#versions");
    list.textContent = "";
    const from = $("#diff-form [name=from]");
    const to = $("#diff-form [name=to]");
    from.textContent = "";
    to.textContent = "";
    for (const v of versions) {
      const li = document.createElement("li");
      const text = document.createElement("span");
      const what = (v.changeType || "").replace("CHANGE_TYPE_", "").toLowerCase();
      const fields = v.changedFields?.length ? " (" + v.changedFields.join(", ") + ")" : "";
      text.textContent = `v${v.version} · ${what}${fields}`;
      li.appendChild(text);
      if (this.canEdit && String(v.version) !== String(this.agent.version)) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "small";
        b.textContent = "Roll back";
        b.setAttribute("aria-label", "Roll back to version " + v.version);
        b.onclick = () => this.rollback(v.version);
        li.appendChild(b);
      }
      list.appendChild(li);
      for (const select of [from, to]) {
        const o = document.createElement("option");
        o.value = v.version;
        o.textContent = "v" + v.version;
        select.appendChild(o);
      }
    }
    // Newest first: compare the previous version with the current one by default.
    if (versions.length > 1) from.value = versions[1].version;
    $("#diff").textContent = "";
  }

  async diff() {
    const f = $("#diff-form");
    const table = $("#diff");
    table.textContent = "";
    try {
      const { diffs } = await api.call("AgentService.DiffAgentVersions", {
        agentId: this.agent.id,
        fromVersion: f.from.value,
        toVersion: f.to.value,
      });
      if (!diffs.length) {
        table.textContent = "No differences.";
        return;
      }
      for (const d of diffs) {
        const row = document.createElement("div");
        row.className = "diff-row";
        const path = document.createElement("code");
        path.textContent = d.path;
        const old = document.createElement("del");
        old.textContent = pretty(d.oldValue);
        const now = document.createElement("ins");
        now.textContent = pretty(d.newValue);
        row.append(path, old, now);
        table.appendChild(row);
      }
    } catch (err) {
      this.toast(err.message);
    }
  }

  async rollback(version) {
    try {
      const reply = await api.call("AgentService.RollbackAgent", {
        agentId: this.agent.id,
        version,
        etag: this.agent.etag,
      });
      this.fill(reply.agent);
      await this.loadVersions();
      this.toast(`Rolled back to version ${version} (now version ${reply.agent.version})`, "ok");
      this.changed();
    } catch (err) {
      this.toast(err.message);
    }
  }
}
