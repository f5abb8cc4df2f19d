// The REST client and the tokens. Routes come from /v1/_routes (built from the protos), so a new RPC
// with an http rule is callable as api.call("Service.Method", params) without a change here.
// Tokens live in sessionStorage: per tab, so two tabs never spend the same refresh token (rotation
// would then revoke the whole family), and gone when the tab closes.

const store = window.sessionStorage;
// Refresh when this share of the access token's lifetime has passed: early enough that a slow
// refresh still lands before expiry, late enough not to churn tokens.
const REFRESH_AT = 0.75;

function camel(name) {
  return name
    .split(".")
    .map((p) => p.replace(/_([a-z])/g, (_, c) => c.toUpperCase()))
    .join(".");
}

// Removes and returns the value at a dotted path: a path variable is not sent again in the body.
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

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
  // BadRequest field violations as {field, description}; field paths as the services name them
  // (agent.config.temperature, agent.config.tools[0].name).
  violations() {
    const out = [];
    for (const d of this.body.details || []) {
      if ((d["@type"] || "").endsWith("google.rpc.BadRequest")) out.push(...(d.fieldViolations || []));
    }
    return out;
  }
}

// The claims of a JWT, unverified: the page only reads exp and roles to schedule and to hide.
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch {
    return {};
  }
}

export const api = {
  routes: {},
  onSignedOut: (_reason) => {},
  onTokens: () => {},
  refreshing: null,
  timer: null,

  token: () => store.getItem("token"),
  has(name) {
    return name in this.routes;
  },
  async load() {
    const res = await fetch("/v1/_routes");
    for (const r of (await res.json()).routes) if (!(r.name in this.routes)) this.routes[r.name] = r;
  },

  // Keeps a Login or RefreshToken answer and schedules the next refresh from the token's lifetime.
  keep(tokens) {
    const c = claims(tokens.accessToken);
    const lifetime = c.exp && c.iat ? c.exp - c.iat : 60;
    store.setItem("token", tokens.accessToken);
    store.setItem("refresh", tokens.refreshToken || "");
    // Measured on this clock from now, so a skewed client clock does not matter.
    store.setItem("refreshAt", String(Date.now() + lifetime * REFRESH_AT * 1000));
    this.schedule();
    this.onTokens();
  },
  schedule() {
    clearTimeout(this.timer);
    if (!this.token()) return;
    const wait = Math.max(0, Number(store.getItem("refreshAt") || 0) - Date.now());
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait);
  },
  // One refresh at a time: every caller that found the token stale waits for the same one.
  refresh() {
    if (!this.refreshing) {
      this.refreshing = this.doRefresh().finally(() => (this.refreshing = null));
    }
    return this.refreshing;
  },
  async doRefresh() {
    const refreshToken = store.getItem("refresh");
    if (!refreshToken) throw this.end("Your session has ended; please sign in again.");
    const res = await fetch(this.routes["IdentityService.RefreshToken"].path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refreshToken }),
    });
    const data = await res.json().catch(() => ({}));
    if (!res.ok) {
      if (res.status >= 500) throw new ApiError(res.status, data); // try again at the next call
      throw this.end("Your session has ended (" + (data.message || "refresh refused") + "); please sign in again.");
    }
    this.keep(data.tokens);
  },
  end(reason) {
    this.forget();
    this.onSignedOut(reason);
    return new ApiError(401, { message: reason });
  },
  forget() {
    clearTimeout(this.timer);
    store.clear();
  },
  // Logout revokes the refresh token's family and denies the access token; the page forgets both
  // whatever the answer (a sign-out must not fail).
  async logout() {
    const refreshToken = store.getItem("refresh") || "";
    if (this.token()) await this.call("IdentityService.Logout", { refreshToken }, { retry: false }).catch(() => {});
    this.forget();
  },

  async call(name, params = {}, { retry = true } = {}) {
    const route = this.routes[name];
    if (!route) throw new Error(`unknown RPC ${name}`);
    const rest = structuredClone(params);
    let path = route.path.replace(/\{([^}=]+)(=[^}]*)?\}/g, (_, v) => encodeURIComponent(take(rest, v) ?? ""));
    let body;
    if (route.body === "*") body = JSON.stringify(rest);
    else if (route.body) {
      body = JSON.stringify(rest[camel(route.body)] ?? {});
      delete rest[camel(route.body)];
    }
    // Whatever the path and the body do not carry goes in the query (updateMask of a PATCH).
    if (route.body !== "*") {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(rest)) if (v !== undefined && v !== "") q.append(k, v);
      if ([...q].length) path += "?" + q;
    }
    const headers = { "Content-Type": "application/json" };
    if (this.token()) headers.Authorization = "Bearer " + this.token();
    const res = await fetch(path, { method: route.method, headers, body });
    const data = await res.json().catch(() => ({}));
    if (res.status === 401 && retry && this.token()) {
      // Expired early (a sleeping laptop, a revoked jti): one refresh, one retry.
      await this.refresh();
      return this.call(name, params, { retry: false });
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  },
};
