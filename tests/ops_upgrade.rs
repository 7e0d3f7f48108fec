//! Process lifecycle under load: a zero-downtime binary upgrade (a second process takes the
//! listening sockets over with `serve -u`, the first drains on SIGQUIT), the same through
//! `systemd/portico-upgrade` on daemonized processes as systemd's `ExecReload=` runs it
//! (config reload, forced upgrade, upgrade on a newly installed binary, upgrade for a
//! listener change, refusals that leave the running process alone), and SIGTERM draining
//! in-flight requests before exiting 0 with the access log flushed.

mod common;
mod ops_support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Upstream;
use ops_support::*;

fn route_to(upstreams: &[&Upstream]) -> String {
    format!(
        "[[routes]]\nid = \"api\"\npath = \"/\"\ncluster = \"svc\"\n\n[clusters.svc]\nendpoints = {}\n",
        common::endpoints(upstreams)
    )
}

async fn wait_for_upgrade_socket(site: &Site, new: &Proc) {
    let start = Instant::now();
    loop {
        let listening = std::fs::metadata(site.upgrade_sock())
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if listening {
            return;
        }
        assert!(
            new.alive(),
            "the new process exited:\n{}",
            site.log("new.log")
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the new process did not open the upgrade socket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_under_load_loses_no_request() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let u1 = Upstream::start("u1").await;
        let u2 = Upstream::start("u2").await;
        let mut site = Site::new();
        site.grace_period_seconds = 10;
        site.write_config(&route_to(&[&u1, &u2]));
        let mut old = site.spawn(&[], "old.log");
        wait_ready(&site, old.pid, Duration::from_secs(20)).await;

        let load = Load::start(site.url("/item"), 200, 256);
        tokio::time::sleep(Duration::from_millis(2500)).await;

        let t0 = Instant::now();
        let new = site.spawn(&["-u"], "new.log");
        wait_for_upgrade_socket(&site, &new).await;
        old.signal("QUIT");
        let ready = wait_ready(&site, new.pid, Duration::from_secs(20)).await;
        println!("new process ready {} after SIGQUIT", ms(ready));
        let status = old
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("old process status");
        let t1 = Instant::now();
        println!(
            "old process exited ({status}) {} after the upgrade began",
            ms(t1 - t0)
        );
        assert!(status.success(), "{}", site.log("old.log"));

        tokio::time::sleep(Duration::from_millis(2500)).await;
        let report = load.finish().await;
        print_report("binary upgrade", &report, &[(t0, t1)]);
        assert!(report.sent() > 1000, "the load ran: {}", report.sent());
        assert_eq!(report.failed(), 0, "failures: {:?}", report.failures());
        assert_eq!(report.resets(), 0);
        assert!(new.alive());
        let old_log = site.log("old.log");
        assert!(old_log.contains("graceful upgrade: waiting"), "{old_log}");
        assert!(old_log.contains("drained in"), "{old_log}");
        // Served after the old process had gone.
        let after = report.samples.iter().filter(|s| s.start > t1).count();
        assert!(after > 100, "{after} requests after the old process exited");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let slow = Upstream::slow("slow", Duration::from_millis(1500)).await;
        let mut site = Site::new();
        // Pingora alone would wait the whole grace period; portico exits once drained.
        site.grace_period_seconds = 30;
        site.graceful_shutdown_timeout_seconds = 10;
        site.write_config(&route_to(&[&slow]));
        let mut gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;

        let requests: Vec<_> = (0..8)
            .map(|i| {
                let url = site.url(&format!("/slow/{i}"));
                tokio::spawn(async move {
                    // One connection each.
                    let resp = client().get(url).send().await?;
                    let status = resp.status().as_u16();
                    Ok::<_, reqwest::Error>((status, resp.text().await?))
                })
            })
            .collect();
        common::eventually(
            Duration::from_secs(5),
            "8 requests at the upstream",
            || async { slow.hits() == 8 },
        )
        .await;
        let term = Instant::now();
        gw.signal("TERM");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            tokio::net::TcpStream::connect(site.listen).await.is_err(),
            "no new connection is accepted after SIGTERM"
        );
        for r in requests {
            let (status, body) = r.await.unwrap().expect("in-flight request completes");
            assert_eq!((status, body.as_str()), (200, "slow"));
        }
        let status = gw
            .wait_exit(Duration::from_secs(15))
            .await
            .expect("exit status");
        let took = term.elapsed();
        println!("SIGTERM → exit {status} after {}", ms(took));
        assert!(status.success(), "{}", site.log("portico.log"));
        assert!(
            took < Duration::from_secs(5),
            "exited once drained, not after the grace period"
        );
        let log = std::fs::read_to_string(site.access_log()).unwrap();
        let lines = log.lines().filter(|l| l.contains("/slow/")).count();
        assert_eq!(
            lines, 8,
            "every drained request is in the access log:\n{log}"
        );
    })
    .await;
}

