//! A generator of large, realistic gateway configs (hosts × paths × versions routes), shared
//! by the config-scale benchmark (`benches/config_scale.rs`, `benches/config_scale.sh`), the
//! 100,000-route table of `benches/route_match.rs` and the test that such a config loads and
//! routes (`tests/config_scale.rs`), so all three measure and check the same shape.
//!
//! Every (host, path, version) triple is one `[[routes]]` entry. The path index picks the
//! route's kind, so each kind is spread over every host:
//!
//! | path % 10 | kind |
//! |---|---|
//! | 0, 1, 2 | prefix `/v{k}/svc{s}/r{p}`: the version in the URI, as part of the route path |
//! | 3 | exact `/v{k}/svc{s}/r{p}/items` |
//! | 4 | exact `/v{k}/svc{s}/r{p}/items`, `methods = ["GET", "HEAD"]`, `on_mismatch = "405"`, the `jwt` plugin |
//! | 5 | prefix `/svc{s}/r{p}`, the version from a header matcher (`accept-version: {k}`), the `jwt` plugin; fall-through on mismatch unless [`Spec::fallthrough`] is off |
//! | 6 | prefix `/svc{s}/r{p}/k{k}` with portico's versioning: `/v1`…`/v3` from the URI or `x-api-version`, default 2, version 1 deprecated with a sunset |
//! | 7 | prefix `/v{k}/svc{s}/r{p}/files` with `allow_path_params`, `rewrite_prefix`, a retry policy, a timeout and the `rate-limit` plugin |
//! | 8 | prefix `/v{k}/svc{s}/r{p}/edit` with `strip_prefix`, `methods = ["POST", "PUT", "PATCH"]` and the `headers` plugin |
//! | 9 | prefix `/v{k}/svc{s}/r{p}/admin` with a header matcher (`x-tenant`, present), `on_mismatch = "404"` and the `jwt` and `headers` plugins |
//!
//! Host `h` is `api{h}.example.com`, except every tenth host (`h % 10 == 8`) which is the
//! wildcard `*.t{h}.example.net`, and `h % 10 == 9`, which has two names
//! (`api{h}.example.com`, `api{h}.example.org`). Services are `s = p / 10`. Routes are
//! spread over `clusters` clusters, each with the one upstream address given.

// Each includer (benches, tests) uses a different part of it.
#![allow(dead_code)]

use std::fmt::Write as _;

/// The shape of a generated config.
#[derive(Debug, Clone)]
pub struct Spec {
    pub hosts: usize,
    pub paths: usize,
    pub versions: usize,
    pub clusters: usize,
    /// The `ip:port` every cluster sends to.
    pub upstream: String,
    /// The proxy listener and the admin listener.
    pub listen: String,
    pub admin: String,
    /// Where the pid file and the upgrade socket go (the default runtime directory when
    /// `None`).
    pub runtime_dir: Option<String>,
    /// `[admin] token_file`: the admin API refuses everything but health and metrics without
    /// a token, and the benches reload through it.
    pub admin_token_file: Option<String>,
    /// The name of host 0 instead of `api0.example.com`, e.g. `127.0.0.1` so that a load
    /// generator that sends the URL's authority as `Host` reaches host 0's routes.
    pub traffic_host: Option<String>,
    /// Whether the header-versioned jwt routes (kind 5) let a request they refuse fall
    /// through to a weaker route (the default, as written), which makes each of them a
    /// route `portico check`'s fall-through lint compares with the others; `false` gives
    /// them `on_mismatch = "404"` (the rate-limit routes of kind 7 still fall through).
    pub fallthrough: bool,
}

impl Spec {
    /// 100 hosts × 250 paths × 4 versions = 100,000 routes, or the same shape at another
    /// size: `routes` is rounded down to a multiple of 1,000 (hosts = routes / 1,000); 0
    /// gives the clusters and no route.
    pub fn with_routes(routes: usize) -> Spec {
        Spec {
            hosts: routes / 1_000,
            paths: 250,
            versions: 4,
            clusters: 50,
            upstream: "127.0.0.1:9".to_string(),
            listen: "127.0.0.1:0".to_string(),
            admin: "127.0.0.1:0".to_string(),
            runtime_dir: None,
            admin_token_file: None,
            traffic_host: None,
            fallthrough: true,
        }
    }

