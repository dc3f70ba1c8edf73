//! Projects' environment variables: set, listed and removed through the
//! API, replicated to every peer in the `project_env` table, and handed to
//! the install and build steps of the project's builds. A secret's value is
//! sealed with the mesh's keys before it is stored, opened only by the
//! builder for the build that uses it, and never shown: not in an answer,
//! not in a page, not in a log line (the build's logger masks it), not in
//! the data directory.

use crate::model::EnvVar;
use crate::state::State;
use p2p::{Hlc, StoreError};
use web::session::{Keys, Purpose};
use web::EnvVarView;

/// Most variables a project holds.
pub const MAX_VARS: usize = 100;
/// Longest variable name.
pub const MAX_KEY: usize = 128;
/// Largest value.
pub const MAX_VALUE: usize = 32 * 1024;

/// Names the sandbox sets itself, which a project may not replace.
const RESERVED: &[&str] = &["PATH", "HOME", "TMPDIR", "PWD", "COREPACK_HOME"];

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{0}")]
    Invalid(String),
    #[error("project {0} already has {MAX_VARS} variables")]
    TooMany(String),
    #[error("peer {peer} cannot open the secret {key} (its mesh secret differs from the peer that set it): set the same --mesh-secret on every peer, or set the secret again")]
    Sealed { peer: String, key: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A variable name: a letter or `_`, then letters, digits and `_`; not
/// one the sandbox sets, not `SHOAL_*` and not `LD_*`.
pub fn check_key(key: &str) -> Result<(), EnvError> {
    let mut chars = key.chars();
    let shape = key.len() <= MAX_KEY
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !shape {
        return Err(EnvError::Invalid(format!(
            "'{key}' is not a valid variable name: use up to {MAX_KEY} letters, digits and _, not starting with a digit"
        )));
    }
    let upper = key.to_ascii_uppercase();
    if RESERVED.contains(&upper.as_str()) || upper.starts_with("SHOAL_") || upper.starts_with("LD_")
    {
        return Err(EnvError::Invalid(format!(
            "{key} is set by shoal's build sandbox and cannot be changed"
        )));
    }
    Ok(())
}

fn check_value(value: &str) -> Result<(), EnvError> {
    if value.len() > MAX_VALUE {
        return Err(EnvError::Invalid(format!(
            "the value is {} bytes; at most {MAX_VALUE} are allowed",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(EnvError::Invalid(
            "the value contains a NUL byte, which no environment variable can hold".into(),
        ));
    }
    Ok(())
}

/// The variables in force (tombstones left out), by key.
pub fn current(state: &State, project: &str) -> Result<Vec<EnvVar>, StoreError> {
    Ok(state
        .env(project)?
        .into_iter()
        .filter(|v| !v.deleted)
        .collect())
}

/// Sets `key` on `project`, sealing the value if it is a secret.
pub fn set(
    state: &State,
    keys: &Keys,
    project: &str,
    key: &str,
    value: &str,
    secret: bool,
) -> Result<EnvVar, EnvError> {
    check_key(key)?;
    check_value(value)?;
    let vars = current(state, project)?;
    if vars.len() >= MAX_VARS && !vars.iter().any(|v| v.key == key) {
        return Err(EnvError::TooMany(project.to_owned()));
    }
    let value = if secret {
        keys.seal(Purpose::EnvSecret, value.as_bytes())
    } else {
        value.to_owned()
    };
    Ok(state.put_env(EnvVar {
        project: project.to_owned(),
        key: key.to_owned(),
        value,
        secret,
        deleted: false,
        stamp: Hlc::default(),
        writer: String::new(),
    })?)
}

/// Removes `key` from `project`; whether it was set.
pub fn remove(state: &State, project: &str, key: &str) -> Result<bool, EnvError> {
    let Some(var) = current(state, project)?.into_iter().find(|v| v.key == key) else {
        return Ok(false);
    };
    state.put_env(EnvVar {
        value: String::new(),
        deleted: true,
        ..var
    })?;
    Ok(true)
}

/// What the API shows of a variable.
pub fn view(var: &EnvVar) -> EnvVarView {
    EnvVarView {
        key: var.key.clone(),
        secret: var.secret,
        value: (!var.secret).then(|| var.value.clone()),
        updated_at: crate::model::rfc3339(var.stamp.wall_ms),
    }
}

/// What a build is given of its project's variables.
pub struct BuildEnv {
    /// (name, value), secrets opened.
    pub vars: Vec<(String, String)>,
    /// The secret values, for the logger to mask.
    pub secrets: Vec<String>,
}

/// A build's environment from the project's variables.
pub fn for_build(state: &State, keys: &Keys, project: &str) -> Result<BuildEnv, EnvError> {
    let mut env = Vec::new();
    let mut secrets = Vec::new();
    for var in current(state, project)? {
        if check_key(&var.key).is_err() {
            continue; // written by a peer with other rules; never applied
        }
        let value = if var.secret {
            let plain = keys
                .open(Purpose::EnvSecret, &var.value)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| EnvError::Sealed {
                    peer: state.peer.clone(),
                    key: var.key.clone(),
                })?;
            secrets.push(plain.clone());
            plain
        } else {
            var.value
        };
        env.push((var.key, value));
    }
    Ok(BuildEnv { vars: env, secrets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["API_KEY", "_x", "VITE_PUBLIC_URL", "node_env", "NODE_ENV"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1A",
            "A-B",
            "A B",
            "PATH",
            "Home",
            "SHOAL_TOKEN",
            "LD_PRELOAD",
            "é",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_key(&"K".repeat(MAX_KEY + 1)).is_err());
        assert!(check_value("a\0b").is_err());
        assert!(check_value(&"v".repeat(MAX_VALUE + 1)).is_err());
    }
}
