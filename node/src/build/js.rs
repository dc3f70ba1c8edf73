//! How a JavaScript project builds, the way Netlify and Vercel build it: the
//! package manager from the `packageManager` field or the lockfile (through
//! corepack when its binary is missing), devDependencies always installed,
//! a frozen lockfile, and the framework's command and output from the
//! framework table below. Pure functions over the checkout's files.

use super::detect::{Cmd, DetectError, Output, RepoFiles};
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

fn at(root: &str, rel: &str) -> String {
    if root == "." {
        rel.to_owned()
    } else {
        format!("{root}/{rel}")
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

/// The first of `names` (under `root`) that exists, read.
fn first_config(files: &dyn RepoFiles, root: &str, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| files.read(&at(root, n)))
}

/// The string set for `key:` in a config file (`key: 'value'` or "value").
fn config_string(text: &str, key: &str) -> Option<String> {
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        let after = &rest[i + key.len()..];
        rest = after;
        let after = after.trim_start();
        let Some(after) = after.strip_prefix(':') else {
            continue;
        };
        let after = after.trim_start();
        let quote = after.chars().next()?;
        if !matches!(quote, '\'' | '"' | '`') {
            continue;
        }
        let body = &after[1..];
        return body.find(quote).map(|end| body[..end].to_owned());
    }
    None
}

const NEXT_CONFIGS: &[&str] = &[
    "next.config.js",
    "next.config.mjs",
    "next.config.cjs",
    "next.config.ts",
];
const ASTRO_CONFIGS: &[&str] = &[
    "astro.config.mjs",
    "astro.config.js",
    "astro.config.ts",
    "astro.config.mts",
];
const VITE_CONFIGS: &[&str] = &[
    "vite.config.ts",
    "vite.config.js",
    "vite.config.mjs",
    "vite.config.mts",
    "vite.config.cjs",
];

/// What the framework table decides: name, build command, output, whether
/// it expects `NODE_ENV=production`.
struct Framework {
    name: &'static str,
    build: Option<Cmd>,
    output: Output,
    node_env: bool,
}

