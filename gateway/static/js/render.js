// Messages on the page: Markdown through markdown-it with raw HTML off and links limited to
// http(s) and mailto, code blocks with a copy button, labels on stopped and failed answers.
// A bubble keeps its source text, so streamed deltas re-render the whole answer (answers are small;
// a half-written code fence renders as text until it closes).
import markdownit from "../vendor/markdown-it.min.js";

const md = markdownit({ html: false, linkify: true, breaks: true });
const SAFE_LINK = /^(https?:|mailto:)/i;
md.validateLink = (url) => SAFE_LINK.test(url.trim());
const defaultLink = md.renderer.rules.link_open || ((tokens, i, opts, _env, self) => self.renderToken(tokens, i, opts));
md.renderer.rules.link_open = (tokens, i, opts, env, self) => {
  tokens[i].attrSet("target", "_blank");
  tokens[i].attrSet("rel", "noopener noreferrer");
  return defaultLink(tokens, i, opts, env, self);
};

const container = () => document.querySelector("#messages");

export function scrollDown() {
  const box = container();
  box.scrollTop = box.scrollHeight;
}

function addCopyButtons(el) {
  for (const pre of el.querySelectorAll("pre")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy code");
    button.onclick = async () => {
      try {
        await navigator.clipboard.writeText(pre.querySelector("code")?.textContent ?? pre.textContent);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Copy failed";
      }
      setTimeout(() => (button.textContent = "Copy"), 1500);
    };
    pre.prepend(button);
  }
}

// Sets a bubble's text: user text stays plain; assistant text is Markdown.
export function setText(el, text) {
  el.dataset.source = text;
  const body = el.querySelector(".body");
  if (el.classList.contains("user")) {
    body.textContent = text;
    return;
  }
  body.innerHTML = md.render(text); // safe: html off, links checked (see above)
  addCopyButtons(body);
}

export function appendText(el, delta) {
  setText(el, (el.dataset.source || "") + delta);
}

// A new message bubble at the end of the list. role: "user" | "assistant".
export function bubble(role, text = "", { streaming = false } = {}) {
  const el = document.createElement("article");
  el.className = "msg " + role + (streaming ? " streaming" : "");
  const body = document.createElement("div");
  body.className = "body";
  el.appendChild(body);
  setText(el, text);
  container().appendChild(el);
  scrollDown();
  return el;
}

// Ends a streaming bubble: stopped and failed answers say so, with the reason when there is one.
export function finish(el, event, error) {
  el.classList.remove("streaming");
  if (event === "run_completed") return;
  el.classList.add("partial");
  const label = document.createElement("p");
  label.className = "label";
  const reason = error?.message ? ": " + error.message : "";
  label.textContent = (event === "run_failed" ? "Failed" : "Stopped") + reason;
  el.appendChild(label);
}

// A stored message (ListMessages) as a bubble; a partial answer is labelled stopped.
export function stored(m) {
  const el = bubble(m.role === "MESSAGE_ROLE_USER" ? "user" : "assistant", m.content);
  if (m.metadata?.partial === "true") finish(el, "run_cancelled", null);
  return el;
}
