//! Running a peer: open the data directory, start the build worker and the
//! two HTTP listeners, and shut all of it down cleanly on SIGINT/SIGTERM.

use crate::args::NodeConfig;
use crate::backend::NodeBackend;
use crate::build::sandbox::Isolation;
use crate::build::BuildSettings;
use crate::context::Shared;
use crate::metrics::NodeMetrics;
use crate::site::Sites;
use crate::state::State;
use crate::worker::Worker;
use anyhow::Context;
use p2p::members::LocalInfo;
use p2p::mesh::Mesh;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Pending nudges to the build worker; more are pointless.
const WAKE_BUFFER: usize = 16;
/// How long the tasks of a stopping peer (and then its mesh) get to finish
/// before it exits anyway.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Spawns one of the peer's long-running tasks, under a name to report if
/// it does not stop.
fn spawn_named(
    tasks: &mut tokio::task::JoinSet<()>,
    names: &mut HashMap<tokio::task::Id, &'static str>,
    name: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    names.insert(tasks.spawn(task).id(), name);
}

/// Reads a secret-ish file, or creates it with `make` (mode 0600).
fn load_or_create(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok((s.trim().to_owned(), false)),
        _ => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let value = make();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("writing {}", path.display()))?;
            writeln!(f, "{value}")?;
            Ok((value, true))
        }
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

