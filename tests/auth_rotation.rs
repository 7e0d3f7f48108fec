//! Signing-key rotation while tokens keep flowing: a background loop fetches the JWKS,
//! then gets a token, and verifies it against that JWKS (as a gateway with a cached key
//! set would); not one verification may fail through a manual rotation from the real CLI
//! or the automatic schedule. Also: the old key stays published until its tokens expired,
//! then leaves the JWKS.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::get_json;
use common::token_service::*;

const ISSUER: &str = "https://auth.portico.test";

struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>, BTreeSet<String>)>,
}

/// Three keep-alive clients requesting and verifying tokens back to back until stopped:
/// (successes, failures, kids).
fn load(base: String, secret: String) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|_| worker(base.clone(), secret.clone(), stop.clone()))
        .collect();
    let task = tokio::spawn(async move {
        let (mut ok, mut failures, mut kids) = (0, Vec::new(), BTreeSet::new());
        for w in workers {
            let (o, f, k) = w.await.unwrap();
            ok += o;
            failures.extend(f);
            kids.extend(k);
        }
        (ok, failures, kids)
    });
    Load { stop, task }
}

fn worker(
    base: String,
    secret: String,
    flag: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>, BTreeSet<String>)> {
    tokio::spawn(async move {
        let http = http();
        let (mut ok, mut failures, mut kids) = (0, Vec::new(), BTreeSet::new());
        // Bounded in count and time whatever happens.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline && ok < 20_000 {
            let jwks: jsonwebtoken::jwk::JwkSet = match http
                .get(format!("{base}/.well-known/jwks.json"))
                .send()
                .await
            {
                Ok(r) => match r.json().await {
                    Ok(j) => j,
                    Err(e) => {
                        failures.push(format!("jwks body: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    failures.push(format!("jwks: {e}"));
                    continue;
                }
            };
            let (status, _, body) = client_credentials(&http, &base, "svc", &secret).await;
            if status != 200 {
                failures.push(format!("token: {status} {body}"));
                continue;
            }
            let token = body["access_token"].as_str().unwrap_or_default();
            match verify_with(&jwks, token, ISSUER, "portico") {
                Ok((header, _)) => {
                    ok += 1;
                    kids.insert(header.kid.unwrap_or_default());
                }
                Err(e) => failures.push(format!("verify: {e}")),
            }
        }
        (ok, failures, kids)
    })
}

async fn published(base: &str) -> BTreeSet<String> {
    let jwks: serde_json::Value = get_json(&http(), &format!("{base}/.well-known/jwks.json")).await;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// The load comes from one address, far above what `[secret_checks]` grants one address
/// by default: these tests are about rotation, not about that limit.
const ONE_BUSY_ADDRESS: &str =
    "[secret_checks]\nper_address_rate = 100000.0\nper_address_burst = 100000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rotation_under_load_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sections = "[tokens]\nlifetime = \"3s\"\n\
                    [keys]\nrotate_every = \"off\"\npublish_ahead = \"1s\"\n\
                    refresh_interval = \"200ms\"\nretire_grace = \"0s\"\n";
    let top = format!("issuer = \"{ISSUER}\"");
    let cfg = config(dir.path(), &top, &format!("{sections}{ONE_BUSY_ADDRESS}"));
    let svc = start(&cfg).await;
    let base = base(&svc);
    let secret = add_client(&svc, "svc", "", "portico").await;
    let http = http();
    let old_token = token(&http, &base, "svc", &secret, &[]).await;
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();
    assert_eq!(published(&base).await, BTreeSet::from([old_kid.clone()]));

    let load = load(base.clone(), secret.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Rotate from another process, as an operator would.
    let file = dir.path().join("auth.toml");
    std::fs::write(
        &file,
        format!(
            "database_url = \"sqlite://{}\"\n{top}\n{FAST}\n{sections}",
            dir.path().join("auth.db").display()
        ),
    )
    .unwrap();
    let (code, out, err) = portico(&["auth", "-c", file.to_str().unwrap(), "keys", "rotate"]);
    assert_eq!(code, 0, "{out}{err}");
    let rotated_at = Instant::now();
    let new_kid = out
        .split_whitespace()
        .nth(3)
        .expect("kid in the output")
        .to_string();

    // Published ahead: within a refresh the new key is in the JWKS, not yet signing.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let both = BTreeSet::from([old_kid.clone(), new_kid.clone()]);
    assert_eq!(published(&base).await, both);
    let t = token(&http, &base, "svc", &secret, &[]).await;
    if rotated_at.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            jsonwebtoken::decode_header(&t).unwrap().kid.unwrap(),
            old_kid
        );
    }

    // After publish_ahead the new key signs; the old one stays published while its
    // last tokens are still valid, and the old token still verifies.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let t = token(&http, &base, "svc", &secret, &[]).await;
    assert_eq!(
        jsonwebtoken::decode_header(&t).unwrap().kid.unwrap(),
        new_kid
    );
    assert_eq!(published(&base).await, both);
    verify(&http, &base, &old_token, ISSUER, "portico")
        .await
        .expect("old token still verifies");

    load.stop.store(true, Ordering::Relaxed);
    let (ok, failures, kids) = load.task.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 10, "only {ok} tokens verified");
    eprintln!("{ok} tokens requested and verified through the rotation, none failed");
    assert_eq!(kids, both, "the loop saw both keys sign");

    // Retired once the old key's last token expired (activation + 3s lifetime + refresh).
    let deadline = Instant::now() + Duration::from_secs(8);
    while published(&base).await.contains(&old_kid) {
        assert!(Instant::now() < deadline, "old key never retired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(4),
        "retired too early"
    );
    assert_eq!(published(&base).await, BTreeSet::from([new_kid.clone()]));
    let (code, out, _) = portico(&["auth", "-c", file.to_str().unwrap(), "keys", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&new_kid) && out.contains("signing"), "{out}");
    assert!(!out.contains(&old_kid), "{out}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_under_load_fails_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("issuer = \"{ISSUER}\""),
        &format!(
            "[tokens]\nlifetime = \"2s\"\n\
             [keys]\nrotate_every = \"2s\"\npublish_ahead = \"1s\"\n\
             refresh_interval = \"200ms\"\nretire_grace = \"0s\"\n{ONE_BUSY_ADDRESS}"
        ),
    );
    let svc = start(&cfg).await;
    let secret = add_client(&svc, "svc", "", "portico").await;
    let load = load(base(&svc), secret);
    tokio::time::sleep(Duration::from_millis(6500)).await;
    load.stop.store(true, Ordering::Relaxed);
    let (ok, failures, kids) = load.task.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 10, "only {ok} tokens verified");
    assert!(kids.len() >= 2, "the schedule rotated: {kids:?}");
    // Old keys are retired, so the JWKS stays small.
    assert!(published(&base(&svc)).await.len() <= 4);
    svc.stop().await;
}