/// The framework table, first match wins (meta-frameworks before the
/// bundler they are built on).
fn framework(
    files: &dyn RepoFiles,
    root: &str,
    pkg: &PackageJson,
    pm: Pm,
) -> Result<Framework, DetectError> {
    let build = pkg.script("build").map(|_| pm.run("build"));
    let fw = |name, output: &str, node_env| Framework {
        name,
        build: build.clone(),
        output: Output::Dir(output.into()),
        node_env,
    };
    if pkg.has("next") {
        let config = first_config(files, root, NEXT_CONFIGS).unwrap_or_default();
        let exports = config_string(&config, "output").as_deref() == Some("export")
            || pkg
                .script("build")
                .is_some_and(|s| s.contains("next export"));
        if !exports {
            return Err(DetectError::NotStatic(
                "Next.js builds a server by default, and shoal serves static sites: set `output: 'export'` in next.config.js (with `images: { unoptimized: true }` if the site uses next/image)".into(),
            ));
        }
        let out = config_string(&config, "distDir")
            .filter(|_| {
                pkg.script("build")
                    .is_some_and(|s| s.contains("next export"))
            })
            .unwrap_or_else(|| "out".into());
        return Ok(fw("Next.js static export", &out, true));
    }
    if pkg.has("nuxt") || pkg.has("nuxt3") {
        let generate = if pkg.script("generate").is_some() {
            pm.run("generate")
        } else {
            pm.exec(&["nuxt", "generate"])
        };
        return Ok(Framework {
            name: "Nuxt generate",
            build: Some(generate),
            output: Output::Probe(vec![".output/public".into(), "dist".into()]),
            node_env: true,
        });
    }
    if pkg.has("@sveltejs/kit") {
        if !pkg.has("@sveltejs/adapter-static") {
            return Err(DetectError::NotStatic(
                "SvelteKit needs @sveltejs/adapter-static to make a static site: add it to devDependencies, use `adapter: adapter()` from it in svelte.config.js, and `export const prerender = true` in src/routes/+layout.js".into(),
            ));
        }
        let out = first_config(files, root, &["svelte.config.js", "svelte.config.mjs"])
            .and_then(|c| config_string(&c, "pages"))
            .unwrap_or_else(|| "build".into());
        return Ok(fw("SvelteKit static", &out, true));
    }
    if pkg.has("gatsby") {
        return Ok(fw("Gatsby", "public", true));
    }
    if pkg.has("@docusaurus/core") {
        return Ok(fw("Docusaurus", "build", true));
    }
    if pkg.has("astro") {
        let config = first_config(files, root, ASTRO_CONFIGS).unwrap_or_default();
        if config_string(&config, "output").as_deref() == Some("server") {
            return Err(DetectError::NotStatic(
                "this Astro site renders on a server (`output: 'server'`), and shoal serves static sites: remove `output: 'server'` (static is Astro's default)".into(),
            ));
        }
        let out = config_string(&config, "outDir").unwrap_or_else(|| "dist".into());
        return Ok(fw("Astro", out.trim_start_matches("./"), true));
    }
    if pkg.has("@11ty/eleventy") {
        return Ok(fw("Eleventy", "_site", false));
    }
    if pkg.has("react-scripts") {
        return Ok(fw("Create React App", "build", true));
    }
    if pkg.has("vite") {
        let name = if pkg.has("react") {
            "Vite + React"
        } else if pkg.has("vue") {
            "Vite + Vue"
        } else if pkg.has("svelte") {
            "Vite + Svelte"
        } else {
            "Vite"
        };
        let out = first_config(files, root, VITE_CONFIGS)
            .and_then(|c| config_string(&c, "outDir"))
            .unwrap_or_else(|| "dist".into());
        return Ok(fw(name, out.trim_start_matches("./"), true));
    }
    Ok(Framework {
        name: "node",
        build,
        output: Output::Probe(
            ["dist", "build", "out", "public"]
                .map(String::from)
                .to_vec(),
        ),
        node_env: false,
    })
}

