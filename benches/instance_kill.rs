//! Client-visible errors and latency when one of two upstream instances is killed under a
//! steady load, with and without retries.
//!
//! Each round starts two in-process upstreams (2 ms service time) and a `portico serve`
//! process (the optimised binary cargo built for this bench) with one route over both,
//! runs 2,000 GETs at ~1,000 requests/s from 16 concurrent tasks on loopback, and stops
//! one instance at the midpoint (listener closed, open connections dropped: in-flight
//! requests on it are cut, new connections refused). The two configurations — the
//! route's retry policy, and `retry = { attempts = 1 }` — are interleaved over a few
//! rounds and their samples pooled. Prints a Markdown table and appends it, dated, to
//! `benches/RESULTS.md`.
//!
//! Run with `cargo bench --bench instance_kill`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{percentile, ConfigText, Gateway, Upstream};

const REQUESTS: usize = 2_000;
const TASKS: usize = 16;
/// Per task: 1,000 requests/s in all.
const INTERVAL: Duration = Duration::from_millis(16);
const KILL_AT: Duration = Duration::from_secs(1);
const AFTER_KILL: Duration = Duration::from_secs(1);
const ROUNDS: usize = 3;
const SERVICE_TIME: Duration = Duration::from_millis(2);

struct Config {
    name: &'static str,
    retry: &'static str,
}

const CONFIGS: &[Config] = &[
    Config {
        name: "retries (attempts = 3, backoff 5–50 ms)",
        retry: r#"retry = { attempts = 3, backoff_base = "5ms", backoff_cap = "50ms" }"#,
    },
    Config {
        name: "no retries (attempts = 1)",
        retry: r#"retry = { attempts = 1 }"#,
    },
];

/// One request: when it started (since the load began), how long it took, whether the
/// client got a 200.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    latency: Duration,
    ok: bool,
}

#[derive(Default)]
struct Totals {
    samples: Vec<Sample>,
    after_kill: Vec<Sample>,
}

async fn round(config: &Config) -> (Vec<Sample>, Duration) {
    let a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    a.set_delay(SERVICE_TIME);
    b.set_delay(SERVICE_TIME);
    let gw = Gateway::config()
        .route_with("r", "/", "c", config.retry)
        .cluster("c", &[&a, &b])
        .threads(1)
        .no_access_log()
        .start()
        .await;

    // Clients are built before the clock starts: building one blocks its thread.
    let clients: Vec<reqwest::Client> = (0..TASKS)
        .map(|_| {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client")
        })
        .collect();
    // Warm every client's connection and both instances.
    for c in &clients {
        for _ in 0..2 {
            let resp = c.get(gw.url("/warm")).send().await.expect("warm-up");
            assert_eq!(resp.status(), 200, "warm-up");
        }
    }

    let samples = Arc::new(Mutex::new(Vec::with_capacity(REQUESTS)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, c) in clients.into_iter().enumerate() {
        let (url, samples) = (gw.url("/load"), samples.clone());
        tasks.push(tokio::spawn(async move {
            // Stagger the tasks over one interval so the load is even, not in bursts.
            tokio::time::sleep(INTERVAL * t as u32 / TASKS as u32).await;
            let mut tick = tokio::time::interval(INTERVAL);
            for _ in 0..REQUESTS / TASKS {
                tick.tick().await;
                let begun = Instant::now();
                let ok = match c.get(&url).send().await {
                    Ok(resp) => resp.status() == 200 && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                samples.lock().unwrap().push(Sample {
                    at: begun - start,
                    latency: begun.elapsed(),
                    ok,
                });
            }
        }));
    }
    tokio::time::sleep_until((start + KILL_AT).into()).await;
    let killed_at = start.elapsed();
    b.stop().await;
    for t in tasks {
        t.await.expect("load task");
    }
    let samples = samples.lock().unwrap().clone();
    drop(gw);
    (samples, killed_at)
}

struct Row {
    name: &'static str,
    requests: usize,
    errors: usize,
    p50: Duration,
    p99: Duration,
    after_requests: usize,
    after_errors: usize,
    after_p50: Duration,
    after_p99: Duration,
}

fn row(name: &'static str, totals: &Totals) -> Row {
    let lat = |s: &[Sample]| s.iter().map(|s| s.latency).collect::<Vec<_>>();
    let all = lat(&totals.samples);
    let after = lat(&totals.after_kill);
    Row {
        name,
        requests: totals.samples.len(),
        errors: totals.samples.iter().filter(|s| !s.ok).count(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        after_requests: totals.after_kill.len(),
        after_errors: totals.after_kill.iter().filter(|s| !s.ok).count(),
        after_p50: percentile(&after, 0.5),
        after_p99: percentile(&after, 0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rate(errors: usize, requests: usize) -> String {
    format!("{:.2} %", 100.0 * errors as f64 / requests.max(1) as f64)
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| configuration | requests | client-visible errors | error rate | p50 | p99 \
         | requests started in the 1 s after the kill | errors | error rate | p50 | p99 |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.requests,
            r.errors,
            rate(r.errors, r.requests),
            ms(r.p50),
            ms(r.p99),
            r.after_requests,
            r.after_errors,
            rate(r.after_errors, r.after_requests),
            ms(r.after_p50),
            ms(r.after_p99),
        ));
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this bench takes no options.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let began = Instant::now();
    let mut totals: Vec<Totals> = CONFIGS.iter().map(|_| Totals::default()).collect();
    runtime.block_on(async {
        for r in 0..ROUNDS {
            for (i, config) in CONFIGS.iter().enumerate() {
                let (samples, killed_at) = round(config).await;
                let window = killed_at..killed_at + AFTER_KILL;
                let errors = samples.iter().filter(|s| !s.ok).count();
                eprintln!(
                    "round {}: {}: {} requests, {} errors",
                    r + 1,
                    config.name,
                    samples.len(),
                    errors
                );
                totals[i]
                    .after_kill
                    .extend(samples.iter().filter(|s| window.contains(&s.at)));
                totals[i].samples.extend(samples);
            }
        }
    });
    let rows: Vec<Row> = CONFIGS
        .iter()
        .zip(&totals)
        .map(|(c, t)| row(c.name, t))
        .collect();
    let table = table(&rows);
    println!("\n{table}");

    let date = humantime::format_rfc3339_seconds(SystemTime::now());
    let section = format!(
        "\n## Instance kill under load — {date}\n\n\
         `cargo bench --bench instance_kill`: two upstream instances ({} ms service time) \
         behind one route, {REQUESTS} GETs per round at ~1,000 requests/s from {TASKS} \
         concurrent tasks on loopback, one instance stopped {} s in; {ROUNDS} rounds per \
         configuration, interleaved, samples pooled. The gateway runs one worker thread, \
         default outlier ejection (3 connect failures) and no health checks. Requests cut \
         while in flight on the killed instance started before the kill, so they count in \
         the whole run but not in the after-kill columns.\n\n{table}",
        SERVICE_TIME.as_millis(),
        KILL_AT.as_secs(),
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/RESULTS.md");
    let existed = std::path::Path::new(path).exists();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open benches/RESULTS.md");
    if !existed {
        let _ = file.write_all(b"# Benchmark results\n");
    }
    file.write_all(section.as_bytes())
        .expect("append benches/RESULTS.md");
    eprintln!(
        "appended to {path} ({:.1} s)",
        began.elapsed().as_secs_f64()
    );
}
