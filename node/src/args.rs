//! Command-line interface and configuration: every `node` flag also reads a
//! `SHOAL_*` environment variable.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Deploy static websites from git onto a mesh of equal peers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a peer.
    Node(Box<NodeConfig>),
    /// Submit a deployment of a git repository.
    Deploy(DeployArgs),
    /// Show all deployments, or one.
    Status(StatusArgs),
    /// Print the log of a deployment.
    Logs(LogsArgs),
    /// Stop a queued or building deployment.
    Cancel(IdArgs),
    /// Serve an earlier successful deployment of a site on every peer.
    Rollback(SetCurrentArgs),
    /// Serve a later successful deployment of a site on every peer.
    Promote(SetCurrentArgs),
    /// List the peers of the mesh.
    Peers(PeersArgs),
    /// Sign in with GitHub (device code) and keep the session for the
    /// other commands.
    Login(PeersArgs),
    /// Sign the kept session out on every peer and forget it.
    Logout(PeersArgs),
    /// Set, list or remove a project's environment variables (given to its
    /// builds; secrets are never shown again).
    Env(EnvArgs),
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[command(subcommand)]
    pub action: EnvAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum EnvAction {
    /// Set a variable: `KEY=VALUE`, `KEY VALUE`, or `KEY` alone to read the
    /// value from standard input (keeps a secret out of the shell history).
    Set {
        #[arg(long)]
        project: String,
        /// Seal the value: only builds see it; no answer, page or log shows it.
        #[arg(long)]
        secret: bool,
        key: String,
        value: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the variables (secret values are never shown).
    List {
        #[arg(long)]
        project: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a variable.
    Rm {
        #[arg(long)]
        project: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct NodeConfig {
    /// Directory for state, artifacts and sites.
    #[arg(long, env = "SHOAL_DATA", default_value = ".shoal/data")]
    pub data: PathBuf,
    /// Human-readable peer name (defaults to the host name).
    #[arg(long, env = "SHOAL_NAME")]
    pub name: Option<String>,
    /// Address to listen on for both HTTP ports.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "0.0.0.0")]
    pub listen: std::net::IpAddr,
    /// Port of the UI and JSON API.
    #[arg(long, env = "SHOAL_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Port that serves the sites.
    #[arg(long, env = "SHOAL_SITES_PORT", default_value_t = 80)]
    pub sites_port: u16,
    /// Sites are served as `<name>.<site-domain>`.
    #[arg(long, env = "SHOAL_SITE_DOMAIN", default_value = "localhost")]
    pub site_domain: String,
    /// libp2p port (`0` = any free port).
    #[arg(long, env = "SHOAL_P2P_PORT", default_value_t = 9000)]
    pub p2p_port: u16,
    /// A peer to join through: a multiaddr such as `/ip4/10.0.0.5/tcp/9000`
    /// or `/dns4/shoal-0.shoal/tcp/9000` (the peer id is learned on connect).
    /// Repeatable; comma-separated in the environment variable.
    #[arg(long, env = "SHOAL_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Region label; peers prefer fetching from their own region.
    #[arg(long, env = "SHOAL_REGION", default_value = "default")]
    pub region: String,
    /// Private-network key file (libp2p PSK format): only peers with the
    /// same key can connect (over TCP only: QUIC is then off).
    #[arg(long, env = "SHOAL_PSK_FILE")]
    pub psk_file: Option<PathBuf>,
    /// Peer over TCP only: no QUIC on the UDP port of the same number as
    /// the p2p port (for networks that drop UDP).
    #[arg(long, env = "SHOAL_NO_QUIC")]
    pub no_quic: bool,
    /// Token for writes; generated into `<data>/admin-token` if not given.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Accept local paths and file:// URLs as repositories (for development and tests).
    #[arg(long, env = "SHOAL_ALLOW_LOCAL_REPOS")]
    pub allow_local_repos: bool,
    /// Build sandbox: bubblewrap and cgroups where they work, else Landlock
    /// (Linux 6.12+; for unprivileged pods).
    #[arg(long, env = "SHOAL_SANDBOX", value_enum, default_value = "auto")]
    pub sandbox: crate::build::sandbox::SandboxKind,
    /// Build without any sandbox. Only for trusted repositories.
    #[arg(long, env = "SHOAL_UNSAFE_NO_SANDBOX")]
    pub unsafe_no_sandbox: bool,
    /// Wall-clock limit of one build (install and build steps together).
    #[arg(long, env = "SHOAL_BUILD_TIMEOUT", default_value = "15m", value_parser = humantime::parse_duration)]
    pub build_timeout: Duration,
    /// Wall-clock limit of a clone.
    #[arg(long, env = "SHOAL_CLONE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub clone_timeout: Duration,
    /// Memory limit of a build sandbox, in MiB.
    #[arg(long, env = "SHOAL_BUILD_MEMORY_MB", default_value_t = 2048)]
    pub build_memory_mb: u64,
    /// Process limit of a build sandbox.
    #[arg(long, env = "SHOAL_BUILD_PIDS", default_value_t = 512)]
    pub build_pids: u64,
    /// Size of the build sandbox's /tmp, in MiB.
    #[arg(long, env = "SHOAL_BUILD_TMP_MB", default_value_t = 1024)]
    pub build_tmp_mb: u64,
    /// Let the build step (not only the install step) reach the network.
    #[arg(long, env = "SHOAL_BUILD_NETWORK")]
    pub build_network: bool,
    /// Room for build caches (package downloads, per project) on this
    /// peer, in MiB; the least recently used are dropped beyond it.
    #[arg(long, env = "SHOAL_BUILD_CACHE_MB", default_value_t = 4096)]
    pub build_cache_mb: u64,
    /// Let corepack take yarn and pnpm from a registry that serves no
    /// signatures (a mirror that strips them): the integrity hash is still
    /// checked, the registry's signature is not.
    #[arg(long, env = "SHOAL_COREPACK_NO_SIGNATURES")]
    pub corepack_no_signatures: bool,
    /// The npm registry corepack fetches yarn and pnpm from.
    #[arg(
        long,
        env = "SHOAL_NPM_REGISTRY",
        default_value = "https://registry.npmjs.org"
    )]
    pub npm_registry: String,
    /// A peer silent this long is dead, and a build claim not renewed for
    /// this long is taken over.
    #[arg(long, env = "SHOAL_LEASE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Builds this peer runs at once (0: it never builds, only serves).
    #[arg(long, env = "SHOAL_MAX_BUILDS", default_value_t = 2)]
    pub max_builds: usize,
    /// Largest repository download, in MiB.
    #[arg(long, env = "SHOAL_MAX_REPO_MB", default_value_t = 1024)]
    pub max_repo_mb: u64,
    /// Largest site (unpacked), in MiB.
    #[arg(long, env = "SHOAL_MAX_SITE_MB", default_value_t = 2048)]
    pub max_site_mb: u64,
    /// How long a built deployment may take to reach every live peer
    /// before it is `distributionFailed`.
    #[arg(long, env = "SHOAL_DISTRIBUTION_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub distribution_timeout: Duration,
    /// Successful deployments each peer keeps per site (served, or ready
    /// for rollback); older ones are garbage-collected.
    #[arg(long, env = "SHOAL_KEEP_DEPLOYMENTS", default_value_t = 5)]
    pub keep_deployments: usize,
    /// How often unpacked versions, manifests and blocks that no kept
    /// deployment needs are removed.
    #[arg(long, env = "SHOAL_GC_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub gc_interval: Duration,
    /// Secret GitHub signs webhook deliveries with (`POST /api/hooks/github`);
    /// without it webhooks are refused. The same on every peer.
    #[arg(long, env = "SHOAL_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Secret every peer of the mesh shares for sessions and sealed tokens
    /// (sessions made on one peer are accepted by all). Defaults to the
    /// PSK file's key, else the admin token.
    #[arg(long, env = "SHOAL_MESH_SECRET", hide_env_values = true)]
    pub mesh_secret: Option<String>,
    /// GitHub OAuth App or GitHub App client id: enables "Sign in with
    /// GitHub" (device flow: no callback URL, no secret needed).
    #[arg(long, env = "SHOAL_GITHUB_CLIENT_ID")]
    pub github_client_id: Option<String>,
    /// The client secret: also offers the web flow (callback at
    /// `<public-url>/auth/github/callback`).
    #[arg(long, env = "SHOAL_GITHUB_CLIENT_SECRET", hide_env_values = true)]
    pub github_client_secret: Option<String>,
    /// A file holding the client secret (e.g. a mounted Kubernetes Secret).
    #[arg(long, env = "SHOAL_GITHUB_CLIENT_SECRET_FILE")]
    pub github_client_secret_file: Option<PathBuf>,
    /// GitHub's web URL (GitHub Enterprise Server: `https://<host>`).
    #[arg(long, env = "SHOAL_GITHUB_URL", default_value = "https://github.com")]
    pub github_url: String,
    /// GitHub's API URL (GitHub Enterprise Server: `https://<host>/api/v3`).
    #[arg(
        long,
        env = "SHOAL_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,
    /// OAuth scopes asked for at sign-in: `repo` reaches private
    /// repositories (but grants write too); `read:org` checks
    /// `--allowed-orgs`. GitHub Apps ignore it.
    #[arg(long, env = "SHOAL_GITHUB_SCOPE", default_value = "repo read:org")]
    pub github_scope: String,
    /// GitHub App id: private repositories on GitHub are cloned with a
    /// short-lived, read-only installation token of this app (where it is
    /// installed), minted per build. Needs `--github-app-key-file`.
    #[arg(long, env = "SHOAL_GITHUB_APP_ID")]
    pub github_app_id: Option<String>,
    /// The GitHub App's private key (PEM), e.g. a mounted Kubernetes Secret.
    #[arg(long, env = "SHOAL_GITHUB_APP_KEY_FILE")]
    pub github_app_key_file: Option<PathBuf>,
    /// GitHub users who may sign in and deploy (comma-separated).
    #[arg(long, env = "SHOAL_ALLOWED_USERS", value_delimiter = ',')]
    pub allowed_users: Vec<String>,
    /// Members of these GitHub organisations may sign in and deploy.
    #[arg(long, env = "SHOAL_ALLOWED_ORGS", value_delimiter = ',')]
    pub allowed_orgs: Vec<String>,
    /// How long a sign-in lasts.
    #[arg(long, env = "SHOAL_SESSION_TTL", default_value = "12h", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,
    /// The URL users reach the mesh's UI at, when it sits behind one
    /// public domain (for the web sign-in's callback and `Secure` cookies).
    #[arg(long, env = "SHOAL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// On SIGTERM: how long the peer keeps serving (not ready, builds
    /// handed over) before it stops, so that a Service stops sending users
    /// to it first. Keep it below the pod's termination grace period.
    #[arg(long, env = "SHOAL_SHUTDOWN_GRACE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Upload rate limit for artifact blocks, in KiB/s (0: none).
    #[arg(long, env = "SHOAL_UPLOAD_LIMIT_KIB", default_value_t = 0)]
    pub upload_limit_kib: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Any peer's UI/API URL.
    #[arg(long, env = "SHOAL_PEER", default_value = "http://127.0.0.1:8080")]
    pub peer: String,
    /// Admin token (needed for writes unless signed in with `shoal login`).
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where `shoal login` keeps the session (default:
    /// `$XDG_CONFIG_HOME/shoal/session`, else `~/.config/shoal/session`).
    #[arg(long, env = "SHOAL_SESSION_FILE")]
    pub session_file: Option<PathBuf>,
}

impl ClientArgs {
    pub fn session_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.session_file {
            return Some(p.clone());
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("shoal").join("session"))
    }
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    pub repo_url: String,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long = "ref")]
    pub git_ref: Option<String>,
    #[arg(long)]
    pub commit: Option<String>,
    /// The directory to build in (a monorepo's app), relative to the repository.
    #[arg(long)]
    pub root: Option<String>,
    /// Follow the log and wait until the deployment ends; fail if it fails.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub id: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub id: String,
    /// Keep following until the deployment ends.
    #[arg(short, long)]
    pub follow: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    pub id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct SetCurrentArgs {
    /// The site (project) name.
    pub name: String,
    /// The deployment to serve.
    pub deployment: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct PeersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}