/// The Node version the repository asks for: `.nvmrc`, `.node-version`,
/// then `engines.node`.
fn node_wanted(
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
    use std::collections::HashMap;

    struct Files(HashMap<&'static str, &'static str>);
    impl RepoFiles for Files {
        fn exists(&self, rel: &str) -> bool {
            self.0.contains_key(rel)
        }
        fn read(&self, rel: &str) -> Option<String> {
            self.0.get(rel).map(|s| (*s).to_owned())
        }
    }
    fn plan_of(list: &[(&'static str, &'static str)]) -> Result<JsPlan, DetectError> {
        let files = Files(list.iter().copied().collect());
        let text = files.read("package.json").unwrap_or_default();
        plan(&files, ".", &text)
    }
    fn args(cmd: &Cmd) -> String {
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

    #[test]
    fn the_framework_table() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, Output);
        let table: &[Case] = &[
            (
                r#"{"scripts":{"build":"next build"},"dependencies":{"next":"14"}}"#,
                &[("next.config.mjs", "export default { output: 'export' };")],
                "Next.js static export",
                Output::Dir("out".into()),
            ),
            (
                r#"{"scripts":{"build":"nuxt build","generate":"nuxt generate"},"devDependencies":{"nuxt":"3"}}"#,
                &[],
                "Nuxt generate",
                Output::Probe(vec![".output/public".into(), "dist".into()]),
            ),
            (
                r#"{"scripts":{"build":"vite build"},"devDependencies":{"@sveltejs/kit":"2","@sveltejs/adapter-static":"3","vite":"5","svelte":"4"}}"#,
                &[],
                "SvelteKit static",
                Output::Dir("build".into()),
            ),
            (
                r#"{"scripts":{"build":"gatsby build"},"dependencies":{"gatsby":"5","react":"18"}}"#,
                &[],
                "Gatsby",
                Output::Dir("public".into()),
            ),
            (
                r#"{"scripts":{"build":"docusaurus build"},"dependencies":{"@docusaurus/core":"3","react":"18"}}"#,
                &[],
                "Docusaurus",
                Output::Dir("build".into()),
            ),
            (
                r#"{"scripts":{"build":"astro build"},"dependencies":{"astro":"4"}}"#,
                &[],
                "Astro",
                Output::Dir("dist".into()),
            ),
            (
                r#"{"scripts":{"build":"eleventy"},"devDependencies":{"@11ty/eleventy":"2"}}"#,
                &[],
                "Eleventy",
                Output::Dir("_site".into()),
            ),
            (
                r#"{"scripts":{"build":"react-scripts build"},"dependencies":{"react-scripts":"5","react":"18"}}"#,
                &[],
                "Create React App",
                Output::Dir("build".into()),
            ),
            (
                r#"{"scripts":{"build":"vite build"},"devDependencies":{"vite":"5","vue":"3"}}"#,
                &[(
                    "vite.config.js",
                    "export default { build: { outDir: './public_html' } }",
                )],
                "Vite + Vue",
                Output::Dir("public_html".into()),
            ),
            (
                r#"{"scripts":{"build":"vite build"},"devDependencies":{"vite":"5","svelte":"4"}}"#,
                &[],
                "Vite + Svelte",
                Output::Dir("dist".into()),
            ),
        ];
        for (pkg, extra, name, output) in table {
            let mut list: Vec<(&'static str, &'static str)> =
                vec![("package.json", Box::leak(pkg.to_string().into_boxed_str()))];
            for (k, v) in *extra {
                list.push((
                    Box::leak(k.to_string().into_boxed_str()),
                    Box::leak(v.to_string().into_boxed_str()),
                ));
            }
            let p = plan_of(&list).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((p.framework, &p.output), (*name, output), "{pkg}");
        }
        let nuxt = r#"{"scripts":{"build":"nuxt build"},"devDependencies":{"nuxt":"3"}}"#;
        let p = plan_of(&[("package.json", nuxt), ("package-lock.json", "")]).unwrap();
        assert_eq!(args(&p.build.unwrap()), "npm exec -- nuxt generate");
    }

    #[test]
    fn a_framework_that_does_not_make_a_static_site_says_what_to_set() {
        let next = r#"{"scripts":{"build":"next build"},"dependencies":{"next":"14"}}"#;
        let err = plan_of(&[("package.json", next)]).unwrap_err().to_string();
        assert!(err.contains("output: 'export'"), "{err}");
        let err = plan_of(&[
            ("package.json", next),
            (
                "next.config.js",
                "module.exports = { reactStrictMode: true }",
            ),
        ])
        .unwrap_err();
        assert!(matches!(err, DetectError::NotStatic(_)));
        let kit = r#"{"scripts":{"build":"vite build"},"devDependencies":{"@sveltejs/kit":"2","@sveltejs/adapter-auto":"3"}}"#;
        let err = plan_of(&[("package.json", kit)]).unwrap_err().to_string();
        assert!(err.contains("@sveltejs/adapter-static"), "{err}");
        let astro = r#"{"scripts":{"build":"astro build"},"dependencies":{"astro":"4"}}"#;
        let err = plan_of(&[
            ("package.json", astro),
            (
                "astro.config.mjs",
                "export default defineConfig({ output: \"server\" })",
            ),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("output: 'server'"), "{err}");
    }

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

    #[test]
    fn config_strings_are_read_from_either_quote() {
        assert_eq!(
            config_string("x = { output: \"export\", y }", "output").as_deref(),
            Some("export")
        );
        assert_eq!(
            config_string("outputs: 3, output: `a`", "output").as_deref(),
            Some("a")
        );
        assert_eq!(config_string("output: dynamic()", "output"), None);
    }
}
