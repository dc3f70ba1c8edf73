// shoal UI: the deploy form, a self-refreshing deployments table, and the live log.
"use strict";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// A write to the API: with the session cookie and its CSRF token when
// signed in with GitHub, otherwise with the admin token (asked for once,
// then kept in this browser). Returns the response and its JSON body, or
// null if the user gave no token.
const csrf = (document.querySelector("meta[name=csrf]") || {}).content || "";
async function write(method, url, body) {
  const headers = {};
  if (csrf) {
    headers["x-csrf-token"] = csrf;
  } else {
    let token = localStorage.getItem("shoal-token") || "";
    if (!token) {
      token = prompt("Admin token") || "";
      if (!token) return null;
      localStorage.setItem("shoal-token", token);
    }
    headers.authorization = "Bearer " + token;
  }
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(url, { method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  return { res, json };
}

function problem(r) {
  return (r.json.error || r.res.status) + ": " + (r.json.detail || "");
}

const form = document.getElementById("deploy");
if (form) {
  const token = form.elements.token;
  if (token) token.value = localStorage.getItem("shoal-token") || "";
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("deploy-result");
    if (token && token.value) localStorage.setItem("shoal-token", token.value);
    const body = { repo_url: form.elements.repo_url.value.trim() };
    for (const k of ["name", "ref", "root_dir"]) if (form.elements[k].value.trim()) body[k] = form.elements[k].value.trim();
    const r = await write("POST", "/api/deployments", body);
    if (r && r.res.status === 202) location.href = "/deployments/" + r.json.id;
    else if (r) out.textContent = problem(r);
  });
}

// Sign in with GitHub's device flow: show the code, then poll (through
// whichever peer answers) until GitHub says yes, no or too late.
const deviceLogin = document.getElementById("device-login");
if (deviceLogin) {
  deviceLogin.addEventListener("click", async () => {
    const state = document.getElementById("device-state");
    deviceLogin.disabled = true;
    const res = await fetch("/auth/device", { method: "POST" });
    const start = await res.json().catch(() => ({}));
    document.getElementById("device-box").hidden = false;
    if (!res.ok) { state.textContent = (start.error || res.status) + ": " + (start.detail || ""); deviceLogin.disabled = false; return; }
    const link = document.getElementById("device-link");
    link.href = start.verification_uri; link.textContent = start.verification_uri;
    document.getElementById("device-code").textContent = start.user_code;
    let { handle, interval } = start;
    const poll = async () => {
      const r = await fetch("/auth/device/poll", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ handle }) });
      const j = await r.json().catch(() => ({}));
      if (r.ok && j.state === "done") { state.textContent = "Signed in as @" + j.login + "."; location.href = "/new"; return; }
      if (r.ok) { handle = j.handle; interval = j.interval; setTimeout(poll, interval * 1000); return; }
      state.textContent = (j.error || r.status) + ": " + (j.detail || "");
      deviceLogin.disabled = false;
    };
    setTimeout(poll, interval * 1000);
  });
}

const tokenForm = document.getElementById("token-form");
if (tokenForm) {
  tokenForm.elements.token.value = localStorage.getItem("shoal-token") || "";
  tokenForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    localStorage.setItem("shoal-token", tokenForm.elements.token.value.trim());
    document.getElementById("token-result").textContent = "Saved in this browser.";
  });
}