pub async fn run(cfg: NodeConfig) -> anyhow::Result<()> {
    let data = &cfg.data;
    for sub in ["", "builds", "blocks", "sites"] {
        std::fs::create_dir_all(data.join(sub))
            .with_context(|| format!("creating {}", data.join(sub).display()))?;
    }
    let data = data.canonicalize()?;
    let keypair = p2p::net::load_or_create_identity(&data.join("identity.key"))?;
    let peer_id = keypair.public().to_peer_id().to_string();
    let admin_token = match cfg.admin_token.clone().filter(|t| !t.trim().is_empty()) {
        Some(t) => t.trim().to_owned(),
        None => {
            let path = data.join("admin-token");
            let (token, created) = load_or_create(&path, || random_hex(24))?;
            let verb = if created { "generated" } else { "read" };
            info!(path = %path.display(), "admin token {verb}; pass it as `Authorization: Bearer <token>`");
            token
        }
    };
    let name = cfg.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "shoal".into())
    });
    let _ = std::fs::remove_file(data.join("endpoints.json"));
    // Builds from a previous run are stale whatever happened to them.
    let _ = std::fs::remove_dir_all(data.join("builds"));
    std::fs::create_dir_all(data.join("builds"))?;

    let store = p2p::Store::open(&data.join("state")).context("opening the state database")?;
    let clock = Arc::new(p2p::Clock::new());
    let state = Arc::new(State::open(store.clone(), peer_id.clone(), clock.clone())?);
    // A build never sees the peer's data or the directories of its secrets.
    let deny: Vec<PathBuf> = std::iter::once(data.clone())
        .chain(
            [
                &cfg.psk_file,
                &cfg.github_client_secret_file,
                &cfg.github_app_key_file,
            ]
            .into_iter()
            .flatten()
            .filter_map(|f| f.parent().map(Path::to_path_buf)),
        )
        .collect();
    let isolation = Isolation::probe(cfg.sandbox, cfg.unsafe_no_sandbox, &peer_id, deny);
    match &isolation {
        Isolation::Unavailable(why) => warn!(reason = %why, "builds will fail: no sandbox"),
        Isolation::None => {
            warn!("building WITHOUT a sandbox (--unsafe-no-sandbox): only for trusted repositories")
        }
        Isolation::Bwrap { .. } | Isolation::Landlock { .. } => {
            info!(isolation = %isolation.describe(), "builds are sandboxed")
        }
    }
    let mib = 1024 * 1024;
    let settings = BuildSettings {
        isolation,
        timeout: cfg.build_timeout,
        clone_timeout: cfg.clone_timeout,
        memory_bytes: cfg.build_memory_mb * mib,
        pids: cfg.build_pids,
        tmp_bytes: cfg.build_tmp_mb * mib,
        build_network: cfg.build_network,
        max_repo_bytes: cfg.max_repo_mb * mib,
        max_site_bytes: cfg.max_site_mb * mib,
        allow_local: cfg.allow_local_repos,
        npm_registry: cfg.npm_registry.clone(),
        corepack_signatures: !cfg.corepack_no_signatures,
    };
    let ui_addr = SocketAddr::new(cfg.listen, cfg.http_port);
    let sites_addr = SocketAddr::new(cfg.listen, cfg.sites_port);
    let ui_listener = tokio::net::TcpListener::bind(ui_addr)
        .await
        .with_context(|| format!("binding the UI port {ui_addr}"))?;
    let sites_listener = tokio::net::TcpListener::bind(sites_addr)
        .await
        .with_context(|| format!("binding the sites port {sites_addr}"))?;
    let (ui_addr, sites_addr) = (ui_listener.local_addr()?, sites_listener.local_addr()?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Draining comes first: no new builds, builds in progress handed back.
    let (drain_tx, drain_rx) = watch::channel(false);
    let (info_tx, info_rx) = watch::channel(LocalInfo {
        name: name.clone(),
        region: cfg.region.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        load: 0.0,
        free_slots: u8::try_from(cfg.max_builds).unwrap_or(u8::MAX),
        capabilities: crate::load::capabilities(&settings.isolation)
            .into_iter()
            // `--max-builds 0`: a peer that only serves.
            .filter(|c| cfg.max_builds > 0 || c != crate::load::BUILD)
            .collect(),
    });
    let psk_text = match &cfg.psk_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the PSK file {}", path.display()))?,
        ),
        None => None,
    };
    let psk = psk_text.as_deref().map(p2p::net::parse_psk).transpose()?;
    let bootstrap = cfg
        .bootstrap
        .iter()
        .filter(|b| !b.trim().is_empty())
        .map(|b| p2p::net::parse_addr(b))
        .collect::<Result<Vec<_>, _>>()?;
    let alone = bootstrap.is_empty();
    let net_cfg = p2p::net::NetConfig {
        keypair,
        listen: p2p::net::tcp_listen_addr(cfg.listen, cfg.p2p_port),
        bootstrap,
        psk,
        quic: !cfg.no_quic,
    };
    let lease = cfg.lease.max(std::time::Duration::from_millis(1500));
    let mesh = Mesh::start(
        net_cfg,
        store,
        clock,
        info_rx.clone(),
        lease,
        shutdown_rx.clone(),
    )?;
    let p2p_addrs =
        tokio::time::timeout(std::time::Duration::from_secs(10), mesh.client.listening())
            .await
            .context("the p2p port did not open")??;
    // A peer with no one to join and no memory of other peers is the first of
    // its mesh: nothing to catch up. Otherwise it waits to hear from the mesh
    // (or to find it unreachable) before acting on what it remembers.
    let first_of_mesh = alone && mesh.members.known_others() == 0;
    let synced = if first_of_mesh {
        watch::channel(true).1
    } else {
        mesh.synced.clone()
    };
    let block_store = Arc::new(
        p2p::blocks::BlockStore::open(&data.join("blocks")).context("opening the block store")?,
    );
    let exchange = p2p::exchange::Exchange::new(
        block_store.clone(),
        &mesh.client,
        cfg.upload_limit_kib * 1024,
    );
    let active_builds = Arc::new(AtomicUsize::new(0));
    let sites = Sites::new(data.join("sites"));
    let metrics = Arc::new(NodeMetrics::default());
    let (wake_tx, wake_rx) = mpsc::channel(WAKE_BUFFER);
    let backend = Arc::new(NodeBackend {
        members: mesh.members.clone(),
        info: info_rx.clone(),
        p2p: mesh.client.clone(),
        state: state.clone(),
        sites: sites.clone(),
        metrics: metrics.clone(),
        exchange: exchange.clone(),
        auth: web_auth(&cfg, admin_token, psk_text.as_deref())?,
        site_domain: cfg.site_domain.to_ascii_lowercase(),
        sites_port: sites_addr.port(),
        allow_local: cfg.allow_local_repos,
        webhook_secret: cfg
            .webhook_secret
            .clone()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
        ready: Default::default(),
        synced: synced.clone(),
        wake: wake_tx,
    });
    let shared = Arc::new(Shared {
        state: state.clone(),
        settings,
        sites,
        metrics,
        builds_dir: data.join("builds"),
        caches: crate::build::cache::Caches::new(
            data.join("build-cache"),
            cfg.build_cache_mb * mib,
        ),
        blocks: block_store,
        members: mesh.members.clone(),
        info: info_rx,
        active_builds: active_builds.clone(),
        lease,
        keys: backend.auth.keys.clone(),
        github_app: github_app(&cfg)?,
    });

    let http_metrics = Arc::new(web::HttpMetrics::default());
    let ui = web::app(backend.clone(), http_metrics.clone());
    let sites_app = web::sites_app(backend.clone(), http_metrics);

    // Where this peer really listens (ports may be 0 = any), for scripts and tests.
    let endpoints = serde_json::json!({
        "http": ui_addr.to_string(),
        "sites": sites_addr.to_string(),
        "peer": peer_id,
        "p2p": p2p_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    let tmp = data.join("endpoints.json.tmp");
    std::fs::write(&tmp, endpoints.to_string())?;
    std::fs::rename(&tmp, data.join("endpoints.json"))?;

    let mut tasks = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    spawn_named(
        &mut tasks,
        &mut names,
        "block exchange",
        exchange.clone().serve(shutdown_rx.clone()),
    );
    spawn_named(
        &mut tasks,
        &mut names,
        "distributor",
        crate::distribute::Distributor::new(
            shared.clone(),
            exchange,
            mesh.client.clone(),
            crate::distribute::DistributeSettings {
                timeout: cfg.distribution_timeout,
                keep: cfg.keep_deployments.max(1),
                gc_interval: cfg.gc_interval.max(std::time::Duration::from_secs(1)),
            },
            synced.clone(),
        )
        .run(shutdown_rx.clone()),
    );
    spawn_named(
        &mut tasks,
        &mut names,
        "poller",
        crate::poll::Poller::new(
            backend.clone(),
            shared.clone(),
            synced.clone(),
            cfg.allow_local_repos,
        )
        .run(shutdown_rx.clone()),
    );
    let worker =
        tokio::spawn(Worker::new(shared, cfg.max_builds, wake_rx, synced).run(drain_rx.clone()));
    spawn_named(
        &mut tasks,
        &mut names,
        "load report",
        crate::load::report(
            info_tx,
            active_builds,
            cfg.max_builds,
            data.clone(),
            drain_rx,
            shutdown_rx.clone(),
        ),
    );
    for (listener, app, task) in [
        (ui_listener, ui, "UI server"),
        (sites_listener, sites_app, "sites server"),
    ] {
        let mut stop = shutdown_rx.clone();
        spawn_named(&mut tasks, &mut names, task, async move {
            let stop = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(err) = web::serve(listener, app, stop).await {
                warn!(error = %err, "HTTP server stopped");
            }
        });
    }
    backend.ready.store(true, Ordering::Relaxed);
    info!(peer = %peer_id, name = %name, ui = %format!("http://{ui_addr}/"), sites = %sites_addr, domain = %backend.site_domain, "shoal peer ready");

    wait_for_signal().await;
    // Not ready from now on (a Service stops sending users here), builds
    // go to other peers at once, and sites keep being served for the grace
    // period while the Service notices.
    info!(grace = ?cfg.shutdown_grace, "draining: no new builds, handing over builds in progress");
    backend.ready.store(false, Ordering::Relaxed);
    let drained = tokio::time::Instant::now();
    let _ = drain_tx.send(true);
    let _ = worker.await;
    let _ = state.flush().await;
    tokio::time::sleep_until(drained + cfg.shutdown_grace).await;
    info!("shutting down");
    let _ = std::fs::remove_file(data.join("endpoints.json"));
    let _ = shutdown_tx.send(true);
    // Every task stops on its own; a stop that hangs must not keep the
    // process alive (the state is flushed below either way).
    let stopped = tokio::time::timeout(STOP_WAIT, async {
        while let Some(done) = tasks.join_next_with_id().await {
            names.remove(&done.map_or_else(|e| e.id(), |(id, ())| id));
        }
    })
    .await;
    if stopped.is_err() {
        let running: Vec<&str> = names.values().copied().collect();
        warn!(?running, wait = ?STOP_WAIT, "tasks did not stop in time; exiting anyway");
    }
    if tokio::time::timeout(STOP_WAIT, mesh.join()).await.is_err() {
        warn!(wait = ?STOP_WAIT, "the mesh did not stop in time; exiting anyway");
    }
    state.flush().await?;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Sign-in and the mesh's keys, from the configuration.
fn web_auth(cfg: &NodeConfig, admin_token: String, psk: Option<&str>) -> anyhow::Result<web::Auth> {
    let mesh_secret = match (cfg.mesh_secret.as_deref().map(str::trim), psk) {
        (Some(s), _) if !s.is_empty() => s.to_owned(),
        (_, Some(psk)) => psk.trim().to_owned(),
        _ => {
            info!("no --mesh-secret or PSK: sessions and sealed tokens use the admin token as the mesh secret, so every peer needs the same admin token");
            admin_token.clone()
        }
    };
    let github = match cfg.github_client_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => {
            let secret = match (&cfg.github_client_secret, &cfg.github_client_secret_file) {
                (Some(s), _) => Some(s.trim().to_owned()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                (None, None) => None,
            }
            .filter(|s| !s.is_empty());
            let gh = web::github::GitHub::new(web::github::GitHubConfig {
                web_url: cfg.github_url.clone(),
                api_url: cfg.github_api_url.clone(),
                client_id: id.to_owned(),
                client_secret: secret,
                scope: cfg.github_scope.clone(),
            })?;
            if cfg.allowed_users.is_empty() && cfg.allowed_orgs.is_empty() {
                tracing::warn!("GitHub sign-in is on with no --allowed-users or --allowed-orgs: every GitHub user can deploy");
            }
            info!(github = %cfg.github_url, web_flow = gh.web_flow(), "GitHub sign-in enabled");
            Some(gh)
        }
        _ => None,
    };
    let list = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    };
    Ok(web::Auth {
        admin_token,
        keys: Arc::new(web::session::Keys::derive(mesh_secret.as_bytes())),
        github,
        allowed_users: list(&cfg.allowed_users),
        allowed_orgs: list(&cfg.allowed_orgs),
        session_ttl_secs: cfg.session_ttl.as_secs().max(60),
        public_url: cfg
            .public_url
            .as_deref()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty()),
    })
}

/// The GitHub App private repositories are cloned as, if configured.
fn github_app(cfg: &NodeConfig) -> anyhow::Result<Option<Arc<web::github::GitHubApp>>> {
    let Some(id) = cfg
        .github_app_id
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
    else {
        return Ok(None);
    };
    let Some(key_file) = &cfg.github_app_key_file else {
        anyhow::bail!("--github-app-id needs --github-app-key-file");
    };
    let pem = std::fs::read(key_file)
        .with_context(|| format!("reading the GitHub App key {}", key_file.display()))?;
    let app = web::github::GitHubApp::new(&cfg.github_url, &cfg.github_api_url, id, &pem)?;
    info!(
        app = id,
        "private GitHub repositories are cloned as the GitHub App"
    );
    Ok(Some(Arc::new(app)))
}
