//! `portico auth` through the real binary with a SQLite file: clients add/list/remove/
//! rotate-secret against a running service, located config errors, and serving until
//! SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::get_json;
use common::token_service::*;

fn write_config(dir: &std::path::Path, extra: &str) -> String {
    let file = dir.join("auth.toml");
    // A relative SQLite path: it resolves against the config file's directory.
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"off\"\ndatabase_url = \"sqlite://data/auth.db\"\n{extra}\n{FAST}"
        ),
    )
    .unwrap();
    file.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_add_list_rotate_remove_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "");
    let auth = |args: &[&str]| {
        let mut all = vec!["auth", "-c", file.as_str()];
        all.extend_from_slice(args);
        portico(&all)
    };

    let (code, out, err) = auth(&[
        "clients",
        "add",
        "service-a",
        "--scopes",
        "orders:read orders:write",
        "--audiences",
        "portico billing",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("not shown again"), "{err}");
    let first = kv(&out)["client_secret"].clone();
    assert_eq!(kv(&out)["client_id"], "service-a");
    assert!(first.len() >= 43);
    assert!(
        dir.path().join("data/auth.db").exists(),
        "relative to the config file"
    );

    let (code, _, err) = auth(&["clients", "add", "service-a", "--audiences", "portico"]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = auth(&["clients", "add", "bad id!", "--audiences", "portico"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, _) = auth(&[
        "clients",
        "add",
        "svc-b",
        "--audiences",
        "portico",
        "--scopes",
        "inventory:read",
    ]);
    assert_eq!(code, 0);

    let (code, out, _) = auth(&["clients", "list"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with("service-a"))
        .expect("listed");
    assert!(
        line.contains("orders:read orders:write") && line.contains("portico billing"),
        "{line}"
    );
    assert!(out.contains("svc-b"));
    assert!(
        !out.contains(&first) && !out.contains("argon2"),
        "no secret or hash listed"
    );

    // The database holds an argon2id hash, never the secret.
    {
        let db = rusqlite::Connection::open(dir.path().join("data/auth.db")).unwrap();
        let hash: String = db
            .query_row(
                "SELECT secret_hash FROM auth_clients WHERE client_id = 'service-a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        let raw = std::fs::read(dir.path().join("data/auth.db")).unwrap();
        assert!(!raw.windows(first.len()).any(|w| w == first.as_bytes()));
    }

    // A running service on the same file accepts the secret.
    let cfg = portico::auth::config::load_file(std::path::Path::new(&file)).unwrap();
    let svc = start(&cfg).await;
    let base = base(&svc);
    let url = format!("{base}/oauth2/token");
    let http = http();
    let grant = [("grant_type", "client_credentials")];
    assert_eq!(
        post_basic(&http, &url, "service-a", &first, &grant).await.0,
        200
    );

    let (code, out, _) = auth(&["clients", "rotate-secret", "service-a"]);
    assert_eq!(code, 0);
    let second = kv(&out)["client_secret"].clone();
    assert_ne!(first, second);
    assert_eq!(
        post_basic(&http, &url, "service-a", &first, &grant).await.0,
        401
    );
    assert_eq!(
        post_basic(&http, &url, "service-a", &second, &grant)
            .await
            .0,
        200
    );
    let (code, _, _) = auth(&["clients", "rotate-secret", "nobody"]);
    assert_eq!(code, 1);

    let (code, out, _) = auth(&["clients", "remove", "service-a"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        post_basic(&http, &url, "service-a", &second, &grant)
            .await
            .0,
        401
    );
    let (code, _, err) = auth(&["clients", "remove", "service-a"]);
    assert_eq!(code, 1);
    assert!(err.contains("no client"), "{err}");
    let (_, out, _) = auth(&["clients", "list"]);
    assert!(!out.contains("service-a") && out.contains("svc-b"));
    svc.stop().await;
}

#[test]
fn config_errors_name_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "[tokens]\nalgorithm = \"HS256\"");
    let (code, _, err) = portico(&["auth", "-c", &file, "check"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{file}:5:13: tokens.algorithm: unknown variant `HS256`"
        )),
        "{err}"
    );

    let file = write_config(
        dir.path(),
        "[keys]\npublish_ahead = \"10s\"\nrefresh_interval = \"30s\"\nlifetime = \"1m\"",
    );
    let (code, _, err) = portico(&["auth", "-c", &file, "check"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(":7:1: keys.lifetime: unknown field `lifetime`"),
        "{err}"
    );

    let file = write_config(
        dir.path(),
        "[keys]\npublish_ahead = \"10s\"\nrefresh_interval = \"30s\"",
    );
    let (code, _, err) = portico(&["auth", "-c", &file, "check"]);
    assert_eq!(code, 2);
    assert!(
        err.contains(":5:17: keys.publish_ahead: must be at least twice"),
        "{err}"
    );

    let file = write_config(dir.path(), "");
    assert_eq!(portico(&["auth", "-c", &file, "check"]).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("auth.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\nadmin_listen = \"off\"\ndatabase_url = \"sqlite://auth.db\"\n{FAST}"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portico"))
        .args(["auth", "-c", file.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout.lines().next().expect("a line").unwrap();
    assert_eq!(
        line,
        format!("token service listening on http://127.0.0.1:{port}")
    );

    let http = http();
    let base = format!("http://127.0.0.1:{port}");
    let meta: serde_json::Value = get_json(
        &http,
        &format!("{base}/.well-known/oauth-authorization-server"),
    )
    .await;
    assert_eq!(meta["issuer"], base);
    let keys: serde_json::Value = get_json(&http, &format!("{base}/.well-known/jwks.json")).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);

    // A client added from another process works against the running service.
    let (code, out, _) = portico(&[
        "auth",
        "-c",
        file.to_str().unwrap(),
        "clients",
        "add",
        "svc",
        "--audiences",
        "portico",
    ]);
    assert_eq!(code, 0);
    let secret = kv(&out)["client_secret"].clone();
    let token = token(&http, &base, "svc", &secret, &[]).await;

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");

    // JSON log events, and neither the secret nor the token in them.
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains(r#""event":"token_issued""#), "{logs}");
    assert!(!logs.contains(&secret) && !logs.contains(&token));
}
