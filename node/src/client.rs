//! The client commands: talk to any peer's API like a user would.

use crate::args::{
    ClientArgs, DeployArgs, EnvAction, EnvArgs, IdArgs, LogsArgs, PeersArgs, SetCurrentArgs,
    StatusArgs,
};
use anyhow::{bail, Context};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

fn url(c: &ClientArgs, path: &str) -> String {
    format!("{}{path}", c.peer.trim_end_matches('/'))
}

/// Turns an API error body into a readable message.
async fn check(res: reqwest::Response) -> anyhow::Result<Value> {
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let detail = body["detail"].as_str().unwrap_or("");
    let error = body["error"].as_str().unwrap_or("error");
    bail!("{status}: {error}: {detail}")
}

/// The session `shoal login` kept, if any.
fn kept_session(c: &ClientArgs) -> Option<String> {
    let text = std::fs::read_to_string(c.session_path()?).ok()?;
    let kept: Value = serde_json::from_str(&text).ok()?;
    kept["session"].as_str().map(str::to_owned)
}

/// The bearer token for writes: `--token`, else the kept session.
fn bearer(c: &ClientArgs) -> anyhow::Result<String> {
    c.token
        .clone()
        .or_else(|| kept_session(c))
        .context("a token is needed: pass --token, set SHOAL_TOKEN, or sign in with `shoal login`")
}

/// A write with the admin token or the kept session; returns the answer's JSON body.
async fn post(c: &ClientArgs, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    send(c, reqwest::Method::POST, path, body).await
}

/// A request with the admin token or the kept session.
async fn send(
    c: &ClientArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = client()?
        .request(method, url(c, path))
        .bearer_auth(bearer(c)?);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req
        .send()
        .await
        .with_context(|| format!("cannot reach {}", c.peer))?;
    if res.status() == reqwest::StatusCode::NO_CONTENT {
        return Ok(Value::Null);
    }
    check(res).await
}

/// `KEY=VALUE`, `KEY VALUE`, or `KEY` with the value on standard input.
fn key_value(key: String, value: Option<String>) -> anyhow::Result<(String, String)> {
    if let Some(value) = value {
        return Ok((key, value));
    }
    if let Some((k, v)) = key.split_once('=') {
        return Ok((k.to_owned(), v.to_owned()));
    }
    let mut value = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)
        .context("reading the value from standard input")?;
    let value = value.strip_suffix('\n').unwrap_or(&value);
    Ok((key, value.strip_suffix('\r').unwrap_or(value).to_owned()))
}

pub async fn env(args: EnvArgs) -> anyhow::Result<()> {
    use reqwest::Method;
    match args.action {
        EnvAction::Set {
            project,
            secret,
            key,
            value,
            client,
        } => {
            let (key, value) = key_value(key, value)?;
            let path = format!("/api/projects/{project}/env/{key}");
            let body = json!({"value": value, "secret": secret});
            send(&client, Method::PUT, &path, Some(body)).await?;
            println!(
                "{project}: {key} set{}; the next build uses it",
                if secret { " (secret)" } else { "" }
            );
        }
        EnvAction::List { project, client } => {
            let path = format!("/api/projects/{project}/env");
            let list = send(&client, Method::GET, &path, None).await?;
            for v in list.as_array().into_iter().flatten() {
                let key = v["key"].as_str().unwrap_or("");
                match v["value"].as_str() {
                    Some(value) if v["secret"] != true => println!("{key}={value}"),
                    _ => println!("{key} (secret)"),
                }
            }
        }
        EnvAction::Rm {
            project,
            key,
            client,
        } => {
            let path = format!("/api/projects/{project}/env/{key}");
            send(&client, Method::DELETE, &path, None).await?;
            println!("{project}: {key} removed");
        }
    }
    Ok(())
}

pub async fn cancel(args: IdArgs) -> anyhow::Result<()> {
    let path = format!("/api/deployments/{}/cancel", args.id);
    let dep = post(&args.client, &path, None).await?;
    println!(
        "deployment {} {}",
        args.id,
        dep["status"].as_str().unwrap_or("")
    );
    Ok(())
}

pub async fn set_current(args: SetCurrentArgs, verb: &str) -> anyhow::Result<()> {
    let path = format!("/api/projects/{}/{verb}", args.name);
    let body = json!({"deployment_id": args.deployment});
    let project = post(&args.client, &path, Some(body)).await?;
    println!(
        "{}: deployment {} is now current{}; every peer switches to it within a gossip round",
        args.name,
        project["current_deployment"].as_str().unwrap_or(""),
        if project["pinned"] == true {
            " (pinned)"
        } else {
            ""
        }
    );
    Ok(())
}