/// SIGINT is a fast stop: requests in flight are cut and the process is gone at once. Through
/// Pingora's own fast shutdown, under load, the process never exited and logged a failed
/// accept on every turn of its loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_under_load_exits_at_once_without_a_log_flood() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let up = Upstream::start("u1").await;
        let site = Site::new();
        site.write_config(&route_to(&[&up]));
        let mut gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;

        let load = Load::start(site.url("/item"), 800, 256);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let int = Instant::now();
        gw.signal("INT");
        let status = gw
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exit status");
        let took = int.elapsed();
        let report = load.finish().await;
        assert!(report.sent() > 500, "the load ran: {}", report.sent());
        let log = site.log("portico.log");
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        println!("SIGINT → exit {status} after {}", ms(took));
        assert!(
            took < Duration::from_secs(3),
            "exited at once, not after {took:?}"
        );
        assert!(status.success(), "{tail:?}");
        assert!(
            !log.contains("Accept() failed") && log.lines().count() < 500,
            "{} log lines, the last: {tail:?}",
            log.lines().count()
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// systemd/portico-upgrade
// ---------------------------------------------------------------------------------------

fn helper_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/portico-upgrade")
}

/// Runs the helper like systemd's ExecReload= would (without MAINPID: the pid file says;
/// [`helper_with`] can set it).
/// Its output goes to a file: the daemon it starts inherits it and outlives the helper.
async fn helper(site: &Site, bin: &Path, command: &str) -> (bool, String) {
    helper_with(site, bin, command, &[]).await
}

/// [`helper`] with extra environment variables.
async fn helper_with(
    site: &Site,
    bin: &Path,
    command: &str,
    env: &[(&str, &str)],
) -> (bool, String) {
    let n = std::fs::read_dir(site.dir.path()).unwrap().count();
    let out = site.path(&format!("helper-{n}.log"));
    let file = std::fs::File::create(&out).unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("bash")
            .arg(helper_path())
            .arg(command)
            .env("PORTICO_BIN", bin)
            .env("PORTICO_CONFIG", site.config_path())
            .env("RUST_LOG", "info")
            .env_remove("MAINPID")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status(),
    )
    .await
    .expect("helper finished in time")
    .expect("run helper");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    println!(
        "--- portico-upgrade {command} ({status})\n{}",
        text.trim_end()
    );
    (status.success(), text)
}

