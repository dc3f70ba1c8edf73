//! Deciding how to build a checkout: a pure function from what is in the
//! repository to a [`Plan`]. `shoal.toml` overrides everything; otherwise the
//! generator is recognised by its files.

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
    fn of(args: &[&str]) -> Self {
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
    /// What was recognised, for the log ("Hugo", "npm (Vite)", ...).
    pub kind: String,
    /// Dependency step; may use the network.
    pub install: Option<Cmd>,
    /// Build step; offline unless `network` is set.
    pub build: Option<Cmd>,
    pub output: Output,
    /// Programs that must be installed on the peer.
    pub tools: Vec<String>,
    pub network: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DetectError {
    #[error("shoal.toml is invalid: {0}")]
    BadConfig(String),
    #[error("package.json is invalid: {0}")]
    BadPackageJson(String),
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
    command: Option<String>,
    install: Option<String>,
    output: String,
    #[serde(default)]
    network: bool,
}

/// An output directory must be a relative path inside the checkout.
fn check_output(dir: &str) -> Result<String, DetectError> {
    let trimmed = dir.trim_matches('/');
    let ok = !dir.starts_with('/')
        && trimmed
            .split('/')
            .all(|p| !p.is_empty() && p != ".." && p != ".git");
    if dir == "." || dir.is_empty() {
        return Ok(".".into());
    }
    if ok {
        Ok(trimmed.to_owned())
    } else {
        Err(DetectError::BadConfig(format!(
            "output '{dir}' must be a relative path inside the repository"
        )))
    }
}

/// Works out the build for the checkout in `files`. `live_url` is passed to
/// generators that take a base URL.
pub fn detect(files: &dyn RepoFiles, live_url: &str) -> Result<Plan, DetectError> {
    if let Some(text) = files.read("shoal.toml") {
        let cfg: ShoalToml =
            toml::from_str(&text).map_err(|e| DetectError::BadConfig(e.message().to_owned()))?;
        return Ok(Plan {
            kind: "shoal.toml".into(),
            install: cfg.build.install.as_deref().map(Cmd::shell),
            build: cfg.build.command.as_deref().map(Cmd::shell),
            output: Output::Dir(check_output(&cfg.build.output)?),
            tools: vec!["sh".into()],
            network: cfg.build.network,
        });
    }
    if let Some(text) = files.read("package.json") {
        return node_plan(files, &text);
    }
    if files.exists("book.toml") {
        return Ok(simple(
            "mdBook",
            Cmd::of(&["mdbook", "build"]),
            "book",
            "mdbook",
        ));
    }
    let zola = files.exists("zola.toml")
        || files
            .read("config.toml")
            .is_some_and(|t| t.lines().any(|l| l.trim_start().starts_with("base_url")));
    if zola {
        return Ok(simple(
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
    .any(|f| files.exists(f));
    if hugo {
        return Ok(simple(
            "Hugo",
            Cmd::of(&["hugo", "--baseURL", live_url]),
            "public",
            "hugo",
        ));
    }
    if files.exists("_config.yml") {
        let mut plan = simple("Jekyll", Cmd::of(&["jekyll", "build"]), "_site", "jekyll");
        if files.exists("Gemfile") {
            plan.install = Some(Cmd::of(&["bundle", "install"]));
            plan.build = Some(Cmd::of(&["bundle", "exec", "jekyll", "build"]));
            plan.tools = vec!["bundle".into()];
        }
        return Ok(plan);
    }
    if files.exists("index.html") {
        return Ok(Plan {
            kind: "static HTML".into(),
            install: None,
            build: None,
            output: Output::Dir(".".into()),
            tools: vec![],
            network: false,
        });
    }
    Err(DetectError::Unknown)
}

fn simple(kind: &str, build: Cmd, output: &str, tool: &str) -> Plan {
    Plan {
        kind: kind.into(),
        install: None,
        build: Some(build),
        output: Output::Dir(output.into()),
        tools: vec![tool.into()],
        network: false,
    }
}

#[derive(Deserialize, Default)]
struct PackageJson {
    #[serde(default)]
    scripts: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    dependencies: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "devDependencies")]
    dev_dependencies: std::collections::BTreeMap<String, serde_json::Value>,
}

fn node_plan(files: &dyn RepoFiles, text: &str) -> Result<Plan, DetectError> {
    let pkg: PackageJson =
        serde_json::from_str(text).map_err(|e| DetectError::BadPackageJson(e.to_string()))?;
    let (pm, install) = if files.exists("pnpm-lock.yaml") {
        ("pnpm", Cmd::of(&["pnpm", "install", "--frozen-lockfile"]))
    } else if files.exists("yarn.lock") {
        ("yarn", Cmd::of(&["yarn", "install", "--frozen-lockfile"]))
    } else if files.exists("package-lock.json") {
        ("npm", Cmd::of(&["npm", "ci", "--no-audit", "--no-fund"]))
    } else {
        (
            "npm",
            Cmd::of(&["npm", "install", "--no-audit", "--no-fund"]),
        )
    };
    let has =
        |dep: &str| pkg.dependencies.contains_key(dep) || pkg.dev_dependencies.contains_key(dep);
    let (framework, output) = if has("astro") {
        ("Astro", Output::Dir("dist".into()))
    } else if has("vite") {
        ("Vite", Output::Dir("dist".into()))
    } else if has("next") {
        ("Next.js export", Output::Dir("out".into()))
    } else if has("react-scripts") || has("@docusaurus/core") {
        (
            if has("react-scripts") {
                "Create React App"
            } else {
                "Docusaurus"
            },
            Output::Dir("build".into()),
        )
    } else if has("@11ty/eleventy") {
        ("Eleventy", Output::Dir("_site".into()))
    } else {
        (
            "node",
            Output::Probe(
                ["dist", "build", "out", "public"]
                    .map(String::from)
                    .to_vec(),
            ),
        )
    };
    let build = pkg
        .scripts
        .contains_key("build")
        .then(|| Cmd::of(&[pm, "run", "build"]));
    if build.is_none() && !files.exists("index.html") {
        return Err(DetectError::BadPackageJson(
            "it has no \"build\" script and there is no index.html".into(),
        ));
    }
    let output = if build.is_none() {
        Output::Dir(".".into())
    } else {
        output
    };
    Ok(Plan {
        kind: format!("{pm} ({framework})"),
        install: Some(install),
        build,
        output,
        tools: vec![pm.into(), "node".into()],
        network: false,
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
        let p = detect(&f, URL).unwrap();
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
                matches!(detect(&f, URL), Err(DetectError::BadConfig(_))),
                "{out}"
            );
        }
    }

    #[test]
    fn node_frameworks_and_lockfiles() {
        let vite = r#"{"scripts":{"build":"vite build"},"devDependencies":{"vite":"5"}}"#;
        let p = detect(
            &files(&[("package.json", vite), ("pnpm-lock.yaml", "")]),
            URL,
        )
        .unwrap();
        assert_eq!(
            p.install,
            Some(Cmd::of(&["pnpm", "install", "--frozen-lockfile"]))
        );
        assert_eq!(p.build, Some(Cmd::of(&["pnpm", "run", "build"])));
        assert_eq!(p.output, Output::Dir("dist".into()));
        let next = r#"{"scripts":{"build":"next build"},"dependencies":{"next":"14"}}"#;
        let p = detect(
            &files(&[("package.json", next), ("package-lock.json", "")]),
            URL,
        )
        .unwrap();
        assert_eq!(
            p.install,
            Some(Cmd::of(&["npm", "ci", "--no-audit", "--no-fund"]))
        );
        assert_eq!(p.output, Output::Dir("out".into()));
        let cra = r#"{"scripts":{"build":"x"},"dependencies":{"react-scripts":"5"}}"#;
        assert_eq!(
            detect(&files(&[("package.json", cra), ("yarn.lock", "")]), URL)
                .unwrap()
                .output,
            Output::Dir("build".into())
        );
        let eleventy = r#"{"scripts":{"build":"x"},"devDependencies":{"@11ty/eleventy":"2"}}"#;
        assert_eq!(
            detect(&files(&[("package.json", eleventy)]), URL)
                .unwrap()
                .output,
            Output::Dir("_site".into())
        );
        let other = r#"{"scripts":{"build":"x"}}"#;
        assert!(matches!(
            detect(&files(&[("package.json", other)]), URL)
                .unwrap()
                .output,
            Output::Probe(_)
        ));
        assert!(detect(&files(&[("package.json", "{not json")]), URL).is_err());
    }

    #[test]
    fn generators_by_their_files() {
        let p = detect(&files(&[("book.toml", "")]), URL).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.output),
            ("mdBook", Output::Dir("book".into()))
        );
        let p = detect(&files(&[("hugo.toml", "")]), URL).unwrap();
        assert_eq!(p.build, Some(Cmd::of(&["hugo", "--baseURL", URL])));
        let p = detect(&files(&[("config.toml", "base_url = \"x\"\n")]), URL).unwrap();
        assert_eq!(p.kind, "Zola");
        let p = detect(&files(&[("config.toml", "baseURL = \"x\"\n")]), URL).unwrap();
        assert_eq!(p.kind, "Hugo");
        let p = detect(&files(&[("_config.yml", ""), ("Gemfile", "")]), URL).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.output),
            ("Jekyll", Output::Dir("_site".into()))
        );
        let p = detect(&files(&[("index.html", "")]), URL).unwrap();
        assert_eq!((p.build, p.output), (None, Output::Dir(".".into())));
        assert_eq!(
            detect(&files(&[("README.md", "")]), URL),
            Err(DetectError::Unknown)
        );
    }
}
