//! Deciding how to build a checkout: a pure function from what is in the
//! repository to a [`Plan`]. `shoal.toml` overrides everything; otherwise the
//! generator is recognised by its files.

use super::js;
use serde::Deserialize;

/// Read access to the checkout, so detection can be tested on maps.
pub trait RepoFiles {
    fn exists(&self, rel: &str) -> bool;
    /// The file's text if it exists and is small.
    fn read(&self, rel: &str) -> Option<String>;
}

/// A command run in the sandbox: argv, never a shell unless the user wrote one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd(pub Vec<String>);

impl Cmd {
    pub fn of(args: &[&str]) -> Self {
        Cmd(args.iter().map(|s| (*s).to_owned()).collect())
    }

    fn shell(line: &str) -> Self {
        Cmd(vec!["sh".into(), "-c".into(), line.into()])
    }

    pub fn program(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    pub fn display(&self) -> String {
        self.0.join(" ")
    }
}

/// Where the site ends up after the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Dir(String),
    /// The first of these that exists after the build.
    Probe(Vec<String>),
}

/// How to build one checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What was recognised, for the log ("Hugo", "npm (Vite + React)", ...).
    pub kind: String,
    /// The base directory the steps run in, relative to the checkout ("."
    /// for the whole repository; a monorepo's app otherwise).
    pub root: String,
    /// Dependency step; may use the network.
    pub install: Option<Cmd>,
    /// Build step; offline unless `network` is set.
    pub build: Option<Cmd>,
    /// Relative to `root`.
    pub output: Output,
    /// Programs that must be installed on the peer.
    pub tools: Vec<String>,
    pub network: bool,
    /// Set for the build step only (`NODE_ENV=production` where the
    /// framework expects it; never for the install).
    pub build_env: Vec<(String, String)>,
    /// Directories the tools download into, kept in the project's build
    /// cache: (environment variable, directory under the cache).
    pub cache_env: Vec<(&'static str, &'static str)>,
    /// The file whose hash keys the build cache (a lockfile), relative to
    /// the checkout.
    pub cache_key: Option<String>,
    /// A package manager that corepack can provide when it is missing.
    pub corepack: Option<&'static str>,
    /// The Node version the repository asks for: (where, what).
    pub node_wanted: Option<(&'static str, String)>,
    /// Warnings for the log.
    pub notes: Vec<String>,
}

impl Plan {
    fn new(kind: &str, root: &str, build: Option<Cmd>, output: Output) -> Self {
        Plan {
            kind: kind.into(),
            root: root.into(),
            install: None,
            build,
            output,
            tools: vec![],
            network: false,
            build_env: vec![],
            cache_env: vec![],
            cache_key: None,
            corepack: None,
            node_wanted: None,
            notes: vec![],
        }
    }

