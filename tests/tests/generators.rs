//! Static site generators other than JavaScript ones: Hugo (with the live
//! URL as its base URL, Sass where the binary is the extended edition),
//! Jekyll (the system's, or the Gemfile's through bundler), mdBook and
//! Zola. Each runs when its tool is installed here and says it was skipped,
//! and why, when it is not.

#![allow(clippy::unwrap_used)]

use tests::{Peer, Repo, BUILD};

/// Whether `tool` is on the PATH builds use; if not, says the test is skipped.
fn installed(tool: &str, test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("SKIPPED {test}: {tool} is not installed on this machine");
    }
    found
}

/// Deploys `repo` as `name` on a new peer and waits for `success`;
/// returns the peer, the deployment and its log.
async fn deploy_ok(repo: &Repo, name: &str) -> (Peer, serde_json::Value, String) {
    let peer = Peer::start(&[]).await.unwrap();
    let (id, d) = peer.deploy_and_wait(repo.path(), name).await.unwrap();
    let log = peer.log_text(&id).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    (peer, d, log)
}

#[tokio::test]
async fn hugo_builds_with_the_live_url_and_sass() {
    if !installed("hugo", "hugo_builds_with_the_live_url_and_sass") {
        return;
    }
    let repo = Repo::new(&[
        ("hugo.toml", b"title = \"Hugo on shoal\"\n".as_slice()),
        ("content/about.md", b"---\ntitle: About\n---\nAbout this Hugo site.\n"),
        ("assets/main.scss", b"$accent: #336699;\nh1 { color: $accent; }\n"),
        (
            "layouts/index.html",
            b"{{ $css := resources.Get \"main.scss\" | toCSS }}<link rel=stylesheet href=\"{{ $css.RelPermalink }}\"><h1>{{ .Site.Title }}</h1><p id=base>{{ .Site.BaseURL }}</p><a href=\"about/\">About</a>\n",
        ),
        ("layouts/_default/single.html", b"<h1>{{ .Title }}</h1>{{ .Content }}\n"),
    ])
    .unwrap();
    let (peer, d, log) = deploy_ok(&repo, "hugo-site").await;
    assert!(log.contains("[detect] detected Hugo"), "{log}");
    let home = peer
        .site("hugo-site", "/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let live = d["live_url"].as_str().unwrap();
    assert!(home.contains(&format!("<p id=base>{live}</p>")), "{home}");
    let css = home
        .split("href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let css = peer
        .site("hugo-site", css)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        css.contains("color: #336699") || css.contains("color:#336699"),
        "{css}"
    );
    let about = peer
        .site("hugo-site", "/about/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(about.contains("About this Hugo site."), "{about}");
    assert!(log.contains("none missing"), "{log}");
}

#[tokio::test]
async fn jekyll_without_a_gemfile_uses_the_system_jekyll() {
    if !installed("jekyll", "jekyll_without_a_gemfile_uses_the_system_jekyll") {
        return;
    }
    let repo = Repo::new(&[
        ("_config.yml", b"title: Jekyll on shoal\n".as_slice()),
        (
            "index.html",
            b"---\n---\n<h1>{{ site.title }}</h1><p>{{ jekyll.environment }}</p><a href=\"/about/\">About</a>\n",
        ),
        ("about.md", b"---\npermalink: /about/\n---\nAbout this Jekyll site.\n"),
    ])
    .unwrap();
    let (peer, _, log) = deploy_ok(&repo, "jekyll-site").await;
    assert!(log.contains("[build] $ jekyll build"), "{log}");
    let home = peer
        .site("jekyll-site", "/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        home.contains("<h1>Jekyll on shoal</h1><p>production</p>"),
        "{home}"
    );
    let about = peer
        .site("jekyll-site", "/about/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(about.contains("About this Jekyll site."), "{about}");
}

/// With a Gemfile, bundler installs the gems into the build cache; where
/// rubygems.org cannot be reached (as here), the error says so.
#[tokio::test]
async fn jekyll_with_a_gemfile_installs_its_gems_or_says_why_not() {
    if !installed(
        "bundle",
        "jekyll_with_a_gemfile_installs_its_gems_or_says_why_not",
    ) {
        return;
    }
    let repo = Repo::new(&[
        ("_config.yml", b"title: Gems\n".as_slice()),
        (
            "Gemfile",
            b"source \"https://rubygems.org\"\ngem \"jekyll\", \"~> 4.3\"\n",
        ),
        ("index.md", b"---\n---\n# {{ site.title }}\n"),
    ])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let id = peer.deploy(repo.path(), "gems").await.unwrap();
    let d = peer.wait_final(&id, BUILD * 3).await.unwrap();
    let log = peer.log_text(&id).await.unwrap();
    assert!(log.contains("[install] $ bundle install"), "{log}");
    if d["status"] == "success" {
        let home = peer.site("gems", "/").await.unwrap().text().await.unwrap();
        assert!(home.contains("Gems"), "{home}");
    } else {
        assert_eq!(d["status"], "buildFailed", "{log}");
        let error = d["error"].as_str().unwrap();
        assert!(
            error.contains("the Gemfile's gems could not be fetched"),
            "{error}\n{log}"
        );
    }
}

#[tokio::test]
async fn mdbook_builds_a_book() {
    if !installed("mdbook", "mdbook_builds_a_book") {
        return;
    }
    let repo = Repo::new(&[
        (
            "book.toml",
            b"[book]\ntitle = \"mdBook on shoal\"\n".as_slice(),
        ),
        (
            "src/SUMMARY.md",
            b"# Summary\n\n- [Chapter 1](./chapter_1.md)\n",
        ),
        ("src/chapter_1.md", b"# Chapter 1\n\nThe first chapter.\n"),
    ])
    .unwrap();
    let (peer, _, _) = deploy_ok(&repo, "book").await;
    let page = peer
        .site("book", "/chapter_1.html")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("The first chapter."), "{page}");
}

#[tokio::test]
async fn zola_builds_with_the_live_url() {
    if !installed("zola", "zola_builds_with_the_live_url") {
        return;
    }
    let repo = Repo::new(&[
        ("config.toml", b"base_url = \"https://example.com\"\ntitle = \"Zola on shoal\"\n".as_slice()),
        ("content/_index.md", b"+++\n+++\nHello from Zola.\n"),
        ("templates/index.html", b"<h1>{{ config.title }}</h1><p id=base>{{ config.base_url }}</p>{{ section.content | safe }}\n"),
    ])
    .unwrap();
    let (peer, d, _) = deploy_ok(&repo, "zola-site").await;
    let home = peer
        .site("zola-site", "/")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let live = d["live_url"].as_str().unwrap().trim_end_matches('/');
    assert!(home.contains(live), "{home}");
}
