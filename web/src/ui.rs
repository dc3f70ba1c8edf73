//! The first UI: server-rendered pages with a little JavaScript. A dashboard
//! with the deployments and a deploy form, and a page per deployment with its
//! details and live log. No build step: the pages are strings in the binary.

use crate::{ApiError, AppState, Backend, DeploymentView};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use std::fmt::Write;

pub fn routes<B: Backend>() -> Router<AppState<B>> {
    Router::new()
        .route("/", get(dashboard::<B>))
        .route("/login", get(login_page::<B>))
        .route("/new", get(new_page::<B>))
        .route("/deployments/{id}", get(deployment_page::<B>))
        .route("/peers", get(peers_page::<B>))
        .route("/projects", get(projects_page::<B>))
        .route("/projects/{name}", get(project_page::<B>))
        .route(
            "/ui.css",
            get(|| async { ([("content-type", "text/css")], CSS) }),
        )
        .route(
            "/ui.js",
            get(|| async { ([("content-type", "text/javascript")], JS) }),
        )
}

const CSS: &str = include_str!("ui/ui.css");
/// Deployments (newest first) whose switches a project page lists.
const HISTORY_DEPLOYMENTS: usize = 30;
const JS: &str = include_str!("ui/ui.js");

/// The first `n` characters of `s` (never splits a character: ids and
/// commits come from other peers and may be anything).
fn head(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// The last `n` characters of `s`.
fn tail(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    s.char_indices()
        .nth(count.saturating_sub(n))
        .map_or("", |(i, _)| &s[i..])
}

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Who is looking at a page: the signed-in GitHub user, if any.
pub struct Viewer {
    login: Option<String>,
    csrf: Option<String>,
    /// Whether GitHub sign-in is configured on this mesh.
    github: bool,
}

impl<B: Backend> FromRequestParts<AppState<B>> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        s: &AppState<B>,
    ) -> Result<Self, Self::Rejection> {
        let session = crate::auth::viewer(&*s.backend, &parts.headers);
        let auth = s.backend.auth();
        Ok(Self {
            csrf: session.as_ref().map(|s| auth.keys.csrf(&s.id)),
            login: session.map(|s| s.login),
            github: auth.github.is_some(),
        })
    }
}

fn page(viewer: &Viewer, title: &str, body: &str) -> Html<String> {
    let (meta, who) = match (&viewer.login, &viewer.csrf) {
        (Some(login), Some(csrf)) => (
            format!("<meta name=csrf content='{}'>", esc(csrf)),
            format!(
                "<span class=who>@{login}</span> <form method=post action=/auth/logout class=inline>\
                 <input type=hidden name=csrf value='{csrf}'><button class=link>Sign out</button></form>",
                login = esc(login),
                csrf = esc(csrf),
            ),
        ),
        _ => (String::new(), "<a href=/login>Sign in</a>".to_owned()),
    };
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content='width=device-width,initial-scale=1'>{meta}\
         <title>{} · shoal</title><link rel=stylesheet href=/ui.css></head>\
         <body><header><a href=/ class=brand>shoal</a> <nav><a href=/>Deployments</a> \
         <a href=/projects>Projects</a> <a href=/new>New project</a> <a href=/peers>Peers</a></nav>\
         <span class=account>{who}</span></header><main>{body}</main>\
         <script src=/ui.js></script></body></html>",
        esc(title)
    ))
}

fn badge(d: &DeploymentView) -> String {
    let s = d.status.as_str();
    format!("<span class='badge {s}' data-status>{s}</span>")
}

fn row(d: &DeploymentView) -> String {
    format!(
        "<tr data-id='{id}'><td><a href='/deployments/{id}'>{name}</a></td><td>{badge}</td>\
         <td class=mono>{commit}</td><td><a href='{url}'>{url}</a></td><td>{created}</td></tr>",
        id = esc(&d.id),
        name = esc(&d.name),
        badge = badge(d),
        commit = esc(d.commit.as_deref().map_or("", |c| head(c, 12))),
        url = esc(&d.live_url),
        created = esc(&d.created_at),
    )
}

