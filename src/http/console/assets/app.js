// tollgate console: plain JavaScript, no build step, no external resources.
//
// Signs in with the master key or an admin JWT (kept in sessionStorage, sent as a
// bearer), manages keys, teams and JWT mappings through the management API, charts
// spend from /spend/logs, and shows the live request feed from /ws/events (opened
// with a single-use ticket from /auth/ws-ticket).
//
// Everything that comes from the server is put on the page as text (textContent),
// never as markup.

"use strict";

(function () {
  const TOKEN_KEY = "tollgate.console.token";
  const LIVE_MAX_ROWS = 500;
  const PAGE_SIZE = 25;
  const RETRY_DELAYS_S = [1, 2, 5, 10, 20, 30];

  const state = {
    token: "",
    view: "keys",
    teams: [],
    keyIndex: new Map(), // key_id -> key, for names in mappings, spend and selects
    keys: { page: 1, team: "", rows: [], pages: 1, total: 0 },
    teamPage: { page: 1, rows: [] },
    mappings: { page: 1, rows: [], pages: 1, total: 0 },
    audit: { page: 1, rows: [], type: "", object: "", actor: "" },
    spend: { rows: [], buckets: [], bucketMs: 0 },
    live: {
      socket: null,
      wanted: false,
      retry: 0,
      timer: null,
      paused: false,
      events: [],
      unseen: 0,
    },
  };

  // ------------------------------------------------------------------ helpers

  const $ = (id) => document.getElementById(id);

  /** Builds an element. `props`: class, text, title, on<event>, other attributes. */
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = String(value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (value === true) node.setAttribute(name, "");
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function qs(params) {
    const search = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== "") search.set(k, String(v));
    }
    const s = search.toString();
    return s ? "?" + s : "";
  }

  const numberFormat = new Intl.NumberFormat();
  const compactFormat = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
  const costFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 4 });

  const fmtInt = (n) => numberFormat.format(n || 0);
  const fmtCompact = (n) => compactFormat.format(n || 0);
  const fmtCost = (n) => costFormat.format(n || 0);

  function fmtLatency(ms) {
    if (ms === undefined || ms === null) return "—";
    return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
  }

  function fmtTime(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "—" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function fmtDateTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "—";
    return d.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }

  function fmtRelative(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return "";
    const diff = d.getTime() - Date.now();
    const abs = Math.abs(diff);
    const units = [["d", 86400000], ["h", 3600000], ["min", 60000]];
    let text = "now";
    for (const [unit, size] of units) {
      if (abs >= size) {
        text = `${Math.round(abs / size)} ${unit}`;
        break;
      }
    }
    if (text === "now") return text;
    return diff > 0 ? `in ${text}` : `${text} ago`;
  }

  function shortId(id) {
    return id && id.length > 13 ? `${id.slice(0, 8)}…` : id || "";
  }

  function keyLabel(key) {
    if (!key) return "";
    return key.key_alias ? `${key.key_alias} (${key.key_name})` : key.key_name;
  }

  function teamLabel(teamId) {
    if (!teamId) return "—";
    const team = state.teams.find((t) => t.team_id === teamId);
    return team && team.team_alias ? `${team.team_alias}` : teamId;
  }

  function limitsCell(item) {
    const parts = [];
    if (item.rpm_limit != null) parts.push(`${fmtInt(item.rpm_limit)} req/min`);
    if (item.tpm_limit != null) parts.push(`${fmtCompact(item.tpm_limit)} tok/min`);
    if (item.max_parallel_requests != null) parts.push(`${fmtInt(item.max_parallel_requests)} parallel`);
    if (!parts.length) return h("span", { class: "muted", text: "none" });
    return h("div", { class: "limits" }, parts.map((p) => h("span", { text: p })));
  }

  function modelsCell(models) {
    if (!models || !models.length) return h("span", { class: "muted", text: "all" });
    return h("div", { class: "chips" }, models.map((m) => h("span", { class: "chip", text: m })));
  }

  function spendCell(item) {
    const cell = h("div", {});
    const budget = item.max_budget;
    cell.append(h("span", { class: "num", text: budget != null ? `${fmtCost(item.spend)} / ${fmtCost(budget)}` : fmtCost(item.spend) }));
    if (budget != null && budget > 0) {
      const ratio = Math.min(1, (item.spend || 0) / budget);
      const bar = h("div", {});
      bar.style.width = `${(ratio * 100).toFixed(1)}%`;
      cell.append(h("div", { class: ratio >= 0.9 ? "meter hot" : "meter", title: `${(ratio * 100).toFixed(0)}% of the budget` }, bar));
    }
    if (item.budget_duration) {
      const reset = item.budget_reset_at ? `, resets ${fmtRelative(item.budget_reset_at)}` : "";
      cell.append(h("span", { class: "sub nowrap", text: `per ${item.budget_duration}${reset}` }));
    }
    return cell;
  }

  function badge(text, kind) {
    return h("span", { class: `badge ${kind}`, text });
  }

  // ------------------------------------------------------------------ notifications

  function notify(message, kind, code) {
    const toast = h("div", { class: kind === "error" ? "toast error" : "toast", role: kind === "error" ? "alert" : "status" },
      h("span", { text: message }),
      code ? h("span", { class: "code", text: code }) : null);
    toast.addEventListener("click", () => toast.remove());
    $("toasts").append(toast);
    setTimeout(() => toast.remove(), kind === "error" ? 9000 : 4000);
  }

  function showError(err) {
    notify(err.message || String(err), "error", err.code && err.code !== "network" ? err.code : null);
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Calls the management API; errors carry the envelope's `error.message`. */
  async function api(method, path, body, options) {
    const token = (options && options.token) || state.token;
    let response;
    try {
      response = await fetch(path, {
        method,
        cache: "no-store",
        headers: Object.assign(
          { Authorization: `Bearer ${token}`, Accept: "application/json" },
          body === undefined ? {} : { "Content-Type": "application/json" }
        ),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "network", "Cannot reach the gateway.");
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!response.ok) {
      const envelope = data && data.error ? data.error : {};
      const err = new ApiError(
        response.status,
        envelope.code || `http_${response.status}`,
        envelope.message || `The request failed (HTTP ${response.status}).`
      );
      if (response.status === 401 && !(options && options.token) && state.token) {
        signOut(`Signed out: ${err.message}`);
      }
      throw err;
    }
    return data;
  }

  // ------------------------------------------------------------------ session

  async function signIn(token) {
    // Any admin credential can list keys; this also proves the credential works.
    await api("GET", "/key/list" + qs({ page: 1, size: 1 }), undefined, { token });
    state.token = token;
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch (e) {
      /* storage disabled: the session lasts until the page is closed */
    }
    enterConsole();
  }

  function signOut(message) {
    state.token = "";
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* ignore */
    }
    stopFeed();
    state.keyIndex.clear();
    state.teams = [];
    state.live.events = [];
    $("live-body").replaceChildren();
    hideSecret();
    for (const id of ["tabs", "session"]) $(id).hidden = true;
    for (const view of document.querySelectorAll(".view")) view.hidden = true;
    $("signin").hidden = false;
    $("signin-token").value = "";
    const error = $("signin-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("signin-token").focus();
  }

  function describeCredential(token) {
    if (token.startsWith("sk-")) return "master key";
    const parts = token.split(".");
    if (parts.length === 3) {
      try {
        const payload = JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
        return payload.email || payload.preferred_username || payload.sub || "JWT";
      } catch (e) {
        return "JWT";
      }
    }
    return "signed in";
  }

  async function enterConsole() {
    $("signin").hidden = true;
    $("signin-token").value = ""; // the credential lives in state and sessionStorage, not the page
    $("tabs").hidden = false;
    $("session").hidden = false;
    $("who").textContent = describeCredential(state.token);
    await Promise.all([loadTeams(), loadKeyIndex()]).catch(showError);
    const wanted = (location.hash || "").slice(1);
    show(Object.prototype.hasOwnProperty.call(loaders, wanted) ? wanted : "keys");
    startFeed();
  }

  // ------------------------------------------------------------------ views

  const loaders = {
    keys: () => loadKeys(),
    teams: () => loadTeamsView(),
    mappings: () => loadMappings(),
    spend: () => loadSpend(),
    servers: () => loadServers(),
    audit: () => loadAudit(),
    live: () => renderLive(),
  };

  function show(view) {
    state.view = view;
    for (const tab of document.querySelectorAll(".tab")) {
      tab.classList.toggle("active", tab.dataset.view === view);
    }
    for (const section of document.querySelectorAll(".view")) {
      section.hidden = section.id !== `view-${view}`;
    }
    if (location.hash !== `#${view}`) history.replaceState(null, "", `#${view}`);
    if (view === "live") {
      state.live.unseen = 0;
      updateLiveCount();
    }
    Promise.resolve(loaders[view]()).catch(showError);
  }

  function pager(container, page, pages, total, onPage, hasNext) {
    const info = total !== undefined ? `${fmtInt(total)} total · page ${page} of ${pages}` : `page ${page}`;
    const next = hasNext !== undefined ? hasNext : page < pages;
    container.replaceChildren(
      h("span", { text: info }),
      h("button", { type: "button", class: "ghost small", disabled: page <= 1, onclick: () => onPage(page - 1), text: "Previous" }),
      h("button", { type: "button", class: "ghost small", disabled: !next, onclick: () => onPage(page + 1), text: "Next" })
    );
  }

  function emptyRow(tbody, columns, text) {
    tbody.replaceChildren(h("tr", {}, h("td", { class: "empty-row", colspan: columns, text })));
  }

  function actionButton(text, onclick, extra) {
    return h("button", { type: "button", class: `small ${extra || ""}`.trim(), onclick, text });
  }

  /** Runs an action, reports its error, then reloads the current view. */
  async function act(fn, success) {
    try {
      await fn();
      if (success) notify(success);
    } catch (err) {
      showError(err);
    }
    await Promise.resolve(loaders[state.view]()).catch(showError);
  }

  // ------------------------------------------------------------------ shared lists

  async function loadTeams() {
    const teams = [];
    for (let page = 1; page <= 20; page++) {
      const rows = await api("GET", "/team/list" + qs({ page, size: 1000 }));
      teams.push(...rows);
      if (rows.length < 1000) break;
    }
    state.teams = teams;
    fillTeamFilter();
  }

  async function loadKeyIndex() {
    const data = await api("GET", "/key/list" + qs({ page: 1, size: 1000 }));
    state.keyIndex.clear();
    for (const key of data.keys) state.keyIndex.set(key.key_id, key);
  }

  function fillTeamFilter() {
    const select = $("keys-team");
    const current = state.keys.team;
    select.replaceChildren(
      h("option", { value: "", text: "All teams" }),
      state.teams.map((t) => h("option", { value: t.team_id, text: t.team_alias ? `${t.team_alias} (${t.team_id})` : t.team_id }))
    );
    select.value = current;
  }

  // ------------------------------------------------------------------ keys

  async function loadKeys() {
    const k = state.keys;
    const data = await api("GET", "/key/list" + qs({ page: k.page, size: PAGE_SIZE, team_id: k.team }));
    k.rows = data.keys;
    k.total = data.total_count;
    k.pages = Math.max(1, data.total_pages || 1);
    for (const key of data.keys) state.keyIndex.set(key.key_id, key);
    renderKeys();
  }

  function keyStatus(key) {
    if (key.blocked) return badge("Blocked", "err");
    if (key.expires && new Date(key.expires).getTime() < Date.now()) return badge("Expired", "warn");
    return badge("Active", "ok");
  }

  function renderKeys() {
    const k = state.keys;
    const tbody = $("keys-body");
    if (!k.rows.length) {
      emptyRow(tbody, 8, k.team ? "No keys in this team." : "No keys yet. Create one with “New key”.");
    } else {
      tbody.replaceChildren(...k.rows.map((key) => h("tr", { "data-testid": "key-row", "data-key-id": key.key_id },
        h("td", {},
          key.key_alias ? h("span", { class: "title", text: key.key_alias }) : null,
          h("span", { class: key.key_alias ? "sub mono" : "mono", text: key.key_name }),
          h("span", { class: "sub mono", title: `key_id ${key.key_id}`, text: shortId(key.key_id) })),
        h("td", {}, key.team_id ? h("span", { text: teamLabel(key.team_id), title: key.team_id }) : h("span", { class: "muted", text: "—" }),
          key.user_id ? h("span", { class: "sub", text: `user ${key.user_id}` }) : null),
        h("td", {}, modelsCell(key.models)),
        h("td", {}, limitsCell(key)),
        h("td", {}, spendCell(key)),
        h("td", {}, key.expires
          ? h("span", { title: fmtDateTime(key.expires), text: fmtRelative(key.expires) })
          : h("span", { class: "muted", text: "never" })),
        h("td", { "data-testid": "key-status" }, keyStatus(key), graceNote(key)),
        h("td", { class: "actions-cell" },
          actionButton("Edit", () => editKey(key)),
          actionButton(key.blocked ? "Unblock" : "Block", () => toggleKey(key)),
          actionButton("Spend", () => showSpendFor(`key:${key.key_id}`)),
          actionButton("Regenerate", () => regenerateKey(key)),
          actionButton("Delete", () => deleteKey(key), "danger"))
      )));
    }
    pager($("keys-pager"), k.page, k.pages, k.total, (page) => {
      k.page = page;
      loadKeys().catch(showError);
    });
  }

  const KEY_FIELDS = [
    { name: "key_alias", label: "Alias", type: "text", placeholder: "billing-service" },
    { name: "team_id", label: "Team", type: "team" },
    { name: "models", label: "Models", type: "list", wide: true, placeholder: "llama3.1:8b, qwen2.5:*", hint: "Comma-separated. Empty: the team's models, or all." },
    { name: "allowed_routes", label: "Allowed routes", type: "list", wide: true, placeholder: "/api/chat, /v1/*", hint: "Exact paths or prefixes ending in *. Empty: every route." },
    { name: "rpm_limit", label: "Requests per minute", type: "int" },
    { name: "tpm_limit", label: "Tokens per minute", type: "int" },
    { name: "max_parallel_requests", label: "Parallel requests", type: "int" },
    { name: "user_id", label: "User ID", type: "text" },
    { name: "max_budget", label: "Max budget", type: "number", hint: "Cost units per budget period." },
    { name: "budget_duration", label: "Budget period", type: "text", placeholder: "30d", hint: "e.g. 1h, 7d, 30d. Empty: never resets." },
    { name: "duration", label: "Expires after", type: "text", placeholder: "90d", hint: "e.g. 30d. Empty: never expires." },
    { name: "metadata", label: "Metadata (JSON object)", type: "json", wide: true },
    { name: "blocked", label: "Blocked", type: "bool" },
  ];

  function newKey() {
    openForm({
      title: "New virtual key",
      submit: "Create key",
      fields: KEY_FIELDS,
      values: { team_id: state.keys.team || null },
      onSubmit: async (values) => {
        const issued = await api("POST", "/key/generate", compact(values));
        showSecret(`New key ${keyLabel(issued)}`, issued.key);
        state.keys.page = 1;
        await Promise.all([loadKeys(), loadKeyIndex()]);
      },
    });
  }

  function editKey(key) {
    const fields = KEY_FIELDS.map((f) => f.name === "duration"
      ? Object.assign({}, f, { label: "Reset expiry to", hint: key.expires ? `Now expires ${fmtDateTime(key.expires)}. Empty: keep.` : "Empty: keep (never expires)." })
      : f);
    openForm({
      title: `Edit ${keyLabel(key)}`,
      submit: "Save changes",
      fields,
      values: Object.assign({}, key, { duration: null }),
      onSubmit: async (values) => {
        const changes = changed(fields, key, values);
        if (!changes.duration) delete changes.duration;
        if (!Object.keys(changes).length) return;
        await api("POST", "/key/update", Object.assign({ key_id: key.key_id }, changes));
        notify(`Saved ${keyLabel(key)}.`);
        await loadKeys();
      },
    });
  }

  function toggleKey(key) {
    const path = key.blocked ? "/key/unblock" : "/key/block";
    act(() => api("POST", path, { key_id: key.key_id }), `${key.blocked ? "Unblocked" : "Blocked"} ${keyLabel(key)}.`);
  }

  /** While a rotation's grace period runs: how long the previous plaintext still works. */
  function graceNote(key) {
    if (!key.grace_until) return null;
    const until = new Date(key.grace_until);
    if (isNaN(until) || until.getTime() <= Date.now()) return null;
    return h("span", {
      class: "sub nowrap grace",
      "data-testid": "key-grace",
      "data-grace-until": key.grace_until,
      title: `The previous key works until ${fmtDateTime(key.grace_until)}`,
      text: `old key works ${fmtRelative(key.grace_until)}`,
    });
  }

  const REGENERATE_FIELDS = [
    {
      name: "grace_period", label: "Grace period for the current key", type: "text", placeholder: "24h",
      testid: "regenerate-grace",
      hint: "How long the current key keeps working beside the new one (e.g. 1h, 24h, 7d), so clients can roll over. Empty: it stops at once. An older key still in its grace period stops at once either way.",
    },
  ];

  function regenerateKey(key) {
    openForm({
      title: `Regenerate ${keyLabel(key)}`,
      submit: "Regenerate",
      fields: REGENERATE_FIELDS,
      values: {},
      onSubmit: async (values) => {
        const issued = await api("POST", "/key/regenerate", compact({ key_id: key.key_id, grace_period: values.grace_period }));
        const note = issued.grace_until ? ` — the previous key works until ${fmtDateTime(issued.grace_until)}` : "";
        showSecret(`Regenerated ${keyLabel(issued)}${note}`, issued.key);
        await loadKeys();
      },
    });
  }

  function deleteKey(key) {
    if (!confirm(`Delete ${keyLabel(key)}?\n\nRequests with it fail from now on, and its JWT mappings are deleted too.`)) return;
    act(async () => {
      await api("POST", "/key/delete", { key_id: key.key_id });
      state.keyIndex.delete(key.key_id);
    }, `Deleted ${keyLabel(key)}.`);
  }

  // ------------------------------------------------------------------ the plaintext key, once

  function showSecret(title, value) {
    $("secret-title").textContent = title;
    $("secret-value").value = value;
    $("secret").hidden = false;
    $("secret-value").focus();
    $("secret-value").select();
  }

  function hideSecret() {
    $("secret-value").value = "";
    $("secret").hidden = true;
  }

  async function copySecret() {
    const input = $("secret-value");
    try {
      await navigator.clipboard.writeText(input.value);
      notify("Copied to the clipboard.");
    } catch (e) {
      input.focus();
      input.select();
      notify("Select the key and copy it (Ctrl+C / ⌘C).");
    }
  }

  // ------------------------------------------------------------------ teams

  async function loadTeamsView() {
    const t = state.teamPage;
    const rows = await api("GET", "/team/list" + qs({ page: t.page, size: PAGE_SIZE }));
    t.rows = rows;
    renderTeams();
    // Keep the lookup list (names, selects) fresh as well.
    loadTeams().catch(showError);
  }

  function renderTeams() {
    const t = state.teamPage;
    const tbody = $("teams-body");
    if (!t.rows.length) {
      emptyRow(tbody, 6, t.page > 1 ? "No more teams." : "No teams yet. Create one with “New team”.");
    } else {
      tbody.replaceChildren(...t.rows.map((team) => h("tr", { "data-testid": "team-row", "data-team-id": team.team_id },
        h("td", {},
          team.team_alias ? h("span", { class: "title", text: team.team_alias }) : null,
          h("span", { class: team.team_alias ? "sub mono" : "mono", text: team.team_id })),
        h("td", {}, modelsCell(team.models)),
        h("td", {}, limitsCell(team)),
        h("td", {}, spendCell(team)),
        h("td", {}, team.blocked ? badge("Blocked", "err") : badge("Active", "ok")),
        h("td", { class: "actions-cell" },
          actionButton("Edit", () => editTeam(team)),
          actionButton(team.blocked ? "Unblock" : "Block", () => toggleTeam(team)),
          actionButton("Keys", () => showKeysOf(team.team_id)),
          actionButton("Spend", () => showSpendFor(`team:${team.team_id}`)),
          actionButton("Delete", () => deleteTeam(team), "danger"))
      )));
    }
    pager($("teams-pager"), t.page, undefined, undefined, (page) => {
      t.page = page;
      loadTeamsView().catch(showError);
    }, t.rows.length === PAGE_SIZE);
  }

  const TEAM_FIELDS = [
    { name: "team_alias", label: "Alias", type: "text", placeholder: "Research" },
    { name: "models", label: "Models", type: "list", wide: true, placeholder: "llama3.1:*", hint: "Comma-separated. Applies to the team's keys that list none. Empty: all." },
    { name: "rpm_limit", label: "Requests per minute", type: "int" },
    { name: "tpm_limit", label: "Tokens per minute", type: "int" },
    { name: "max_parallel_requests", label: "Parallel requests", type: "int" },
    { name: "max_budget", label: "Max budget", type: "number", hint: "Cost units per budget period." },
    { name: "budget_duration", label: "Budget period", type: "text", placeholder: "30d", hint: "e.g. 7d, 30d. Empty: never resets." },
    { name: "metadata", label: "Metadata (JSON object)", type: "json", wide: true },
    { name: "blocked", label: "Blocked", type: "bool" },
  ];

  function newTeam() {
    const fields = [{ name: "team_id", label: "Team ID", type: "text", placeholder: "research", hint: "Empty: generated." }].concat(TEAM_FIELDS);
    openForm({
      title: "New team",
      submit: "Create team",
      fields,
      values: {},
      onSubmit: async (values) => {
        const team = await api("POST", "/team/new", compact(values));
        notify(`Created team ${team.team_alias || team.team_id}.`);
        await loadTeamsView();
      },
    });
  }

  function editTeam(team) {
    openForm({
      title: `Edit team ${team.team_alias || team.team_id}`,
      submit: "Save changes",
      fields: TEAM_FIELDS,
      values: team,
      onSubmit: async (values) => {
        const changes = changed(TEAM_FIELDS, team, values);
        if (!Object.keys(changes).length) return;
        await api("POST", "/team/update", Object.assign({ team_id: team.team_id }, changes));
        notify(`Saved team ${team.team_alias || team.team_id}.`);
        await loadTeamsView();
      },
    });
  }

  function toggleTeam(team) {
    act(() => api("POST", "/team/update", { team_id: team.team_id, blocked: !team.blocked }),
      `${team.blocked ? "Unblocked" : "Blocked"} team ${team.team_alias || team.team_id}.`);
  }

  function deleteTeam(team) {
    const name = team.team_alias || team.team_id;
    if (!confirm(`Delete team ${name}?`)) return;
    act(async () => {
      try {
        await api("POST", "/team/delete", { team_id: team.team_id });
      } catch (err) {
        if (err.status !== 409) throw err;
        if (!confirm(`${err.message}\n\nDelete team ${name} anyway (force)?`)) return;
        await api("POST", "/team/delete", { team_id: team.team_id, force: true });
      }
      notify(`Deleted team ${name}.`);
    });
  }

  function showKeysOf(teamId) {
    state.keys.team = teamId;
    state.keys.page = 1;
    fillTeamFilter();
    show("keys");
  }

  // ------------------------------------------------------------------ servers

  const SERVER_STATES = { in_service: ["In service", "ok"], ejected: ["Ejected", "err"], draining: ["Draining", "warn"] };

  async function loadServers() {
    const data = await api("GET", "/upstream/status");
    const tbody = $("servers-body");
    $("servers-queued").textContent = `${fmtInt(data.queued)} waiting in this instance's queue`;
    if (!data.servers.length) {
      emptyRow(tbody, 7, "No servers configured.");
      return;
    }
    tbody.replaceChildren(...data.servers.map((server) => {
      const [label, kind] = SERVER_STATES[server.state] || [server.state, "off"];
      const inFlight = Object.entries(server.in_flight || {});
      const draining = server.state === "draining";
      return h("tr", { "data-server": server.name },
        h("td", {},
          h("span", { class: "title", text: server.name }),
          h("span", { class: "sub mono", text: server.url })),
        h("td", { class: "server-state" }, badge(label, kind)),
        h("td", {}, server.models ? modelsCell(server.models) : h("span", { class: "muted", text: "not read yet" })),
        h("td", { class: "server-loaded" }, server.loaded.length ? modelsCell(server.loaded) : h("span", { class: "muted", text: "none" })),
        h("td", { class: "server-in-flight" }, inFlight.length
          ? h("span", { class: "mono", text: inFlight.map(([m, n]) => `${m}: ${n}`).join(", ") })
          : h("span", { class: "muted", text: "0" })),
        h("td", {},
          h("span", { text: fmtInt(server.consecutive_failures) }),
          server.last_error_at ? h("span", { class: "sub", text: `last ${fmtRelative(server.last_error_at)}` }) : null),
        h("td", { class: "actions-cell" },
          actionButton(draining ? "Undrain" : "Drain", () => act(
            () => api("POST", draining ? "/upstream/undrain" : "/upstream/drain", { name: server.name }),
            draining ? `${server.name} is back in service.` : `${server.name} is draining: no new requests.`))));
    }));
  }

  // ------------------------------------------------------------------ audit log

  const AUDIT_OBJECTS = { key: "Key", team: "Team", mapping: "Mapping", upstream: "Server" };

  async function loadAudit() {
    const a = state.audit;
    a.rows = await api("GET", "/audit/logs" + qs({
      object_type: a.type,
      object_id: a.object,
      actor: a.actor,
      limit: PAGE_SIZE,
      page: a.page,
    }));
    renderAudit();
  }

  /** One side of a change: every field, those that differ from the other side marked
   *  (`changed`); the others (`same`) show once the row is expanded. */
  function auditObject(value, other, testid) {
    if (value === null || value === undefined) {
      return h("div", { class: "audit-obj none", "data-testid": testid, text: "—" });
    }
    const fields = Object.entries(value).map(([name, v]) => {
      const differs = !other || JSON.stringify(v) !== JSON.stringify(other[name]);
      return h("div", { class: !other ? "kv" : differs ? "kv changed" : "kv same" },
        h("span", { class: "k", text: name }),
        h("span", { class: "v mono", text: v === null ? "null" : typeof v === "object" ? JSON.stringify(v) : String(v) }));
    });
    return h("div", { class: "audit-obj", "data-testid": testid }, fields);
  }

  function auditObjectCell(row) {
    const known = row.object_type === "key" ? state.keyIndex.get(row.object_id) : null;
    return h("div", {},
      h("span", { class: "title", text: AUDIT_OBJECTS[row.object_type] || row.object_type }),
      h("button", {
        type: "button", class: "link sub mono", title: "Show this object's changes only", "data-testid": "audit-object",
        text: known ? keyLabel(known) : row.object_id,
        onclick: () => {
          state.audit.type = row.object_type;
          state.audit.object = row.object_id;
          state.audit.page = 1;
          $("audit-type").value = row.object_type;
          $("audit-object").value = row.object_id;
          loadAudit().catch(showError);
        },
      }),
      row.team_id ? h("span", { class: "sub", text: `team ${teamLabel(row.team_id)}` }) : null,
      row.before && row.after ? h("button", {
        type: "button", class: "link sub", "data-testid": "audit-toggle-fields", text: "Show all fields",
        onclick: (event) => {
          const tr = event.target.closest("tr");
          const expanded = tr.classList.toggle("expanded");
          event.target.textContent = expanded ? "Changed fields only" : "Show all fields";
        },
      }) : null);
  }

  function renderAudit() {
    const a = state.audit;
    const tbody = $("audit-body");
    if (!a.rows.length) {
      emptyRow(tbody, 6, a.page > 1 ? "No more changes." : "No changes recorded for this filter.");
    } else {
      tbody.replaceChildren(...a.rows.map((row) => h("tr", {
        "data-testid": "audit-row", "data-action": row.action, "data-object-id": row.object_id, "data-id": row.id,
      },
        h("td", { class: "nowrap" },
          h("span", { title: row.at, text: fmtDateTime(row.at) }),
          row.request_id ? h("span", { class: "sub mono", title: "X-Request-ID", text: shortId(row.request_id) }) : null),
        h("td", { class: "mono", "data-testid": "audit-actor", text: row.actor }),
        h("td", {}, h("span", { class: "chip", "data-testid": "audit-action", text: row.action })),
        h("td", {}, auditObjectCell(row)),
        h("td", {}, auditObject(row.before, row.after, "audit-before")),
        h("td", {}, auditObject(row.after, row.before, "audit-after")))));
    }
    pager($("audit-pager"), a.page, undefined, undefined, (page) => {
      a.page = page;
      loadAudit().catch(showError);
    }, a.rows.length === PAGE_SIZE);
  }

  // ------------------------------------------------------------------ mappings

  async function loadMappings() {
    const m = state.mappings;
    const data = await api("GET", "/jwt/key/mapping/list" + qs({ page: m.page, size: PAGE_SIZE }));
    m.rows = data.mappings;
    m.total = data.total_count;
    m.pages = Math.max(1, data.total_pages || 1);
    renderMappings();
  }

  function renderMappings() {
    const m = state.mappings;
    const tbody = $("mappings-body");
    if (!m.rows.length) {
      emptyRow(tbody, 7, "No mappings yet. A mapping lets an SSO identity (a JWT claim value) act as a virtual key.");
    } else {
      tbody.replaceChildren(...m.rows.map((mapping) => {
        const key = state.keyIndex.get(mapping.key_id);
        return h("tr", { "data-testid": "mapping-row", "data-mapping-id": mapping.id },
          h("td", {},
            h("span", { class: "mono", text: `${mapping.jwt_claim_name} = ` }),
            h("span", { class: "mono title", text: mapping.jwt_claim_value })),
          h("td", {}, mapping.jwt_issuer ? h("span", { class: "mono", text: mapping.jwt_issuer }) : h("span", { class: "muted", text: "any issuer" })),
          h("td", {}, key ? h("span", { text: keyLabel(key) }) : h("span", { class: "mono", text: mapping.key_id })),
          h("td", {}, mapping.description ? h("span", { text: mapping.description }) : h("span", { class: "muted", text: "—" })),
          h("td", {}, mapping.is_active ? badge("Active", "ok") : badge("Inactive", "off")),
          h("td", {},
            h("span", { text: fmtDateTime(mapping.updated_at) }),
            mapping.updated_by || mapping.created_by ? h("span", { class: "sub", text: `by ${mapping.updated_by || mapping.created_by}` }) : null),
          h("td", { class: "actions-cell" },
            actionButton("Edit", () => editMapping(mapping)),
            actionButton(mapping.is_active ? "Deactivate" : "Activate", () => toggleMapping(mapping)),
            actionButton("Delete", () => deleteMapping(mapping), "danger")));
      }));
    }
    pager($("mappings-pager"), m.page, m.pages, m.total, (page) => {
      m.page = page;
      loadMappings().catch(showError);
    });
  }

  const MAPPING_FIELDS = [
    { name: "jwt_claim_name", label: "Claim", type: "text", placeholder: "email", required: true },
    { name: "jwt_claim_value", label: "Claim value", type: "text", placeholder: "alice@example.com", required: true },
    { name: "key_id", label: "Virtual key", type: "key", required: true, wide: true },
    { name: "jwt_issuer", label: "Issuer", type: "text", wide: true, hint: "Empty: any issuer. An issuer-specific mapping wins over an any-issuer one." },
    { name: "description", label: "Description", type: "text", wide: true },
    { name: "is_active", label: "Active", type: "bool" },
  ];

  async function newMapping() {
    await loadKeyIndex().catch(showError);
    openForm({
      title: "New JWT mapping",
      submit: "Create mapping",
      fields: MAPPING_FIELDS,
      values: { is_active: true, jwt_claim_name: "email" },
      onSubmit: async (values) => {
        await api("POST", "/jwt/key/mapping/new", compact(values));
        notify("Mapping created.");
        await loadMappings();
      },
    });
  }

  async function editMapping(mapping) {
    await loadKeyIndex().catch(showError);
    openForm({
      title: `Edit mapping ${mapping.jwt_claim_name} = ${mapping.jwt_claim_value}`,
      submit: "Save changes",
      fields: MAPPING_FIELDS,
      values: mapping,
      onSubmit: async (values) => {
        const changes = changed(MAPPING_FIELDS, mapping, values);
        if (!Object.keys(changes).length) return;
        await api("POST", "/jwt/key/mapping/update", Object.assign({ id: mapping.id }, changes));
        notify("Mapping saved.");
        await loadMappings();
      },
    });
  }

  function toggleMapping(mapping) {
    act(() => api("POST", "/jwt/key/mapping/update", { id: mapping.id, is_active: !mapping.is_active }),
      mapping.is_active ? "Mapping deactivated." : "Mapping activated.");
  }

  function deleteMapping(mapping) {
    if (!confirm(`Delete the mapping ${mapping.jwt_claim_name} = ${mapping.jwt_claim_value}?`)) return;
    act(() => api("POST", "/jwt/key/mapping/delete", { id: mapping.id }), "Mapping deleted.");
  }

  // ------------------------------------------------------------------ forms

  /** Drops empty values (for create requests: absent = default). */
  function compact(values) {
    const out = {};
    for (const [k, v] of Object.entries(values)) {
      if (v === null || v === undefined) continue;
      if (Array.isArray(v) && !v.length) continue;
      if (v === false && k === "blocked") continue;
      out[k] = v;
    }
    return out;
  }

  /** The fields whose value differs from `original` (null clears a field). */
  function changed(fields, original, values) {
    const out = {};
    for (const field of fields) {
      const before = normalise(field, original[field.name]);
      const after = normalise(field, values[field.name]);
      if (JSON.stringify(before) !== JSON.stringify(after)) out[field.name] = values[field.name];
    }
    return out;
  }

  function normalise(field, value) {
    if (value === undefined || value === "") return null;
    if (field.type === "list") return value && value.length ? value : null;
    if (field.type === "json") return value && Object.keys(value).length ? value : null;
    if (field.type === "bool") return Boolean(value);
    return value;
  }

  function inputFor(field, value) {
    const id = `f-${field.name}`;
    let input;
    switch (field.type) {
      case "team":
        input = h("select", { id },
          h("option", { value: "", text: "— no team —" }),
          state.teams.map((t) => h("option", { value: t.team_id, text: t.team_alias ? `${t.team_alias} (${t.team_id})` : t.team_id })));
        input.value = value || "";
        break;
      case "key": {
        const keys = Array.from(state.keyIndex.values()).sort((a, b) => keyLabel(a).localeCompare(keyLabel(b)));
        input = h("select", { id, required: field.required },
          h("option", { value: "", text: "— choose a key —" }),
          keys.map((k) => h("option", { value: k.key_id, text: keyLabel(k) })));
        if (value && !state.keyIndex.has(value)) input.append(h("option", { value, text: value }));
        input.value = value || "";
        break;
      }
      case "list":
        input = h("input", { id, type: "text", placeholder: field.placeholder, spellcheck: "false" });
        input.value = Array.isArray(value) ? value.join(", ") : "";
        break;
      case "int":
      case "number":
        input = h("input", { id, type: "number", min: "0", step: field.type === "int" ? "1" : "any", inputmode: field.type === "int" ? "numeric" : "decimal" });
        input.value = value === null || value === undefined ? "" : String(value);
        break;
      case "json":
        input = h("textarea", { id, spellcheck: "false", placeholder: "{}" });
        input.value = value && Object.keys(value).length ? JSON.stringify(value, null, 2) : "";
        break;
      case "bool":
        input = h("input", { id, type: "checkbox" });
        input.checked = Boolean(value);
        break;
      default:
        input = h("input", { id, type: "text", placeholder: field.placeholder, required: field.required, spellcheck: "false" });
        input.value = value === null || value === undefined ? "" : String(value);
    }
    if (field.testid) input.setAttribute("data-testid", field.testid);
    const classes = ["field"];
    if (field.type === "bool") classes.push("check");
    if (field.wide || field.type === "json") classes.push("wide");
    if (field.type === "bool") {
      return h("label", { class: classes.join(" "), for: id }, input, h("span", { text: field.label }));
    }
    return h("label", { class: classes.join(" "), for: id },
      h("span", {}, field.label, field.required ? " *" : ""),
      input,
      field.hint ? h("span", { class: "hint", text: field.hint }) : null);
  }

  function readField(field) {
    const input = $(`f-${field.name}`);
    const raw = field.type === "bool" ? input.checked : input.value.trim();
    switch (field.type) {
      case "bool":
        return raw;
      case "list":
        return raw ? raw.split(",").map((s) => s.trim()).filter(Boolean) : null;
      case "int": {
        if (raw === "") return null;
        const n = Number(raw);
        if (!Number.isInteger(n) || n < 0) throw new Error(`${field.label} must be a whole number, 0 or more.`);
        return n;
      }
      case "number": {
        if (raw === "") return null;
        const n = Number(raw);
        if (!Number.isFinite(n) || n < 0) throw new Error(`${field.label} must be a number, 0 or more.`);
        return n;
      }
      case "json": {
        if (raw === "") return null;
        let parsed;
        try {
          parsed = JSON.parse(raw);
        } catch (e) {
          throw new Error(`${field.label}: not valid JSON.`);
        }
        if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error(`${field.label} must be a JSON object.`);
        return parsed;
      }
      default:
        if (field.required && raw === "") throw new Error(`${field.label} is required.`);
        return raw === "" ? null : raw;
    }
  }

  let formSubmit = null;

  function openForm({ title, submit, fields, values, onSubmit }) {
    $("dialog-title").textContent = title;
    $("dialog-submit").textContent = submit;
    $("dialog-fields").replaceChildren(...fields.map((f) => inputFor(f, values[f.name])));
    const error = $("dialog-error");
    error.hidden = true;
    formSubmit = async () => {
      let parsed;
      try {
        parsed = {};
        for (const f of fields) parsed[f.name] = readField(f);
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
        return;
      }
      const button = $("dialog-submit");
      button.disabled = true;
      try {
        await onSubmit(parsed);
        closeForm();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    };
    $("dialog").showModal();
    const first = $("dialog-fields").querySelector("input, select, textarea");
    if (first) first.focus();
  }

  function closeForm() {
    formSubmit = null;
    if ($("dialog").open) $("dialog").close();
  }

  // ------------------------------------------------------------------ spend

  const RANGES = {
    "24h": { span: 86400000, bucket: 3600000 },
    "7d": { span: 7 * 86400000, bucket: 6 * 3600000 },
    "30d": { span: 30 * 86400000, bucket: 86400000 },
    "90d": { span: 90 * 86400000, bucket: 86400000 },
  };
  const SPEND_LIMIT = 10000;

  function fillSpendSubjects() {
    const select = $("spend-subject");
    const current = select.value;
    const keys = Array.from(state.keyIndex.values()).sort((a, b) => keyLabel(a).localeCompare(keyLabel(b)));
    select.replaceChildren(
      h("option", { value: "", text: "All traffic" }),
      h("optgroup", { label: "Teams" }, state.teams.map((t) => h("option", { value: `team:${t.team_id}`, text: t.team_alias || t.team_id }))),
      h("optgroup", { label: "Keys" }, keys.map((k) => h("option", { value: `key:${k.key_id}`, text: keyLabel(k) })))
    );
    select.value = current;
    if (select.value !== current) select.value = "";
  }

  function showSpendFor(subject) {
    fillSpendSubjects();
    $("spend-subject").value = subject;
    show("spend");
  }

  /** Start of the bucket containing `t` (local midnight for daily buckets). */
  function bucketStart(t, size) {
    const d = new Date(t);
    if (size >= 86400000) {
      d.setHours(0, 0, 0, 0);
    } else {
      d.setMinutes(0, 0, 0);
      d.setHours(d.getHours() - (d.getHours() % Math.round(size / 3600000)));
    }
    return d.getTime();
  }

  async function loadSpend() {
    if ($("spend-subject").options.length === 0) fillSpendSubjects();
    const subject = $("spend-subject").value;
    const range = RANGES[$("spend-range").value] || RANGES["24h"];
    const now = Date.now();
    const first = bucketStart(now - range.span + range.bucket, range.bucket);
    const params = { start: new Date(first).toISOString(), limit: SPEND_LIMIT };
    if (subject.startsWith("key:")) params.key_id = subject.slice(4);
    if (subject.startsWith("team:")) params.team_id = subject.slice(5);
    const rows = await api("GET", "/spend/logs" + qs(params));

    const buckets = [];
    for (let t = first; t <= now; ) {
      buckets.push({ start: t, spend: 0, tokens: 0, requests: 0 });
      // Step by calendar for daily buckets (DST-safe), by milliseconds otherwise.
      const next = new Date(t);
      if (range.bucket >= 86400000) next.setDate(next.getDate() + 1);
      else next.setTime(t + range.bucket);
      t = next.getTime();
    }
    const byKey = new Map();
    const byModel = new Map();
    const totals = { requests: 0, tokens: 0, spend: 0, failed: 0 };
    for (const row of rows) {
      const at = new Date(row.started_at).getTime();
      const tokens = (row.prompt_tokens || 0) + (row.completion_tokens || 0);
      let index = buckets.length - 1;
      while (index > 0 && buckets[index].start > at) index--;
      if (at >= buckets[0].start) {
        buckets[index].spend += row.spend || 0;
        buckets[index].tokens += tokens;
        buckets[index].requests += 1;
      }
      totals.requests += 1;
      totals.tokens += tokens;
      totals.spend += row.spend || 0;
      if (row.status !== "success") totals.failed += 1;
      const keyName = row.key_id ? keyLabel(state.keyIndex.get(row.key_id)) || row.key_id : row.user_id ? `jwt:${row.user_id}` : "—";
      add(byKey, keyName, tokens, row.spend);
      add(byModel, row.model || "—", tokens, row.spend);
    }
    state.spend = { rows, buckets, bucketMs: range.bucket };

    $("spend-stats").replaceChildren(
      stat("Requests", fmtInt(totals.requests)),
      stat("Tokens", fmtInt(totals.tokens)),
      stat("Spend", fmtCost(totals.spend)),
      stat("Not successful", fmtInt(totals.failed))
    );
    $("spend-note").textContent = rows.length >= SPEND_LIMIT
      ? `Showing the latest ${fmtInt(SPEND_LIMIT)} requests of the period.`
      : "";
    breakdown($("spend-by-key"), byKey);
    breakdown($("spend-by-model"), byModel);
    drawChart();
  }

  function add(map, name, tokens, spend) {
    const entry = map.get(name) || { requests: 0, tokens: 0, spend: 0 };
    entry.requests += 1;
    entry.tokens += tokens;
    entry.spend += spend || 0;
    map.set(name, entry);
  }

  function stat(label, value) {
    return h("div", { class: "stat" }, h("div", { class: "label", text: label }), h("div", { class: "value", text: value }));
  }

  function breakdown(tbody, map) {
    const rows = Array.from(map.entries()).sort((a, b) => b[1].spend - a[1].spend || b[1].tokens - a[1].tokens).slice(0, 12);
    if (!rows.length) {
      emptyRow(tbody, 4, "No requests in this period.");
      return;
    }
    tbody.replaceChildren(...rows.map(([name, e]) => h("tr", {},
      h("td", { class: "mono", text: name }),
      h("td", { class: "num", text: fmtInt(e.requests) }),
      h("td", { class: "num", text: fmtInt(e.tokens) }),
      h("td", { class: "num", text: fmtCost(e.spend) }))));
  }

  /** A round step that splits `max` into at most about four intervals. */
  function niceStep(max) {
    if (max <= 0) return 1;
    const raw = max / 4;
    const exp = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const step of [1, 2, 5, 10]) {
      if (raw <= step * exp) return step * exp;
    }
    return 10 * exp;
  }

  function bucketLabel(t, size, long) {
    const d = new Date(t);
    if (size >= 86400000) return d.toLocaleDateString([], { month: "short", day: "numeric" });
    const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (size > 3600000 || long) return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
    return time;
  }

  const chart = { bars: [] };

  function drawChart() {
    const canvas = $("spend-chart");
    if ($("view-spend").hidden) return;
    const metric = $("spend-metric").value;
    const { buckets, bucketMs } = state.spend;
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const width = canvas.clientWidth || 800;
    const height = canvas.clientHeight || 280;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";

    const pad = { left: 58, right: 12, top: 14, bottom: 26 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const values = buckets.map((b) => b[metric]);
    const step = niceStep(Math.max(0, ...values));
    const ticks = Math.max(1, Math.ceil(Math.max(0, ...values) / step));
    const max = step * ticks;
    const format = metric === "spend" ? fmtCost : fmtCompact;

    // Grid and y-axis labels.
    ctx.strokeStyle = color("--chart-grid");
    ctx.fillStyle = color("--chart-text");
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= ticks; i++) {
      const y = Math.round(pad.top + plotH - (plotH * i) / ticks) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, y);
      ctx.lineTo(width - pad.right, y);
      ctx.stroke();
      ctx.fillText(format((max * i) / ticks), pad.left - 8, y);
    }

    // Bars.
    chart.bars = [];
    const n = Math.max(1, buckets.length);
    const slot = plotW / n;
    const gap = Math.min(6, slot * 0.25);
    buckets.forEach((b, i) => {
      const value = b[metric];
      const barH = max > 0 ? (plotH * value) / max : 0;
      const x = pad.left + i * slot + gap / 2;
      const y = pad.top + plotH - barH;
      const w = Math.max(1, slot - gap);
      chart.bars.push({ x, w, y, h: barH, bucket: b });
      if (value > 0) {
        ctx.fillStyle = chart.hover === i ? color("--chart-bar-hover") : color("--chart-bar");
        ctx.fillRect(x, y, w, Math.max(1, barH));
      }
    });

    // X-axis labels, spaced so they never overlap.
    ctx.fillStyle = color("--chart-text");
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    // Newest first, skipping any label that would touch the one drawn after it.
    let leftmost = Infinity;
    for (let i = buckets.length - 1; i >= 0; i--) {
      const label = bucketLabel(buckets[i].start, bucketMs);
      const half = ctx.measureText(label).width / 2;
      const x = Math.min(Math.max(pad.left + i * slot + slot / 2, pad.left + half), width - pad.right - half);
      if (x + half + 12 > leftmost) continue;
      ctx.fillText(label, x, pad.top + plotH + 8);
      leftmost = x - half;
    }

    if (!values.some((v) => v > 0)) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "13px system-ui, sans-serif";
      ctx.fillText("No requests in this period", pad.left + plotW / 2, pad.top + plotH / 2);
    }
  }

  function chartHover(event) {
    const canvas = $("spend-chart");
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const index = chart.bars.findIndex((b) => x >= b.x && x <= b.x + b.w);
    const tip = $("chart-tip");
    if (index !== chart.hover) {
      chart.hover = index;
      drawChart();
    }
    if (index < 0) {
      tip.hidden = true;
      return;
    }
    const bar = chart.bars[index];
    const b = bar.bucket;
    tip.replaceChildren(
      h("strong", { text: bucketLabel(b.start, state.spend.bucketMs, true) }),
      h("span", { text: `${fmtInt(b.requests)} requests · ${fmtInt(b.tokens)} tokens · spend ${fmtCost(b.spend)}` })
    );
    tip.hidden = false;
    const left = Math.min(Math.max(0, bar.x + bar.w / 2 - tip.offsetWidth / 2), rect.width - tip.offsetWidth);
    tip.style.left = `${left}px`;
    tip.style.top = `${Math.max(0, bar.y - tip.offsetHeight - 8)}px`;
  }

  function chartLeave() {
    $("chart-tip").hidden = true;
    if (chart.hover !== -1) {
      chart.hover = -1;
      drawChart();
    }
  }

  // ------------------------------------------------------------------ live feed

  function setFeed(stateName, label) {
    const pill = $("feed-pill");
    pill.dataset.state = stateName;
    $("feed-label").textContent = label;
    $("live-state").textContent = label;
  }

  function startFeed() {
    state.live.wanted = true;
    state.live.retry = 0;
    connectFeed();
  }

  function stopFeed() {
    const live = state.live;
    live.wanted = false;
    clearTimeout(live.timer);
    live.timer = null;
    if (live.socket) {
      const socket = live.socket;
      live.socket = null;
      socket.close(1000, "signed out");
    }
    setFeed("off", "Feed off");
  }

  async function connectFeed() {
    const live = state.live;
    if (!live.wanted || live.socket || !state.token) return;
    setFeed("connecting", "Connecting…");
    let ticket;
    try {
      ticket = (await api("POST", "/auth/ws-ticket")).ticket;
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        live.wanted = false;
        setFeed("error", "Feed unavailable");
        notify(`Live feed: ${err.message}`, "error", err.code);
        return;
      }
      setFeed("error", "Feed offline");
      scheduleReconnect();
      return;
    }
    if (!live.wanted || live.socket) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws/events${qs({ ticket })}`);
    live.socket = socket;
    socket.addEventListener("open", () => {
      if (live.socket === socket) setFeed("live", "Live");
    });
    socket.addEventListener("message", (event) => {
      if (live.socket !== socket) return;
      live.retry = 0;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      receive(message);
    });
    socket.addEventListener("close", (event) => {
      if (live.socket !== socket) return;
      live.socket = null;
      if (!live.wanted) return;
      if (event.code === 1001) setFeed("connecting", "Server restarting…");
      else if (event.code === 1008) setFeed("error", "Ticket refused");
      else setFeed("error", "Feed offline");
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    const live = state.live;
    if (!live.wanted || live.timer) return;
    const delay = RETRY_DELAYS_S[Math.min(live.retry, RETRY_DELAYS_S.length - 1)];
    live.retry += 1;
    live.timer = setTimeout(() => {
      live.timer = null;
      connectFeed();
    }, delay * 1000);
  }

  function receive(message) {
    const live = state.live;
    if (message.type === "lagged") {
      live.events.unshift({ lagged: message.missed });
    } else if (message.type === "request") {
      live.events.unshift(message);
    } else {
      return;
    }
    if (live.events.length > LIVE_MAX_ROWS) live.events.length = LIVE_MAX_ROWS;
    if (state.view !== "live") {
      live.unseen += 1;
      updateLiveCount();
      return;
    }
    if (!live.paused) prependLive(live.events[0]);
  }

  function updateLiveCount() {
    const count = $("live-count");
    const unseen = state.live.unseen;
    count.textContent = unseen > 99 ? "99+" : String(unseen);
    count.hidden = unseen === 0;
  }

  function matchesFilter(event) {
    const filter = $("live-filter").value.trim().toLowerCase();
    if (!filter || event.lagged) return true;
    return [event.key_name, event.model, event.route, event.server, event.status, String(event.http_status), event.team_id]
      .some((v) => v && String(v).toLowerCase().includes(filter));
  }

  function statusBadge(event) {
    const failed = event.http_status >= 400 || event.status === "error";
    const kind = failed ? "err" : event.status === "success" ? "ok" : "warn";
    return h("span", { class: `badge ${kind}`, title: `HTTP ${event.http_status}`, text: `${event.status} · ${event.http_status}` });
  }

  function liveRow(event, fresh) {
    if (event.lagged) {
      return h("tr", { class: "note" }, h("td", { colspan: 8, text: `${fmtInt(event.lagged)} requests were skipped: the feed fell behind.` }));
    }
    return h("tr", { class: fresh ? "fresh" : undefined, "data-testid": "live-row", "data-request-id": event.request_id },
      h("td", { class: "mono", "data-testid": "live-time", title: fmtDateTime(event.time), text: fmtTime(event.time) }),
      liveKeyCell(event),
      h("td", { class: "mono", "data-testid": "live-model", text: event.model || "—" }),
      h("td", { class: "mono", "data-testid": "live-route", text: event.route }),
      h("td", { class: "mono live-server", "data-testid": "live-server", text: event.server || "—" }),
      h("td", { "data-testid": "live-status" }, statusBadge(event)),
      h("td", { class: "num", "data-testid": "live-tokens", title: `${fmtInt(event.prompt_tokens)} prompt + ${fmtInt(event.completion_tokens)} completion`, text: fmtInt(event.tokens) }),
      h("td", { class: "num", "data-testid": "live-latency", text: fmtLatency(event.latency_ms) }));
  }

  function liveKeyCell(event) {
    const key = event.key_id ? state.keyIndex.get(event.key_id) : null;
    const details = [key && key.key_alias ? event.key_name : null, event.team_id ? teamLabel(event.team_id) : null]
      .filter(Boolean).join(" · ");
    return h("td", { "data-testid": "live-key" },
      h("span", { class: key && key.key_alias ? "title" : "mono", text: key && key.key_alias ? key.key_alias : event.key_name }),
      details ? h("span", { class: "sub", text: details }) : null);
  }

  function prependLive(event) {
    if (!matchesFilter(event)) return;
    const tbody = $("live-body");
    tbody.prepend(liveRow(event, true));
    while (tbody.rows.length > LIVE_MAX_ROWS) tbody.deleteRow(-1);
    $("live-empty").hidden = true;
  }

  function renderLive() {
    const rows = state.live.events.filter(matchesFilter).map((e) => liveRow(e, false));
    $("live-body").replaceChildren(...rows);
    $("live-empty").hidden = rows.length > 0;
    $("live-pause").textContent = state.live.paused ? "Resume" : "Pause";
  }

  // ------------------------------------------------------------------ wiring

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  function wire() {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = $("signin-token").value.trim();
      if (!token) return;
      const button = $("signin-submit");
      const error = $("signin-error");
      button.disabled = true;
      error.hidden = true;
      try {
        await signIn(token);
      } catch (err) {
        error.textContent = err.status === 403
          ? `This credential is not an admin: ${err.message}`
          : err.message;
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    });
    $("signout").addEventListener("click", () => signOut());
    for (const tab of document.querySelectorAll(".tab")) {
      tab.addEventListener("click", () => show(tab.dataset.view));
    }
    $("feed-pill").addEventListener("click", () => {
      if (!state.live.socket && !state.live.timer) startFeed();
      show("live");
    });

    $("keys-new").addEventListener("click", newKey);
    $("keys-refresh").addEventListener("click", () => loadKeys().catch(showError));
    $("keys-team").addEventListener("change", (event) => {
      state.keys.team = event.target.value;
      state.keys.page = 1;
      loadKeys().catch(showError);
    });
    $("teams-new").addEventListener("click", newTeam);
    $("teams-refresh").addEventListener("click", () => loadTeamsView().catch(showError));
    $("servers-refresh").addEventListener("click", () => loadServers().catch(showError));
    $("audit-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      const a = state.audit;
      a.type = $("audit-type").value;
      a.object = $("audit-object").value.trim();
      a.actor = $("audit-actor").value.trim();
      a.page = 1;
      loadAudit().catch(showError);
    });
    $("audit-refresh").addEventListener("click", () => loadAudit().catch(showError));
    $("mappings-new").addEventListener("click", newMapping);
    $("mappings-refresh").addEventListener("click", () => Promise.all([loadKeyIndex(), loadMappings()]).catch(showError));

    for (const id of ["spend-subject", "spend-range"]) {
      $(id).addEventListener("change", () => loadSpend().catch(showError));
    }
    $("spend-metric").addEventListener("change", drawChart);
    $("spend-refresh").addEventListener("click", () => {
      Promise.all([loadTeams(), loadKeyIndex()]).then(() => {
        fillSpendSubjects();
        return loadSpend();
      }).catch(showError);
    });
    $("spend-chart").addEventListener("mousemove", chartHover);
    $("spend-chart").addEventListener("mouseleave", chartLeave);
    window.addEventListener("resize", debounce(drawChart, 120));

    $("live-pause").addEventListener("click", () => {
      state.live.paused = !state.live.paused;
      renderLive();
    });
    $("live-clear").addEventListener("click", () => {
      state.live.events = [];
      renderLive();
    });
    $("live-filter").addEventListener("input", debounce(renderLive, 150));

    $("secret-copy").addEventListener("click", copySecret);
    $("secret-done").addEventListener("click", hideSecret);

    $("dialog-form").addEventListener("submit", (event) => {
      event.preventDefault();
      if (formSubmit) formSubmit();
    });
    $("dialog-cancel").addEventListener("click", closeForm);
    $("dialog").addEventListener("close", () => {
      formSubmit = null;
    });

    window.addEventListener("hashchange", () => {
      const view = location.hash.slice(1);
      if (state.token && view !== state.view && loaders[view]) show(view);
    });
  }

  function start() {
    wire();
    let token = "";
    try {
      token = sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      token = "";
    }
    if (!token) {
      signOut();
      return;
    }
    signIn(token).catch((err) => signOut(err.status === 401 ? "Your session has ended; sign in again." : err.message));
  }

  start();
})();