// The repository picker: the signed-in user's GitHub repositories, newest
// push first, searchable, 30 per page; "Deploy" creates the project.
const repoList = document.getElementById("repos");
if (repoList) {
  const search = document.getElementById("repo-search");
  const out = document.getElementById("picker-result");
  let page = 1, pages = 1, timer = null;
  const load = async () => {
    const res = await fetch("/api/github/repos?page=" + page + "&q=" + encodeURIComponent(search.value.trim()), { credentials: "same-origin" });
    const j = await res.json().catch(() => ({}));
    if (!res.ok) { repoList.replaceChildren(el("li", { class: "error" }, (j.error || res.status) + ": " + (j.detail || ""))); return; }
    page = j.page; pages = j.pages;
    document.getElementById("repos-page").textContent = "Page " + page + " of " + pages;
    document.getElementById("repos-prev").disabled = page <= 1;
    document.getElementById("repos-next").disabled = page >= pages;
    const items = j.repos.map((r) => {
      const li = el("li", { "data-repo": r.full_name });
      const text = el("div");
      text.append(el("strong", {}, r.full_name), " ");
      if (r.private) text.append(el("span", { class: "badge private" }, "private"), " ");
      if (r.description) text.append(el("span", { class: "empty" }, r.description));
      const button = el("button", { type: "button" }, "Deploy");
      button.addEventListener("click", async () => {
        button.disabled = true;
        const body = { repo_url: r.clone_url };
        if (r.default_branch) body.ref = r.default_branch;
        const w = await write("POST", "/api/deployments", body);
        if (w && w.res.status === 202) location.href = "/deployments/" + w.json.id;
        else { if (w) out.textContent = problem(w); button.disabled = false; }
      });
      li.append(text, button);
      return li;
    });
    repoList.replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "No repositories match.")]));
  };
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { page = 1; load(); }, 250); });
  document.getElementById("repos-prev").addEventListener("click", () => { if (page > 1) { page--; load(); } });
  document.getElementById("repos-next").addEventListener("click", () => { if (page < pages) { page++; load(); } });
  load();
}

const table = document.querySelector("#deployments tbody");
if (table) {
  setInterval(async () => {
    const res = await fetch("/api/deployments");
    if (!res.ok) return;
    const rows = (await res.json()).map((d) => {
      const tr = el("tr", { "data-id": d.id });
      const name = el("td"); name.append(el("a", { href: "/deployments/" + d.id }, d.name));
      const status = el("td"); status.append(el("span", { class: "badge " + d.status, "data-status": "" }, d.status));
      const url = el("td"); url.append(el("a", { href: d.live_url }, d.live_url));
      tr.append(name, status, el("td", { class: "mono" }, (d.commit || "").slice(0, 12)), url, el("td", {}, d.created_at));
      return tr;
    });
    if (rows.length) table.replaceChildren(...rows);
  }, 2000);
}