    pub fn routes(&self) -> usize {
        self.hosts * self.paths * self.versions
    }
}

/// The host names route `h` serves.
fn host_names(h: usize) -> Vec<String> {
    match h % 10 {
        8 => vec![format!("*.t{h}.example.net")],
        9 => vec![format!("api{h}.example.com"), format!("api{h}.example.org")],
        _ => vec![format!("api{h}.example.com")],
    }
}

/// A host name a request for host `h` can send.
pub fn request_host(h: usize) -> String {
    match h % 10 {
        8 => format!("eu.t{h}.example.net"),
        _ => format!("api{h}.example.com"),
    }
}

fn cluster(spec: &Spec, h: usize, p: usize, k: usize) -> String {
    format!("c{}", (h * 7 + p * 3 + k) % spec.clusters.max(1))
}

const JWT: &str = r#"[[routes.plugins]]
name = "jwt"
scopes_any = ["read", "admin"]
[[routes.plugins.issuers]]
issuer = "https://auth.example.com"
audiences = ["api"]
jwks_url = "https://auth.example.com/.well-known/jwks.json"
"#;

/// The config text.
pub fn generate(spec: &Spec) -> String {
    let mut out = String::with_capacity(spec.routes() * 260);
    let _ = write!(
        out,
        "# Generated by benches/support/scale_config.rs: {} hosts x {} paths x {} versions = {} routes.\n\n\
         [server]\nthreads = 1\n",
        spec.hosts,
        spec.paths,
        spec.versions,
        spec.routes(),
    );
    if let Some(dir) = &spec.runtime_dir {
        let _ = write!(
            out,
            "pid_file = \"{dir}/portico.pid\"\nupgrade_sock = \"{dir}/upgrade.sock\"\n"
        );
    }
    let _ = write!(
        out,
        "\n[[listeners]]\naddress = \"{}\"\n\n[admin]\naddress = \"{}\"\n",
        spec.listen, spec.admin
    );
    if let Some(file) = &spec.admin_token_file {
        let _ = writeln!(out, "token_file = \"{file}\"");
    }
    out.push_str("\n[logging]\naccess_log = \"off\"\n\n");
    out.push_str(&body(spec));
    out
}

