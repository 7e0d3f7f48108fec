//! File-based endpoint discovery with real upstreams on loopback: a cluster's endpoints
//! file changed under traffic (no failed request, new endpoints probed before they take
//! traffic), a bad file rejected with its location while the last good set keeps serving,
//! an endpoint removed with a request in flight drains, and `portico check` locating a
//! bad file.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Writes the endpoints file the way a discovery tool should: whole, then renamed in.
fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write endpoints file");
    std::fs::rename(&tmp, path).expect("rename endpoints file");
}

fn json_of(upstreams: &[&Upstream]) -> String {
    let list: Vec<String> = upstreams
        .iter()
        .map(|u| format!("{{ \"address\": \"{}\", \"weight\": 1 }}", u.addr))
        .collect();
    format!("[\n  {}\n]\n", list.join(",\n  "))
}

/// A gateway whose cluster `c` reads `file`, with fast health checks.
async fn gateway_on(file: &Path) -> Gateway {
    Gateway::builder(
        Routes::new().route("all", "/", "c").cluster_body(
            "c",
            &format!(
                "endpoints_file = \"{}\"\nhealth_check = {{ path = \"/healthz\", interval = \"200ms\", timeout = \"150ms\" }}",
                file.display()
            ),
        ),
    )
    .threads(2)
    .no_access_log()
    .start()
    .await
}