const log = document.getElementById("log");
if (log) {
  const id = log.dataset.deployment;
  const source = new EventSource("/api/deployments/" + id + "/logs");
  source.addEventListener("log", (ev) => {
    const line = JSON.parse(ev.data);
    const span = el("span", { class: line.level }, `${line.created_at.slice(11, 23)} [${line.step}] ${line.message}\n`);
    log.append(span);
    log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("status", (ev) => {
    const badge = document.querySelector("[data-status]");
    const status = JSON.parse(ev.data).status;
    if (badge) { badge.textContent = status; badge.className = "badge " + status; }
  });
  const finals = ["success", "buildFailed", "distributionFailed", "canceled"];
  const badge = document.querySelector("[data-status]");
  const endedAtLoad = badge && finals.includes(badge.textContent);
  // Reload once when a running deployment ends, to show its final details.
  source.addEventListener("end", () => { source.close(); if (!endedAtLoad) location.reload(); });
}

// Each peer's copy of the artifact, refreshed while the deployment runs.
const replicasBox = document.getElementById("replicas-box");
if (replicasBox) {
  const id = replicasBox.dataset.deployment;
  const finals = ["success", "buildFailed", "distributionFailed", "canceled"];
  const timer = setInterval(async () => {
    const res = await fetch("/api/deployments/" + id);
    if (!res.ok) return;
    const d = await res.json();
    if (d.replicas.length) {
      const head = el("thead");
      const hr = el("tr");
      for (const h of ["Peer", "Id", "State", "Held", "Bytes", "Updated", "Error"]) hr.append(el("th", {}, h));
      head.append(hr);
      const body = el("tbody");
      for (const r of d.replicas) {
        const pct = r.total > 0 ? Math.floor((Math.min(r.bytes, r.total) * 100) / r.total) : r.state === "complete" ? 100 : 0;
        const tr = el("tr", { "data-peer": r.peer });
        const state = el("td"); state.append(el("span", { class: "badge " + r.state }, r.state));
        const held = el("td");
        held.append(el("progress", { max: "100", value: String(pct), "aria-label": pct + "% held" }), " " + pct + "%");
        tr.append(el("td", {}, r.name || ""), el("td", { class: "mono" }, r.peer.slice(-12)), state, held,
          el("td", {}, String(r.bytes)), el("td", {}, r.updated_at), el("td", {}, r.error || ""));
        body.append(tr);
      }
      const table = el("table", { id: "replicas" });
      table.append(head, body);
      replicasBox.replaceChildren(table);
    }
    if (finals.includes(d.status)) clearInterval(timer);
  }, 1000);
}

// A button that makes one write: disabled while it runs; on success
// `done(r)` (a message for the status next to it, or a navigation), else the
// problem in words and the button usable again.
function action(id, request, done) {
  const button = document.getElementById(id);
  if (!button) return;
  button.addEventListener("click", async () => {
    const out = document.getElementById(id + "-result");
    button.disabled = true;
    const r = await request(button.dataset);
    if (r && r.res.ok) { const message = done(r); if (message) out.textContent = message; return; }
    if (r) out.textContent = problem(r);
    button.disabled = false;
  });
}

// Cancel a queued or building deployment.
action("cancel", (d) => write("POST", "/api/deployments/" + d.deployment + "/cancel"), () => "Canceled.");

// Build the branch's latest commit again.
action("redeploy", (d) => {
  const body = { repo_url: d.repo, name: d.name };
  if (d.ref) body.ref = d.ref;
  return write("POST", "/api/deployments", body);
}, (r) => { location.href = "/deployments/" + r.json.id; });

// Roll back to, or promote, a successful version.
action("make-live", (d) => write("POST", "/api/projects/" + d.project + "/" + d.verb, { deployment_id: d.deployment }),
  () => "Every peer switches to this version now.");

// A project's auto-deploy settings.
const settings = document.getElementById("settings");
if (settings) {
  settings.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("settings-result");
    const body = {
      auto_deploy: settings.elements.auto_deploy.checked,
      poll_interval_secs: Number(settings.elements.poll_interval_secs.value || 0),
      branch: settings.elements.branch.value.trim(),
      root_dir: settings.elements.root_dir.value.trim(),
    };
    const secret = settings.elements.webhook_secret.value.trim();
    if (secret) body.webhook_secret = secret;
    const r = await write("PATCH", "/api/projects/" + settings.dataset.project, body);
    if (r) out.textContent = r.res.ok ? "Saved." : problem(r);
  });
}

// A project's environment variables: listed (secrets by name only), set
// and removed.
const env = document.getElementById("env");
if (env) {
  const base = "/api/projects/" + encodeURIComponent(env.dataset.project) + "/env";
  const body = env.querySelector("tbody");
  const out = document.getElementById("env-result");
  const note = (text) => {
    const tr = el("tr");
    tr.append(el("td", { colspan: 3, class: "empty" }, text));
    body.append(tr);
  };
  async function load() {
    const r = await write("GET", base);
    if (!r) return;
    body.replaceChildren();
    if (!r.res.ok) return note(problem(r));
    if (!r.json.length) note("No variables yet.");
    for (const v of r.json) {
      const tr = el("tr", { "data-key": v.key });
      tr.append(el("td", { class: "mono" }, v.key));
      tr.append(el("td", { class: v.secret ? "secret" : "mono" }, v.secret ? "secret (hidden)" : v.value));
      const cell = el("td");
      const rm = el("button", { type: "button" }, "Remove");
      rm.addEventListener("click", async () => {
        const d = await write("DELETE", base + "/" + encodeURIComponent(v.key));
        if (d && (d.res.ok || d.res.status === 404)) load();
        else if (d) out.textContent = problem(d);
      });
      cell.append(rm);
      tr.append(cell);
      body.append(tr);
    }
  }
  const f = document.getElementById("env-form");
  f.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = f.elements.key.value.trim();
    const r = await write("PUT", base + "/" + encodeURIComponent(key), { value: f.elements.value.value, secret: f.elements.secret.checked });
    if (!r) return;
    if (r.res.ok) { out.textContent = key + " set; the next build uses it."; f.reset(); load(); }
    else out.textContent = problem(r);
  });
  load();
}

// Drop a project's build cache on every peer.
action("clear-cache", (d) => write("DELETE", "/api/projects/" + d.project + "/cache"), () => "Cleared: the next build downloads everything again.");