/// Copies the test binary (a new inode: a freshly installed version) to `to`.
fn install_binary(to: &Path) {
    let tmp = to.with_extension("new");
    let ok = std::process::Command::new("cp")
        .arg("--reflink=auto")
        .arg(common::PORTICO)
        .arg(&tmp)
        .status()
        .unwrap()
        .success();
    assert!(ok, "copy the binary");
    std::fs::rename(&tmp, to).unwrap();
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// The pid now in the pid file, adopted so it is killed when the test ends.
fn current(site: &Site) -> Proc {
    Proc::adopt(site.pid_in_file().expect("pid file"))
}

async fn wait_gone(proc: &Proc, limit: Duration) -> Duration {
    let start = Instant::now();
    while proc.alive() {
        assert!(start.elapsed() < limit, "pid {} still running", proc.pid);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_helper_reloads_and_upgrades_a_daemon_under_load() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let u1 = Upstream::start("u1").await;
        let u2 = Upstream::start("u2").await;
        let mut site = Site::new();
        site.grace_period_seconds = 10;
        let bin_dir = site.path("bin");
        std::fs::create_dir(&bin_dir).unwrap();
        let bin = bin_dir.join("portico");
        install_binary(&bin);
        site.write_config(&route_to(&[&u1]));

        // As ExecStart= runs it: the foreground part exits once the daemon is forked.
        let mut starter = site.spawn_bin(&bin, &["-d"], "portico.log");
        let status = starter.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert!(status.success());
        let (ok, _) = helper(&site, &bin, "wait-ready").await;
        assert!(ok, "{}", site.log("portico.log"));
        let first = current(&site);

        let load = Load::start(site.url("/item"), 200, 256);
        let mut windows = Vec::new();
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // 1. A config change, same binary: an in-place reload, same process.
        site.write_config(&route_to(&[&u1, &u2]));
        let t = Instant::now();
        let (ok, out) = helper(&site, &bin, "reload").await;
        windows.push((t, Instant::now()));
        assert!(ok && out.contains("config reloaded"), "{out}");
        assert_eq!(site.pid_in_file(), Some(first.pid));
        // (It read the admin token from the config's token_file.) A wrong token is an
        // error, not a silent fallback: the running config stays.
        let (ok, out) = helper_with(
            &site,
            &bin,
            "reload",
            &[("PORTICO_ADMIN_TOKEN", &common::new_admin_token())],
        )
        .await;
        assert!(!ok && out.contains("refused the admin token"), "{out}");
        assert_eq!(site.pid_in_file(), Some(first.pid));

        // 2. A forced upgrade of the same binary.
        let t = Instant::now();
        let (ok, out) = helper(&site, &bin, "upgrade").await;
        assert!(ok, "{out}");
        let second = current(&site);
        assert_ne!(second.pid, first.pid);
        let drained = wait_gone(&first, Duration::from_secs(20)).await;
        windows.push((t, Instant::now()));
        println!(
            "upgrade 1: old process gone {} after the helper returned",
            ms(drained)
        );

        // 3. A new binary installed: `reload` notices and upgrades.
        install_binary(&bin);
        let t = Instant::now();
        let (ok, out) = helper(&site, &bin, "reload").await;
        assert!(ok && out.contains("graceful upgrade"), "{out}");
        let third = current(&site);
        assert_ne!(third.pid, second.pid);
        assert_eq!(
            std::fs::metadata(format!("/proc/{}/exe", third.pid))
                .unwrap()
                .ino(),
            inode(&bin),
            "the new process runs the newly installed binary"
        );
        wait_gone(&second, Duration::from_secs(20)).await;
        windows.push((t, Instant::now()));

        // 4. Invalid config: both commands refuse and change nothing.
        let good = route_to(&[&u1, &u2]);
        site.write_config("[[routes]]\nid = \"x\"\npath = \"/\"\ncluster = \"missing\"\n");
        let (ok, out) = helper(&site, &bin, "reload").await;
        assert!(!ok && out.contains("config rejected"), "{out}");
        let (ok, out) = helper(&site, &bin, "upgrade").await;
        assert!(!ok && out.contains("rejects"), "{out}");
        assert_eq!(site.pid_in_file(), Some(third.pid));
        assert!(third.alive());
        site.write_config(&good);

        // 5. A new listener: the reload says it needs an upgrade, and the helper does it.
        let extra = common::free_addr();
        site.extra_listeners = format!("\n[[listeners]]\naddress = \"{extra}\"\n");
        site.write_config(&good);
        let t = Instant::now();
        let (ok, out) = helper(&site, &bin, "reload").await;
        assert!(ok && out.contains("listeners changed"), "{out}");
        let fourth = current(&site);
        assert_ne!(fourth.pid, third.pid);
        let resp = client()
            .get(format!("http://{extra}/via-new-listener"))
            .send()
            .await
            .expect("the new listener serves");
        assert_eq!(resp.status(), 200);
        wait_gone(&third, Duration::from_secs(20)).await;
        windows.push((t, Instant::now()));

        tokio::time::sleep(Duration::from_millis(1000)).await;
        let report = load.finish().await;
        print_report("helper: reload + 3 upgrades", &report, &windows);
        assert_eq!(report.failed(), 0, "failures: {:?}", report.failures());
        assert_eq!(report.resets(), 0);
        let (ok, out) = helper(&site, &bin, "status").await;
        assert!(
            ok && out.contains(&format!("\"pid\": {}", fourth.pid)),
            "{out}"
        );
    })
    .await;
}