pub async fn peers(args: PeersArgs) -> anyhow::Result<()> {
    let list = check(
        client()?
            .get(url(&args.client, "/api/peers"))
            .send()
            .await?,
    )
    .await?;
    println!(
        "{:<54} {:<16} {:<10} {:>5}  STATE",
        "PEER", "NAME", "REGION", "LOAD"
    );
    for p in list.as_array().into_iter().flatten() {
        let state = if p["alive"] == true { "alive" } else { "dead" };
        println!(
            "{:<54} {:<16} {:<10} {:>5.2}  {state}{}",
            p["id"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or(""),
            p["region"].as_str().unwrap_or(""),
            p["load"].as_f64().unwrap_or(0.0),
            if p["self"] == true {
                " (this peer)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let body = json!({"repo_url": args.repo_url, "name": args.name, "ref": args.git_ref, "commit": args.commit, "root_dir": args.root});
    let dep = post(&args.client, "/api/deployments", Some(body)).await?;
    let id = dep["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "deployment {id} queued for {}",
        dep["live_url"].as_str().unwrap_or("")
    );
    if !args.wait {
        return Ok(());
    }
    follow(&args.client, &id).await?;
    let dep = check(
        client()?
            .get(url(&args.client, &format!("/api/deployments/{id}")))
            .send()
            .await?,
    )
    .await?;
    let status = dep["status"].as_str().unwrap_or("");
    match status {
        "success" => {
            println!("live at {}", dep["live_url"].as_str().unwrap_or(""));
            Ok(())
        }
        _ => bail!(
            "deployment {id} ended {status}: {}",
            dep["error"].as_str().unwrap_or("")
        ),
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let c = client()?;
    match args.id {
        Some(id) => {
            let dep = check(
                c.get(url(&args.client, &format!("/api/deployments/{id}")))
                    .send()
                    .await?,
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&dep)?);
        }
        None => {
            let list = check(c.get(url(&args.client, "/api/deployments")).send().await?).await?;
            println!("{:<28} {:<20} {:<19} LIVE URL", "ID", "NAME", "STATUS");
            for d in list.as_array().into_iter().flatten() {
                println!(
                    "{:<28} {:<20} {:<19} {}",
                    d["id"].as_str().unwrap_or(""),
                    d["name"].as_str().unwrap_or(""),
                    d["status"].as_str().unwrap_or(""),
                    d["live_url"].as_str().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

fn print_line(line: &Value) {
    println!(
        "{} [{}] {}",
        line["created_at"].as_str().unwrap_or(""),
        line["step"].as_str().unwrap_or(""),
        line["message"].as_str().unwrap_or("")
    );
}

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    if args.follow {
        return follow(&args.client, &args.id).await;
    }
    let lines = check(
        client()?
            .get(url(
                &args.client,
                &format!("/api/deployments/{}/logs", args.id),
            ))
            .send()
            .await?,
    )
    .await?;
    lines.as_array().into_iter().flatten().for_each(print_line);
    Ok(())
}

/// Prints the live log (server-sent events) until the deployment ends.
async fn follow(c: &ClientArgs, id: &str) -> anyhow::Result<()> {
    let res = client()?
        .get(url(c, &format!("/api/deployments/{id}/logs")))
        .header("accept", "text/event-stream")
        .send()
        .await?;
    if !res.status().is_success() {
        check(res).await?;
        return Ok(());
    }
    let mut body = res.bytes_stream();
    let mut buf = Vec::new();
    let mut event = String::new();
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                match event.as_str() {
                    "log" => print_line(&serde_json::from_str(data.trim()).unwrap_or(Value::Null)),
                    "end" => return Ok(()),
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

/// Signs in with GitHub's device flow through the peer, then keeps the
/// session (mode 0600) for the other commands.
pub async fn login(args: PeersArgs) -> anyhow::Result<()> {
    let c = &args.client;
    let path = c
        .session_path()
        .context("no place for the session: set --session-file or HOME")?;
    let http = client()?;
    let start = check(
        http.post(url(c, "/auth/device"))
            .send()
            .await
            .with_context(|| format!("cannot reach {}", c.peer))?,
    )
    .await?;
    println!(
        "Open {} and enter the code {}",
        start["verification_uri"].as_str().unwrap_or(""),
        start["user_code"].as_str().unwrap_or("")
    );
    let mut handle = start["handle"].as_str().unwrap_or("").to_owned();
    let mut interval = start["interval"].as_u64().unwrap_or(5).max(1);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(interval)).await;
        let answer = check(
            http.post(url(c, "/auth/device/poll"))
                .json(&json!({ "handle": handle }))
                .send()
                .await
                .with_context(|| format!("cannot reach {}", c.peer))?,
        )
        .await?;
        if answer["state"] == "done" {
            let session = answer["session"].as_str().unwrap_or("");
            write_private(
                &path,
                &json!({"peer": c.peer, "session": session}).to_string(),
            )?;
            println!(
                "Signed in as @{}; session kept in {}",
                answer["login"].as_str().unwrap_or(""),
                path.display()
            );
            return Ok(());
        }
        handle = answer["handle"].as_str().unwrap_or(&handle).to_owned();
        interval = answer["interval"].as_u64().unwrap_or(interval).max(1);
    }
}

/// Signs the kept session out on every peer and deletes it.
pub async fn logout(args: PeersArgs) -> anyhow::Result<()> {
    let c = &args.client;
    let path = c.session_path().context("no session file")?;
    let Some(session) = kept_session(c) else {
        println!("not signed in");
        return Ok(());
    };
    check(
        client()?
            .post(url(c, "/auth/logout"))
            .bearer_auth(session)
            .header("accept", "application/json")
            .send()
            .await
            .with_context(|| format!("cannot reach {}", c.peer))?,
    )
    .await?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    println!("signed out");
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
