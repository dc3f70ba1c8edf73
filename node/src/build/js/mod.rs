//! How a JavaScript project builds, the way Netlify and Vercel build it: the
//! package manager from the `packageManager` field or the lockfile (through
//! corepack when its binary is missing), devDependencies always installed,
//! a frozen lockfile, and the framework's command and output from the
//! framework table below. Pure functions over the checkout's files.

mod frameworks;
mod node;

use super::detect::{at, Cmd, DetectError, Output, RepoFiles};
use frameworks::framework;
pub use node::node_satisfies;
use node::node_wanted;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A package manager and how it was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pm {
    Npm,
    YarnClassic,
    YarnBerry,
    Pnpm,
}

impl Pm {
    /// The command's name.
    pub fn bin(self) -> &'static str {
        match self {
            Pm::Npm => "npm",
            Pm::YarnClassic | Pm::YarnBerry => "yarn",
            Pm::Pnpm => "pnpm",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Pm::Npm => "npm",
            Pm::YarnClassic => "yarn classic",
            Pm::YarnBerry => "yarn berry",
            Pm::Pnpm => "pnpm",
        }
    }

    /// The install command: devDependencies included, the lockfile frozen
    /// when there is one.
    fn install(self, locked: bool) -> Cmd {
        let args: &[&str] = match (self, locked) {
            (Pm::Npm, true) => &["npm", "ci", "--include=dev", "--no-audit", "--no-fund"],
            (Pm::Npm, false) => &["npm", "install", "--include=dev", "--no-audit", "--no-fund"],
            (Pm::YarnClassic, true) => &[
                "yarn",
                "install",
                "--frozen-lockfile",
                "--production=false",
                "--non-interactive",
            ],
            (Pm::YarnClassic, false) => {
                &["yarn", "install", "--production=false", "--non-interactive"]
            }
            (Pm::YarnBerry, true) => &["yarn", "install", "--immutable"],
            (Pm::YarnBerry, false) => &["yarn", "install", "--no-immutable"],
            (Pm::Pnpm, true) => &["pnpm", "install", "--frozen-lockfile", "--prod=false"],
            (Pm::Pnpm, false) => &["pnpm", "install", "--no-frozen-lockfile", "--prod=false"],
        };
        Cmd::of(args)
    }

    fn run(self, script: &str) -> Cmd {
        Cmd::of(&[self.bin(), "run", script])
    }

    /// Runs a binary of the project's dependencies.
    fn exec(self, bin: &[&str]) -> Cmd {
        let mut args = match self {
            Pm::Npm => vec!["npm", "exec", "--"],
            Pm::Pnpm => vec!["pnpm", "exec"],
            Pm::YarnClassic | Pm::YarnBerry => vec!["yarn"],
        };
        args.extend_from_slice(bin);
        Cmd::of(&args)
    }

    /// Where the package manager keeps what it downloaded, as environment
    /// variables naming a directory under the build cache.
    fn cache_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Pm::Npm => &[("npm_config_cache", "npm")],
            Pm::YarnClassic => &[("YARN_CACHE_FOLDER", "yarn")],
            Pm::YarnBerry => &[("YARN_GLOBAL_FOLDER", "yarn-berry")],
            Pm::Pnpm => &[("npm_config_store_dir", "pnpm-store")],
        }
    }
}

/// Lockfiles, by package manager.
const LOCKFILES: &[(&str, Pm)] = &[
    ("pnpm-lock.yaml", Pm::Pnpm),
    ("yarn.lock", Pm::YarnClassic),
    ("package-lock.json", Pm::Npm),
    ("npm-shrinkwrap.json", Pm::Npm),
];

#[derive(Deserialize, Default)]
struct PackageJson {
    #[serde(default)]
    scripts: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    dependencies: BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "devDependencies")]
    dev_dependencies: BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "packageManager")]
    package_manager: Option<String>,
    #[serde(default)]
    engines: BTreeMap<String, serde_json::Value>,
}

impl PackageJson {
    fn has(&self, dep: &str) -> bool {
        self.dependencies.contains_key(dep) || self.dev_dependencies.contains_key(dep)
    }

    fn script(&self, name: &str) -> Option<&str> {
        self.scripts.get(name).and_then(serde_json::Value::as_str)
    }
}

