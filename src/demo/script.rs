//! The demo's walk-through: service A's side of the contract, step by step, printed with
//! status, latency and the headers that matter — get a token, call B by URI version and by
//! header, be refused without a token, with a tampered one and without the scope, ask for
//! an unknown and a deprecated version, survive a killed B instance through retries, see
//! the bulkhead and breaker contain a slow C while B stays fast, hit a rate limit, and
//! see the admin API refuse a caller without the operators' token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::services::Services;

/// Addresses and credentials the demo prints and uses.
pub struct Guide {
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub auth: SocketAddr,
    pub secret: String,
    /// The file holding the admin API's bearer token.
    pub admin_token_file: PathBuf,
    pub config: PathBuf,
    pub dir: PathBuf,
}

impl Guide {
    /// The closing guide: what runs where, and commands to paste.
    pub fn print(&self) {
        let (gw, admin, auth, secret) = (self.gateway, self.admin, self.auth, &self.secret);
        println!(
            r#"
portico demo is running (Ctrl-C stops everything)

  gateway        http://{gw}
  admin API      http://{admin}   (/healthz /readyz /metrics open; /admin/* with the token)
  admin token    {token_file}
  token service  http://{auth}    (/oauth2/token /.well-known/jwks.json; its metrics are
                                  on the admin API's /metrics, same process)
  config         {config}
  access log     {dir}/access.log

Get a token as service-a, then call service B through the gateway:

  TOKEN=$(curl -s -u 'service-a:{secret}' -d grant_type=client_credentials \
      -d 'scope=orders:read inventory:read' http://{auth}/oauth2/token \
      | sed -E 's/.*"access_token":"([^"]+)".*/\1/')
  curl -i -H "Authorization: Bearer $TOKEN" http://{gw}/v2/orders/42        # version by URI
  curl -i -H "Authorization: Bearer $TOKEN" -H 'Accept-Version: 1' http://{gw}/orders/42   # deprecated v1
  curl -i -H "Authorization: Bearer $TOKEN" http://{gw}/inventory/sku-1    # service C
  curl -i http://{gw}/v2/orders/42                                         # 401, no token
  ADMIN="Authorization: Bearer $(cat {token_file})"
  curl -s -H "$ADMIN" http://{admin}/admin/clusters                        # health, breakers, bulkheads
  curl -s -H "$ADMIN" -X POST http://{admin}/admin/reload                  # reload the config
  curl -i http://{admin}/admin/config                                      # 401 without the token
  curl -s http://{admin}/metrics | grep portico_requests_total
"#,
            config = self.config.display(),
            dir = self.dir.display(),
            token_file = self.admin_token_file.display(),
        );
    }
}

/// One call's outcome, as printed.
struct Call {
    status: u16,
    elapsed: Duration,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Call {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn step(n: u32, title: &str) {
    println!("\n[{n}] {title}");
}

fn show(call: &Call, what: &str, headers: &[&str]) {
    let mark = if call.status < 400 { "ok " } else { "-- " };
    let mut line = format!("    {mark}{} {:>9}  {what}", call.status, ms(call.elapsed));
    for h in headers {
        if let Some(v) = call.header(h) {
            line.push_str(&format!("\n           {h}: {v}"));
        }
    }
    println!("{line}");
}

async fn send(req: reqwest::RequestBuilder) -> Result<Call, String> {
    let start = Instant::now();
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Ok(Call {
        status,
        elapsed: start.elapsed(),
        headers,
        body,
    })
}

/// Plays the walk-through; returns when it is done.
pub fn play(guide: &Guide, services: &Services) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(walk(guide, services))
}

async fn get_token(
    http: &reqwest::Client,
    guide: &Guide,
    scope: &str,
) -> Result<(Call, String), String> {
    let call = send(
        http.post(format!("http://{}/oauth2/token", guide.auth))
            .basic_auth("service-a", Some(&guide.secret))
            .form(&[("grant_type", "client_credentials"), ("scope", scope)]),
    )
    .await?;
    let token = call.json()["access_token"]
        .as_str()
        .ok_or_else(|| format!("no token: {} {}", call.status, call.body))?
        .to_string();
    Ok((call, token))
}

async fn walk(guide: &Guide, services: &Services) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let gw = format!("http://{}", guide.gateway);
    println!("\nService A's walk-through (run `portico demo --no-script` to skip it)");

    step(
        1,
        "service A gets a token from the token service (client credentials)",
    );
    let (call, token) = get_token(&http, guide, "orders:read inventory:read").await?;
    let body = call.json();
    show(
        &call,
        &format!(
            "POST /oauth2/token → token_type {}, expires_in {}, scope \"{}\"",
            body["token_type"],
            body["expires_in"],
            body["scope"].as_str().unwrap_or("")
        ),
        &["cache-control"],
    );
    let bearer = format!("Bearer {token}");

    step(
        2,
        "call B v1 by URI: deprecated, so the answer says until when and what replaces it",
    );
    let call = send(
        http.get(format!("{gw}/v1/orders/42"))
            .header("authorization", &bearer),
    )
    .await?;
    let b = call.json();
    show(
        &call,
        &format!(
            "GET /v1/orders/42 → served by {}",
            b["instance"].as_str().unwrap_or("?")
        ),
        &["deprecation", "sunset", "link", "x-request-id"],
    );

