//! Project environment variables and secrets: set on one peer before the
//! first build, replicated, given to the install and build steps, and a
//! secret's value never shown: not in an answer, a page, a log or a file
//! of any peer's data directory.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tests::{cli, wait_until, Mesh, Peer, Repo, BUILD, TOKEN};

const SECRET: &str = "sk-live-7Hq2ZpW9xVb4NcR1";

async fn put_env(peer: &Peer, project: &str, key: &str, body: Value) -> (u16, Value) {
    let res = peer
        .client()
        .put(format!("{}/api/projects/{project}/env/{key}", peer.http))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn delete_env(peer: &Peer, project: &str, key: &str) -> u16 {
    let res = peer
        .client()
        .delete(format!("{}/api/projects/{project}/env/{key}", peer.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    res.status().as_u16()
}

async fn get_env(peer: &Peer, project: &str) -> (u16, Value) {
    let res = peer
        .client()
        .get(format!("{}/api/projects/{project}/env", peer.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8], out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files_containing(&p, needle, out),
            Ok(t) if t.is_file() => {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        out.push(p.display().to_string());
                    }
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_secret_reaches_the_build_and_nothing_else() {
    let mesh = Mesh::start(2).await.unwrap();
    let (a, b) = (&mesh.peers[0], &mesh.peers[1]);
    // Set before the project's first deployment: the project is created.
    let (status, var) = put_env(
        a,
        "vault",
        "API_KEY",
        json!({"value": SECRET, "secret": true}),
    )
    .await;
    assert_eq!(status, 200, "{var}");
    assert_eq!(var["secret"], true);
    assert!(var.get("value").is_none(), "{var}");
    let (status, _) = put_env(a, "vault", "GREETING", json!({"value": "hello there"})).await;
    assert_eq!(status, 200);
    // Bad names and values are refused with a reason.
    for (key, body) in [
        ("PATH", json!({"value": "/evil"})),
        ("SHOAL_TOKEN", json!({"value": "x"})),
        ("1BAD", json!({"value": "x"})),
        ("OK", json!({"value": "a\u{0}b"})),
        ("OK", json!({"value": 3})),
    ] {
        let (status, body) = put_env(a, "vault", key, body).await;
        assert!(status == 400 || status == 422, "{key}: {status} {body}");
    }
    // Replicated: the other peer lists both, the secret without its value.
    let listed = wait_until(
        "the variables to reach peer b",
        Duration::from_secs(10),
        || async {
            let (status, list) = get_env(b, "vault").await;
            (status == 200 && list.as_array().is_some_and(|l| l.len() == 2)).then_some(list)
        },
    )
    .await
    .unwrap();
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["API_KEY", "GREETING"]);
    assert_eq!(listed[1]["value"], "hello there");
    assert!(listed[0].get("value").is_none());
    // Reading needs the token, like writing.
    let res = b
        .client()
        .get(format!("{}/api/projects/vault/env", b.http))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);

    // The build gets both (install and build steps), prints the secret,
    // writes it into its checkout, and a digest of it into the site.
    let repo = Repo::new(&[(
        "shoal.toml",
        br#"[build]
install = "echo install sees $API_KEY"
command = "echo build sees $API_KEY and $GREETING; echo $API_KEY > leaked.txt; mkdir -p out; printf '%s' \"$GREETING\" > out/index.html; printf '%s' \"$API_KEY\" | sha256sum | cut -c1-64 > out/digest.txt"
output = "out"
"#,
    )])
    .unwrap();
    let id = a.deploy(repo.path(), "vault").await.unwrap();
    let d = a.wait_final(&id, BUILD).await.unwrap();
    let log = a.log_text(&id).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(log.contains("install sees ***"), "{log}");
    assert!(log.contains("build sees *** and hello there"), "{log}");
    assert!(
        log.contains("project environment: API_KEY, GREETING (1 secret)"),
        "{log}"
    );
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(SECRET.as_bytes()));
    for peer in &mesh.peers {
        let page = wait_until("the site on every peer", BUILD, || async {
            let r = peer.site("vault", "/digest.txt").await.ok()?;
            r.status().is_success().then_some(())?;
            r.text().await.ok()
        })
        .await
        .unwrap();
        assert_eq!(page.trim(), digest, "the build saw the secret's true value");
        assert_eq!(
            peer.site("vault", "/").await.unwrap().text().await.unwrap(),
            "hello there"
        );
    }

    // Nowhere else: no answer, page, log or file of any peer.
    for peer in &mesh.peers {
        for path in [
            "/api/deployments".to_owned(),
            format!("/api/deployments/{id}"),
            format!("/api/deployments/{id}/logs"),
            "/api/projects".to_owned(),
            "/api/projects/vault".to_owned(),
            "/".to_owned(),
            format!("/deployments/{id}"),
            "/projects/vault".to_owned(),
        ] {
            let body = peer.page(&path).await;
            assert!(!body.contains(SECRET), "{path} shows the secret");
        }
        let (_, env) = get_env(peer, "vault").await;
        assert!(!env.to_string().contains(SECRET));
        let mut found = Vec::new();
        files_containing(peer.data.path(), SECRET.as_bytes(), &mut found);
        assert!(found.is_empty(), "the secret is in {found:?}");
    }

    // Removal replicates; the next build no longer has the variable.
    assert_eq!(delete_env(b, "vault", "API_KEY").await, 204);
    assert_eq!(delete_env(b, "vault", "API_KEY").await, 404);
    wait_until(
        "the removal to reach peer a",
        Duration::from_secs(10),
        || async {
            let (_, list) = get_env(a, "vault").await;
            (list.as_array()?.len() == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let again = a.deploy(repo.path(), "vault").await.unwrap();
    let d = a.wait_final(&again, BUILD).await.unwrap();
    let log = a.log_text(&again).await.unwrap();
    assert_eq!(d["status"], "success", "{log}");
    assert!(
        log.contains("project environment: GREETING (0 secret)"),
        "{log}"
    );
    assert!(log.contains("build sees and hello there"), "{log}");
}

#[tokio::test]
async fn the_cli_sets_lists_and_removes_variables() {
    let peer = Peer::start(&[]).await.unwrap();
    let api = ["--peer", peer.http.as_str()];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&api);
        let all: Vec<String> = all.iter().map(|s| (*s).to_owned()).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            cli(&all).await
        }
    };
    run(&[
        "env",
        "set",
        "--project",
        "docs",
        "PUBLIC_URL=https://docs.example",
    ])
    .await
    .unwrap();
    run(&[
        "env",
        "set",
        "--project",
        "docs",
        "--secret",
        "TOKEN_X",
        SECRET,
    ])
    .await
    .unwrap();
    let listed = run(&["env", "list", "--project", "docs"]).await.unwrap();
    assert!(
        listed.contains("PUBLIC_URL=https://docs.example"),
        "{listed}"
    );
    assert!(listed.contains("TOKEN_X (secret)"), "{listed}");
    assert!(!listed.contains(SECRET), "{listed}");
    run(&["env", "rm", "--project", "docs", "TOKEN_X"])
        .await
        .unwrap();
    let listed = run(&["env", "list", "--project", "docs"]).await.unwrap();
    assert!(!listed.contains("TOKEN_X"), "{listed}");
    let err = run(&["env", "rm", "--project", "docs", "TOKEN_X"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no variable TOKEN_X"), "{err}");
}
