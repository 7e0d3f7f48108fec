//! Request loops and what they count: [`send_and_count`] (N requests, counted by status and
//! by the upstream that served them), [`spread`], response-header and metric readers, and
//! [`percentile`] for latency samples.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Gateway, REQUEST_TIMEOUT};

/// A response header as a string (`<non-ascii>` when it is not ASCII).
pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_string())
}

/// The upstream that served a response (its `X-Upstream` header; `?` when absent).
pub fn upstream_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}

/// What a run of requests got: how many of each status, and how many each upstream served.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    pub by_status: BTreeMap<u16, usize>,
    /// By `X-Upstream`; only responses that have one.
    pub by_upstream: BTreeMap<String, usize>,
}

impl Counts {
    /// Responses with this status.
    pub fn status(&self, status: u16) -> usize {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Responses served by this upstream.
    pub fn upstream(&self, name: &str) -> usize {
        self.by_upstream.get(name).copied().unwrap_or(0)
    }

    /// Counts one response.
    pub fn add(&mut self, resp: &reqwest::Response) {
        *self.by_status.entry(resp.status().as_u16()).or_insert(0) += 1;
        if resp.headers().contains_key("x-upstream") {
            *self.by_upstream.entry(upstream_of(resp)).or_insert(0) += 1;
        }
    }
}

/// Sends `n` sequential `GET path` requests through the gateway and counts the answers.
pub async fn send_and_count(gw: &Gateway, path: &str, n: usize) -> Counts {
    let mut counts = Counts::default();
    for _ in 0..n {
        counts.add(&gw.get(path).await);
    }
    counts
}

/// Counts which upstream (by the `X-Upstream` response header) served each of `n`
/// sequential `GET path` requests; every response must be 200.
pub async fn spread(gw: &Gateway, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let resp = gw.get(path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        *seen.entry(upstream_of(&resp)).or_insert(0) += 1;
    }
    seen
}

/// A client of its own (no proxy, no shared connection pool with the gateway's helpers,
/// [`REQUEST_TIMEOUT`]).
///
/// Building one blocks its thread for tens of milliseconds (debug build), so load tests
/// build all their clients before the clock starts rather than inside spawned tasks, which
/// would stall the test runtime and show up as bogus latency.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// The value of the first sample of `name` whose labels include every `labels` pair, in
/// Prometheus text format.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The sum of every sample of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `p`-th percentile (0.0–1.0, nearest rank) of `samples`; zero when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Every value of a response header, in order.
pub fn header_all(resp: &reqwest::Response, name: &str) -> Vec<String> {
    resp.headers()
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// `GET url` with `client`, parsed as JSON; panics when the request or the parse fails.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"))
}
