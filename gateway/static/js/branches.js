// Conversation branches on the page: each stored user message gets Edit and each answer Regenerate;
// a message with siblings (earlier versions, other answers) gets the switcher "‹ 2 / 3 ›". The page
// shows the active path (ListMessages' default); the switcher makes a sibling's branch active
// (SwitchBranch), edit and regenerate start a run that makes a new branch (EditMessage,
// RegenerateAnswer). Everything here is built from text nodes, never HTML.

function button(text, label, onclick, cls = "small") {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.onclick = onclick;
  return b;
}

// Adds the bar under a stored message's bubble (after it, not in it: a bubble holds the message alone). m: the ListMessages message (siblingIds,
// siblingIndex); actions: {edit(el, m), regenerate(el, m), switchTo(id)}; enabled: false in an
// ended session (the switcher still works: reading other branches changes nothing stored).
export function decorate(el, m, { edit, regenerate, switchTo, enabled }) {
  const bar = document.createElement("div");
  bar.className = "branch-bar " + (m.role === "MESSAGE_ROLE_USER" ? "user" : "assistant");
  const ids = m.siblingIds || [];
  const at = Number(m.siblingIndex || 0);
  const what = m.role === "MESSAGE_ROLE_USER" ? "version" : "answer";
  if (ids.length > 1 && at > 0) {
    const prev = button("‹", `Previous ${what}`, () => switchTo(ids[at - 2]));
    prev.disabled = at <= 1;
    const pos = document.createElement("span");
    pos.className = "branch-pos";
    pos.textContent = `${at} / ${ids.length}`;
    pos.setAttribute("aria-label", `${what} ${at} of ${ids.length}`);
    const next = button("›", `Next ${what}`, () => switchTo(ids[at]));
    next.disabled = at >= ids.length;
    bar.append(prev, pos, next);
  }
  if (enabled && m.role === "MESSAGE_ROLE_USER") bar.append(button("Edit", "Edit this message", () => edit(el, m)));
  if (enabled && m.role === "MESSAGE_ROLE_ASSISTANT") {
    bar.append(button("Regenerate", "Regenerate this answer", () => regenerate(el, m)));
  }
  if (bar.childElementCount) el.after(bar);
}

// Turns a user bubble into a small form with its text; save(text) or cancel() ends it.
export function editForm(el, text, { save, cancel }) {
  const form = document.createElement("form");
  form.className = "edit-form";
  const id = "edit-" + crypto.randomUUID();
  const label = document.createElement("label");
  label.className = "sr-only";
  label.htmlFor = id;
  label.textContent = "Edited message";
  const area = document.createElement("textarea");
  area.id = id;
  area.rows = 2;
  area.value = text;
  const ok = document.createElement("button");
  ok.type = "submit";
  ok.className = "small";
  ok.textContent = "Save and answer";
  const no = button("Cancel", "Cancel editing", cancel);
  form.append(label, area, ok, no);
  form.onsubmit = (e) => {
    e.preventDefault();
    const value = area.value.trim();
    if (value) save(value);
  };
  if (el.nextElementSibling?.classList.contains("branch-bar")) el.nextElementSibling.remove();
  el.querySelector(".body").hidden = true;
  el.appendChild(form);
  area.focus();
}

// Removes a bubble and every bubble after it: the branch they belong to is no longer shown.
export function cutFrom(el) {
  while (el.nextElementSibling) el.nextElementSibling.remove();
  el.remove();
}
