//! Hot reload under load: the real gateway serves a steady stream of requests while its
//! config is reloaded ten times (routes changed, endpoints added and removed) through the
//! admin API and SIGHUP, and while an invalid config is refused; a new cluster is probed
//! before it takes traffic; the config file watch reloads on content changes only.
//!
//! Each load test prints what it sent, how many failed or were reset (both must be zero),
//! and the p99 latency of requests started during a reload against the steady state.

mod common;
mod ops_support;

use std::time::{Duration, Instant};

use common::{get_json, ConfigText, Routes, Upstream};
use ops_support::*;

/// `[clusters.svc]` with these endpoints (and weights), health-checked.
fn svc(endpoints: &[(&Upstream, u32)], lb: &str) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|(u, w)| format!("{{ address = \"{}\", weight = {w} }}", u.addr))
        .collect();
    format!(
        "[clusters.svc]\nendpoints = [{}]\nlb = \"{lb}\"\n\
         health_check = {{ path = \"/healthz\", interval = \"2s\", timeout = \"1s\" }}\n",
        list.join(", ")
    )
}

const API_ROUTE: &str = "[[routes]]\nid = \"api\"\npath = \"/api\"\ncluster = \"svc\"\n";

/// Route `/other` to its own health-checked cluster of `up`.
fn other(up: &Upstream) -> String {
    Routes::new()
        .route("other", "/other", "other")
        .cluster_with(
            "other",
            &[up],
            r#"health_check = { path = "/healthz", interval = "2s", timeout = "300ms" }"#,
        )
        .to_string()
}

