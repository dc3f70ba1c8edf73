// shoal UI: the deploy form, a self-refreshing deployments table, and the live log.
"use strict";

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// A write to the API with the admin token (asked for once, then kept in
// this browser). Returns the response and its JSON body, or null if the
// user gave no token.
async function write(method, url, body) {
  let token = localStorage.getItem("shoal-token") || "";
  if (!token) {
    token = prompt("Admin token") || "";
    if (!token) return null;
    localStorage.setItem("shoal-token", token);
  }
  const headers = { authorization: "Bearer " + token };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  return { res, json };
}

function problem(r) {
  return (r.json.error || r.res.status) + ": " + (r.json.detail || "");
}

const form = document.getElementById("deploy");
if (form) {
  const token = form.elements.token;
  token.value = localStorage.getItem("shoal-token") || "";
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById("deploy-result");
    localStorage.setItem("shoal-token", token.value);
    const body = { repo_url: form.elements.repo_url.value.trim() };
    for (const k of ["name", "ref"]) if (form.elements[k].value.trim()) body[k] = form.elements[k].value.trim();
    const res = await fetch("/api/deployments", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer " + token.value },
      body: JSON.stringify(body),
    });
    const json = await res.json().catch(() => ({}));
    if (res.status === 202) location.href = "/deployments/" + json.id;
    else out.textContent = (json.error || res.status) + ": " + (json.detail || "");
  });
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

// Cancel a queued or building deployment.
const cancelButton = document.getElementById("cancel");
if (cancelButton) {
  cancelButton.addEventListener("click", async () => {
    const out = document.getElementById("cancel-result");
    cancelButton.disabled = true;
    const r = await write("POST", "/api/deployments/" + cancelButton.dataset.deployment + "/cancel");
    if (r && r.res.ok) out.textContent = "Canceled.";
    else {
      if (r) out.textContent = problem(r);
      cancelButton.disabled = false;
    }
  });
}

// Roll back to, or promote, a successful version.
const makeLive = document.getElementById("make-live");
if (makeLive) {
  makeLive.addEventListener("click", async () => {
    const out = document.getElementById("make-live-result");
    makeLive.disabled = true;
    const { project, deployment, verb } = makeLive.dataset;
    const r = await write("POST", "/api/projects/" + project + "/" + verb, { deployment_id: deployment });
    if (r && r.res.ok) out.textContent = "Every peer switches to this version now.";
    else {
      if (r) out.textContent = problem(r);
      makeLive.disabled = false;
    }
  });
}

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
    };
    const secret = settings.elements.webhook_secret.value.trim();
    if (secret) body.webhook_secret = secret;
    const r = await write("PATCH", "/api/projects/" + settings.dataset.project, body);
    if (r) out.textContent = r.res.ok ? "Saved." : problem(r);
  });
}