async fn dashboard<B: Backend>(
    State(s): State<AppState<B>>,
    viewer: Viewer,
) -> Result<Html<String>, ApiError> {
    let deployments = s.backend.deployments()?;
    let mut rows = String::new();
    for d in &deployments {
        rows.push_str(&row(d));
    }
    let picker = if viewer.login.is_some() {
        "<p><a class=button href=/new>Import a GitHub repository</a></p>".to_owned()
    } else if viewer.github {
        "<p><a href=/login>Sign in with GitHub</a> to pick one of your repositories, or paste a git URL:</p>".to_owned()
    } else {
        String::new()
    };
    let form = deploy_form(&viewer);
    if deployments.is_empty() {
        rows.push_str("<tr><td colspan=5 class=empty>No deployments yet.</td></tr>");
    }
    let body = format!(
        "<section><h1>New deployment</h1>{picker}{form}</section>\
         <section><h1>Deployments</h1><table id=deployments><thead><tr><th>Name</th><th>Status</th>\
         <th>Commit</th><th>Live URL</th><th>Created</th></tr></thead><tbody>{rows}</tbody></table>\
         </section>"
    );
    Ok(page(&viewer, "Deployments", &body))
}

/// The deploy-by-URL form; asks for the admin token unless signed in.
fn deploy_form(viewer: &Viewer) -> String {
    let token = if viewer.login.is_some() {
        ""
    } else {
        "<label>Admin token <input name=token type=password autocomplete=off></label>"
    };
    format!(
        "<form id=deploy class=deploy>\
         <label>Git URL <input name=repo_url required placeholder='https://github.com/you/site.git'></label>\
         <label>Name <input name=name placeholder='from the repository'></label>\
         <label>Branch or tag <input name=ref placeholder='default branch'></label>\
         <label>Base directory <input name=root_dir placeholder='the repository top (e.g. apps/site)'></label>\
         {token}<button>Deploy</button><output id=deploy-result></output></form>"
    )
}

/// The repository picker, for a signed-in GitHub user.
fn picker(viewer: &Viewer) -> String {
    if viewer.login.is_none() {
        return if viewer.github {
            "<p><a class=button href=/login>Sign in with GitHub</a> to pick one of your repositories.</p>"
                .to_owned()
        } else {
            "<p class=empty>GitHub sign-in is not configured on this mesh.</p>".to_owned()
        };
    }
    "<div id=picker><label>Your repositories <input id=repo-search type=search \
     placeholder='Search by name or description' autocomplete=off></label>\
     <ul id=repos aria-live=polite><li class=empty>Loading…</li></ul>\
     <p class=pager><button id=repos-prev type=button>Previous</button> <span id=repos-page></span> \
     <button id=repos-next type=button>Next</button></p><output id=picker-result></output></div>"
        .to_owned()
}

/// Sign in: with GitHub (device code; the web flow too when configured),
/// or keep an admin token in this browser.
async fn login_page<B: Backend>(State(s): State<AppState<B>>, viewer: Viewer) -> Html<String> {
    let auth = s.backend.auth();
    let mut body = String::from("<section><h1>Sign in</h1>");
    if let Some(login) = &viewer.login {
        let _ = write!(
            body,
            "<p>Signed in as <strong>@{}</strong>. <a href=/new>Import a repository</a>.</p>",
            esc(login)
        );
    }
    match &auth.github {
        Some(gh) => {
            let _ = write!(
                body,
                "<p>Sign in with your GitHub account on <a href='{url}'>{url}</a>.</p>\
                 <p><button id=device-login>Sign in with GitHub (device code)</button> {web}</p>\
                 <div id=device-box hidden><p>Open <a id=device-link target=_blank rel=noopener></a> \
                 and enter this code:</p><p class=code id=device-code></p>\
                 <p id=device-state role=status>Waiting for GitHub…</p></div>",
                url = esc(&gh.config.web_url),
                web = if gh.web_flow() {
                    "<a class=button href=/auth/github>Continue on GitHub</a>"
                } else {
                    ""
                },
            );
        }
        None => body.push_str(
            "<p class=empty>GitHub sign-in is not configured on this mesh (start peers with \
             <code>--github-client-id</code>). Use the admin token below.</p>",
        ),
    }
    body.push_str(
        "</section><section><h2>Admin token</h2><p>Operators can keep the mesh's admin token \
         in this browser instead.</p><form id=token-form class=deploy><label>Admin token \
         <input name=token type=password autocomplete=off></label><button>Save</button>\
         <output id=token-result></output></form></section>",
    );
    page(&viewer, "Sign in", &body)
}

