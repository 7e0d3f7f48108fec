//! The `portico` command line: `check` (exit 0, or exit 2 listing every problem as
//! `file:line:col: field.path: message`), `routes` (explains a request), `--version`, and
//! `serve -t` (builds everything and exits without serving).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_addr, new_admin_token, ADMIN_TOKEN_ENV, PORTICO};

/// What a finished `portico` run left.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs portico with `args` (and extra environment), killing it after 10 s.
fn portico(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut command = Command::new(PORTICO);
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .env(ADMIN_TOKEN_ENV, new_admin_token())
        .env_remove("PORTICO_SURELY_MISSING_VAR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start portico");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`portico {}` did not exit within 10 s; stderr:\n{}",
                args.join(" "),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Writes `text` to `name` in `dir` and returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A minimal valid header: server files in `dir`, a listener and the admin API on free ports.
fn header(dir: &Path) -> String {
    format!(
        "[server]\nthreads = 1\npid_file = \"{d}/p.pid\"\nupgrade_sock = \"{d}/u.sock\"\n\n[[listeners]]\naddress = \"{}\"\n\n[admin]\naddress = \"{}\"\ntoken = \"${{{ADMIN_TOKEN_ENV}}}\"\n[logging]\naccess_log = \"off\"\n\n",
        free_addr(),
        free_addr(),
        d = dir.display()
    )
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the config"))
        + 1
}

/// The 1-based column of `needle` on that line.
fn col_of(text: &str, needle: &str, at: &str) -> usize {
    let line = text.lines().find(|l| l.contains(needle)).unwrap();
    line.find(at)
        .unwrap_or_else(|| panic!("`{at}` not on line `{line}`"))
        + 1
}

/// Asserts stderr has a line `error: FILE:LINE:COL: FIELD: …MESSAGE…`.
fn assert_problem(stderr: &str, file: &str, line: usize, col: usize, field: &str, message: &str) {
    let prefix = format!("{file}:{line}:{col}: {field}: ");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&prefix) && l[l.find(&prefix).unwrap()..].contains(message)),
        "expected a problem `{prefix}…{message}…` in:\n{stderr}"
    );
}

#[test]
fn check_accepts_the_example_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/portico.toml");
    if !example.exists() {
        eprintln!(
            "NOTE: {} does not exist yet; skipping `portico check` on it",
            example.display()
        );
        return;
    }
    let run = portico(&["check", "-c", example.to_str().unwrap()], &[]);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{}[limits]
max_uri_bytes = 4096

[[plugins]]
name = "request-id"

[[plugins]]
name = "cors"
allow_origins = ["https://app.example.com"]

[[routes]]
id = "orders"
hosts = ["api.example.com", "*.example.com"]
path = "/orders"
methods = ["GET", "POST"]
headers = [{{ name = "X-Tenant" }}]
cluster = "orders"
rewrite_prefix = "/api/orders"

[[routes.plugins]]
name = "headers"
request = {{ set = {{ "Authorization" = "Bearer ${{PORTICO_IT_CHECK_TOKEN}}" }} }}

[[routes]]
id = "stock"
path = "/stock"
path_match = "exact"
cluster = "stock"

[clusters.orders]
lb = "least_request"
endpoints = [{{ address = "127.0.0.1:9101", weight = 3 }}, {{ address = "127.0.0.1:9102" }}]
timeouts = {{ connect = "250ms", read = "5s" }}
health_check = {{ path = "/healthz", interval = "2s", timeout = "500ms" }}
outlier = {{ consecutive_5xx = 3, base_ejection = "5s", max_ejection = "1m" }}

[clusters.stock]
lb = "consistent_hash"
hash = {{ by = "cookie", name = "sid" }}
endpoints = [{{ address = "localhost:9201" }}]
"#,
        header(dir.path())
    );
    let file = write(dir.path(), "valid.toml", &text);
    let run = portico(
        &["check", "-c", &file],
        &[("PORTICO_IT_CHECK_TOKEN", "abc")],
    );
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stdout.contains("ok"), "{}", run.stdout);
    assert!(run.stderr.trim().is_empty(), "{}", run.stderr);
}