    step(3, "call B v2 by header (Accept-Version: 2)");
    let call = send(
        http.get(format!("{gw}/orders/42"))
            .header("authorization", &bearer)
            .header("accept-version", "2"),
    )
    .await?;
    let b = call.json();
    show(
        &call,
        &format!(
            "GET /orders/42 → served by {}; upstream saw subject {} and traceparent {}",
            b["instance"].as_str().unwrap_or("?"),
            b["seen_headers"]["x-portico-subject"],
            b["seen_headers"]["traceparent"]
        ),
        &[],
    );

    step(
        4,
        "no token, a tampered token, a token without the scope: refused at the gateway",
    );
    let call = send(http.get(format!("{gw}/v2/orders/42"))).await?;
    show(&call, "no token", &["www-authenticate"]);
    let mut tampered = token.clone().into_bytes();
    if let Some(dot) = tampered.iter().position(|&b| b == b'.') {
        let i = dot + 5;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    }
    let tampered = String::from_utf8(tampered).unwrap_or_default();
    let call = send(
        http.get(format!("{gw}/v2/orders/42"))
            .header("authorization", format!("Bearer {tampered}")),
    )
    .await?;
    show(&call, "tampered payload", &["www-authenticate"]);
    let (_, narrow) = get_token(&http, guide, "inventory:read").await?;
    let call = send(
        http.get(format!("{gw}/v2/orders/42"))
            .header("authorization", format!("Bearer {narrow}")),
    )
    .await?;
    show(
        &call,
        "token with inventory:read only",
        &["www-authenticate"],
    );

    step(5, "an unknown version");
    let call = send(
        http.get(format!("{gw}/v9/orders/42"))
            .header("authorization", &bearer),
    )
    .await?;
    show(
        &call,
        &format!(
            "GET /v9/orders/42 → {}",
            call.json()["detail"].as_str().unwrap_or("")
        ),
        &["content-type"],
    );

    step(
        6,
        "kill one B v2 instance: retries on the other keep every call green",
    );
    services.orders_v2[0].stop();
    let (mut ok, mut retried) = (0, 0);
    for i in 0..10 {
        let call = send(
            http.get(format!("{gw}/v2/orders/{i}"))
                .header("authorization", &bearer),
        )
        .await?;
        if call.status == 200 {
            ok += 1;
        }
        if call.header("x-portico-attempts").is_some_and(|a| a != "1") {
            retried += 1;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    println!(
        "    {ok}/10 calls answered 200; {retried} needed a second attempt (X-Portico-Attempts), \
         then the dead instance was ejected"
    );

    step(
        7,
        "make C slow (1.5 s): its bulkhead (3 slots) and breaker contain it, B stays fast",
    );
    services.inventory.set_delay(Duration::from_millis(1500));
    for wave in 1..=2 {
        let calls = (0..10).map(|_| {
            send(
                http.get(format!("{gw}/inventory/sku-1"))
                    .header("authorization", &bearer),
            )
        });
        let b_call = send(
            http.get(format!("{gw}/v2/orders/7"))
                .header("authorization", &bearer),
        );
        let (c_calls, b_call) = tokio::join!(futures::future::join_all(calls), b_call);
        let mut tally = std::collections::BTreeMap::new();
        for c in c_calls.into_iter().flatten() {
            let kind = c.json()["type"]
                .as_str()
                .map(|t| t.trim_start_matches("urn:portico:problem:").to_string())
                .unwrap_or_else(|| "ok".into());
            *tally.entry(format!("{} {kind}", c.status)).or_insert(0) += 1;
        }
        let b = b_call?;
        println!(
            "    wave {wave}: 10 concurrent calls to C → {tally:?}; meanwhile B answered {} in {}",
            b.status,
            ms(b.elapsed)
        );
    }
    let call = send(
        http.get(format!("{gw}/inventory/sku-1"))
            .header("authorization", &bearer),
    )
    .await?;
    show(
        &call,
        "C's breaker is open: failing fast without touching C",
        &["retry-after"],
    );
    services.inventory.set_delay(Duration::ZERO);
    println!("    C recovers; after the breaker's open time two probes close it again…");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    for _ in 0..2 {
        let call = send(
            http.get(format!("{gw}/inventory/sku-1"))
                .header("authorization", &bearer),
        )
        .await?;
        show(&call, "probe", &[]);
    }

    step(8, "hit B's rate limit (10/s per client, burst 15)");
    let mut statuses = std::collections::BTreeMap::new();
    let mut last_limited = None;
    for _ in 0..25 {
        let call = send(
            http.get(format!("{gw}/v2/orders/1"))
                .header("authorization", &bearer),
        )
        .await?;
        *statuses.entry(call.status).or_insert(0) += 1;
        if call.status == 429 {
            last_limited = Some(call);
        }
    }
    println!("    25 calls at once → {statuses:?}");
    if let Some(call) = last_limited {
        show(
            &call,
            "limited",
            &[
                "retry-after",
                "ratelimit-limit",
                "ratelimit-remaining",
                "ratelimit-reset",
            ],
        );
    }

    step(
        9,
        "the admin API answers operators only: without the bearer token 401, with it the clusters",
    );
    let clusters = format!("http://{}/admin/clusters", guide.admin);
    let call = send(http.get(&clusters)).await?;
    show(
        &call,
        "GET /admin/clusters, no token",
        &["www-authenticate"],
    );
    let token = std::fs::read_to_string(&guide.admin_token_file)
        .map_err(|e| format!("cannot read {}: {e}", guide.admin_token_file.display()))?;
    let call = send(http.get(&clusters).bearer_auth(token.trim())).await?;
    let count = call.json()["clusters"].as_array().map_or(0, Vec::len);
    show(
        &call,
        &format!("GET /admin/clusters with the token → {count} clusters"),
        &[],
    );
    Ok(())
}
