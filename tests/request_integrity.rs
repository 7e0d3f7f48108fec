//! What the upstream sees is what the gateway checked (issue 19): identity headers only the
//! gateway sets, paths every upstream reads the same way, one valid Host, a `Connection`
//! that cannot delete what the gateway needs, upgrades only where a route allows them,
//! forwarding headers believed only from trusted proxies, and protected routes whose
//! refused requests do not fall through to weaker ones. Each test drives a real gateway and
//! asserts exactly what a recording upstream received (or that it received nothing).

mod common;

use common::*;

/// A gateway with the given routes in front of `up`.
async fn gateway_with(up: &Upstream, routes: &str) -> Gateway {
    Gateway::config()
        .toml(routes)
        .cluster("c", &[up])
        .no_access_log()
        .start()
        .await
}

/// Route `id` at `path` to cluster `c`, then `extra`.
fn route(id: &str, path: &str, extra: &str) -> String {
    Routes::new().route_with(id, path, "c", extra).to_string()
}

/// Sends each raw target and asserts a 400 problem that the upstream never saw.
async fn assert_refused(gw: &Gateway, up: &Upstream, targets: &[&str]) {
    for target in targets {
        let before = up.hits();
        let resp = gw.raw_get(target, &[]).await;
        assert_eq!(resp.status, 400, "{target}: {}", resp.text());
        assert_eq!(
            resp.header("content-type"),
            Some("application/problem+json"),
            "{target}"
        );
        assert_eq!(up.hits(), before, "{target} reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_from_clients_never_reach_the_upstream() {
    bounded(async {
        let up = Upstream::start("a").await;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = dir.path().join("issuer.pem");
        std::fs::write(&pem, key.public_key_pem()).unwrap();
        // The protected route writes the subject to a custom header and forwards no
        // scopes; the open route has no jwt at all.
        let jwt = format!(
            "[[routes.plugins]]\nname = \"jwt\"\nsubject_header = \"X-Caller\"\nscopes_header = \"\"\n[[routes.plugins.issuers]]\nissuer = \"https://auth.test\"\naudiences = [\"orders\"]\nalgorithms = [\"ES256\"]\nkeys = [{:?}]\n",
            pem.display().to_string()
        );
        let routes = format!(
            "{}{}",
            route("protected", "/protected", &jwt),
            route("open", "/open", "")
        );
        let gw = gateway_with(&up, &routes).await;

        let spoofed = [
            ("X-Portico-Scopes", "admin:all"),
            ("X-Portico-Subject", "root"),
            ("x-portico-client-id", "billing"),
            ("X-PORTICO-ANYTHING", "1"),
            ("X-Caller", "root"),
            ("X-Kept", "yes"),
        ];
        let resp = gw.raw_get("/open/x", &spoofed).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = up.last_request();
        for (name, _) in &spoofed[..5] {
            assert!(seen.headers.get(*name).is_none(), "{name} reached the upstream");
        }
        assert_eq!(seen.header("x-kept"), Some("yes"));

        let before = up.hits();
        let resp = gw.raw_get("/protected", &spoofed).await;
        assert_eq!(resp.status, 401);
        assert_eq!(up.hits(), before);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_refused_unless_the_route_allows_them() {
    bounded(async {
        let up = Upstream::start("a").await;
        let routes = [
            route("public", "/public", ""),
            route("admin", "/admin", ""),
            route("root", "/", ""),
            route("legacy", "/legacy", "allow_path_params = true"),
            route("files", "/files", "allow_escaped_slashes = true"),
        ]
        .concat();
        let gw = gateway_with(&up, &routes).await;

        assert_refused(
            &gw,
            &up,
            &[
                "/public/..;/admin",
                "/public/%2e%2e;/admin",
                "/admin;x",
                "/public/a%2Fb",
                "/public/a%2fb",
                "/public/a%5Cb",
                "/public/a\\b",
                "/public/a%00",
                "/public/a%0d%0aX-Injected:%201",
                "/public/%C0%AE%C0%AE/admin",
                "/public/%252e%252e/admin",
                "/files/..;/admin",
                "/legacy/a%2Fb",
            ],
        )
        .await;

        // Opted-in forms reach the upstream exactly as the gateway routed them.
        for (target, want) in [
            ("/legacy;jsessionid=1", "/legacy;jsessionid=1"),
            ("/legacy/a;v=2/b", "/legacy/a;v=2/b"),
            ("/files/a%2Fb", "/files/a%2Fb"),
            ("/files/a%5cb", "/files/a%5Cb"),
            // Well-formed paths are untouched.
            ("/public/caf%C3%A9", "/public/caf%C3%A9"),
            ("/public/50%25", "/public/50%25"),
        ] {
            let resp = gw.raw_get(target, &[]).await;
            assert_eq!(resp.status, 200, "{target}: {}", resp.text());
            assert_eq!(up.last_request().uri, want, "{target}");
        }
        // `;` on an allowing route is still routed by the path without parameters.
        let resp = gw.raw_get("/legacy;x/../admin", &[]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(up.last_request().uri, "/admin");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_parse_is_refused() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway_with(&up, &route("all", "/", "")).await;
        for host in [
            "api.example.com:99999",
            "api.example.com:8o",
            "user@api.example.com",
            "caf\u{e9}.example.com",
            "[::1",
            "a b",
        ] {
            let before = up.hits();
            let resp = gw.raw_get("/x", &[("Host", host)]).await;
            assert_eq!(resp.status, 400, "Host {host:?}");
            assert_eq!(up.hits(), before, "Host {host:?} reached the upstream");
        }
        let before = up.hits();
        let twice = gw
            .raw("GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
            .await;
        assert_eq!(twice.status, 400);
        let none = gw.raw("GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert_eq!(none.status, 400);
        let absolute = gw
            .raw("GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n")
            .await;
        assert_eq!(absolute.status, 400);
        assert_eq!(up.hits(), before);

        for host in [
            "api.example.com:8443",
            "[::1]:8080",
            "10.0.0.1",
            "svc_a.internal",
        ] {
            let resp = gw.raw_get("/x", &[("Host", host)]).await;
            assert_eq!(resp.status, 200, "Host {host:?}");
            assert_eq!(up.last_request().header("host"), Some(host));
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_what_the_gateway_needs_or_sets() {
    bounded(async {
        let up = Upstream::start("a").await;
        // The gateway sets a header of its own for the upstream.
        let set = "[[routes.plugins]]\nname = \"headers\"\nrequest.set = { \"X-Portico-Tier\" = \"gold\" }\n";
        let gw = gateway_with(&up, &route("all", "/", set)).await;

        for named in ["host", "Content-Length", "transfer-encoding"] {
            let before = up.hits();
            let resp = gw
                .raw_get("/x", &[("Connection", &format!("keep-alive, {named}"))])
                .await;
            assert_eq!(resp.status, 400, "Connection: {named}");
            assert_eq!(up.hits(), before);
        }

        let resp = gw
            .raw_get(
                "/x",
                &[
                    ("Connection", "x-portico-tier, authorization, x-secret"),
                    ("Authorization", "Bearer abc"),
                    ("X-Secret", "1"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                ],
            )
            .await;
        assert_eq!(resp.status, 200);
        let seen = up.last_request();
        assert_eq!(seen.header_all("x-portico-tier"), ["gold"], "the gateway's own header stays");
        for gone in ["authorization", "x-secret", "keep-alive", "te"] {
            assert!(seen.headers.get(gone).is_none(), "{gone} reached the upstream");
        }
        assert!(
            seen.headers.get("connection").is_none_or(|v| !v
                .to_str()
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("x-portico")),
            "{:?}",
            seen.headers.get("connection")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_opt_in_per_route_and_h2c_never() {
    bounded(async {
        let up = Upstream::start("a").await;
        let routes = [
            route("ws", "/ws", ""),
            route("plain", "/plain", "upgrades = []"),
            route(
                "custom",
                "/custom",
                "upgrades = [\"websocket\", \"x-stream\"]",
            ),
        ]
        .concat();
        let gw = gateway_with(&up, &routes).await;

        let h2c = [
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ];
        for path in ["/ws", "/plain", "/custom"] {
            let before = up.hits();
            let resp = gw.raw_get(path, &h2c).await;
            assert_eq!(resp.status, 400, "h2c on {path}");
            assert_eq!(up.hits(), before);
        }
        let websocket = [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        let before = up.hits();
        let resp = gw.raw_get("/plain", &websocket).await;
        assert_eq!(resp.status, 400, "websocket where the route allows none");
        let other = [("Connection", "Upgrade"), ("Upgrade", "x-stream")];
        let resp = gw.raw_get("/ws", &other).await;
        assert_eq!(resp.status, 400, "a protocol the route does not list");
        assert_eq!(up.hits(), before);

        // Allowed upgrades reach the upstream with exactly `Connection: upgrade`.
        for (path, headers) in [("/ws", &websocket[..]), ("/custom", &other[..])] {
            let mut conn = RawConn::connect(gw.listen).await;
            conn.send(raw_get_request(path, headers).as_bytes()).await;
            let _ = conn.read_response().await;
            let seen = up.last_request();
            let connection = seen.header_all("connection");
            assert!(
                connection.len() == 1 && connection[0].eq_ignore_ascii_case("upgrade"),
                "{path}: {connection:?}"
            );
            assert_eq!(seen.header_all("upgrade"), [headers[1].1], "{path}");
        }
        // `Upgrade` without the `upgrade` option is no upgrade at all.
        let resp = gw.raw_get("/plain", &[("Upgrade", "websocket")]).await;
        assert_eq!(resp.status, 200);
        assert!(up.last_request().headers.get("upgrade").is_none());
    })
    .await
}

const FORWARDING: [(&str, &str); 9] = [
    ("X-Forwarded-For", "203.0.113.7, 10.0.0.2"),
    ("Forwarded", "for=203.0.113.7;proto=https"),
    ("X-Real-IP", "203.0.113.7"),
    ("X-Forwarded-Host", "spoofed.example.org"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Proto", "https"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = gateway_with(&up, &route("all", "/", "")).await;
        let mut headers = FORWARDING.to_vec();
        headers.push(("Host", "api.example.com"));
        let resp = gw.raw_get("/x", &headers).await;
        assert_eq!(resp.status, 200);
        let seen = up.last_request();
        assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(seen.header_all("x-forwarded-proto"), ["http"]);
        assert_eq!(seen.header_all("x-forwarded-host"), ["api.example.com"]);
        for gone in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert!(
                seen.headers.get(gone).is_none(),
                "{gone} reached the upstream"
            );
        }
        assert_eq!(seen.uri, "/x");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client() {
    bounded(async {
        let up = Upstream::start("a").await;
        let gw = Gateway::config()
            .route("all", "/", "c")
            .cluster("c", &[&up])
            .server("trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]")
            .start()
            .await;
        let resp = gw.raw_get("/x", &FORWARDING).await;
        assert_eq!(resp.status, 200);
        let seen = up.last_request();
        assert_eq!(
            seen.header_all("x-forwarded-for"),
            ["203.0.113.7, 10.0.0.2, 127.0.0.1"]
        );
        assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
        assert_eq!(seen.header_all("x-forwarded-host"), ["spoofed.example.org"]);
        assert_eq!(seen.header_all("x-real-ip"), ["203.0.113.7"]);
        for gone in ["x-original-url", "x-rewrite-url"] {
            assert!(
                seen.headers.get(gone).is_none(),
                "{gone} passed a trusted proxy"
            );
        }
        // The access log names the client behind the proxies, not the proxy.
        let lines = gw.wait_access_log(1).await;
        assert_eq!(lines[0]["client"], "203.0.113.7", "{}", lines[0]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_route_does_not_fall_through_to_a_weaker_one() {
    bounded(async {
        let up = Upstream::start("a").await;
        let routes = [
            route(
                "admin",
                "/admin",
                "methods = [\"GET\"]\non_mismatch = \"405\"",
            ),
            route(
                "tenant",
                "/tenant",
                "headers = [{ name = \"X-Tenant\" }]\non_mismatch = \"404\"",
            ),
            route("reports", "/reports", "methods = [\"GET\"]"),
            route("root", "/", ""),
        ]
        .concat();
        let gw = gateway_with(&up, &routes).await;
        let client = &gw.client;

        let before = up.hits();
        let resp = client
            .delete(gw.url("/admin/users/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET");
        let resp = client.get(gw.url("/tenant/1")).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(up.hits(), before, "nothing reached the root route");

        // The default still falls through (nothing that works today changes).
        let resp = client.delete(gw.url("/reports/1")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(up.hits(), before + 1);
        let resp = client
            .get(gw.url("/tenant/1"))
            .header("X-Tenant", "acme")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    })
    .await
}