/// Under systemd (Type=notify, NotifyAccess=all): the service starts with a foreground
/// `serve`, and `systemctl reload` runs the helper with MAINPID and NOTIFY_SOCKET set. The
/// new process of the upgrade announces itself as the main process (MAINPID=) before the
/// old one exits, then READY=1; the old one never says STOPPING=1 (which would stop the
/// service); the watchdog timeout goes over to the new process, which feeds it once the old
/// one is gone; no request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_systemd_notify_hands_the_main_pid_over() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let u1 = Upstream::start("u1").await;
        let mut site = Site::new();
        site.grace_period_seconds = 10;
        let notify = NotifySocket::at_path(&site.path("notify.sock"));
        site.env
            .push(("NOTIFY_SOCKET".into(), notify.address.clone()));
        site.write_config(&route_to(&[&u1]));
        // As ExecStart= runs it, with WatchdogSec=0.6s.
        let mut first = site
            .command(Path::new(common::PORTICO), &[], "portico.log")
            .env("WATCHDOG_USEC", "600000")
            .spawn()
            .map(|child| (child.id(), child))
            .expect("start portico");
        let old_pid = first.0;
        let old = Proc::adopt(old_pid);
        notify
            .wait_for(
                0,
                &["READY=1", &format!("MAINPID={old_pid}")],
                Duration::from_secs(20),
            )
            .await;

        let load = Load::start(site.url("/item"), 200, 64);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let from = notify.messages().len();
        let (ok, out) = helper_with(
            &site,
            Path::new(common::PORTICO),
            "upgrade",
            &[
                ("MAINPID", &old_pid.to_string()),
                ("NOTIFY_SOCKET", &notify.address),
            ],
        )
        .await;
        assert!(ok, "{out}");
        let new = current(&site);
        assert_ne!(new.pid, old_pid);
        let new_main = format!("MAINPID={}", new.pid);
        let (announced, announced_at) = notify
            .wait_for(from, &[&new_main], Duration::from_secs(10))
            .await;
        notify
            .wait_for(announced, &["READY=1", &new_main], Duration::from_secs(10))
            .await;
        // The old process drains, then exits; systemd knew the new main pid before.
        let start = Instant::now();
        while old.alive() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the old process drains"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let old_gone = Instant::now();
        let _ = first.1.wait();
        assert!(announced_at < old_gone);
        assert!(
            notify
                .messages()
                .iter()
                .all(|(_, m)| !m.lines().any(|l| l == "STOPPING=1")),
            "no STOPPING=1 during an upgrade: {:?}",
            notify.messages()
        );
        // The watchdog, fed by the new process (the old one is gone).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let pings_after = notify
            .messages()
            .iter()
            .filter(|(at, m)| *at > old_gone && m.lines().any(|l| l == "WATCHDOG=1"))
            .count();
        assert!(pings_after >= 3, "{pings_after} pings from the new process");

        let report = load.finish().await;
        assert_eq!(report.failed(), 0, "failures: {:?}", report.failures());
        new.signal("TERM");
        notify
            .wait_for(from, &["STOPPING=1"], Duration::from_secs(10))
            .await;
    })
    .await;
}

/// HTTP/2 streams in flight when SIGTERM arrives complete (Pingora sends GOAWAY, the
/// streams finish, then the process exits 0). Needs curl with HTTP/2 as the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_http2_streams_finish() {
    let _serial = SERIAL.lock().await;
    if std::process::Command::new("curl")
        .arg("-V")
        .output()
        .is_err()
    {
        println!("SKIPPED: no curl to speak HTTP/2");
        return;
    }
    bounded(async {
        let slow = Upstream::slow("slow", Duration::from_millis(1500)).await;
        let mut site = Site::new();
        let dir = site.dir.path().to_path_buf();
        let ca = TestCa::new("edge-ca");
        let ca_pem = ca.write(&dir);
        let cert = ca.server(&dir, "gw", &["gw.test"]);
        let tls_addr = common::free_addr();
        site.extra_listeners = format!(
            "\n[[listeners]]\naddress = \"{tls_addr}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.cert.display(),
            cert.key.display()
        );
        site.write_config(&route_to(&[&slow]));
        let mut gw = site.spawn(&[], "portico.log");
        wait_ready(&site, gw.pid, Duration::from_secs(20)).await;

        let port = tls_addr.port();
        let curls: Vec<_> = (0..3)
            .map(|i| {
                tokio::process::Command::new("curl")
                    .args(["-sS", "--http2", "-w", " %{http_version} %{http_code}"])
                    .arg("--cacert")
                    .arg(&ca_pem)
                    .arg("--resolve")
                    .arg(format!("gw.test:{port}:127.0.0.1"))
                    .arg(format!("https://gw.test:{port}/h2/{i}"))
                    .stdin(std::process::Stdio::null())
                    .output()
            })
            .map(tokio::spawn)
            .collect();
        common::eventually(
            Duration::from_secs(10),
            "3 streams at the upstream",
            || async { slow.hits() == 3 },
        )
        .await;
        gw.signal("TERM");
        for c in curls {
            let out = c.await.unwrap().expect("curl ran");
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text,
                "slow 2 200",
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let status = gw.wait_exit(Duration::from_secs(15)).await.unwrap();
        assert!(status.success(), "{}", site.log("portico.log"));
    })
    .await;
}

