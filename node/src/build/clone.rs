//! Cloning an untrusted repository with git2, bounded in bytes, objects,
//! time, files and checked-out size. libgit2 runs no hooks; symlinks are
//! checked out as plain files (`core.symlinks = false`), and submodule URLs
//! and paths pass the same checks as the repository itself.

use crate::validate::{self, RepoUrl};
use git2::{build::CheckoutBuilder, FetchOptions, Oid, RemoteCallbacks, Repository};
use std::path::{Component, Path};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use web::github::origin;

/// How much a clone may take, and the token it may present.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_objects: usize,
    pub max_files: usize,
    pub max_checkout_bytes: u64,
    pub deadline: Instant,
    pub allow_local: bool,
    pub credential: Option<Credential>,
}

/// A token for private repositories (GitHub's `x-access-token` basic
/// auth), presented only to `origin` (scheme and host), also for
/// submodules there, and only once per connection attempt.
#[derive(Clone)]
pub struct Credential {
    pub origin: String,
    pub token: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Deepest submodule nesting followed.
const MAX_SUBMODULE_DEPTH: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum CloneError {
    #[error("repository not found or not reachable: {0}")]
    Unreachable(String),
    #[error("the repository needs credentials ({0}): it is private, or does not exist; deploy it signed in with GitHub so that shoal can use your token")]
    Unauthorized(String),
    #[error("branch or tag '{0}' does not exist in the repository")]
    NoSuchRef(String),
    #[error("commit {0} is not in the repository")]
    NoSuchCommit(String),
    #[error("the repository is larger than the limit ({bytes} bytes or {objects} objects)")]
    TooLarge { bytes: u64, objects: usize },
    #[error("the checkout would be larger than {0} bytes")]
    CheckoutTooLarge(u64),
    #[error("the checkout would have more than {0} files")]
    TooManyFiles(usize),
    #[error("the clone took longer than its time limit")]
    TimedOut,
    #[error("the build was canceled")]
    Canceled,
    #[error("submodule '{path}' refused: {reason}")]
    Submodule { path: String, reason: String },
    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

/// What the clone produced.
#[derive(Debug)]
pub struct Cloned {
    pub commit: String,
    pub submodules: Vec<String>,
}

/// Clones `url` into `dest` (which must not exist) at `git_ref` or `commit`,
/// or the remote's default branch.
pub fn clone(
    url: &RepoUrl,
    git_ref: Option<&str>,
    commit: Option<&str>,
    dest: &Path,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<Cloned, CloneError> {
    let repo = Repository::init(dest)?;
    let mut cfg = repo.config()?;
    cfg.set_bool("core.symlinks", false)?;
    cfg.set_str("core.hooksPath", "/dev/null")?;
    let commit_oid = fetch(&repo, url, git_ref, commit, limits, cancel)?;
    let object = repo.find_object(commit_oid, None)?;
    let commit = object.peel_to_commit()?;
    check_tree_size(&repo, &commit.tree()?, limits)?;
    repo.checkout_tree(commit.as_object(), Some(CheckoutBuilder::new().force()))?;
    repo.set_head_detached(commit.id())?;
    let mut submodules = Vec::new();
    update_submodules(&repo, url, limits, cancel, 1, &mut submodules)?;
    Ok(Cloned {
        commit: commit.id().to_string(),
        submodules,
    })
}

/// Callbacks that present `credential` (if any) to its own origin only.
pub fn callbacks(credential: Option<&Credential>) -> RemoteCallbacks<'_> {
    let mut cb = RemoteCallbacks::new();
    if let Some(cred) = credential {
        let mut tried = false;
        cb.credentials(move |url, _user, allowed| {
            let ours = origin(url).as_deref() == Some(cred.origin.as_str());
            if tried || !ours || !allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
                return Err(git2::Error::from_str(
                    "the repository needs credentials that shoal does not have (or refused the token it has)",
                ));
            }
            tried = true;
            git2::Cred::userpass_plaintext("x-access-token", &cred.token)
        });
    }
    cb
}

fn fetch_options<'a>(limits: &'a Limits, cancel: &'a AtomicBool, depth: i32) -> FetchOptions<'a> {
    let mut cb = callbacks(limits.credential.as_ref());
    let (max_bytes, max_objects, deadline) =
        (limits.max_bytes, limits.max_objects, limits.deadline);
    cb.transfer_progress(move |p| {
        p.received_bytes() as u64 <= max_bytes
            && p.total_objects() <= max_objects
            && Instant::now() < deadline
            && !cancel.load(Ordering::Relaxed)
    });
    cb.sideband_progress(move |_| Instant::now() < deadline && !cancel.load(Ordering::Relaxed));
    let mut fo = FetchOptions::new();
    fo.remote_callbacks(cb);
    fo.download_tags(git2::AutotagOption::None);
    if depth > 0 {
        fo.depth(depth);
    }
    fo
}

/// Explains an aborted transfer by the limit that stopped it.
fn explain(err: git2::Error, limits: &Limits, cancel: &AtomicBool, what: &str) -> CloneError {
    if cancel.load(Ordering::Relaxed) {
        return CloneError::Canceled;
    }
    if Instant::now() >= limits.deadline {
        return CloneError::TimedOut;
    }
    if err.code() == git2::ErrorCode::User {
        return CloneError::TooLarge {
            bytes: limits.max_bytes,
            objects: limits.max_objects,
        };
    }
    let message = err.message().to_ascii_lowercase();
    if err.code() == git2::ErrorCode::Auth
        || message.contains("authentication required")
        || message.contains("credentials")
    {
        return CloneError::Unauthorized(format!("{what}: {}", err.message()));
    }
    match err.class() {
        git2::ErrorClass::Net
        | git2::ErrorClass::Http
        | git2::ErrorClass::Os
        | git2::ErrorClass::Ssl => CloneError::Unreachable(format!("{what}: {}", err.message())),
        _ if err.code() == git2::ErrorCode::NotFound => {
            CloneError::Unreachable(format!("{what}: {}", err.message()))
        }
        _ => CloneError::Git(err),
    }
}

fn remote_url(url: &RepoUrl) -> String {
    match url {
        RepoUrl::Remote(u) => u.clone(),
        RepoUrl::Local(p) => p.strip_prefix("file://").unwrap_or(p).to_owned(),
    }
}

fn fetch(
    repo: &Repository,
    url: &RepoUrl,
    git_ref: Option<&str>,
    commit: Option<&str>,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<Oid, CloneError> {
    let location = remote_url(url);
    let mut remote = repo.remote_anonymous(&location)?;
    // Local transport does not do shallow fetches; remote ones do.
    let depth = if matches!(url, RepoUrl::Remote(_)) {
        1
    } else {
        0
    };
    if let Some(sha) = commit {
        let oid = Oid::from_str(sha).map_err(|_| CloneError::NoSuchCommit(sha.to_owned()))?;
        // Servers that allow fetching any reachable commit take this shallow path…
        let direct = remote.fetch(
            &[sha],
            Some(&mut fetch_options(limits, cancel, depth)),
            None,
        );
        if direct.is_err() || repo.find_commit(oid).is_err() {
            // …others need the branches (and tags) to find it.
            let specs = [
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ];
            remote
                .fetch(&specs, Some(&mut fetch_options(limits, cancel, 0)), None)
                .map_err(|e| explain(e, limits, cancel, &location))?;
        }
        return repo
            .find_commit(oid)
            .map(|c| c.id())
            .map_err(|_| CloneError::NoSuchCommit(sha.to_owned()));
    }
    let wanted = match git_ref {
        Some(r) => r.to_owned(),
        None => {
            let connection = remote
                .connect_auth(
                    git2::Direction::Fetch,
                    Some(callbacks(limits.credential.as_ref())),
                    None,
                )
                .map_err(|e| explain(e, limits, cancel, &location))?;
            let head = connection
                .default_branch()
                .map_err(|e| explain(e, limits, cancel, &location))?;
            head.as_str().unwrap_or("HEAD").to_owned()
        }
    };
    let candidates: Vec<String> = if wanted.starts_with("refs/") {
        vec![wanted.clone()]
    } else {
        vec![
            format!("refs/heads/{wanted}"),
            format!("refs/tags/{wanted}"),
        ]
    };
    for full in &candidates {
        let spec = format!("+{full}:refs/shoal/wanted");
        match remote.fetch(
            &[spec.as_str()],
            Some(&mut fetch_options(limits, cancel, depth)),
            None,
        ) {
            Ok(()) => {
                if let Ok(r) = repo.find_reference("refs/shoal/wanted") {
                    return Ok(r.peel_to_commit()?.id());
                }
            }
            Err(e) => {
                let e = explain(e, limits, cancel, &location);
                if !matches!(e, CloneError::Git(_)) {
                    return Err(e);
                }
            }
        }
    }
    Err(CloneError::NoSuchRef(wanted))
}

/// Counts files and bytes of the tree before anything is written to disk.
fn check_tree_size(
    repo: &Repository,
    tree: &git2::Tree,
    limits: &Limits,
) -> Result<(), CloneError> {
    let odb = repo.odb()?;
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut result = Ok(());
    tree.walk(git2::TreeWalkMode::PreOrder, |_, entry| {
        if entry.kind() != Some(git2::ObjectType::Blob) {
            return git2::TreeWalkResult::Ok;
        }
        files += 1;
        bytes += odb
            .read_header(entry.id())
            .map(|(size, _)| size as u64)
            .unwrap_or(0);
        if files > limits.max_files {
            result = Err(CloneError::TooManyFiles(limits.max_files));
            git2::TreeWalkResult::Abort
        } else if bytes > limits.max_checkout_bytes {
            result = Err(CloneError::CheckoutTooLarge(limits.max_checkout_bytes));
            git2::TreeWalkResult::Abort
        } else {
            git2::TreeWalkResult::Ok
        }
    })?;
    result
}

/// A submodule path must stay inside the work tree and out of `.git`.
fn safe_submodule_path(path: &Path) -> bool {
    let mut parts = 0;
    for c in path.components() {
        match c {
            Component::Normal(p) if p.to_str().is_some_and(|s| !s.eq_ignore_ascii_case(".git")) => {
                parts += 1
            }
            _ => return false,
        }
    }
    parts > 0
}

/// Resolves a submodule URL relative to its parent's, as git does.
fn resolve_submodule_url(parent: &str, url: &str) -> String {
    if !(url.starts_with("./") || url.starts_with("../")) {
        return url.to_owned();
    }
    let mut base: Vec<&str> = parent.trim_end_matches('/').split('/').collect();
    for part in url.split('/') {
        match part {
            "." => {}
            ".." => {
                base.pop();
            }
            p => base.push(p),
        }
    }
    base.join("/")
}

fn update_submodules(
    repo: &Repository,
    parent: &RepoUrl,
    limits: &Limits,
    cancel: &AtomicBool,
    depth: usize,
    done: &mut Vec<String>,
) -> Result<(), CloneError> {
    for mut sub in repo.submodules()? {
        let name = sub.name().unwrap_or_default().to_owned();
        let path = sub.path().to_path_buf();
        let refuse = |reason: &str| CloneError::Submodule {
            path: path.display().to_string(),
            reason: reason.to_owned(),
        };
        if depth > MAX_SUBMODULE_DEPTH {
            return Err(refuse("submodules are nested too deeply"));
        }
        if !safe_submodule_path(&path) {
            return Err(refuse("its path leaves the repository or enters .git"));
        }
        let raw = sub
            .url()
            .ok_or_else(|| refuse("its URL is not UTF-8"))?
            .to_owned();
        let resolved = resolve_submodule_url(parent.as_str(), &raw);
        let url = validate::repo_url(&resolved, limits.allow_local)
            .map_err(|e| refuse(&e.to_string()))?;
        sub.init(true)?;
        // Fetch from the URL that was checked, not whatever .gitmodules says.
        repo.config()?
            .set_str(&format!("submodule.{name}.url"), &remote_url(&url))?;
        let mut opts = git2::SubmoduleUpdateOptions::new();
        opts.fetch(fetch_options(limits, cancel, 0));
        opts.allow_fetch(true);
        sub.update(true, Some(&mut opts))
            .map_err(|e| explain(e, limits, cancel, &resolved))?;
        done.push(path.display().to_string());
        let inner = sub.open()?;
        update_submodules(&inner, &url, limits, cancel, depth + 1, done)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submodule_paths_stay_inside() {
        assert!(safe_submodule_path(Path::new("themes/ananke")));
        for p in ["", "../x", "/etc", ".git/hooks", "a/.GIT", "a/../../b"] {
            assert!(!safe_submodule_path(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn relative_submodule_urls_resolve_against_the_parent() {
        assert_eq!(
            resolve_submodule_url("https://h/o/site.git", "../theme.git"),
            "https://h/o/theme.git"
        );
        assert_eq!(
            resolve_submodule_url("https://h/o/site", "./sub"),
            "https://h/o/site/sub"
        );
        assert_eq!(
            resolve_submodule_url("https://h/o/site", "https://x/y"),
            "https://x/y"
        );
    }
}