/// What a JavaScript project needs, beyond the generic plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsPlan {
    pub framework: &'static str,
    pub pm: Pm,
    /// The version `packageManager` pins, if any.
    pub pm_version: Option<String>,
    /// The lockfile, relative to the repository root.
    pub lockfile: Option<String>,
    pub install: Cmd,
    pub build: Option<Cmd>,
    pub output: Output,
    /// Whether the framework expects `NODE_ENV=production` when it builds.
    pub node_env: bool,
    /// The Node version the repository asks for: (where it said so, what).
    pub node_wanted: Option<(&'static str, String)>,
    /// Warnings for the log.
    pub notes: Vec<String>,
}

impl JsPlan {
    pub fn kind(&self) -> String {
        let version = self
            .pm_version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        format!("{}{version} ({})", self.pm.label(), self.framework)
    }

    /// Cache directories, as (variable, directory under the build cache).
    pub fn cache_env(&self) -> &'static [(&'static str, &'static str)] {
        self.pm.cache_env()
    }
}

/// `root` and each of its parents up to the repository root, nearest first.
fn ancestors(root: &str) -> Vec<String> {
    let mut out = vec![root.to_owned()];
    let mut cur = root;
    while cur != "." {
        cur = cur.rsplit_once('/').map_or(".", |(parent, _)| parent);
        out.push(cur.to_owned());
    }
    out
}

/// The package manager: `packageManager` wins, then the nearest lockfile
/// (a workspace keeps it at its root), else npm.
fn package_manager(
    files: &dyn RepoFiles,
    root: &str,
    pkg: &PackageJson,
) -> Result<(Pm, Option<String>, Option<String>), DetectError> {
    let lockfile = ancestors(root).into_iter().find_map(|dir| {
        LOCKFILES
            .iter()
            .map(|(name, pm)| (at(&dir, name), *pm))
            .find(|(path, _)| files.exists(path))
    });
    let berry = |yarn_lock: Option<&str>| {
        yarn_lock
            .and_then(|p| files.read(p))
            .is_some_and(|t| t.contains("__metadata:"))
            || ancestors(root)
                .iter()
                .any(|d| files.exists(&at(d, ".yarnrc.yml")))
    };
    if let Some(field) = pkg.package_manager.as_deref() {
        let (name, version) = field.split_once('@').unwrap_or((field, ""));
        let version = version.split('+').next().unwrap_or("").to_owned();
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        let pm = match name {
            "npm" => Pm::Npm,
            "pnpm" => Pm::Pnpm,
            "yarn" if major.is_some_and(|m| m >= 2) => Pm::YarnBerry,
            "yarn" if major.is_some() => Pm::YarnClassic,
            "yarn" if berry(None) => Pm::YarnBerry,
            "yarn" => Pm::YarnClassic,
            other => {
                return Err(DetectError::BadPackageJson(format!(
                    "packageManager names {other}, which shoal does not support (npm, yarn or pnpm)"
                )))
            }
        };
        let lock = lockfile
            .filter(|(_, l)| l.bin() == pm.bin())
            .map(|(p, _)| p);
        return Ok((pm, (!version.is_empty()).then_some(version), lock));
    }
    Ok(match lockfile {
        Some((path, Pm::YarnClassic)) if berry(Some(&path)) => (Pm::YarnBerry, None, Some(path)),
        Some((path, pm)) => (pm, None, Some(path)),
        None => (Pm::Npm, None, None),
    })
}

