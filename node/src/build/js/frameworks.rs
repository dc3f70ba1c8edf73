//! The framework table: which JavaScript framework a package.json names,
//! the command that builds it as a static site, and where the output
//! lands; a framework whose default output is not static fails saying what
//! to set. First match wins, meta-frameworks before the bundler they are
//! built on.

use super::{at, PackageJson, Pm};
use crate::build::detect::{Cmd, DetectError, Output, RepoFiles};

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
pub(super) struct Framework {
    pub(super) name: &'static str,
    pub(super) build: Option<Cmd>,
    pub(super) output: Output,
    pub(super) node_env: bool,
}

/// The framework table, first match wins (meta-frameworks before the
/// bundler they are built on).
pub(super) fn framework(
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

#[cfg(test)]
mod tests {
    use super::super::tests::{args, plan_of};
    use super::*;

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
