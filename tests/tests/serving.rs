//! Serving a live site: by Host and by prefix, byte for byte, with the
//! behaviour of a static host, and nothing outside the site.

#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::json;
use tests::{random_bytes, raw_get, Peer, Repo, BUILD, TOKEN};

#[tokio::test]
async fn plain_html_site_goes_live_and_is_served_byte_for_byte() {
    let blob = random_bytes(300_000, 7);
    let long_page = "<p>the same paragraph, again and again</p>\n".repeat(400);
    let repo = Repo::new(&[
        ("index.html", b"<h1>home</h1>"),
        ("about.html", b"<h1>about</h1>"),
        ("docs/index.html", b"<h1>docs</h1>"),
        ("404.html", b"<h1>custom 404</h1>"),
        ("assets/app.css", b"body { color: red }"),
        ("assets/blob.bin", &blob),
        ("long.html", long_page.as_bytes()),
        (".env", b"SECRET=1"),
    ])
    .unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let (status, body) = peer
        .post_deployment(&json!({"repo_url": repo.path()}))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["id"].as_str().unwrap().to_owned();
    let name = body["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with(".tmp") || !name.is_empty());
    let d = peer.wait_final(&id, BUILD).await.unwrap();
    assert_eq!(
        d["status"],
        "success",
        "{d}\n{}",
        peer.log_text(&id).await.unwrap()
    );
    assert_eq!(
        d["commit"].as_str().unwrap(),
        repo.git(&["rev-parse", "HEAD"]).unwrap()
    );
    assert_eq!(d["artifact"].as_str().unwrap().len(), 64);
    assert!(d["builder"].is_string());
    let port = peer.sites.rsplit(':').next().unwrap();
    assert_eq!(d["live_url"], format!("http://{name}.localhost:{port}/"));

    // Every step left a line.
    let log = peer.log_text(&id).await.unwrap();
    for step in [
        "[queue]",
        "[clone]",
        "[detect]",
        "[pack]",
        "[distribute]",
        "[live]",
    ] {
        assert!(log.contains(step), "no {step} line in\n{log}");
    }

    // The timeline: the steps in order, each by this peer.
    let d = peer.deployment(&id).await.unwrap();
    let steps: Vec<&str> = d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    let order = ["queue", "clone", "detect", "pack", "distribute", "live"];
    let mut at = 0;
    for want in order {
        at += steps[at..]
            .iter()
            .position(|s| *s == want)
            .unwrap_or_else(|| panic!("no {want} after {:?} in {steps:?}", &steps[..at]));
    }
    assert!(d["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["peer"] == peer.id.as_str()));
    let page = peer.page(&format!("/deployments/{id}")).await;
    assert!(page.contains("<ol id=timeline><li"), "{page}");

    // By Host header and by /d/<name>/, byte for byte.
    for (path, want) in [
        ("/", &b"<h1>home</h1>"[..]),
        ("/assets/blob.bin", &blob[..]),
        ("/about", b"<h1>about</h1>"),
    ] {
        let res = peer.site(&name, path).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(&res.bytes().await.unwrap()[..], want, "{path} by host");
        let res = peer
            .client()
            .get(format!("{}/d/{name}{path}", peer.sites))
            .send()
            .await
            .unwrap();
        assert_eq!(&res.bytes().await.unwrap()[..], want, "{path} by prefix");
    }
    let css = peer.site(&name, "/assets/app.css").await.unwrap();
    assert_eq!(css.headers()["content-type"], "text/css");

    // Directories get their slash, missing pages the site's own 404, dotfiles nothing.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_redirect
        .get(format!("{}/docs?x=1", peer.sites))
        .header("host", format!("{name}.localhost"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 301);
    assert_eq!(res.headers()["location"], "/docs/?x=1");
    assert_eq!(
        peer.site(&name, "/docs/")
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "<h1>docs</h1>"
    );
    let res = peer.site(&name, "/missing").await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(res.text().await.unwrap(), "<h1>custom 404</h1>");
    assert_eq!(peer.site(&name, "/.env").await.unwrap().status(), 404);
    assert_eq!(peer.site("nosuchsite", "/").await.unwrap().status(), 404);

    // Conditional and partial requests.
    let res = peer.site(&name, "/assets/blob.bin").await.unwrap();
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(res.headers().contains_key("last-modified"));
    let res = peer
        .client()
        .get(format!("{}/assets/blob.bin", peer.sites))
        .header("host", format!("{name}.localhost"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
    let res = peer
        .client()
        .get(format!("{}/assets/blob.bin", peer.sites))
        .header("host", format!("{name}.localhost"))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 206);
    assert_eq!(&res.bytes().await.unwrap()[..], &blob[100..200]);

    // Text is compressed for clients that ask.
    for encoding in ["gzip", "br"] {
        let page = peer
            .client()
            .get(format!("{}/long.html", peer.sites))
            .header("host", format!("{name}.localhost"))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["content-encoding"], encoding);
        assert!(page.bytes().await.unwrap().len() < long_page.len() / 5);
    }

    // Metrics count what was served.
    let metrics = peer.page("/metrics").await;
    assert!(
        metrics.contains("shoal_deployments{status=\"success\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_build_duration_seconds_count 1"),
        "{metrics}"
    );
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_site_bytes_served_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(served >= blob.len() as u64 * 2, "{served}");
}

#[tokio::test]
async fn path_traversal_on_the_sites_port_finds_nothing() {
    let repo = Repo::new(&[("index.html", b"home"), ("sub/page.html", b"page")]).unwrap();
    let peer = Peer::start(&[]).await.unwrap();
    let id = peer.deploy(repo.path(), "trav").await.unwrap();
    assert_eq!(
        peer.wait_final(&id, BUILD).await.unwrap()["status"],
        "success"
    );
    let sites = peer.sites.clone();
    for target in [
        "/../../../../etc/passwd",
        "/sub/../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/sub/%2e%2e%2f%2e%2e%2fetc/passwd",
        "/..%2f..%2fetc/passwd",
        "/%00",
        "/sub/..\\..\\etc\\passwd",
    ] {
        for host in ["trav.localhost", "127.0.0.1"] {
            let path = if host == "127.0.0.1" {
                format!("/d/trav{target}")
            } else {
                target.to_owned()
            };
            let res = tokio::task::spawn_blocking({
                let (s, p, h) = (sites.clone(), path.clone(), host.to_owned());
                move || raw_get(&s, &p, &h)
            })
            .await
            .unwrap();
            let status = res.lines().next().unwrap_or_default().to_owned();
            assert!(
                status.contains(" 404 ") || status.contains(" 400 "),
                "{path} via {host}: {status}"
            );
            assert!(!res.contains("root:"), "{path} leaked /etc/passwd");
        }
    }
    // And the data directory next to the site is out of reach too.
    let res = raw_get(&sites, "/d/trav/../../../admin-token", "127.0.0.1");
    assert!(!res.contains(TOKEN));
}