/// Without `pid_file` and `upgrade_sock` in the config, both live in the runtime
/// directory (here systemd's `$RUNTIME_DIRECTORY`), which the gateway creates private
/// (0700) when missing; a binary upgrade hands the listeners over through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_runtime_directory_is_private_and_carries_an_upgrade() {
    let _serial = SERIAL.lock().await;
    bounded(async {
        let up = Upstream::start("u").await;
        let mut site = Site::new();
        site.grace_period_seconds = 1;
        site.runtime_paths = false;
        let run = site.path("run/portico");
        site.env
            .push(("RUNTIME_DIRECTORY".into(), run.display().to_string()));
        site.write_config(&route_to(&[&up]));
        assert!(!site.config(&route_to(&[&up])).contains("upgrade_sock"));

        let mut old = site.spawn(&[], "old.log");
        wait_ready(&site, old.pid, Duration::from_secs(20)).await;
        let meta = std::fs::metadata(&run).expect("the runtime directory was created");
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o7777, 0o700, "created private");
        let config: serde_json::Value = admin_client(&site)
            .get(site.admin_url("/admin/config"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sock = run.join("upgrade.sock");
        assert_eq!(
            config["config"]["server"]["upgrade_sock"],
            sock.display().to_string()
        );
        assert_eq!(
            config["config"]["server"]["pid_file"],
            run.join("portico.pid").display().to_string()
        );

        let new = site.spawn(&["-u"], "new.log");
        let start = Instant::now();
        while !std::fs::metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
            assert!(
                new.alive(),
                "the new process exited:\n{}",
                site.log("new.log")
            );
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no upgrade socket"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        old.signal("QUIT");
        wait_ready(&site, new.pid, Duration::from_secs(20)).await;
        let status = old
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("status");
        assert!(status.success(), "{}", site.log("old.log"));
        let resp = reqwest::get(site.url("/after")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(up.last_request().uri, "/after");
    })
    .await;
}

/// A runtime directory that others can write, or that another user owns, stops the start
/// with an error naming it: whoever binds the upgrade socket there first would receive
/// the listeners at the next upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_or_foreign_runtime_directory_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let up = Upstream::start("u").await;
        let mut site = Site::new();
        site.runtime_paths = false;
        let shared = site.path("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        site.env
            .push(("RUNTIME_DIRECTORY".into(), shared.display().to_string()));
        site.write_config(&route_to(&[&up]));
        let mut proc = site.spawn(&[], "shared.log");
        let status = proc
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("status");
        assert_eq!(status.code(), Some(1), "{}", site.log("shared.log"));
        let log = site.log("shared.log");
        assert!(log.contains(&shared.display().to_string()), "{log}");
        assert!(log.contains("writable by group or others"), "{log}");
        assert!(
            std::fs::read_dir(&shared).unwrap().next().is_none(),
            "nothing written"
        );
        assert!(
            std::net::TcpStream::connect(site.listen).is_err(),
            "nothing listens"
        );

        // Owned by another user (as root; as another user the directory is already foreign).
        if std::fs::metadata(site.dir.path()).unwrap().uid() == 0 {
            let foreign = site.path("foreign");
            std::fs::create_dir(&foreign).unwrap();
            std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&foreign, Some(4242), Some(4242)).unwrap();
            site.env = vec![("RUNTIME_DIRECTORY".into(), foreign.display().to_string())];
            let mut proc = site.spawn(&[], "foreign.log");
            let status = proc
                .wait_exit(Duration::from_secs(20))
                .await
                .expect("status");
            assert_eq!(status.code(), Some(1), "{}", site.log("foreign.log"));
            let log = site.log("foreign.log");
            assert!(log.contains(&foreign.display().to_string()), "{log}");
            assert!(log.contains("owned by uid 4242"), "{log}");
        }
    })
    .await;
}