    /// `rel` (relative to the root) relative to the checkout.
    pub fn in_root(&self, rel: &str) -> String {
        at(&self.root, rel)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error("shoal.toml is invalid: {0}")]
    BadConfig(String),
    #[error("package.json is invalid: {0}")]
    BadPackageJson(String),
    #[error("{0}")]
    NotStatic(String),
    #[error("the base directory {0} is not a directory of the repository")]
    NoRoot(String),
    #[error("could not tell how to build this repository: add an index.html, or a shoal.toml with [build] command and output")]
    Unknown,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShoalToml {
    build: BuildSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSection {
    /// Base directory (a monorepo's app); detection and steps run there.
    root: Option<String>,
    command: Option<String>,
    install: Option<String>,
    output: Option<String>,
    #[serde(default)]
    network: bool,
}

/// `rel` under the base directory `root` (".": the checkout's top).
pub(crate) fn at(root: &str, rel: &str) -> String {
    match (root, rel) {
        (".", _) => rel.to_owned(),
        (_, ".") => root.to_owned(),
        _ => format!("{root}/{rel}"),
    }
}

/// A directory named by the user must be a relative path inside the
/// checkout: no `..`, no `.git`, not absolute.
pub fn check_dir(what: &str, dir: &str) -> Result<String, DetectError> {
    let trimmed = dir.trim().trim_matches('/');
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    if trimmed.is_empty() || trimmed == "." {
        return Ok(".".into());
    }
    let ok = !dir.trim().starts_with('/')
        && trimmed.len() <= 1024
        && trimmed
            .split('/')
            .all(|p| !p.is_empty() && p != ".." && p != "." && p != ".git" && !p.contains('\\'));
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(DetectError::BadConfig(format!(
            "{what} '{dir}' must be a relative path inside the repository"
        )))
    }
}

/// Works out the build for the checkout in `files`. `live_url` is passed to
/// generators that take a base URL; `root` (the deployment's base
/// directory, if it names one) wins over `[build] root` in shoal.toml.
pub fn detect(
    files: &dyn RepoFiles,
    live_url: &str,
    root: Option<&str>,
) -> Result<Plan, DetectError> {
    let top = files
        .read("shoal.toml")
        .map(|t| parse_toml(&t))
        .transpose()?;
    let root = match (root, top.as_ref().and_then(|t| t.root.as_deref())) {
        (Some(r), _) | (None, Some(r)) => check_dir("root", r)?,
        (None, None) => ".".to_owned(),
    };
    if root != "." && !files.exists(&root) {
        return Err(DetectError::NoRoot(root));
    }
    // The base directory's own shoal.toml, else the repository's.
    let cfg = if root == "." {
        top
    } else {
        match files.read(&at(&root, "shoal.toml")) {
            Some(t) => Some(parse_toml(&t)?),
            None => top,
        }
    };
    if let Some(cfg) =
        cfg.filter(|c| c.command.is_some() || c.install.is_some() || c.output.is_some())
    {
        let output = cfg.output.as_deref().ok_or_else(|| {
            DetectError::BadConfig("[build] output is required with command or install".into())
        })?;
        let mut plan = Plan::new(
            "shoal.toml",
            &root,
            cfg.command.as_deref().map(Cmd::shell),
            Output::Dir(check_dir("output", output)?),
        );
        plan.install = cfg.install.as_deref().map(Cmd::shell);
        plan.tools = vec!["sh".into()];
        plan.network = cfg.network;
        return Ok(plan);
    }
    let f = |rel: &str| at(&root, rel);
    if let Some(text) = files.read(&f("package.json")) {
        let js = js::plan(files, &root, &text)?;
        let mut plan = Plan::new(&js.kind(), &root, js.build.clone(), js.output.clone());
        plan.install = Some(js.install.clone());
        plan.tools = vec![js.pm.bin().into(), "node".into()];
        if js.node_env {
            plan.build_env = vec![("NODE_ENV".into(), "production".into())];
        }
        plan.cache_env = js.cache_env().to_vec();
        plan.cache_env.push(("COREPACK_HOME", "corepack"));
        plan.cache_key.clone_from(&js.lockfile);
        plan.corepack = (js.pm != js::Pm::Npm).then_some(js.pm.bin());
        plan.node_wanted = js.node_wanted;
        plan.notes = js.notes;
        return Ok(plan);
    }
    if files.exists(&f("book.toml")) {
        return Ok(simple(
            &root,
            "mdBook",
            Cmd::of(&["mdbook", "build"]),
            "book",
            "mdbook",
        ));
    }
    let zola = files.exists(&f("zola.toml"))
        || files
            .read(&f("config.toml"))
            .is_some_and(|t| t.lines().any(|l| l.trim_start().starts_with("base_url")));
    if zola {
        return Ok(simple(
            &root,
            "Zola",
            Cmd::of(&["zola", "build", "--base-url", live_url]),
            "public",
            "zola",
        ));
    }
    let hugo = [
        "hugo.toml",
        "hugo.yaml",
        "hugo.json",
        "config.toml",
        "config.yaml",
        "config.json",
    ]
    .iter()
    .any(|n| files.exists(&f(n)));
    if hugo {
        let mut plan = simple(
            &root,
            "Hugo",
            Cmd::of(&["hugo", "--baseURL", live_url]),
            "public",
            "hugo",
        );
        plan.cache_env = vec![("HUGO_CACHEDIR", "hugo")];
        return Ok(plan);
    }
    if files.exists(&f("_config.yml")) {
        let mut plan = simple(
            &root,
            "Jekyll",
            Cmd::of(&["jekyll", "build"]),
            "_site",
            "jekyll",
        );
        plan.build_env = vec![("JEKYLL_ENV".into(), "production".into())];
        if files.exists(&f("Gemfile")) {
            plan.kind = "Jekyll (Gemfile)".into();
            plan.install = Some(Cmd::of(&["bundle", "install"]));
            plan.build = Some(Cmd::of(&["bundle", "exec", "jekyll", "build"]));
            plan.tools = vec!["bundle".into()];
            plan.cache_env = vec![("BUNDLE_PATH", "bundle")];
            plan.cache_key = ["Gemfile.lock", "Gemfile"]
                .iter()
                .map(|n| f(n))
                .find(|p| files.exists(p));
        }
        return Ok(plan);
    }
    if files.exists(&f("index.html")) {
        return Ok(Plan::new(
            "static HTML",
            &root,
            None,
            Output::Dir(".".into()),
        ));
    }
    Err(DetectError::Unknown)
}

fn parse_toml(text: &str) -> Result<BuildSection, DetectError> {
    let cfg: ShoalToml =
        toml::from_str(text).map_err(|e| DetectError::BadConfig(e.message().to_owned()))?;
    Ok(cfg.build)
}

fn simple(root: &str, kind: &str, build: Cmd, output: &str, tool: &str) -> Plan {
    let mut plan = Plan::new(kind, root, Some(build), Output::Dir(output.into()));
    plan.tools = vec![tool.into()];
    plan
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
    fn files(list: &[(&'static str, &'static str)]) -> Files {
        Files(list.iter().copied().collect())
    }
    const URL: &str = "http://blog.localhost:8000/";

    #[test]
    fn shoal_toml_wins() {
        let f = files(&[
            (
                "shoal.toml",
                "[build]\ncommand = \"make site\"\noutput = \"out/\"\n",
            ),
            ("package.json", "{}"),
            ("index.html", ""),
        ]);
        let p = detect(&f, URL, None).unwrap();
        assert_eq!(p.build, Some(Cmd::shell("make site")));
        assert_eq!(p.output, Output::Dir("out".into()));
    }

    #[test]
    fn shoal_toml_output_must_stay_inside() {
        for out in ["../x", "/etc", "a/../../b", ".git"] {
            let text: &'static str = Box::leak(
                format!("[build]\ncommand = \"x\"\noutput = \"{out}\"\n").into_boxed_str(),
            );
            let f = files(&[("shoal.toml", text)]);
            assert!(
                matches!(detect(&f, URL, None), Err(DetectError::BadConfig(_))),
                "{out}"
            );
        }
    }