/// Plans the build of the JavaScript project at `root` whose package.json
/// reads `text`.
pub fn plan(files: &dyn RepoFiles, root: &str, text: &str) -> Result<JsPlan, DetectError> {
    let pkg: PackageJson =
        serde_json::from_str(text).map_err(|e| DetectError::BadPackageJson(e.to_string()))?;
    let (pm, pm_version, lockfile) = package_manager(files, root, &pkg)?;
    let mut notes = Vec::new();
    if lockfile.is_none() {
        notes.push(format!(
            "no lockfile: dependency versions are not pinned (commit the lockfile {} install writes)",
            pm.bin()
        ));
    }
    let fw = framework(files, root, &pkg, pm)?;
    if fw.build.is_none() && !files.exists(&at(root, "index.html")) {
        return Err(DetectError::BadPackageJson(
            "it has no \"build\" script and there is no index.html".into(),
        ));
    }
    let output = if fw.build.is_none() {
        Output::Dir(".".into())
    } else {
        fw.output
    };
    Ok(JsPlan {
        framework: fw.name,
        install: pm.install(lockfile.is_some()),
        pm,
        pm_version,
        lockfile,
        build: fw.build,
        output,
        node_env: fw.node_env,
        node_wanted: node_wanted(files, root, &pkg),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    pub(super) use std::collections::HashMap;

    pub(super) struct Files(pub(super) HashMap<&'static str, &'static str>);
    impl RepoFiles for Files {
        fn exists(&self, rel: &str) -> bool {
            self.0.contains_key(rel)
        }
        fn read(&self, rel: &str) -> Option<String> {
            self.0.get(rel).map(|s| (*s).to_owned())
        }
    }
    pub(super) fn plan_of(list: &[(&'static str, &'static str)]) -> Result<JsPlan, DetectError> {
        let files = Files(list.iter().copied().collect());
        let text = files.read("package.json").unwrap_or_default();
        plan(&files, ".", &text)
    }
    pub(super) fn args(cmd: &Cmd) -> String {
        cmd.display()
    }

    const VITE: &str = r#"{"scripts":{"build":"tsc -b && vite build"},"devDependencies":{"vite":"5","typescript":"5"},"dependencies":{"react":"18"}}"#;

    #[test]
    fn installs_always_include_dev_dependencies_and_freeze_the_lockfile() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("package-lock.json", "{}")],
                "npm ci --include=dev --no-audit --no-fund",
            ),
            (&[], "npm install --include=dev --no-audit --no-fund"),
            (
                &[("yarn.lock", "# yarn lockfile v1\n")],
                "yarn install --frozen-lockfile --production=false --non-interactive",
            ),
            (
                &[("yarn.lock", "__metadata:\n  version: 8\n")],
                "yarn install --immutable",
            ),
            (
                &[("pnpm-lock.yaml", "lockfileVersion: '9.0'\n")],
                "pnpm install --frozen-lockfile --prod=false",
            ),
        ];
        for (extra, want) in cases {
            let mut list: Vec<(&'static str, &'static str)> = vec![("package.json", VITE)];
            for (k, v) in *extra {
                let k: &'static str = Box::leak(k.to_string().into_boxed_str());
                let v: &'static str = Box::leak(v.to_string().into_boxed_str());
                list.push((k, v));
            }
            let p = plan_of(&list).unwrap();
            assert_eq!(args(&p.install), *want);
            assert!(p.node_env);
            assert_eq!(p.output, Output::Dir("dist".into()));
            assert_eq!(p.framework, "Vite + React");
        }
    }

    #[test]
    fn the_package_manager_field_wins_over_the_lockfile() {
        let pkg = r#"{"packageManager":"pnpm@9.1.0+sha512.abc","scripts":{"build":"vite build"},"devDependencies":{"vite":"5"}}"#;
        let p = plan_of(&[("package.json", pkg), ("package-lock.json", "{}")]).unwrap();
        assert_eq!((p.pm, p.pm_version.as_deref()), (Pm::Pnpm, Some("9.1.0")));
        assert_eq!(p.lockfile, None, "npm's lockfile is not pnpm's");
        assert_eq!(args(&p.build.unwrap()), "pnpm run build");
        let pkg = r#"{"packageManager":"yarn@4.1.1","scripts":{"build":"x"}}"#;
        let p = plan_of(&[("package.json", pkg), ("yarn.lock", "")]).unwrap();
        assert_eq!(p.pm, Pm::YarnBerry);
        assert_eq!(p.kind(), "yarn berry 4.1.1 (node)");
        let pkg = r#"{"packageManager":"yarn@1.22.19","scripts":{"build":"x"}}"#;
        assert_eq!(
            plan_of(&[("package.json", pkg)]).unwrap().pm,
            Pm::YarnClassic
        );
        let pkg = r#"{"packageManager":"bun@1.0.0","scripts":{"build":"x"}}"#;
        assert!(matches!(
            plan_of(&[("package.json", pkg)]),
            Err(DetectError::BadPackageJson(_))
        ));
    }

    #[test]
    fn a_workspace_lockfile_is_found_above_the_root() {
        let files = Files(
            [
                ("apps/site/package.json", VITE),
                ("pnpm-lock.yaml", ""),
                ("apps/site/.nvmrc", "18\n"),
            ]
            .into_iter()
            .collect(),
        );
        let p = plan(&files, "apps/site", VITE).unwrap();
        assert_eq!(p.pm, Pm::Pnpm);
        assert_eq!(p.lockfile.as_deref(), Some("pnpm-lock.yaml"));
        assert_eq!(p.node_wanted, Some((".nvmrc", "18".into())));
        assert_eq!(ancestors("a/b"), vec!["a/b", "a", "."]);
    }
}