/// A protected route whose refused requests would fall through to a weaker route on the
/// same cluster is valid but warned about; `on_mismatch` silences the warning.
#[test]
fn check_warns_when_a_protected_route_falls_through_to_a_weaker_one() {
    let dir = tempfile::tempdir().unwrap();
    let routes = |on_mismatch: &str| {
        format!(
            r#"{}
[[routes]]
id = "admin"
path = "/admin"
methods = ["GET"]
cluster = "app"
{on_mismatch}

[[routes.plugins]]
name = "rate-limit"
rate = 10

[[routes]]
id = "root"
path = "/"
cluster = "app"

[clusters.app]
endpoints = [{{ address = "127.0.0.1:9101" }}]
"#,
            header(dir.path())
        )
    };
    let file = write(dir.path(), "loose.toml", &routes(""));
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(
        run.code,
        Some(0),
        "a warning is not an error:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("warning:")
            && run.stderr.contains("routes[0]")
            && run.stderr.contains("`root`")
            && run.stderr.contains("on_mismatch"),
        "{}",
        run.stderr
    );
    let file = write(dir.path(), "strict.toml", &routes("on_mismatch = \"405\""));
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.trim().is_empty(), "{}", run.stderr);
}

/// One config with every kind of validation problem: all are listed, in file order, each
/// with its line, column and field path.
#[test]
fn check_lists_every_validation_problem_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[server]
threads = 1

[[listeners]]
address = "not-an-address"

[[plugins]]
name = "no-such-plugin"

[[routes]]
id = "orders"
path = "/orders"
cluster = "missing"

[[routes]]
id = "orders"
path = "/orders/"
cluster = "a"

[[routes.plugins]]
name = "cors"
bogus_field = true

[clusters.a]
endpoints = [{ address = "127.0.0.1:9101", weight = 0 }]

[clusters.b]
endpoints = []

[clusters.h]
lb = "consistent_hash"
endpoints = [{ address = "127.0.0.1:9102" }]
"#;
    let file = write(dir.path(), "broken.toml", text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(
        run.code,
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let err = &run.stderr;
    let at = |needle: &str, value: &str| (line_of(text, needle), col_of(text, needle, value));

    let (l, c) = at("not-an-address", "\"not-an-address\"");
    assert_problem(
        err,
        &file,
        l,
        c,
        "listeners[0].address",
        "not an ip:port address",
    );
    let (l, c) = at("no-such-plugin", "\"no-such-plugin\"");
    assert_problem(
        err,
        &file,
        l,
        c,
        "plugins[0].name",
        "unknown plugin `no-such-plugin`",
    );
    let (l, c) = at("\"missing\"", "\"missing\"");
    assert_problem(
        err,
        &file,
        l,
        c,
        "routes[0].cluster",
        "unknown cluster `missing`",
    );
    // The second `id = "orders"`, on line 16.
    assert_problem(
        err,
        &file,
        16,
        6,
        "routes[1].id",
        "duplicate route id `orders`",
    );
    let (l, c) = at("\"/orders/\"", "\"/orders/\"");
    assert_problem(err, &file, l, c, "routes[1].path", "routes[0]");
    let (l, c) = at("bogus_field", "true");
    assert_problem(
        err,
        &file,
        l,
        c,
        "routes[1].plugins[0].bogus_field",
        "unknown field `bogus_field`",
    );
    let (l, c) = at("weight = 0", "0 }");
    assert_problem(
        err,
        &file,
        l,
        c,
        "clusters.a.endpoints[0].weight",
        "at least 1",
    );
    let (l, c) = at("endpoints = []", "[]");
    assert_problem(
        err,
        &file,
        l,
        c,
        "clusters.b.endpoints",
        "at least one endpoint",
    );
    // A missing field points at its table.
    let hash_line = err
        .lines()
        .find(|l| l.contains(": clusters.h.hash: "))
        .unwrap_or_else(|| panic!("no problem for clusters.h.hash in:\n{err}"));
    let table_line = line_of(text, "[clusters.h]");
    assert!(
        hash_line.contains(&format!("{file}:{table_line}:"))
            || hash_line.contains(&format!("{file}:{}:", table_line + 1)),
        "clusters.h.hash should point at [clusters.h]: {hash_line}"
    );
    assert!(hash_line.contains("consistent_hash"), "{hash_line}");

    let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(problems.len(), 9, "{err}");
    assert!(err.contains("9 problem(s) found"), "{err}");
    // In file order.
    let lines: Vec<usize> = problems
        .iter()
        .map(|p| {
            p[7 + file.len() + 1..]
                .split(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "{err}");
}

#[test]
fn check_reports_an_unknown_field_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[clusters.a]\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\nretries = 3\n",
        header(dir.path())
    );
    let file = write(dir.path(), "unknown.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_problem(
        &run.stderr,
        &file,
        line_of(&text, "retries = 3"),
        1,
        "clusters.a.retries",
        "unknown field `retries`",
    );
}

#[test]
fn check_reports_a_bad_duration_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[clusters.a]\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\ntimeouts = {{ connect = \"1s\", read = \"5 parsecs\" }}\n",
        header(dir.path())
    );
    let file = write(dir.path(), "duration.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_problem(
        &run.stderr,
        &file,
        line_of(&text, "parsecs"),
        col_of(&text, "parsecs", "\"5 parsecs\""),
        "clusters.a.timeouts.read",
        "invalid duration `5 parsecs`",
    );
}

#[test]
fn check_reports_a_missing_env_var_with_its_location_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[[plugins]]\nname = \"headers\"\nrequest = {{ set = {{ \"X-Token\" = \"${{PORTICO_SURELY_MISSING_VAR}}\" }} }}\n",
        header(dir.path())
    );
    let file = write(dir.path(), "env.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let line = line_of(&text, "PORTICO_SURELY_MISSING_VAR");
    let col = col_of(&text, "PORTICO_SURELY_MISSING_VAR", "${");
    let problem = run
        .stderr
        .lines()
        .find(|l| l.contains("PORTICO_SURELY_MISSING_VAR"))
        .unwrap_or_else(|| panic!("the missing variable is not named:\n{}", run.stderr));
    assert!(
        problem.contains(&format!("{file}:{line}:{col}: ")),
        "points at the reference: {problem}"
    );
    assert!(problem.contains("is not set"), "{problem}");
    assert!(
        problem.contains(": plugins[0].request.set."),
        "the problem should name its field path like every other config error: {problem}"
    );
}

