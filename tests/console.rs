//! The admin console in a real headless browser: Chromium and chromedriver from Debian's
//! packages, driven over the W3C WebDriver protocol (plain JSON over HTTP, spoken with the
//! reqwest client the tests already use, so the browser test adds no crate). Against a
//! running gateway with two clusters, the page asks for the admin token, shows routes and
//! endpoints, marks an endpoint unhealthy once it is killed, and explains a request typed
//! into its form, as text even when the path is markup. The screenshot is written to
//! `target/console-screenshot.png`.
//!
//! Without `chromedriver` and `chromium` on PATH the browser test says SKIP loudly and
//! passes, except under `CI=true`, where `.ci/run` installs them and their absence is a
//! failure. The headers and access rules of the console's files are checked without a
//! browser.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// An executable on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// chromedriver, killed on drop with the browsers it started: it runs in a process group
/// of its own, and Chromium's processes are its children, so a test that panics before it
/// ends its session leaves no browser running.
struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: kill only reads its two integer arguments; the negative pid names the
        // process group chromedriver leads (`process_group(0)` at spawn).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(binary: &Path) -> Driver {
        let addr = free_addr();
        let child = Command::new(binary)
            .arg(format!("--port={}", addr.port()))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let driver = Driver {
            child,
            url: format!("http://{addr}"),
            http,
        };
        eventually(Duration::from_secs(10), "chromedriver is ready", || async {
            driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        driver
    }

    /// A headless Chromium session (root needs `--no-sandbox`).
    async fn session(&self, chromium: &Path) -> Session<'_> {
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1900",
                         "--no-proxy-server"],
            },
        }}});
        let answer = self
            .call(reqwest::Method::POST, "/session", Some(caps))
            .await;
        let id = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        Session { driver: self, id }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.expect("webdriver answers JSON");
        assert!(status.is_success(), "webdriver {path}: {status} {body}");
        body["value"].clone()
    }
}

/// One browser session; closed on drop (best effort: the driver's death ends it anyway).
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    async fn post(&self, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.id);
        self.driver
            .call(reqwest::Method::POST, &path, Some(body))
            .await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The element for a CSS selector (the driver waits for nothing: the caller polls).
    async fn find(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/clear"), json!({}))
            .await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Ends the WebDriver session: chromedriver closes the browser.
    async fn end(self) {
        let path = format!("/session/{}", self.id);
        self.driver.call(reqwest::Method::DELETE, &path, None).await;
    }

    async fn screenshot(&self) -> Vec<u8> {
        let path = format!("/session/{}/screenshot", self.id);
        let data = self.driver.call(reqwest::Method::GET, &path, None).await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().expect("base64 screenshot"))
            .expect("valid base64")
    }
}

