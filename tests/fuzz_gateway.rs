//! Hostile requests against the real gateway (issue 14, item 5): a deterministic generator
//! throws malformed request lines, odd paths (`..`, `%2e`, `//`, NUL, `;`), absolute-form
//! targets, header floods, bad chunked bodies and garbage, forged or missing
//! `Authorization` headers at `portico serve` in front of two recording upstreams, over raw
//! sockets, and checks the property the fuzz targets in `fuzz/` check function by function:
//!
//! - the gateway never panics and stays up;
//! - it never answers 5xx itself (both upstreams always answer 200, so no 5xx is theirs);
//! - an upstream never receives a request that routing or the jwt plugin refused: the open
//!   upstream only normal origin-form paths under `/public`, the protected one only paths
//!   under `/protected` with a genuine token, and nothing at all under `/admin` (whose
//!   scope no token has); a request the gateway refused reached no upstream.
//!
//! Bounded: a fixed seed, a fixed number of requests, short client deadlines; a few
//! seconds. The regression tests for what fuzzing found are at the end.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "fuzz-gateway-secret-fuzz-gateway-secret-0123456789";
const ISSUER: &str = "https://auth.test";
/// Requests the generator sends (a few seconds in a debug build).
const REQUESTS: u64 = 600;
/// Connections in flight at once.
const PARALLEL: usize = 4;

/// splitmix64: a small deterministic generator, so a failure reproduces from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

fn jwt_plugin(extra: &str) -> String {
    format!(
        "\n[[routes.plugins]]\nname = \"jwt\"\n{extra}\n[[routes.plugins.issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"orders\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"{SECRET}\"\n"
    )
}

async fn start_gateway(open: &Upstream, secure: &Upstream) -> Gateway {
    Gateway::config()
        .route("public", "/public", "open")
        .route_with(
            "protected",
            "/protected",
            "secure",
            &format!(
                "methods = [\"GET\", \"POST\"]\non_mismatch = \"404\"\n{}",
                jwt_plugin("")
            ),
        )
        .route_with(
            "admin",
            "/admin",
            "secure",
            &format!(
                "on_mismatch = \"404\"\n{}",
                jwt_plugin("scopes_all = [\"admin:all\"]")
            ),
        )
        .cluster("open", &[open])
        .cluster("secure", &[secure])
        .limits(
            "max_header_bytes = 8192\nmax_uri_bytes = 2048\nheader_timeout = \"2s\"\nbody_timeout = \"1s\"\nfirst_byte_timeout = \"2s\"",
        )
        .no_access_log()
        .start()
        .await
}

/// Tokens of every kind the generator sends: good ones and ways to get one wrong.
fn tokens() -> Vec<Vec<u8>> {
    let good = hs256(SECRET, &claims(ISSUER, "orders"));
    let forged = hs256(
        "another-secret-another-secret-another-secret",
        &claims(ISSUER, "orders"),
    );
    let mut expired = claims(ISSUER, "orders");
    expired["exp"] = json!(1_000);
    let expired = hs256(SECRET, &expired);
    let foreign = hs256(SECRET, &claims("https://evil.test", "orders"));
    let unsigned = format!(
        "{}.{}.",
        json_b64(&json!({"alg": "none", "typ": "at+jwt"})),
        json_b64(&claims(ISSUER, "orders"))
    );
    // A header segment that is base64 of bytes that are not UTF-8.
    let not_utf8 = format!(
        "{}.{}.{}",
        b64(b"{\"alg\":\"HS256\",\"typ\":\"at+jwt\",\"x\":\"\xff\"}"),
        json_b64(&claims(ISSUER, "orders")),
        good.rsplit('.').next().unwrap()
    );
    let (head, _) = good.rsplit_once('.').unwrap();
    let truncated_sig = format!("{head}.AAAA");
    vec![
        format!("Bearer {good}").into_bytes(),
        format!("Bearer {good}").into_bytes(),
        format!("bearer   {good}").into_bytes(),
        format!("Bearer {forged}").into_bytes(),
        format!("Bearer {expired}").into_bytes(),
        format!("Bearer {foreign}").into_bytes(),
        format!("Bearer {unsigned}").into_bytes(),
        format!("Bearer {not_utf8}").into_bytes(),
        format!("Bearer {truncated_sig}").into_bytes(),
        b"Bearer ".to_vec(),
        b"Bearer a b c".to_vec(),
        b"Bearer \xff\xfe\xfd".to_vec(),
        b"Basic c2VydmljZS1hOnNlY3JldA==".to_vec(),
        b"Bearer eyJ.eyJ.x".to_vec(),
        format!("Bearer {}", "A".repeat(9000)).into_bytes(),
        b"Bearer %00%ff".to_vec(),
    ]
}