/// Problems found while parsing (unknown fields, bad values, missing variables) are listed
/// together with each other and with the cross-reference problems, not one per run.
#[test]
fn check_reports_every_problem_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{}[[routes]]
id = "a"
path = "/a"
cluster = "nope"
priority = 1

[clusters.a]
endpoints = [{{ address = "127.0.0.1:9101" }}]
timeouts = {{ read = "soon" }}
retries = 3
"#,
        header(dir.path())
    );
    let file = write(dir.path(), "many.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    for (needle, field) in [
        ("priority = 1", "routes[0].priority"),
        ("\"soon\"", "clusters.a.timeouts.read"),
        ("retries = 3", "clusters.a.retries"),
        ("\"nope\"", "routes[0].cluster"),
    ] {
        let prefix = format!("{file}:{}:", line_of(&text, needle));
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains(&prefix) && l.contains(&format!(": {field}: "))),
            "`{field}` (line {}) is not reported in:\n{}",
            line_of(&text, needle),
            run.stderr
        );
    }
}

#[test]
fn check_fails_on_a_missing_file() {
    let run = portico(&["check", "-c", "/nonexistent/portico.toml"], &[]);
    assert_eq!(run.code, Some(2));
    assert!(
        run.stderr.contains("/nonexistent/portico.toml"),
        "{}",
        run.stderr
    );
}

fn routes_config(dir: &Path) -> String {
    let text = format!(
        r#"{}[[plugins]]
name = "request-id"

[[routes]]
id = "orders-admin"
hosts = ["admin.example.com"]
path = "/orders"
methods = ["GET"]
cluster = "orders"

[[routes.plugins]]
name = "headers"
response = {{ remove = ["Server"] }}

[[routes.plugins]]
name = "cors"

[[routes]]
id = "orders"
path = "/orders"
cluster = "orders"
rewrite_prefix = "/api/orders"

[clusters.orders]
endpoints = [{{ address = "127.0.0.1:9101" }}]
"#,
        header(dir)
    );
    write(dir, "routes.toml", &text)
}

