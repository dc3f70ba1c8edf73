//! Which Node a repository asks for (`.nvmrc`, `.node-version`,
//! `engines.node`) and whether the peer's Node satisfies it; npm's range
//! syntax read into Cargo-style requirements.

use super::{ancestors, at, PackageJson};
use crate::build::detect::RepoFiles;

/// The Node version the repository asks for: `.nvmrc`, `.node-version`,
/// then `engines.node`.
pub(super) fn node_wanted(
    files: &dyn RepoFiles,
    root: &str,
    pkg: &PackageJson,
) -> Option<(&'static str, String)> {
    for (name, file) in [(".nvmrc", ".nvmrc"), (".node-version", ".node-version")] {
        let found = ancestors(root)
            .iter()
            .find_map(|d| files.read(&at(d, file)));
        if let Some(text) = found {
            let wanted = text.lines().next().unwrap_or("").trim().to_owned();
            if !wanted.is_empty() {
                return Some((name, wanted));
            }
        }
    }
    pkg.engines
        .get("node")
        .and_then(serde_json::Value::as_str)
        .map(|s| ("engines.node", s.trim().to_owned()))
}

/// Whether Node `running` (e.g. `v20.11.1`) satisfies what `.nvmrc` or
/// `engines.node` asks for; `None` when the request cannot be read (an
/// alias such as `lts/*`, or a range syntax not understood).
pub fn node_satisfies(source: &str, wanted: &str, running: &str) -> Option<bool> {
    let running = semver::Version::parse(running.trim().trim_start_matches('v')).ok()?;
    let wanted = wanted.trim();
    if source == "engines.node" {
        return npm_range(wanted).map(|alts| alts.iter().any(|r| r.matches(&running)));
    }
    // .nvmrc / .node-version name a version (or a prefix of one).
    let v = wanted.trim_start_matches('v');
    if v.is_empty() || !v.chars().next()?.is_ascii_digit() {
        return None;
    }
    semver::VersionReq::parse(&format!("={v}"))
        .ok()
        .map(|r| r.matches(&running))
}

/// An npm version range (`>=18`, `^18 || ^20`, `18.x`, `16 - 20`) as
/// alternatives of Cargo-style requirements.
fn npm_range(range: &str) -> Option<Vec<semver::VersionReq>> {
    range
        .split("||")
        .map(|alt| {
            let alt = alt.trim();
            if alt.is_empty() || alt == "*" || alt == "x" {
                return semver::VersionReq::parse("*").ok();
            }
            let req = if let Some((lo, hi)) = alt.split_once(" - ") {
                format!(">={}, <={}", lo.trim(), hi.trim())
            } else {
                // npm joins comparators with spaces; a bare version is exact
                // there but a caret in Cargo's syntax.
                let mut parts = Vec::new();
                let mut pending = String::new();
                for tok in alt.split_whitespace() {
                    if matches!(tok, ">" | ">=" | "<" | "<=" | "=" | "^" | "~") {
                        pending = tok.to_owned();
                        continue;
                    }
                    let tok = format!("{pending}{tok}");
                    pending.clear();
                    let tok = tok.replace(".x", ".*").replace(".X", ".*");
                    let bare = tok.chars().next().is_some_and(|c| c.is_ascii_digit());
                    parts.push(if bare && !tok.contains('*') {
                        format!("={tok}")
                    } else {
                        tok
                    });
                }
                parts.join(", ")
            };
            semver::VersionReq::parse(&req.replace(" v", " ").replace("=v", "=")).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_asked_for_and_run() {
        let cases = [
            (".nvmrc", "20", "v20.11.1", Some(true)),
            (".nvmrc", "v18.17.0", "v20.11.1", Some(false)),
            (".nvmrc", "18", "v18.2.0", Some(true)),
            (".nvmrc", "lts/*", "v20.11.1", None),
            ("engines.node", ">=18", "v20.11.1", Some(true)),
            ("engines.node", ">= 22.0.0", "v20.11.1", Some(false)),
            ("engines.node", "^18 || ^20", "v20.11.1", Some(true)),
            (
                "engines.node",
                "^18.17.0 || >=20.3.0",
                "v20.1.0",
                Some(false),
            ),
            ("engines.node", "18.x", "v20.11.1", Some(false)),
            ("engines.node", "16 - 20", "v20.11.1", Some(true)),
            ("engines.node", ">=16 <19", "v20.11.1", Some(false)),
            ("engines.node", "*", "v20.11.1", Some(true)),
            ("engines.node", "not a range", "v20.11.1", None),
        ];
        for (source, wanted, running, want) in cases {
            assert_eq!(
                node_satisfies(source, wanted, running),
                want,
                "{source} {wanted} on {running}"
            );
        }
    }
}