/// New project: pick one of your GitHub repositories, or paste a git URL.
async fn new_page<B: Backend>(_: State<AppState<B>>, viewer: Viewer) -> Html<String> {
    let body = format!(
        "<section><h1>New project</h1>{picker}</section>\
         <section><h2>Or deploy any git URL</h2>{form}</section>",
        picker = picker(&viewer),
        form = deploy_form(&viewer),
    );
    page(&viewer, "New project", &body)
}

async fn projects_page<B: Backend>(
    State(s): State<AppState<B>>,
    viewer: Viewer,
) -> Result<Html<String>, ApiError> {
    let projects = s.backend.projects()?;
    let deployments = s.backend.deployments()?;
    let mut rows = String::new();
    for p in &projects {
        let latest = deployments.iter().find(|d| d.name == p.name);
        let live = p
            .current_deployment
            .as_deref()
            .and_then(|id| deployments.iter().find(|d| d.id == id));
        let _ = write!(
            rows,
            "<tr data-project='{name}'><td><a href='/projects/{name}'>{name}</a></td><td>{badge}</td>\
             <td>{last}</td><td class=mono>{commit}</td><td class=mono>{builder}</td>\
             <td><a href='{url}'>{url}</a></td><td>{mode}</td></tr>",
            name = esc(&p.name),
            badge = latest.map(badge).unwrap_or_default(),
            last = esc(latest.map_or("", |d| d.created_at.as_str())),
            commit = esc(live
                .and_then(|d| d.commit.as_deref())
                .map_or("", |c| head(c, 12))),
            builder = esc(live
                .and_then(|d| d.builder.as_deref())
                .map_or("", |b| tail(b, 8))),
            url = esc(live.map_or("", |d| d.live_url.as_str())),
            mode = if p.pinned { "pinned" } else if p.auto_deploy { "auto-deploy" } else { "" },
        );
    }
    if projects.is_empty() {
        rows.push_str(
            "<tr><td colspan=7 class=empty>No projects yet: deploy a repository.</td></tr>",
        );
    }
    let body = format!(
        "<h1>Projects</h1><table id=projects><thead><tr><th>Name</th><th>Last deploy</th><th>When</th>\
         <th>Live commit</th><th>Built by</th><th>Live URL</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    );
    Ok(page(&viewer, "Projects", &body))
}

async fn project_page<B: Backend>(
    State(s): State<AppState<B>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    viewer: Viewer,
) -> Result<Html<String>, ApiError> {
    let p = s
        .backend
        .project(&name)?
        .ok_or_else(|| ApiError::not_found(format!("no project {name}")))?;
    let mut rows = String::new();
    // Which version went live when: successes, rollbacks and promotions.
    let mut history: Vec<(String, String, String)> = Vec::new();
    let project_deployments: Vec<DeploymentView> = s
        .backend
        .deployments()?
        .into_iter()
        .filter(|d| d.name == p.name)
        .collect();
    for d in project_deployments.iter().take(HISTORY_DEPLOYMENTS) {
        for line in s.backend.logs(&d.id)?.unwrap_or_default() {
            let switch = (line.step == "live"
                && (line.message.starts_with("rollback") || line.message.starts_with("promote")))
                || (line.step == "distribute"
                    && line.message.starts_with("every live peer holds it"));
            if switch {
                history.push((line.created_at.clone(), d.id.clone(), line.message.clone()));
            }
        }
    }
    history.sort_by(|a, b| b.0.cmp(&a.0));
    let mut switches = String::new();
    for (at, id, message) in &history {
        let _ = write!(
            switches,
            "<li><time>{at}</time> <a href='/deployments/{id}' class=mono>{short}</a>: {message}</li>",
            at = esc(at),
            id = esc(id),
            short = esc(head(id, 10)),
            message = esc(message),
        );
    }
    if switches.is_empty() {
        switches.push_str("<li class=empty>No version has gone live yet.</li>");
    }
    for d in &project_deployments {
        let live = p.current_deployment.as_deref() == Some(d.id.as_str());
        let _ = write!(
            rows,
            "<tr data-id='{id}'><td><a href='/deployments/{id}'>{short}</a>{live}</td><td>{badge}</td>\
             <td class=mono>{commit}</td><td>{created}</td></tr>",
            id = esc(&d.id),
            short = esc(head(&d.id, 10)),
            live = if live { " <strong>live</strong>" } else { "" },
            badge = badge(d),
            commit = esc(d.commit.as_deref().map_or("", |c| head(c, 12))),
            created = esc(&d.created_at),
        );
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("<this peer>");
    let hook = if !s.backend.webhook_secrets().is_empty() {
        format!(
            "<p>In the repository's settings on GitHub, add a webhook: payload URL \
             <code>http://{host}/api/hooks/github</code> (any peer of the mesh will do), content type \
             <code>application/json</code>, the mesh's webhook secret (or this project's own), and the \
             <code>push</code> event. \
             Every push to <code>{branch}</code> is then deployed.</p>",
            host = esc(host),
            branch = esc(p.branch.as_deref().unwrap_or("the default branch")),
        )
    } else {
        "<p>Webhooks are off on this mesh: start its peers with <code>--webhook-secret</code> to \
         deploy on every push, or turn on polling below.</p>"
            .to_owned()
    };
    let body = format!(
        "<h1>{name}</h1><p class=mono>{repo}</p>\
         <h2>Auto-deploy</h2>{hook}\
         <form id=settings class=deploy data-project='{name}'>\
         <label><span><input type=checkbox name=auto_deploy {checked}> deploy new commits</span></label>\
         <label>Poll every (seconds, 0 = webhooks only) <input name=poll_interval_secs type=number min=0 max=86400 value={poll}></label>\
         <label>Branch <input name=branch value='{branch}' placeholder='default branch'></label>\
         <label>Webhook secret of this project <input name=webhook_secret type=password autocomplete=off placeholder='{secret_hint}'></label>\
         <label>Base directory <input name=root_dir value='{root}' placeholder='the repository top'></label>\
         <button>Save</button><output id=settings-result></output></form>\
         <section id=env data-project='{name}'><h2>Environment variables</h2>\
         <p>Given to the install and build steps. A secret is sealed with the mesh secret and never shown again; \
         build output that prints it shows <code>***</code>.</p>\
         <table id=env-vars><thead><tr><th>Name</th><th>Value</th><th></th></tr></thead>\
         <tbody><tr><td colspan=3 class=empty>Loading…</td></tr></tbody></table>\
         <form id=env-form class=deploy><label>Name <input name=key required pattern='[A-Za-z_][A-Za-z0-9_]*'></label>\
         <label>Value <input name=value autocomplete=off></label>\
         <label><span><input type=checkbox name=secret> secret</span></label>\
         <button>Set</button><output id=env-result></output></form></section>\
         <h2>Build cache</h2><p>What the package manager downloaded, kept per lockfile on each peer.</p>\
         <p><button id=clear-cache type=button data-project='{name}'>Clear the build cache</button> \
         <output id=clear-cache-result></output></p>\
         <h2>Deployments</h2><table id=project-deployments><thead><tr><th>Deployment</th><th>Status</th>\
         <th>Commit</th><th>Created</th></tr></thead><tbody>{rows}</tbody></table>\
         <h2>History</h2><ol id=history>{switches}</ol>",
        name = esc(&p.name),
        repo = esc(&p.repo_url),
        checked = if p.auto_deploy { "checked" } else { "" },
        poll = p.poll_interval_secs,
        branch = esc(p.branch.as_deref().unwrap_or("")),
        root = esc(p.root_dir.as_deref().unwrap_or("")),
        secret_hint = if p.has_webhook_secret { "set (type to replace)" } else { "none: the mesh's" },
    );
    Ok(page(&viewer, &p.name, &body))
}

async fn deployment_page<B: Backend>(
    State(s): State<AppState<B>>,
    Path(id): Path<String>,
    viewer: Viewer,
) -> Result<Html<String>, ApiError> {
    let d = s
        .backend
        .deployment(&id)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id}")))?;
    let mut dl = String::new();
    let fields = [
        ("Repository", d.repo_url.clone()),
        (
            "Ref",
            d.git_ref.clone().unwrap_or_else(|| "default branch".into()),
        ),
        ("Commit", d.commit.clone().unwrap_or_default()),
        ("Builder", d.builder.clone().unwrap_or_default()),
        ("Artifact", d.artifact.clone().unwrap_or_default()),
        ("Created", d.created_at.clone()),
        ("Updated", d.updated_at.clone()),
    ];
    for (k, v) in fields {
        let _ = write!(dl, "<dt>{k}</dt><dd class=mono>{}</dd>", esc(&v));
    }
    let error = d
        .error
        .as_deref()
        .map(|e| format!("<p class=error>{}</p>", esc(e)))
        .unwrap_or_default();
    let mut replicas = String::new();
    for r in &d.replicas {
        let pct = match (r.bytes.min(r.total) * 100).checked_div(r.total) {
            Some(p) => p,
            None if r.state == "complete" => 100,
            None => 0,
        };
        let _ = write!(
            replicas,
            "<tr data-peer='{peer}'><td>{name}</td><td class=mono>{short}</td>\
             <td><span class='badge {state}'>{state}</span></td>\
             <td><progress max=100 value={pct} aria-label='{pct}% held'></progress> {pct}%</td>\
             <td>{bytes}</td><td>{updated}</td><td>{error}</td></tr>",
            peer = esc(&r.peer),
            name = esc(r.name.as_deref().unwrap_or("")),
            short = esc(tail(&r.peer, 12)),
            state = esc(&r.state),
            bytes = r.bytes,
            updated = esc(&r.updated_at),
            error = esc(r.error.as_deref().unwrap_or("")),
        );
    }
    let replicas = if replicas.is_empty() {
        "<p>No peer holds it yet.</p>".to_owned()
    } else {
        format!(
            "<table id=replicas><thead><tr><th>Peer</th><th>Id</th><th>State</th><th>Held</th>\
             <th>Bytes</th><th>Updated</th><th>Error</th></tr></thead><tbody>{replicas}</tbody></table>"
        )
    };
    let current = s
        .backend
        .project(&d.name)?
        .and_then(|p| p.current_deployment);
    let make_live = match current.as_deref() {
        Some(cur) if d.status == crate::Status::Success && cur != d.id => {
            let (verb, label) = if d.id.as_str() < cur {
                ("rollback", "Roll back to this version")
            } else {
                ("promote", "Promote this version")
            };
            format!(
                "<p><button id=make-live type=button data-project='{name}' data-deployment='{id}' \
                 data-verb={verb}>{label}</button> <span id=make-live-result role=status></span></p>",
                name = esc(&d.name),
                id = esc(&d.id),
            )
        }
        Some(cur) if cur == d.id => "<p><strong>This version is live.</strong></p>".to_owned(),
        _ => String::new(),
    };
    let cancel = if matches!(d.status, crate::Status::Queued | crate::Status::Building) {
        format!(
            "<p><button id=cancel type=button data-deployment='{}'>Cancel deployment</button> \
             <span id=cancel-result role=status></span></p>",
            esc(&d.id)
        )
    } else {
        String::new()
    };
    let redeploy = if cancel.is_empty() {
        format!(
            "<p><button id=redeploy type=button data-repo='{repo}' data-name='{name}' data-ref='{git_ref}'>\
             Redeploy latest {what}</button> <span id=redeploy-result role=status></span></p>",
            repo = esc(&d.repo_url),
            name = esc(&d.name),
            git_ref = esc(d.git_ref.as_deref().unwrap_or("")),
            what = esc(d.git_ref.as_deref().unwrap_or("commit")),
        )
    } else {
        String::new()
    };
    let mut steps = String::new();
    for st in crate::model::timeline(&s.backend.logs(&d.id)?.unwrap_or_default()) {
        let _ = write!(
            steps,
            "<li class='{level}'><strong>{step}</strong> <span class=mono>{peer}</span> \
             <time>{start}</time>–<time>{end}</time>: {summary}</li>",
            level = esc(&st.level),
            step = esc(&st.step),
            peer = esc(tail(&st.peer, 8)),
            start = esc(st.started_at.get(11..23).unwrap_or(&st.started_at)),
            end = esc(st.ended_at.get(11..23).unwrap_or(&st.ended_at)),
            summary = esc(&st.summary),
        );
    }
    let body = format!(
        "<h1>{name} {badge}</h1>{error}{cancel}{make_live}{redeploy}<p><a href='{url}'>{url}</a></p>\
         <p>This version: <a id=preview href='{preview}'>{preview}</a></p><dl>{dl}</dl>\
         <h2>Timeline</h2><ol id=timeline>{steps}</ol>\
         <h2>Replicas</h2><div id=replicas-box data-deployment='{id}'>{replicas}</div>\
         <h2>Log</h2><pre id=log data-deployment='{id}'></pre>",
        name = esc(&d.name),
        badge = badge(&d),
        url = esc(&d.live_url),
        preview = esc(d.preview_url.as_deref().unwrap_or("")),
        id = esc(&d.id),
    );
    Ok(page(&viewer, &d.name, &body))
}

async fn peers_page<B: Backend>(State(s): State<AppState<B>>, viewer: Viewer) -> Html<String> {
    let names: std::collections::HashMap<String, String> = s
        .backend
        .deployments()
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.id, d.name))
        .collect();
    let mut rows = String::new();
    for p in s.backend.peers() {
        let state = if p.alive { "alive" } else { "dead" };
        let mut held = String::new();
        for id in p.holds.iter().rev().take(12) {
            let name = names.get(id).map_or("?", String::as_str);
            let _ = write!(
                held,
                "<a href='/deployments/{id}'>{name}&nbsp;<span class=mono>{short}</span></a> ",
                id = esc(id),
                name = esc(name),
                short = esc(head(id, 8)),
            );
        }
        if p.holds.len() > 12 {
            let _ = write!(held, "and {} more", p.holds.len() - 12);
        }
        let _ = write!(
            rows,
            "<tr data-peer='{id}'><td>{name}{me}</td><td class=mono>{short}</td><td>{region}</td>\
             <td>{load:.2}</td><td><span class='badge {state}'>{state}</span></td><td>{seen}</td>\
             <td class=mono>{caps}</td><td class=holds>{held}</td></tr>",
            id = esc(&p.id),
            name = esc(&p.name),
            me = if p.is_self { " (this peer)" } else { "" },
            short = esc(tail(&p.id, 12)),
            region = esc(&p.region),
            load = p.load,
            seen = esc(&p.last_seen),
            caps = esc(&p.capabilities.join(" ")),
        );
    }
    let body = format!(
        "<h1>Peers</h1><table id=peers><thead><tr><th>Name</th><th>Peer id</th><th>Region</th>\
         <th>Load</th><th>State</th><th>Last heartbeat</th><th>Capabilities</th><th>Holds</th></tr></thead>\
         <tbody>{rows}</tbody></table>"
    );
    page(&viewer, "Peers", &body)
}

#[cfg(test)]
mod cut_tests {
    use super::{head, tail};

    #[test]
    fn cutting_never_splits_a_character() {
        assert_eq!(head("abcdef", 3), "abc");
        assert_eq!(head("ab", 3), "ab");
        assert_eq!(tail("abcdef", 2), "ef");
        assert_eq!(tail("ab", 5), "ab");
        assert_eq!(head("ééé", 2), "éé");
        assert_eq!(tail("ééé", 1), "é");
        assert_eq!(tail("", 3), "");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