    #[test]
    fn a_node_project_installs_with_dev_dependencies_and_builds_for_production() {
        let vite = r#"{"scripts":{"build":"vite build"},"devDependencies":{"vite":"5"}}"#;
        let p = detect(
            &files(&[("package.json", vite), ("pnpm-lock.yaml", "")]),
            URL,
            None,
        )
        .unwrap();
        assert_eq!(p.build, Some(Cmd::of(&["pnpm", "run", "build"])));
        assert_eq!(p.output, Output::Dir("dist".into()));
        assert_eq!(
            p.build_env,
            vec![("NODE_ENV".to_owned(), "production".to_owned())]
        );
        assert_eq!(p.corepack, Some("pnpm"));
        assert_eq!(p.cache_key.as_deref(), Some("pnpm-lock.yaml"));
        assert!(p
            .cache_env
            .contains(&("npm_config_store_dir", "pnpm-store")));
        assert!(detect(&files(&[("package.json", "{not json")]), URL, None).is_err());
    }

    #[test]
    fn a_base_directory_scopes_detection() {
        let f = files(&[
            ("apps", ""),
            ("apps/site", ""),
            ("apps/site/book.toml", ""),
            ("index.html", ""),
        ]);
        let p = detect(&f, URL, Some("apps/site/")).unwrap();
        assert_eq!((p.kind.as_str(), p.root.as_str()), ("mdBook", "apps/site"));
        assert_eq!(p.in_root("book"), "apps/site/book");
        assert_eq!(detect(&f, URL, None).unwrap().kind, "static HTML");
        let f = files(&[
            ("shoal.toml", "[build]\nroot = \"apps/site\"\n"),
            ("apps/site", ""),
            ("apps/site/index.html", ""),
        ]);
        let p = detect(&f, URL, None).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.root.as_str()),
            ("static HTML", "apps/site")
        );
        assert_eq!(
            detect(&f, URL, Some("nope")),
            Err(DetectError::NoRoot("nope".into()))
        );
        for bad in ["../x", "/etc", "a/../b", ".git"] {
            assert!(
                matches!(detect(&f, URL, Some(bad)), Err(DetectError::BadConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn generators_by_their_files() {
        let p = detect(&files(&[("book.toml", "")]), URL, None).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.output),
            ("mdBook", Output::Dir("book".into()))
        );
        let p = detect(&files(&[("hugo.toml", "")]), URL, None).unwrap();
        assert_eq!(p.build, Some(Cmd::of(&["hugo", "--baseURL", URL])));
        let p = detect(&files(&[("config.toml", "base_url = \"x\"\n")]), URL, None).unwrap();
        assert_eq!(p.kind, "Zola");
        let p = detect(&files(&[("config.toml", "baseURL = \"x\"\n")]), URL, None).unwrap();
        assert_eq!(p.kind, "Hugo");
        let p = detect(&files(&[("_config.yml", ""), ("Gemfile", "")]), URL, None).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.output),
            ("Jekyll (Gemfile)", Output::Dir("_site".into()))
        );
        let p = detect(&files(&[("index.html", "")]), URL, None).unwrap();
        assert_eq!((p.build, p.output), (None, Output::Dir(".".into())));
        assert_eq!(
            detect(&files(&[("README.md", "")]), URL, None),
            Err(DetectError::Unknown)
        );
    }
}
