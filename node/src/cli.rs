//! The client commands: talk to any peer's API like a user would.

use crate::config::{
    ClientArgs, DeployArgs, IdArgs, LogsArgs, PeersArgs, SetCurrentArgs, StatusArgs,
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

/// A write with the admin token; returns the answer's JSON body.
async fn post(c: &ClientArgs, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let token = c
        .token
        .clone()
        .context("a token is needed: pass --token or set SHOAL_TOKEN")?;
    let mut req = client()?.post(url(c, path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req
        .send()
        .await
        .with_context(|| format!("cannot reach {}", c.peer))?;
    check(res).await
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
        "{}: every peer now serves deployment {}{}",
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
    let body = json!({"repo_url": args.repo_url, "name": args.name, "ref": args.git_ref, "commit": args.commit});
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