#[test]
fn routes_explains_the_route_cluster_and_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let file = routes_config(dir.path());
    let run = portico(
        &[
            "routes",
            "-c",
            &file,
            "GET",
            "/orders/42",
            "-H",
            "Host: admin.example.com",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("orders-admin"), "{out}");
    assert!(out.contains("cluster:") && out.contains("orders"), "{out}");
    assert!(out.contains("127.0.0.1:9101"), "{out}");
    assert!(out.contains("request-id"), "global plugins: {out}");
    assert!(
        out.contains("headers") && out.contains("cors"),
        "route plugins: {out}"
    );

    // Another host gets the other route, with the rewritten upstream path.
    let run = portico(
        &[
            "routes",
            "-c",
            &file,
            "GET",
            "/orders/42?x=1",
            "-H",
            "Host: other.example.com",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let route_line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("route:"))
        .unwrap_or_else(|| panic!("no route line: {}", run.stdout));
    assert!(
        route_line.contains("orders") && !route_line.contains("orders-admin"),
        "{route_line}"
    );
    assert!(run.stdout.contains("/api/orders/42?x=1"), "{}", run.stdout);
}

/// An absolute-form target is explained as the proxy routes it: by its path, its authority
/// the Host (tests/fuzz_gateway.rs checks the proxy side).
#[test]
fn routes_explains_an_absolute_form_target_by_its_path_and_authority() {
    let dir = tempfile::tempdir().unwrap();
    let file = routes_config(dir.path());
    let run = portico(
        &[
            "routes",
            "-c",
            &file,
            "GET",
            "http://admin.example.com/orders/42",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("orders-admin"), "{}", run.stdout);
    let run = portico(
        &[
            "routes",
            "-c",
            &file,
            "GET",
            "http://admin.example.com/orders/42",
            "-H",
            "Host: other.example.com",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("400"), "{}", run.stdout);
}

#[test]
fn routes_without_a_match_exits_1_with_404() {
    let dir = tempfile::tempdir().unwrap();
    let file = routes_config(dir.path());
    let run = portico(&["routes", "-c", &file, "GET", "/nothing/here"], &[]);
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("404"), "{}", run.stdout);
}

#[test]
fn version_prints_the_package_version() {
    let run = portico(&["--version"], &[]);
    assert_eq!(run.code, Some(0));
    assert!(
        run.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.starts_with("portico"), "{}", run.stdout);
}

#[test]
fn serve_test_mode_exits_0_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let text = format!(
        "[server]\nthreads = 1\npid_file = \"{d}/p.pid\"\nupgrade_sock = \"{d}/u.sock\"\n\n[[listeners]]\naddress = \"{listen}\"\n\n[admin]\naddress = \"{}\"\n\n[logging]\naccess_log = \"off\"\n\n[[routes]]\nid = \"a\"\npath = \"/\"\ncluster = \"a\"\n\n[clusters.a]\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\n",
        free_addr(),
        d = dir.path().display()
    );
    let file = write(dir.path(), "serve.toml", &text);
    let started = Instant::now();
    let run = portico(&["serve", "-t", "-c", &file], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "nothing listens after `serve -t`"
    );

    // A broken config fails the test run with exit 2 and the problem.
    let broken = write(
        dir.path(),
        "broken.toml",
        &text.replace("cluster = \"a\"", "cluster = \"b\""),
    );
    let run = portico(&["serve", "-t", "-c", &broken], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("unknown cluster `b`"), "{}", run.stderr);
}

/// `config get` prints what the gateway would use: `${ENV}` values, defaults, dotted keys
/// and quoted names, arrays by index, an empty line for an unset option; an invalid config
/// exits 2 with its problems, a path through a plain value 1.
#[test]
fn config_get_prints_effective_values() {
    let dir = tempfile::tempdir().unwrap();
    // Dotted keys and an inline table, as TOML allows, which no line-based scraping reads.
    let text = format!(
        "server.threads = 1\nserver.pid_file = \"{d}/p.pid\"\nserver.upgrade_sock = \"{d}/u.sock\"\nserver.grace_period_seconds = 7\nlogging.access_log = \"off\"\nadmin = {{ address = \"{admin}\", token = \"${{{ADMIN_TOKEN_ENV}}}\" }}\n\n[[listeners]]\naddress = \"{listen}\"\n\n[[plugins]]\nname = \"headers\"\nrequest = {{ set = {{ \"X-Env\" = \"${{PORTICO_TEST_SNI}}\" }} }}\n\n[clusters.\"api.v2\"]\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n",
        d = dir.path().display(),
        admin = free_addr(),
        listen = free_addr(),
    );
    let file = write(dir.path(), "get.toml", &text);
    let token = new_admin_token();
    let run = portico(
        &[
            "config",
            "get",
            "-c",
            &file,
            "server.grace_period_seconds",
            "admin.token",
            "plugins.0.request.set.X-Env",
            "admin.token_file",
            "server.graceful_shutdown_timeout_seconds",
            "listeners.0",
        ],
        &[
            (ADMIN_TOKEN_ENV, token.as_str()),
            ("PORTICO_TEST_SNI", "api.internal"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", run.stdout);
    assert_eq!(lines[0], "7");
    assert_eq!(lines[1], token);
    assert_eq!(lines[2], "api.internal");
    assert_eq!(lines[3], "");
    assert_eq!(lines[4], "10");
    assert!(
        lines[5].starts_with('{') && lines[5].contains("\"address\""),
        "{}",
        lines[5]
    );
    let run = portico(
        &[
            "config",
            "get",
            "-c",
            &file,
            "clusters.\"api.v2\".endpoints.0.address",
        ],
        &[("PORTICO_TEST_SNI", "x")],
    );
    assert_eq!(run.stdout.trim(), "127.0.0.1:1", "{}", run.stderr);

    let run = portico(
        &["config", "get", "-c", &file, "server.threads.x"],
        &[("PORTICO_TEST_SNI", "x")],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("server.threads"), "{}", run.stderr);

    let run = portico(&["config", "get", "-c", &file, "server.threads"], &[]);
    assert_eq!(run.code, Some(2), "an unset variable is a config problem");
    assert!(run.stderr.contains("PORTICO_TEST_SNI"), "{}", run.stderr);
}

#[test]
fn check_locates_bad_proxy_protocol_and_ip_filter_settings() {
    let dir = tempfile::tempdir().unwrap();
    // A type error stops the parse: reported with its place on its own.
    let text = format!(
        "{}[[listeners]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = \"yes\"\n",
        header(dir.path())
    );
    let file = write(dir.path(), "proxy.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_problem(
        &run.stderr,
        &file,
        line_of(&text, "proxy_protocol"),
        col_of(&text, "proxy_protocol", "\"yes\""),
        "listeners[1].proxy_protocol",
        "invalid type",
    );

    let text = format!(
        r#"{}[limits]
proxy_header_timeout = "0s"

[[routes]]
id = "r"
path = "/"
cluster = "c"

[[routes.plugins]]
name = "ip-filter"
allow = ["10.0.0.0/8", "10.0.0.1/8"]

[clusters.c]
endpoints = [{{ address = "127.0.0.1:9101" }}]
"#,
        header(dir.path())
    );
    let file = write(dir.path(), "proxy-limits.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_problem(
        &run.stderr,
        &file,
        line_of(&text, "proxy_header_timeout"),
        col_of(&text, "proxy_header_timeout", "\"0s\""),
        "limits.proxy_header_timeout",
        "must be longer than 0s",
    );
    assert_problem(
        &run.stderr,
        &file,
        line_of(&text, "allow = ["),
        col_of(&text, "allow = [", "\"10.0.0.1/8\""),
        "routes[0].plugins[0].allow[1]",
        "has host bits set below its prefix",
    );
}

#[test]
fn check_locates_bad_route_limits() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{}[[routes]]
id = "r"
path = "/"
cluster = "c"
limits = {{ max_body_bytes = 0, body_timeout = "0s" }}

[clusters.c]
endpoints = [{{ address = "127.0.0.1:9101" }}]
"#,
        header(dir.path())
    );
    let file = write(dir.path(), "limits.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let limits_line = line_of(&text, "limits = {");
    assert_problem(
        &run.stderr,
        &file,
        limits_line,
        col_of(&text, "limits = {", "0,"),
        "routes[0].limits.max_body_bytes",
        "must be greater than 0",
    );
    assert_problem(
        &run.stderr,
        &file,
        limits_line,
        col_of(&text, "limits = {", "\"0s\""),
        "routes[0].limits.body_timeout",
        "must be longer than 0s",
    );

    // An unknown key in a route's limits is named with its place.
    let text = format!(
        "{}[[routes]]\nid = \"r\"\npath = \"/\"\ncluster = \"c\"\nlimits = {{ max_body = 5 }}\n[clusters.c]\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\n",
        header(dir.path())
    );
    let file = write(dir.path(), "unknown.toml", &text);
    let run = portico(&["check", "-c", &file], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_problem(
        &run.stderr,
        &file,
        line_of(&text, "max_body = 5"),
        col_of(&text, "max_body = 5", "max_body"),
        "routes[0].limits.max_body",
        "unknown field `max_body`",
    );
}

#[test]
fn routes_shows_a_routes_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[[routes]]\nid = \"uploads\"\npath = \"/uploads\"\ncluster = \"c\"\nlimits = {{ max_body_bytes = 104857600, body_timeout = \"2m\", response_header_timeout = \"10s\" }}\n[[routes.plugins]]\nname = \"ip-filter\"\nallow = [\"10.0.0.0/8\"]\n[clusters.c]\nendpoints = [{{ address = \"127.0.0.1:9101\" }}]\n",
        header(dir.path())
    );
    let file = write(dir.path(), "routes.toml", &text);
    let run = portico(&["routes", "-c", &file, "POST", "/uploads/a"], &[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("limits:"))
        .unwrap_or_else(|| panic!("no limits line: {}", run.stdout));
    assert!(
        line.contains("max_body_bytes 104857600")
            && line.contains("body_timeout 2m")
            && line.contains("response_header_timeout 10s"),
        "{line}"
    );
    assert!(run.stdout.contains("ip-filter"), "{}", run.stdout);
}