/// One generated request: its bytes, whether it has a body, its probe number.
struct Probe {
    id: u64,
    bytes: Vec<u8>,
    has_body: bool,
}

fn generate(rng: &mut Rng, id: u64, tokens: &[Vec<u8>]) -> Probe {
    let method = if rng.chance(90) {
        rng.pick(&[
            "GET", "GET", "GET", "POST", "HEAD", "DELETE", "PUT", "OPTIONS",
        ])
    } else {
        rng.pick(&[
            "get",
            "G\0T",
            "CONNECT",
            "PROPFIND",
            "GET GET",
            "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        ])
    };
    let base = rng.pick(&[
        "/public",
        "/public/x",
        "/public/a/b",
        "/protected",
        "/protected/a",
        "/admin",
        "/admin/x",
        "/",
        "/nothing",
        "/publicx",
        "/protectedx",
    ]);
    let mut path = base.to_string();
    // Two in five paths stay as they are, so enough requests get through to check what
    // the upstreams receive.
    let mutations = if rng.chance(40) { 0 } else { 1 + rng.below(3) };
    for _ in 0..mutations {
        let piece = rng.pick(&[
            "/..",
            "/%2e%2e",
            "/%2E%2e",
            "/.",
            "/%2e",
            "//",
            "/%00",
            "%2F",
            "%5c",
            ";x=1",
            "/..;",
            "/%252e%252e",
            "/%C0%AE",
            "%ff",
            "\\",
            "/a b",
            "\0",
            "%",
            "%zz",
            "/~",
            "/%7e",
            "/../admin",
            "/../protected",
            "/%2e%2e/admin",
            "/./public",
            "/\u{e9}",
            "/x",
            "/y",
        ]);
        if rng.chance(50) {
            path.push_str(piece);
        } else {
            let at = rng.below(path.len() + 1);
            if path.is_char_boundary(at) {
                path.insert_str(at, piece);
            }
        }
    }
    if rng.chance(15) {
        path.push_str(rng.pick(&["?a=1", "?access_token=x", "?%zz", "?version=2", "?a=%00"]));
    }
    let target = match rng.below(20) {
        0 => format!("http://gateway{path}"),
        1 => format!("http://evil.example{path}"),
        2 => format!("HTTP://GATEWAY{path}"),
        3 => "*".to_string(),
        4 => path.trim_start_matches('/').to_string(),
        5 => format!("http://gateway:80{path}"),
        _ => path,
    };
    let version = if rng.chance(90) {
        "HTTP/1.1"
    } else {
        rng.pick(&["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "", "HTTP/1.1 extra"])
    };
    let mut req = format!("{method} {target} {version}\r\n").into_bytes();
    let header = |req: &mut Vec<u8>, name: &str, value: &[u8]| {
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    };
    match rng.below(12) {
        0 => {}
        1 => {
            header(&mut req, "Host", b"gateway");
            header(&mut req, "Host", b"evil.example");
        }
        2 => header(
            &mut req,
            "Host",
            rng.pick(&[
                &b"evil.example"[..],
                b"a b",
                b"gateway:99999",
                b"[::1]",
                b"",
                b"gate\xffway",
            ]),
        ),
        _ => header(&mut req, "Host", b"gateway"),
    }
    header(&mut req, "X-Probe", id.to_string().as_bytes());
    if rng.chance(70) {
        let token = &tokens[rng.below(tokens.len())];
        header(&mut req, "Authorization", token);
        if rng.chance(5) {
            header(&mut req, "Authorization", token);
        }
    }
    if rng.chance(8) {
        for i in 0..rng.below(300) {
            header(&mut req, &format!("X-Flood-{i}"), b"flood");
        }
    }
    if rng.chance(4) {
        header(&mut req, "X-Big", "b".repeat(9000).as_bytes());
    }
    if rng.chance(5) {
        req.extend_from_slice(rng.pick(&[
            &b"X-Bad\0Name: 1\r\n"[..],
            b": empty-name\r\n",
            b"No-Colon\r\n",
            b" folded: continuation\r\n",
            b"X-Ctl: a\x01b\r\n",
        ]));
    }
    let mut has_body = false;
    match rng.below(10) {
        0 | 1 => {
            has_body = true;
            header(&mut req, "Transfer-Encoding", b"chunked");
            header(&mut req, "Connection", b"close");
            req.extend_from_slice(b"\r\n");
            req.extend_from_slice(rng.pick(&[
                &b"5\r\nhello\r\n0\r\n\r\n"[..],
                b"zz\r\nhello\r\n0\r\n\r\n",
                b"5\r\nhelloXX0\r\n\r\n",
                b"-1\r\nhello\r\n0\r\n\r\n",
                b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
                b"5;ext=1\r\nhello\r\n0\r\n\r\n",
                b"5\r\nhel",
                b"0\r\n\r\n",
                b"5\nhello\n0\n\n",
            ]));
            return Probe {
                id,
                bytes: req,
                has_body,
            };
        }
        2 => {
            has_body = true;
            header(
                &mut req,
                "Content-Length",
                rng.pick(&[&b"5"[..], b"5, 6", b"-5", b"abc", b"99999999999999999999"]),
            );
            if rng.chance(30) {
                header(
                    &mut req,
                    "Transfer-Encoding",
                    rng.pick(&[
                        &b"chunked"[..],
                        b"gzip, chunked",
                        b"chunked, gzip",
                        b"identity",
                    ]),
                );
            }
        }
        _ => {}
    }
    header(&mut req, "Connection", b"close");
    req.extend_from_slice(b"\r\n");
    if has_body {
        req.extend_from_slice(b"hello");
    }
    Probe {
        id,
        bytes: req,
        has_body,
    }
}

/// What came back on one connection: the status and whether an upstream answered.
struct Answer {
    status: Option<u16>,
    from_upstream: bool,
}

/// Sends `bytes` and reads until the gateway closes the connection. `None` only when the
/// connection stayed open past the deadline (a hang).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Option<Answer> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let from_upstream = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("x-upstream:"));
    Some(Answer {
        status,
        from_upstream,
    })
}

fn genuine(authorization: Option<&str>) -> bool {
    let Some(token) = authorization.and_then(|a| {
        let (scheme, rest) = a.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim_start())
    }) else {
        return false;
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["orders"]);
    validation.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .is_ok()
}

/// Whether `path` is `prefix` or below it, on a segment boundary.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

fn probe_of(r: &Recorded) -> Option<u64> {
    r.header("x-probe").and_then(|p| p.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_never_panic_blame_upstreams_or_get_past_refusals() {
    bounded_by(Duration::from_secs(90), async {
        let open = Upstream::start("open").await;
        let secure = Upstream::start("secure").await;
        let gw = start_gateway(&open, &secure).await;
        let tokens = tokens();
        let mut rng = Rng(0x5EED_0014_0005);
        let probes: Vec<Probe> = (0..REQUESTS)
            .map(|id| generate(&mut rng, id, &tokens))
            .collect();

        let mut answers = Vec::new();
        for batch in probes.chunks(PARALLEL) {
            let sent = batch.iter().map(|p| exchange(gw.listen, &p.bytes));
            answers.extend(futures::future::join_all(sent).await);
        }

        let mut refused = 0;
        let mut passed = 0;
        for (probe, answer) in probes.iter().zip(&answers) {
            let shown = String::from_utf8_lossy(&probe.bytes[..probe.bytes.len().min(300)]);
            let Some(answer) = answer else {
                panic!("probe {}: the connection hung: {shown:?}", probe.id);
            };
            let Some(status) = answer.status else {
                continue; // closed without a response: allowed for garbage
            };
            assert!(
                status < 500 || answer.from_upstream,
                "probe {}: the gateway answered {status}: {shown:?}\n{}",
                probe.id,
                gw.stderr()
            );
            if answer.from_upstream {
                passed += 1;
                continue;
            }
            refused += 1;
            // Refused before routing or by the jwt plugin: no upstream saw it. (A request
            // with a body may have been forwarded before its body turned out bad.)
            if !probe.has_body || matches!(status, 401 | 403 | 404 | 405) {
                for up in [&open, &secure] {
                    assert!(
                        !up.requests().iter().any(|r| probe_of(r) == Some(probe.id)),
                        "probe {} was refused with {status} but reached {}: {shown:?}",
                        probe.id,
                        up.state.name
                    );
                }
            }
        }

        for r in open.requests() {
            let path = r.uri.split('?').next().unwrap_or("");
            assert!(r.uri.starts_with('/'), "origin-form only: {r:?}");
            assert!(under(path, "/public"), "open upstream got {:?}", r.uri);
            assert_eq!(
                portico::router::normalize_path(path).ok().as_deref(),
                Some(path),
                "open upstream got a path that is not normal: {:?}",
                r.uri
            );
            assert!(!path.contains(';') && !path.to_ascii_lowercase().contains("%2f"));
        }
        for r in secure.requests() {
            let path = r.uri.split('?').next().unwrap_or("");
            assert!(r.uri.starts_with('/'), "origin-form only: {r:?}");
            assert!(
                under(path, "/protected"),
                "protected upstream got {:?}",
                r.uri
            );
            assert!(
                genuine(r.header("authorization")),
                "protected upstream got a request without a genuine token: {r:?}"
            );
        }
        assert!(
            passed > 20 && refused > 20,
            "passed {passed}, refused {refused}"
        );
        let stderr = gw.stderr();
        assert!(
            !stderr.contains("panicked"),
            "the gateway panicked:\n{stderr}"
        );
        // Still serving.
        let resp = gw.raw_get("/public/alive", &[]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Regression tests for what fuzzing found

/// A badly framed chunked body is the client's fault: 400 problem+json, never a 502 that
/// blames (and counts against) the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_badly_framed_body_is_a_400_not_a_502() {
    bounded(async {
        let open = Upstream::start("open").await;
        let secure = Upstream::start("secure").await;
        let gw = start_gateway(&open, &secure).await;
        for body in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ] {
            let mut req =
                b"POST /public/x HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec();
            req.extend_from_slice(body);
            let resp = raw_request(gw.listen, &req).await;
            assert_eq!(
                resp.status,
                400,
                "{:?}: {}",
                String::from_utf8_lossy(body),
                resp.text()
            );
            assert_eq!(
                resp.header("content-type"),
                Some("application/problem+json")
            );
        }
    })
    .await;
}

/// An absolute-form target is routed by its path and host and reaches the upstream in
/// origin-form; one whose path needs no normalising too (it used to go upstream whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_are_routed_and_forwarded_in_origin_form() {
    bounded(async {
        let open = Upstream::start("open").await;
        let secure = Upstream::start("secure").await;
        let gw = start_gateway(&open, &secure).await;
        for (target, host, seen) in [
            (
                "http://gateway/public/x?a=1",
                Some("gateway"),
                "/public/x?a=1",
            ),
            ("http://gateway/public/./y", Some("gateway"), "/public/y"),
            ("http://gateway/public/z", None, "/public/z"),
        ] {
            let mut req = format!("GET {target} HTTP/1.1\r\n");
            if let Some(host) = host {
                req.push_str(&format!("Host: {host}\r\n"));
            }
            req.push_str("\r\n");
            let resp = raw_request(gw.listen, req.as_bytes()).await;
            assert_eq!(resp.status, 200, "{target}: {}", resp.text());
            let got = open.last_request();
            assert_eq!(got.uri, seen, "{target}");
            assert_eq!(got.header("host"), Some("gateway"), "{target}");
        }
        // Routing decides on the path the upstream would see: an absolute-form target under
        // /protected still needs a token.
        let before = secure.hits();
        let resp = raw_request(
            gw.listen,
            b"GET http://gateway/protected/a HTTP/1.1\r\nHost: gateway\r\n\r\n",
        )
        .await;
        assert_eq!(resp.status, 401, "{}", resp.text());
        assert_eq!(secure.hits(), before);
        // A target that is neither a path nor an absolute URI, or not UTF-8, is refused.
        for target in [&b"foo:bar"[..], b"gateway/public", b"/public/\xff"] {
            let mut req = b"GET ".to_vec();
            req.extend_from_slice(target);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: gateway\r\n\r\n");
            let before = open.hits();
            let resp = raw_request(gw.listen, &req).await;
            assert_eq!(
                resp.status,
                400,
                "{:?}: {}",
                String::from_utf8_lossy(target),
                resp.text()
            );
            assert_eq!(open.hits(), before);
        }
    })
    .await;
}