/// Polls the page until `script` returns `true`.
async fn page_shows(session: &Session<'_>, limit: Duration, what: &str, script: &str) -> Duration {
    let start = Instant::now();
    loop {
        if session.eval(script).await == Value::Bool(true) {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let text = session.eval("return document.body.innerText").await;
            panic!("the page did not show {what} within {limit:?}; it reads:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The health check of cluster `orders`: one failed probe marks an endpoint unhealthy.
const HEALTH_INTERVAL: Duration = Duration::from_millis(1000);

async fn two_cluster_gateway(a: &Upstream, b: &Upstream, c: &Upstream) -> Gateway {
    let health = format!(
        "health_check = {{ path = \"/healthz\", interval = \"{}ms\", timeout = \"300ms\", healthy_threshold = 1, unhealthy_threshold = 1 }}",
        HEALTH_INTERVAL.as_millis()
    );
    Gateway::config()
        .global_plugin("request-id", "")
        .route_with("orders", "/orders", "orders", "methods = [\"GET\", \"POST\"]")
        .toml(
            r#"
[[routes]]
id = "users"
path = "/users"
versioning = { default = "2" }
versions = [
  { name = "1", cluster = "users", deprecated = { since = "2026-06-01T00:00:00Z", sunset = "2027-01-01T00:00:00Z", successor = "2", link = "https://docs:hunter2@docs.example.com/users/v2" } },
  { name = "2", cluster = "users" },
]
"#,
        )
        .cluster_with("orders", &[a, b], &health)
        .cluster("users", &[c])
        .no_access_log()
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_the_gateway_live_in_a_real_browser() {
    let (Some(driver_bin), Some(chromium)) = (on_path("chromedriver"), on_path("chromium")) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must have chromium and chromedriver (.ci/run installs them)"
        );
        eprintln!("SKIP console_shows_the_gateway_live_in_a_real_browser: no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)");
        return;
    };
    bounded_by(Duration::from_secs(90), async {
        let a = Upstream::start("a").await;
        let mut b = Upstream::start("b").await;
        let c = Upstream::start("c").await;
        let gw = two_cluster_gateway(&a, &b, &c).await;
        let token = gw.admin_token.clone().expect("the harness sets a token");
        // Traffic on both routes, so the last minute has numbers to show.
        send_and_count(&gw, "/orders/1", 20).await;
        send_and_count(&gw, "/users/1", 10).await;

        let driver = Driver::start(&driver_bin).await;
        let session = driver.session(&chromium).await;
        session.goto(&gw.admin_url("/")).await;
        // The page holds no data until it has the token.
        page_shows(&session, Duration::from_secs(10), "the token form",
            "return !document.getElementById('login').hidden").await;
        session.type_into("#token", &token).await;
        session.click("#login button").await;
        let b_row = format!("[data-endpoint=\"orders/{}\"]", b.address());
        page_shows(&session, Duration::from_secs(10), "both clusters and b healthy",
            &format!("const row = document.querySelector('{b_row}'); \
                      return !!row && row.dataset.health === 'healthy' \
                        && !!document.querySelector('[data-cluster=\"users\"]')")).await;
        // More traffic after the first sample: the routes table shows a rate.
        send_and_count(&gw, "/orders/2", 20).await;
        send_and_count(&gw, "/users/2", 10).await;
        send_and_count(&gw, "/v1/users/2", 5).await;
        // A reload, for the config section's list.
        assert_eq!(gw.admin_post("/admin/reload").await.status(), 200);
        page_shows(&session, Duration::from_secs(10), "a request rate for route orders",
            "const row = document.querySelector('[data-route=\"orders\"]'); \
             return !!row && row.cells[7].textContent !== '0.00' && row.cells[9].textContent !== '–'").await;

        // Kill b: the health check marks it unhealthy after one failed probe, and the page,
        // polling every second, shows it within one interval plus one poll.
        b.stop().await;
        let took = page_shows(&session, HEALTH_INTERVAL * 3, "b unhealthy",
            &format!("const row = document.querySelector('{b_row}'); \
                      return !!row && row.dataset.health === 'unhealthy'")).await;
        eprintln!("b shown unhealthy {took:?} after it stopped (health check every {HEALTH_INTERVAL:?}, page polls every 1 s)");
        page_shows(&session, Duration::from_secs(5), "the change in 'what changed'",
            "return document.getElementById('changes').textContent.includes('healthy → unhealthy')").await;

        // Markup typed into the explain form comes back as text, never as elements.
        session.type_into("#explain-path", "/orders/<img src=x id=injected>").await;
        session.click("#explain-form button").await;
        page_shows(&session, Duration::from_secs(5), "the explain answer for the markup path",
            "return document.getElementById('explain-answer').textContent.includes('<img src=x id=injected>')").await;
        assert_eq!(
            session.eval("return document.querySelectorAll('#injected, #explain-answer *').length").await,
            json!(0),
            "typed markup became elements"
        );
        // A real question gets `portico routes`' answer.
        session.type_into("#explain-path", "/orders/42?x=1").await;
        session.click("#explain-form button").await;
        page_shows(&session, Duration::from_secs(5), "route orders in the explain answer",
            "const t = document.getElementById('explain-answer').textContent; \
             return t.includes('route:      orders') && t.includes('upstream:   GET /orders/42?x=1')").await;

        let png = session.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshot.png");
        std::fs::write(&out, &png).expect("write the screenshot");
        eprintln!("screenshot: {}", out.display());
        // Ending the session makes chromedriver quit the browser (the driver's drop is the
        // fallback when the test fails before this).
        session.end().await;
    })
    .await;
}

/// The page and its files are served without the token and hold no data; the data needs
/// the token; every answer carries the policy that keeps the page's script its only code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_files_are_public_and_strict_and_its_data_needs_the_token() {
    bounded(async {
        let a = Upstream::start("a").await;
        let b = Upstream::start("b").await;
        let c = Upstream::start("c").await;
        let gw = two_cluster_gateway(&a, &b, &c).await;
        for (path, kind) in [
            ("/", "text/html"),
            ("/console", "text/html"),
            ("/console/console.js", "text/javascript"),
            ("/console/console.css", "text/css"),
        ] {
            let resp = gw.client.get(gw.admin_url(path)).send().await.expect("get");
            assert_eq!(resp.status(), 200, "{path}");
            let h = |n: &str| header(&resp, n).unwrap_or_default();
            assert!(h("content-type").starts_with(kind), "{path}");
            assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
            let csp = h("content-security-policy");
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
                "{path}: {csp}"
            );
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            let body = resp.text().await.expect("body");
            assert!(!body.contains(&b.address()), "{path} holds no data");
        }
        let page = gw.client.get(gw.admin_url("/")).send().await.expect("get");
        let html = page.text().await.expect("body");
        assert!(!html.contains("<script>"), "no inline script");
        let script = gw
            .client
            .get(gw.admin_url("/console/console.js"))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("body");
        assert!(
            !script.contains("innerHTML"),
            "the script builds the DOM as text"
        );

        for path in ["/admin/console", "/admin/explain?path=/orders/1"] {
            let resp = gw.client.get(gw.admin_url(path)).send().await.expect("get");
            assert_eq!(resp.status(), 401, "{path} without the token");
        }
        let live = gw.admin_json("/admin/console").await;
        let clusters: Vec<&str> = live["clusters"]
            .as_array()
            .expect("clusters")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(clusters, ["orders", "users"]);
        assert_eq!(live["routes_total"], 2);
        assert!(live["config"]["version"].is_string(), "{live}");
        assert!(live["tokens"]["verified"].is_u64(), "{live}");

        // The explain endpoint runs `portico routes`' logic on the running config.
        let answer = gw
            .admin_json("/admin/explain?method=post&path=%2Forders%2F42%3Fx%3D1")
            .await;
        assert_eq!(answer["answer"]["outcome"], "routed", "{answer}");
        assert_eq!(answer["answer"]["route"], "orders", "{answer}");
        assert_eq!(
            answer["answer"]["upstream"], "POST /orders/42?x=1",
            "{answer}"
        );
        let cli = gw
            .portico_command()
            .args(["routes", "-c"])
            .arg(&gw.config_path)
            .args(["POST", "/orders/42?x=1"])
            .output()
            .expect("portico routes");
        assert_eq!(
            String::from_utf8_lossy(&cli.stdout),
            answer["text"].as_str().unwrap_or_default(),
            "the CLI and the console say the same"
        );
        let refused = gw
            .admin_json("/admin/explain?method=DELETE&path=/orders/1")
            .await;
        assert_eq!(refused["answer"]["outcome"], "refused", "{refused}");
        let status = refused["answer"]["status"].as_u64();
        assert!(matches!(status, Some(404 | 405)), "{refused}");
        let resp = gw.admin_get("/admin/explain?method=GET").await;
        assert_eq!(resp.status(), 400, "no path");

        // Secrets in config values are redacted as in /admin/config: the password of the
        // deprecation link's URL.
        let v1 = gw.admin_json("/admin/explain?path=/v1/users/7").await;
        assert_eq!(v1["answer"]["version"], "1", "{v1}");
        let text = v1["text"].as_str().unwrap_or_default();
        assert!(
            text.contains("https://docs:<redacted>@docs.example.com"),
            "{text}"
        );
        for doc in [v1.to_string(), live.to_string()] {
            assert!(!doc.contains("hunter2"), "{doc}");
        }
    })
    .await;
}
