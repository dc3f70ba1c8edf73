//! Mesh benchmarks on loopback with real peers (see scripts/bench/mesh.sh):
//!
//!   mesh-bench propagation N WRITES   state change → visible on every peer (p50/p99)
//!   mesh-bench failover RUNS          kill -9 of a builder → another peer claims (median)
//!   mesh-bench idle N SECONDS         per-peer RSS, CPU and loopback bytes/s of an idle mesh

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::StreamExt;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{wait_until, Mesh, Repo};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

type Seen = Arc<Mutex<HashMap<(usize, String), Instant>>>;

/// Records when each peer first reports each deployment.
fn listen(mesh: &Mesh, seen: &Seen) {
    for (i, peer) in mesh.peers.iter().enumerate() {
        let url = format!("{}/api/events", peer.http);
        let seen = seen.clone();
        tokio::spawn(async move {
            let res = reqwest::get(url).await.expect("events stream");
            let mut body = res.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                let now = Instant::now();
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Some(data) = line.strip_prefix(b"data:") {
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
                            let id = v["deployment"].as_str().unwrap_or_default().to_owned();
                            seen.lock().unwrap().entry((i, id)).or_insert(now);
                        }
                    }
                }
            }
        });
    }
}

async fn propagation(n: usize, writes: usize) {
    let mesh = Mesh::start(n).await.expect("mesh");
    let seen: Seen = Arc::default();
    listen(&mesh, &seen);
    tokio::time::sleep(Duration::from_millis(500)).await; // let the streams attach
    let mut samples = Vec::new();
    for w in 0..writes {
        let origin = w % n;
        let t0 = Instant::now();
        let (status, body) = mesh.peers[origin]
            .post_deployment(
                &json!({"repo_url": "https://127.0.0.1:1/bench.git", "name": format!("bench-{w}")}),
            )
            .await
            .unwrap();
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let all = wait_until(
            "every peer to see the write",
            Duration::from_secs(30),
            || {
                let seen = seen.clone();
                let id = id.clone();
                async move {
                    let seen = seen.lock().unwrap();
                    let times: Vec<_> = (0..n)
                        .filter(|i| *i != origin)
                        .filter_map(|i| seen.get(&(i, id.clone())).copied())
                        .collect();
                    (times.len() == n - 1).then_some(times)
                }
            },
        )
        .await
        .expect("propagation");
        samples.extend(
            all.iter()
                .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0),
        );
        // Let the build the write triggers (a clone that fails at once) finish,
        // so each write is timed on a quiet mesh.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "propagation N={n}: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    );
}

async fn failover(runs: usize) {
    // Enough build slots that the slow builds of earlier runs never saturate the mesh.
    let mut mesh = Mesh::start_with(5, &["--max-builds", "16"])
        .await
        .expect("mesh");
    let repo = Repo::new(&[
        (
            "shoal.toml",
            b"[build]\ncommand = \"echo started; sleep 60\"\noutput = \".\"\n",
        ),
        ("index.html", b"x"),
    ])
    .unwrap();
    let mut times = Vec::new();
    for run in 0..runs {
        let id = mesh.peers[run % 5]
            .deploy(repo.path(), &format!("failover-{run}"))
            .await
            .unwrap();
        let watcher = &mesh.peers[(run + 1) % 5];
        let first = wait_until("the build to start", Duration::from_secs(60), || async {
            let log = watcher.log_text(&id).await.ok()?;
            let d = watcher.deployment(&id).await.ok()?;
            if log.contains("started") {
                d["builder"].as_str().map(str::to_owned)
            } else {
                None
            }
        })
        .await
        .unwrap();
        let victim = mesh.peers.iter().position(|p| p.id == first).unwrap();
        let observer = (victim + 1) % 5;
        mesh.peers[victim].stop(false).unwrap();
        let killed = Instant::now();
        let obs = &mesh.peers[observer];
        wait_until("a new builder", Duration::from_secs(30), || async {
            let d = obs.deployment(&id).await.ok()?;
            (d["builder"].as_str()? != first).then_some(())
        })
        .await
        .unwrap();
        times.push(killed.elapsed().as_secs_f64());
        eprintln!(
            "run {run}: killed peer {victim}, replaced after {:.2} s",
            killed.elapsed().as_secs_f64()
        );
        mesh.peers[victim].restart(false).await.unwrap();
        mesh.wait_all_alive(Duration::from_secs(30)).await.unwrap();
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "failover after kill -9: {} runs, median {:.2} s, min {:.2} s, max {:.2} s",
        times.len(),
        percentile(&times, 0.5),
        times[0],
        times[times.len() - 1]
    );
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after ")" (field 3 on) they are at 11 and 12.
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

fn loopback_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .find(|l| l.trim_start().starts_with("lo:"))
        .and_then(|l| l.split_once(':')?.1.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn idle(n: usize, secs: u64) {
    let mesh = Mesh::start(n).await.expect("mesh");
    tokio::time::sleep(Duration::from_secs(5)).await; // settle
    let pids: Vec<u32> = mesh.peers.iter().filter_map(|p| p.pid()).collect();
    let cpu0: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let lo0 = loopback_bytes();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
    let lo1 = loopback_bytes();
    let rss: Vec<u64> = pids
        .iter()
        .map(|p| proc_field(*p, "status", "VmRSS:"))
        .collect();
    let ticks = 100.0; // USER_HZ
    println!(
        "idle N={n} over {elapsed:.0} s: RSS per peer avg {:.1} MB (max {:.1} MB), CPU per peer {:.2} %, loopback traffic per peer {:.0} B/s",
        rss.iter().sum::<u64>() as f64 / rss.len() as f64 / 1024.0,
        rss.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        (cpu1 - cpu0) as f64 / ticks / elapsed / n as f64 * 100.0,
        (lo1 - lo0) as f64 / elapsed / n as f64,
    );
}

#[tokio::main]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("propagation") => propagation(arg(2, 10) as usize, arg(3, 30) as usize).await,
        Some("failover") => failover(arg(2, 10) as usize).await,
        Some("idle") => idle(arg(2, 10) as usize, arg(3, 30)).await,
        _ => eprintln!("usage: mesh-bench propagation N WRITES | failover RUNS | idle N SECONDS"),
    }
}