/// The addresses `/admin/clusters` lists for cluster `c`.
async fn listed(gw: &Gateway) -> Vec<String> {
    let c = gw.cluster_status("c").await;
    c["endpoints"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| e["address"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_until_listed(gw: &Gateway, want: &[&Upstream]) {
    let mut want: Vec<String> = want.iter().map(|u| u.addr.to_string()).collect();
    want.sort();
    for _ in 0..100 {
        let mut now = listed(gw).await;
        now.sort();
        if now == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cluster c never listed {want:?}: {:?}", listed(gw).await);
}

fn file_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_file_changes_under_traffic_without_a_failed_request() {
    bounded_by(Duration::from_secs(60), async {
        let (a, b, c) = (
            Upstream::start("a").await,
            Upstream::start("b").await,
            Upstream::start("c").await,
        );
        // Listening, but its health check fails: it must never take traffic.
        let sick = Upstream::start("sick").await;
        sick.set_health(503);
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(&dir, "orders.json");
        write_file(&file, &json_of(&[&a]));
        let gw = gateway_on(&file).await;
        let traffic = Traffic::start(&gw, "/orders", 4);
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Grow: b joins.
        write_file(&file, &json_of(&[&a, &b]));
        wait_until_listed(&gw, &[&a, &b]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.hits() > 0, "b never took traffic after joining");

        // Replace everything: a and b leave, c and a failing endpoint join.
        write_file(&file, &json_of(&[&c, &sick]));
        wait_until_listed(&gw, &[&c, &sick]).await;
        let (a_then, b_then) = (a.hits(), b.hits());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (sent, failed) = traffic.stop().await;

        assert_eq!(
            failed, 0,
            "{failed} of {sent} requests failed across the changes"
        );
        assert!(sent > 50, "too little traffic to tell: {sent}");
        assert!(c.hits() > 0, "c never took traffic");
        assert_eq!(
            sick.hits(),
            0,
            "an endpoint whose probe failed took traffic"
        );
        assert!(sick.health_hits() > 0, "the new endpoint was never probed");
        // Removed endpoints get no new requests (one already in flight may still land).
        assert!(a.hits() <= a_then + 4 && b.hits() <= b_then + 4);

        let status = gw.cluster_status("c").await;
        assert_eq!(status["discovery"]["source"], "file");
        assert_eq!(status["discovery"]["updates"], 3, "{status}");
        assert_eq!(status["discovery"]["last_error"], serde_json::Value::Null);
        let sick_status = status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == sick.addr.to_string())
            .cloned()
            .unwrap();
        assert_eq!(sick_status["healthy"], false, "{status}");
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_discovery_updates_total",
                &[("cluster", "c")]
            ),
            Some(2.0)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoints_file_keeps_the_last_good_set() {
    bounded_by(Duration::from_secs(60), async {
        let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(&dir, "orders.toml");
        write_file(&file, &format!("[[endpoints]]\naddress = \"{}\"\n", a.addr));
        let gw = gateway_on(&file).await;
        let traffic = Traffic::start(&gw, "/orders", 2);

        // Line 3 misspells a field: the whole version is rejected.
        write_file(
            &file,
            &format!(
                "[[endpoints]]\naddress = \"{}\"\nwieght = 2\n[[endpoints]]\naddress = \"{}\"\n",
                a.addr, b.addr
            ),
        );
        let mut status = serde_json::Value::Null;
        for _ in 0..100 {
            status = gw.cluster_status("c").await;
            if status["discovery"]["errors"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let error = status["discovery"]["last_error"].as_str().unwrap_or("");
        assert!(
            error.starts_with(&format!("{}:3:1:", file.display())) && error.contains("wieght"),
            "{status}"
        );
        assert_eq!(listed(&gw).await, vec![a.addr.to_string()]);
        assert!(gw
            .stderr()
            .contains("endpoints file rejected, keeping the last good set"));
        let metrics = gw.metrics().await;
        assert_eq!(
            metric_value(
                &metrics,
                "portico_discovery_errors_total",
                &[("cluster", "c")]
            ),
            Some(1.0)
        );

        // A file that vanishes is an error too; the set stays.
        std::fs::remove_file(&file).unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(listed(&gw).await, vec![a.addr.to_string()]);

        // The next good version is applied and clears the error.
        write_file(&file, &format!("[[endpoints]]\naddress = \"{}\"\n", b.addr));
        wait_until_listed(&gw, &[&b]).await;
        let (sent, failed) = traffic.stop().await;
        assert_eq!(failed, 0, "{failed} of {sent} requests failed");
        assert_eq!(
            gw.cluster_status("c").await["discovery"]["last_error"],
            serde_json::Value::Null
        );
        assert!(a.hits() > 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_drains_its_requests_in_flight() {
    bounded_by(Duration::from_secs(60), async {
        let slow = Upstream::slow("slow", Duration::from_millis(2000)).await;
        let fast = Upstream::start("fast").await;
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(&dir, "orders.json");
        write_file(&file, &json_of(&[&slow]));
        let gw = gateway_on(&file).await;

        let (client, url) = (gw.client.clone(), gw.url("/slow"));
        let in_flight = tokio::spawn(async move { client.get(&url).send().await });
        for _ in 0..100 {
            if slow.hits() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(slow.hits(), 1);

        write_file(&file, &json_of(&[&fast]));
        wait_until_listed(&gw, &[&fast]).await;
        let status = gw.cluster_status("c").await;
        assert_eq!(
            status["draining"][0]["address"],
            slow.addr.to_string(),
            "{status}"
        );
        assert_eq!(status["draining"][0]["in_flight"], 1, "{status}");

        // New requests go to the endpoint that stays only.
        for _ in 0..10 {
            let resp = gw.get("/new").await;
            assert_eq!(resp.status(), 200);
            assert_eq!(upstream_of(&resp), "fast");
        }
        assert_eq!(slow.hits(), 1);

        // The request in flight finishes where it started.
        let resp = in_flight.await.unwrap().expect("the draining request");
        assert_eq!(resp.status(), 200);
        assert_eq!(upstream_of(&resp), "slow");
        let status = gw.cluster_status("c").await;
        assert!(status.get("draining").is_none(), "{status}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portico_check_locates_an_error_in_the_endpoints_file() {
    bounded(async {
        let a = Upstream::start("a").await;
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(&dir, "orders.json");
        write_file(&file, &json_of(&[&a]));
        let gw = gateway_on(&file).await;

        let run = |args: &[&str]| {
            let out = gw.portico_command().args(args).output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let config = gw.config_path.to_str().unwrap();
        let (code, _, err) = run(&["check", "-c", config]);
        assert_eq!(code, Some(0), "{err}");
        // `portico routes` shows the endpoints the file lists.
        let (code, out, err) = run(&["routes", "-c", config, "GET", "/orders"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains(&a.addr.to_string()), "{out}");

        write_file(
            &file,
            &format!(
                "[\n  {{ \"address\": \"{}\" }},\n  {{ \"address\": \"orders\" }}\n]\n",
                a.addr
            ),
        );
        let (code, out, err) = run(&["check", "-c", config]);
        assert_ne!(code, Some(0));
        let all = format!("{out}{err}");
        assert!(all.contains("endpoints_file"), "{all}");
        assert!(
            all.contains(&format!("{}:3:16: `orders` has no port", file.display())),
            "{all}"
        );
    })
    .await
}
