//! Running under systemd, with the real parts of the protocols: the notify protocol over a
//! real `NOTIFY_SOCKET` datagram socket (READY=1 once listeners accept and clusters were
//! probed, RELOADING=1 … READY=1 around reloads, STOPPING=1 on a graceful stop, WATCHDOG=1
//! at a quarter of `WATCHDOG_USEC`), syslog priorities on stderr when it is the journal's
//! stream, and SIGUSR1 reopening the access log so a rename-and-signal rotation under load
//! loses no line; and the token service's own READY=1, WATCHDOG=1 and STOPPING=1. (The
//! notify sequence of a binary upgrade is in `ops_upgrade`.)

mod common;
mod ops_support;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::Upstream;
use ops_support::*;

fn route_to(upstream: &Upstream) -> String {
    format!(
        "[[routes]]\nid = \"api\"\npath = \"/\"\ncluster = \"svc\"\n\n[clusters.svc]\nendpoints = {}\n",
        common::endpoints(&[upstream])
    )
}

fn count(socket: &NotifySocket, line: &str, from: usize) -> usize {
    socket
        .messages()
        .iter()
        .skip(from)
        .filter(|(_, m)| m.lines().any(|l| l == line))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_protocol_follows_start_reload_watchdog_and_stop() {
    bounded(async {
        let up = Upstream::start("u1").await;
        // An endpoint that accepts connections and never answers: its first health probe
        // ends at the check's timeout, which READY=1 must wait for.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let probe_timeout = Duration::from_millis(1500);
        let clusters = format!(
            "{}health_check = {{ path = \"/healthz\", interval = \"30s\", timeout = \"1500ms\" }}\n\n[clusters.silent]\nendpoints = [{{ address = \"{}\" }}]\nhealth_check = {{ path = \"/healthz\", interval = \"30s\", timeout = \"1500ms\" }}\n",
            route_to(&up),
            silent.local_addr().unwrap()
        );
        let mut site = Site::new();
        let notify = NotifySocket::at_path(&site.path("notify.sock"));
        site.env.push(("NOTIFY_SOCKET".into(), notify.address.clone()));
        // 400 ms: a ping every 100 ms.
        site.env.push(("WATCHDOG_USEC".into(), "400000".into()));
        site.write_config(&clusters);
        let started = Instant::now();
        let mut gateway = site.spawn(&[], "portico.log");

        let main_pid = format!("MAINPID={}", gateway.pid);
        let (ready, ready_at) = notify
            .wait_for(0, &["READY=1", &main_pid], Duration::from_secs(20))
            .await;
        // The process names itself before anything but watchdog pings (the proxy, which
        // sends those, starts beside the supervisor).
        let first = notify
            .messages()
            .into_iter()
            .find(|(_, m)| m != "WATCHDOG=1")
            .unwrap();
        assert!(
            first.1.starts_with(&main_pid),
            "the process names itself first: {:?}",
            notify.messages()
        );
        assert!(
            ready_at - started >= probe_timeout - Duration::from_millis(100),
            "READY=1 {:?} after the start, before the first health checks were over",
            ready_at - started
        );
        assert!(up.health_hits() >= 1, "the cluster was probed before READY=1");
        let (status, body) = readyz(&site).await.expect("admin answers");
        assert_eq!(status, 200, "/readyz agrees with READY=1: {body}");

        // The watchdog is fed from the proxy's runtime, four times per timeout.
        let before = count(&notify, "WATCHDOG=1", 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pings = count(&notify, "WATCHDOG=1", 0) - before;
        assert!((5..=14).contains(&pings), "{pings} pings in 1 s at a 100 ms period");

        // A reload: RELOADING=1 with the monotonic clock, then READY=1 with its outcome.
        site.write_config(&route_to(&up));
        let from = notify.messages().len();
        gateway.signal("HUP");
        let (reloading, _) = notify
            .wait_for(from, &["RELOADING=1"], Duration::from_secs(10))
            .await;
        let message = notify.messages()[reloading].1.clone();
        let usec: u64 = message
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"));
        assert!(usec > 0);
        notify
            .wait_for(reloading + 1, &["READY=1"], Duration::from_secs(10))
            .await;
        // A refused reload ends with READY=1 too: the gateway serves the previous config.
        site.write_config("[[routes]]\nid = \"x\"\npath = \"/\"\ncluster = \"missing\"\n");
        let from = notify.messages().len();
        gateway.signal("HUP");
        let (reloading, _) = notify
            .wait_for(from, &["RELOADING=1"], Duration::from_secs(10))
            .await;
        notify
            .wait_for(
                reloading + 1,
                &[
                    "READY=1",
                    "STATUS=serving the previous config: the last reload was refused",
                ],
                Duration::from_secs(10),
            )
            .await;
        assert!(ready < reloading);

        // SIGTERM: STOPPING=1, the pings end with the drain, exit 0.
        let from = notify.messages().len();
        gateway.signal("TERM");
        let (stopping, _) = notify
            .wait_for(from, &["STOPPING=1"], Duration::from_secs(10))
            .await;
        let status = gateway.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert!(status.success(), "{}", site.log("portico.log"));
        // (One ping may have been on its way as the drain began.)
        assert!(count(&notify, "WATCHDOG=1", stopping + 1) <= 1);
        assert_eq!(count(&notify, "READY=1", stopping + 1), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abstract_notify_socket_hears_ready() {
    bounded(async {
        let up = Upstream::start("u1").await;
        let mut site = Site::new();
        let notify = NotifySocket::abstract_named(&format!(
            "portico-test-notify-{}-{}",
            std::process::id(),
            site.listen.port()
        ));
        site.env
            .push(("NOTIFY_SOCKET".into(), notify.address.clone()));
        site.write_config(&route_to(&up));
        let gateway = site.spawn(&[], "portico.log");
        notify
            .wait_for(
                0,
                &["READY=1", &format!("MAINPID={}", gateway.pid)],
                Duration::from_secs(20),
            )
            .await;
        // Without WATCHDOG_USEC, no pings.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(count(&notify, "WATCHDOG=1", 0), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_journal_each_line_carries_its_syslog_priority() {
    bounded(async {
        let up = Upstream::start("u1").await;
        let site = Site::new();
        site.write_config(&route_to(&up));
        // journald's stream is a socket; any file works the same: the gateway compares
        // JOURNAL_STREAM with its stderr's device and inode.
        std::fs::File::create(site.path("journal.log")).unwrap();
        let meta = std::fs::metadata(site.path("journal.log")).unwrap();
        let mut command = site.command(std::path::Path::new(common::PORTICO), &[], "journal.log");
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        let child = command.spawn().expect("start portico");
        let gateway = Proc::adopt(child.id());
        wait_ready(&site, gateway.pid, Duration::from_secs(20)).await;

        // An error of the gateway's own: a reload refused.
        site.write_config("[[routes]]\nid = \"x\"\npath = \"/\"\ncluster = \"missing\"\n");
        gateway.signal("HUP");
        let start = Instant::now();
        while !site.log("journal.log").contains("config reload rejected") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}",
                site.log("journal.log")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gateway.signal("TERM");
        let start = Instant::now();
        while gateway.alive() {
            assert!(start.elapsed() < Duration::from_secs(20));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(child);

        let log = site.log("journal.log");
        let priority_of = |needle: &str| {
            let line = log
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no `{needle}` in:\n{log}"));
            line[1..line.find('>').unwrap()].parse::<u8>().unwrap()
        };
        for line in log.lines() {
            assert!(
                line.starts_with('<') && line[1..].find('>').is_some_and(|end| end == 1),
                "a line without a priority: {line:?}"
            );
        }
        assert_eq!(priority_of("config reload rejected"), 3, "err");
        assert_eq!(priority_of("portico is ready"), 6, "info");

        // Not the journal (the variable names another file): plain lines.
        let mut command = site.command(std::path::Path::new(common::PORTICO), &["-t"], "plain.log");
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        site.write_config(&route_to(&up));
        assert!(command.status().unwrap().success());
        let plain = site.log("plain.log");
        assert!(!plain.is_empty() && !plain.starts_with('<'), "{plain}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_and_a_rotation_under_load_loses_no_line() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let up = Upstream::start("u1").await;
        let site = Site::new();
        site.write_config(&route_to(&up));
        let mut gateway = site.spawn(&[], "portico.log");
        wait_ready(&site, gateway.pid, Duration::from_secs(20)).await;

        let load = Load::start(site.url("/item"), 250, 64);
        tokio::time::sleep(Duration::from_millis(600)).await;
        // As logrotate does it: rename, then signal.
        let rotations = 3;
        for n in 1..=rotations {
            std::fs::rename(site.access_log(), site.path(&format!("access.log.{n}"))).unwrap();
            gateway.signal("USR1");
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let report = load.finish().await;
        assert_eq!(report.failed(), 0, "{:?}", report.failures());
        assert!(report.sent() > 300, "the load ran: {}", report.sent());
        gateway.signal("TERM");
        let status = gateway.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert!(status.success());

        let lines = |name: &str| {
            std::fs::read_to_string(site.path(name))
                .unwrap_or_default()
                .lines()
                .count()
        };
        let mut files: Vec<String> = (1..=rotations).map(|n| format!("access.log.{n}")).collect();
        files.push("access.log".into());
        let counts: Vec<usize> = files.iter().map(|f| lines(f)).collect();
        println!(
            "lines per file: {files:?} = {counts:?}, requests {}",
            report.sent()
        );
        assert!(
            counts.iter().all(|&c| c > 0),
            "every file got lines: the log was reopened each time: {counts:?}"
        );
        assert_eq!(
            counts.iter().sum::<usize>(),
            report.sent(),
            "one line per request across the rotations"
        );
        assert!(site.log("portico.log").contains("SIGUSR1: reopening"));
    })
    .await;
}

/// The token service (`portico auth serve`, `systemd/portico-auth.service` is
/// `Type=notify`): READY=1 once it listens, WATCHDOG=1 from its runtime at a quarter of
/// `WATCHDOG_USEC`, STOPPING=1 on SIGTERM, and then it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_service_tells_systemd_it_is_ready_alive_and_stopping() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let notify = NotifySocket::at_path(&dir.path().join("notify.sock"));
        let listen = common::free_addr();
        let config = dir.path().join("auth.toml");
        std::fs::write(
            &config,
            format!(
                "issuer = \"https://auth.notify.test\"\nlisten = \"{listen}\"\nadmin_listen = \"off\"\n\
                 database_url = \"sqlite://{}\"\n[argon2]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n",
                dir.path().join("auth.db").display()
            ),
        )
        .unwrap();
        let mut service = std::process::Command::new(common::PORTICO)
            .args(["auth", "-c", config.to_str().unwrap(), "serve"])
            .env("NOTIFY_SOCKET", &notify.address)
            .env("WATCHDOG_USEC", "400000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = service.id();
        let (ready, _) = notify
            .wait_for(
                0,
                &["READY=1", &format!("MAINPID={pid}")],
                Duration::from_secs(20),
            )
            .await;
        // It really listens once it says so.
        assert!(std::net::TcpStream::connect(listen).is_ok());
        let (first_ping, _) = notify
            .wait_for(ready, &["WATCHDOG=1"], Duration::from_secs(2))
            .await;
        notify
            .wait_for(first_ping + 1, &["WATCHDOG=1"], Duration::from_secs(2))
            .await;

        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        notify
            .wait_for(ready, &["STOPPING=1"], Duration::from_secs(10))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            if let Some(exit) = service.try_wait().unwrap() {
                break exit;
            }
            assert!(Instant::now() < deadline, "the token service did not stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "{exit:?}");
    })
    .await;
}