/// The config version the admin API reports.
async fn version(site: &Site) -> String {
    let (_, body) = readyz(site).await.expect("readyz");
    body["config_version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[derive(Debug, Clone, Copy)]
enum How {
    Admin,
    Hangup,
}

/// Writes `body` and reloads it; returns when the new version is in effect.
async fn reload(site: &Site, gw: &Proc, body: &str, how: How) -> (Instant, Instant) {
    let before = version(site).await;
    site.write_config(body);
    let start = Instant::now();
    match how {
        How::Admin => {
            let (status, answer) = admin_reload(site).await;
            assert_eq!(status, 200, "reload refused: {answer}");
            assert_ne!(answer["version"].as_str().unwrap(), before);
        }
        How::Hangup => {
            gw.signal("HUP");
            let deadline = Instant::now() + Duration::from_secs(10);
            while version(site).await == before {
                assert!(Instant::now() < deadline, "SIGHUP reload did not happen");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let end = Instant::now();
    let (_, ready) = readyz(site).await.unwrap();
    assert!(ready["last_reload_error"].is_null(), "{ready}");
    (start, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_lose_no_request() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let u1 = Upstream::start("u1").await;
        let u2 = Upstream::start("u2").await;
        let u3 = Upstream::start("u3").await;
        let u4 = Upstream::start("u4").await;
        let uo = Upstream::start("other").await;
        let site = Site::new();
        let base = format!("{API_ROUTE}{}", svc(&[(&u1, 1), (&u2, 1)], "round_robin"));
        site.write_config(&base);
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;
        let reloads_before = reloads(&site, "success").await;

        let variants: Vec<(String, How)> = vec![
            // 1: add an endpoint
            (format!("{API_ROUTE}{}", svc(&[(&u1, 1), (&u2, 1), (&u3, 1)], "round_robin")), How::Admin),
            // 2: remove one
            (format!("{API_ROUTE}{}", svc(&[(&u2, 1), (&u3, 1)], "round_robin")), How::Hangup),
            // 3: a new route to a new cluster (probed before it takes traffic)
            (format!("{API_ROUTE}{}{}", svc(&[(&u2, 1), (&u3, 1)], "round_robin"), other(&uo)), How::Admin),
            // 4: change the api route (strip its prefix upstream)
            (format!("{}strip_prefix = true\n{}{}", API_ROUTE, svc(&[(&u2, 1), (&u3, 1)], "round_robin"), other(&uo)), How::Admin),
            // 5: add u4, remove u2
            (format!("{API_ROUTE}{}{}", svc(&[(&u3, 1), (&u4, 1)], "round_robin"), other(&uo)), How::Hangup),
            // 6: another balancer
            (format!("{API_ROUTE}{}{}", svc(&[(&u3, 1), (&u4, 1)], "least_request"), other(&uo)), How::Admin),
            // 7: remove the other route and its cluster
            (format!("{API_ROUTE}{}", svc(&[(&u3, 1), (&u4, 1)], "least_request")), How::Admin),
            // 8: weights
            (format!("{API_ROUTE}{}", svc(&[(&u3, 3), (&u4, 1)], "round_robin")), How::Hangup),
            // 9: u1 back
            (format!("{API_ROUTE}{}", svc(&[(&u1, 1), (&u3, 3), (&u4, 1)], "round_robin")), How::Admin),
            // 10: a method-restricted route in front of the api one
            (format!(
                "[[routes]]\nid = \"api-post\"\npath = \"/api\"\nmethods = [\"POST\"]\ncluster = \"svc\"\n{API_ROUTE}{}",
                svc(&[(&u1, 1), (&u3, 3), (&u4, 1)], "round_robin")
            ), How::Admin),
        ];

        let load = Load::start(site.url("/api/item"), 200, 256);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut windows = Vec::new();
        let mut u2_hits_after_removal = None;
        for (i, (body, how)) in variants.iter().enumerate() {
            let (start, end) = reload(&site, &gw, body, *how).await;
            println!("reload {:>2} via {how:?}: {}", i + 1, ms(end - start));
            windows.push((start, end + Duration::from_millis(100)));
            match i + 1 {
                3 => {
                    let resp = client().get(site.url("/other/x")).send().await.unwrap();
                    assert_eq!(resp.status(), 200, "the new route serves at once");
                    assert!(uo.health_hits() >= 1, "the new cluster was probed first");
                }
                5 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    u2_hits_after_removal = Some(u2.hits());
                }
                7 => {
                    let resp = client().get(site.url("/other/x")).send().await.unwrap();
                    assert_eq!(resp.status(), 404, "the removed route is gone");
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let report = load.finish().await;
        print_report("10 reloads", &report, &windows);

        assert!(report.sent() > 1000, "the load ran: {}", report.sent());
        assert_eq!(report.failed(), 0, "failures: {:?}", report.failures());
        assert_eq!(report.resets(), 0);
        assert_eq!(report.skipped, 0, "the client kept its rate");
        assert_eq!(reloads(&site, "success").await - reloads_before, 10.0);
        assert_eq!(
            u2.hits(),
            u2_hits_after_removal.unwrap(),
            "a removed endpoint gets no new requests"
        );
        for u in [&u1, &u3, &u4] {
            assert!(u.hits() > 0, "{} served", u.state.name);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_under_load_is_refused_and_shown() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let u1 = Upstream::start("u1").await;
        let site = Site::new();
        let good = format!("{API_ROUTE}{}", svc(&[(&u1, 1)], "round_robin"));
        site.write_config(&good);
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;
        let running = version(&site).await;

        let load = Load::start(site.url("/api/item"), 200, 256);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let t0 = Instant::now();
        // An unknown cluster and a missing certificate: both reported, with their place.
        let bad = format!(
            "[[routes]]\nid = \"api\"\npath = \"/api\"\ncluster = \"nope\"\n{}\
             [clusters.tls]\nendpoints = [{{ address = \"{}\" }}]\ntls = true\nca_file = \"/nonexistent/ca.pem\"\n",
            svc(&[(&u1, 1)], "round_robin"),
            u1.addr
        );
        site.write_config(&bad);
        let (status, answer) = admin_reload(&site).await;
        assert_eq!(status, 422, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("routes[0].cluster: unknown cluster `nope`"), "{error}");
        assert!(
            error.contains("clusters.tls.ca_file: file `/nonexistent/ca.pem` does not exist"),
            "{error}"
        );
        // SIGHUP with the same file: refused again, the running config stays.
        gw.signal("HUP");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (status, ready) = readyz(&site).await.unwrap();
        assert_eq!(status, 200, "still ready: {ready}");
        assert_eq!(ready["config_version"], running.as_str());
        let shown = ready["last_reload_error"].as_str().expect("error in /readyz");
        assert!(shown.contains("unknown cluster `nope`"), "{shown}");
        assert_eq!(reloads(&site, "failure").await, 2.0);
        let t1 = Instant::now();

        tokio::time::sleep(Duration::from_millis(1000)).await;
        site.write_config(&good);
        let (status, _) = admin_reload(&site).await;
        assert_eq!(status, 200);
        let (_, ready) = readyz(&site).await.unwrap();
        assert!(ready["last_reload_error"].is_null(), "{ready}");
        let report = load.finish().await;
        print_report("invalid config", &report, &[(t0, t1)]);
        assert_eq!(report.failed(), 0, "failures: {:?}", report.failures());
        assert_eq!(report.resets(), 0);
        assert!(
            site.log("portico.log")
                .contains("config reload rejected, keeping the running config"),
            "the refusal is logged"
        );
    })
    .await;
}

/// A cluster added by a reload is probed before the swap: an endpoint that is down gets
/// no request, even though it would need three failed checks to leave a running cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_is_probed_before_it_takes_traffic() {
    bounded(async {
        let live = Upstream::start("live").await;
        let dead = common::free_addr();
        let site = Site::new();
        site.write_config(&format!("{API_ROUTE}{}", svc(&[(&live, 1)], "round_robin")));
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;

        site.write_config(&format!(
            "{API_ROUTE}{}[[routes]]\nid = \"b\"\npath = \"/b\"\ncluster = \"b\"\n\
             retry = {{ attempts = 1, on = [] }}\n\
             [clusters.b]\nendpoints = [{{ address = \"{dead}\" }}, {{ address = \"{}\" }}]\n\
             health_check = {{ path = \"/healthz\", interval = \"30s\", timeout = \"500ms\", unhealthy_threshold = 3 }}\n",
            svc(&[(&live, 1)], "round_robin"),
            live.addr
        ));
        let probes_before = live.health_hits();
        let start = Instant::now();
        let (status, answer) = admin_reload(&site).await;
        assert_eq!(status, 200, "{answer}");
        println!("reload with a new health-checked cluster took {}", ms(start.elapsed()));
        assert!(live.health_hits() > probes_before, "probed before the reload answered");
        let hits_before = live.hits();
        for _ in 0..20 {
            let resp = client().get(site.url("/b/x")).send().await.unwrap();
            assert_eq!(resp.status(), 200, "no request goes to the dead endpoint");
        }
        assert_eq!(live.hits() - hits_before, 20);
        let clusters: serde_json::Value = get_json(&admin_client(&site), &site.admin_url("/admin/clusters")).await;
        let b = clusters["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "b")
            .unwrap();
        assert_eq!(b["endpoints"][0]["healthy"], false, "{b}");
        assert_eq!(b["endpoints"][1]["healthy"], true, "{b}");
    })
    .await;
}

/// `watch_config = true`: a content change reloads (once, after it settles); touching the
/// file or rewriting the same content does not; an invalid file is refused once, not in a
/// loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_watch_reloads_on_content_changes() {
    bounded(async {
        let u1 = Upstream::start("u1").await;
        let u2 = Upstream::start("u2").await;
        let mut site = Site::new();
        site.watch_config = true;
        let first = format!("{API_ROUTE}{}", svc(&[(&u1, 1)], "round_robin"));
        site.write_config(&first);
        let gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;
        let base = reloads(&site, "success").await;
        let v1 = version(&site).await;

        // The same content again, and a touch: no reload.
        site.write_config(&first);
        let _ = std::process::Command::new("touch")
            .arg(site.config_path())
            .status();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(reloads(&site, "success").await, base);
        assert_eq!(version(&site).await, v1);

        // Written in two steps 200 ms apart: one reload, of the final content.
        let second = format!("{API_ROUTE}{}", svc(&[(&u1, 1), (&u2, 1)], "round_robin"));
        std::fs::write(site.config_path(), &site.config(&second)[..200]).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(site.config_path(), site.config(&second)).unwrap();
        let took = common::eventually(Duration::from_secs(5), "the watch reloads", || async {
            version(&site).await != v1
        })
        .await;
        println!("file change applied after {}", ms(took));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(reloads(&site, "success").await, base + 1.0);
        assert_eq!(
            reloads(&site, "failure").await,
            0.0,
            "the half-written file was never loaded"
        );

        // An invalid file: refused once, shown, and not retried every second.
        site.write_config("[[routes]]\nid = \"x\"\npath = \"/\"\ncluster = \"missing\"\n");
        common::eventually(
            Duration::from_secs(5),
            "the invalid file is tried",
            || async { reloads(&site, "failure").await == 1.0 },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(reloads(&site, "failure").await, 1.0);
        let (status, ready) = readyz(&site).await.unwrap();
        assert_eq!(status, 200);
        assert!(ready["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("unknown cluster `missing`"));
    })
    .await;
}