/// The routes and clusters alone, for a test harness that writes `[server]`, the listener,
/// the admin API and logging itself.
pub fn body(spec: &Spec) -> String {
    let mut out = String::with_capacity(spec.routes() * 260);
    for h in 0..spec.hosts {
        let names = match (&spec.traffic_host, h) {
            (Some(name), 0) => vec![name.clone()],
            _ => host_names(h),
        };
        let hosts = names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for p in 0..spec.paths {
            let s = p / 10;
            for k in 1..=spec.versions {
                let c = cluster(spec, h, p, k);
                let _ = write!(
                    out,
                    "[[routes]]\nid = \"h{h}-p{p}-v{k}\"\nhosts = [{hosts}]\n"
                );
                match p % 10 {
                    0..=2 => {
                        let _ = write!(out, "path = \"/v{k}/svc{s}/r{p}\"\ncluster = \"{c}\"\n");
                    }
                    3 => {
                        let _ = write!(
                            out,
                            "path = \"/v{k}/svc{s}/r{p}/items\"\npath_match = \"exact\"\ncluster = \"{c}\"\n"
                        );
                    }
                    4 => {
                        let _ = write!(
                            out,
                            "path = \"/v{k}/svc{s}/r{p}/items\"\npath_match = \"exact\"\n\
                             methods = [\"GET\", \"HEAD\"]\non_mismatch = \"405\"\ncluster = \"{c}\"\n{JWT}"
                        );
                    }
                    5 => {
                        let _ = write!(
                            out,
                            "path = \"/svc{s}/r{p}\"\nheaders = [{{ name = \"accept-version\", value = \"{k}\" }}]\n\
                             {}cluster = \"{c}\"\n{JWT}",
                            if spec.fallthrough { "" } else { "on_mismatch = \"404\"\n" }
                        );
                    }
                    6 => {
                        let c2 = cluster(spec, h, p, k + 1);
                        let c3 = cluster(spec, h, p, k + 2);
                        let _ = write!(
                            out,
                            "path = \"/svc{s}/r{p}/k{k}\"\n\
                             versioning = {{ sources = [\"uri\", \"header\"], header = \"x-api-version\", default = \"2\" }}\n\
                             [[routes.versions]]\nname = \"1\"\ncluster = \"{c}\"\n\
                             deprecated = {{ since = \"2026-01-01T00:00:00Z\", sunset = \"2027-06-30T00:00:00Z\", successor = \"2\" }}\n\
                             [[routes.versions]]\nname = \"2\"\ncluster = \"{c2}\"\n\
                             [[routes.versions]]\nname = \"3\"\ncluster = \"{c3}\"\nrewrite_prefix = \"/next/svc{s}/r{p}\"\n"
                        );
                    }
                    7 => {
                        let _ = write!(
                            out,
                            "path = \"/v{k}/svc{s}/r{p}/files\"\nallow_path_params = true\n\
                             rewrite_prefix = \"/storage/r{p}\"\ntimeout = \"5s\"\ncluster = \"{c}\"\n\
                             retry = {{ attempts = 2, on = [\"connect_failure\", \"503\"], per_try_timeout = \"2s\" }}\n\
                             [[routes.plugins]]\nname = \"rate-limit\"\nrate = 500\nperiod = \"1s\"\nburst = 100\n"
                        );
                    }
                    8 => {
                        let _ = write!(
                            out,
                            "path = \"/v{k}/svc{s}/r{p}/edit\"\nstrip_prefix = true\n\
                             methods = [\"POST\", \"PUT\", \"PATCH\"]\ncluster = \"{c}\"\n\
                             [[routes.plugins]]\nname = \"headers\"\n\
                             request = {{ set = {{ \"X-Service\" = \"svc{s}\" }} }}\nresponse = {{ remove = [\"Server\"] }}\n"
                        );
                    }
                    _ => {
                        let _ = write!(
                            out,
                            "path = \"/v{k}/svc{s}/r{p}/admin\"\nheaders = [{{ name = \"x-tenant\" }}]\n\
                             on_mismatch = \"404\"\ncluster = \"{c}\"\n{JWT}\
                             [[routes.plugins]]\nname = \"headers\"\nresponse = {{ set = {{ \"Cache-Control\" = \"no-store\" }} }}\n"
                        );
                    }
                }
                out.push('\n');
            }
        }
    }
    for c in 0..spec.clusters.max(1) {
        let _ = write!(
            out,
            "[clusters.c{c}]\nendpoints = [{{ address = \"{}\" }}]\n\n",
            spec.upstream
        );
    }
    out
}

/// A request and the route (and API version) it must reach.
#[derive(Debug, Clone)]
pub struct Probe {
    pub host: String,
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub route: String,
    pub version: Option<&'static str>,
}

/// Requests that reach routes of every kind on host `h`, path index `p` (any `p`; its last
/// digit picks the kind) and version `k` (1..=versions).
pub fn probe(h: usize, p: usize, k: usize) -> Probe {
    let s = p / 10;
    let mut probe = Probe {
        host: request_host(h),
        method: "GET",
        path: String::new(),
        headers: Vec::new(),
        route: format!("h{h}-p{p}-v{k}"),
        version: None,
    };
    probe.path = match p % 10 {
        0..=2 => format!("/v{k}/svc{s}/r{p}/orders/42"),
        3 | 4 => format!("/v{k}/svc{s}/r{p}/items"),
        5 => {
            probe.headers.push(("accept-version", k.to_string()));
            format!("/svc{s}/r{p}/x")
        }
        6 => {
            probe.version = Some("3");
            format!("/v3/svc{s}/r{p}/k{k}/list")
        }
        7 => format!("/v{k}/svc{s}/r{p}/files/a.txt"),
        8 => {
            probe.method = "PUT";
            format!("/v{k}/svc{s}/r{p}/edit/1")
        }
        _ => {
            probe.headers.push(("x-tenant", "acme".to_string()));
            format!("/v{k}/svc{s}/r{p}/admin/users")
        }
    };
    probe
}
