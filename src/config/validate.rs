//! Checks a parsed [`Config`] for everything serde cannot: references between sections,
//! duplicates, addresses, value ranges, plugin configs. It collects every problem instead of
//! stopping at the first, so `portico check` shows them all at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

use super::field_path::Seg;
use super::{Config, HashBy, LbKind, PathMatchKind, PluginRef};
use crate::router::version::normalize_version;

/// One validation problem at a field path.
#[derive(Debug)]
pub struct Problem {
    pub path: Vec<Seg>,
    pub message: String,
}

struct Problems {
    found: Vec<Problem>,
    /// What building each distinct plugin table said: the field and message of its error.
    plugins: HashMap<std::sync::Arc<super::PluginKey>, Option<(Vec<Seg>, String)>>,
}

impl Problems {
    fn add(&mut self, path: &[Seg], message: impl Into<String>) {
        self.found.push(Problem {
            path: path.to_vec(),
            message: message.into(),
        });
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// Parses `ip:port`, or resolves `host:port` once (never per request).
pub fn resolve_address(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !address.contains(':') {
        return Err(format!("`{address}` has no port (write host:port)"));
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("`{address}` does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("`{address}` resolves to no address"))
}

/// Splits `host:port` where host is a DNS name, checking both.
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("`{address}` has no port (write host:port)"));
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{address}`: `{port}` is not a port (1-65535)"))?;
    check_dns_name(host).map_err(|e| format!("`{address}`: {e}"))?;
    Ok((host, port))
}

/// Checks a DNS name's form (RFC 1035 lengths; letters, digits, `-` and `_`, which SRV
/// labels use); a final dot is allowed.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("the host name is empty".into());
    }
    if bare.len() > 253 {
        return Err(format!("`{name}` is longer than 253 characters"));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "`{name}`: each dot-separated label needs 1 to 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "`{name}` is not a host name (letters, digits, `-`, `_` and dots)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{name}`: a label cannot start or end with `-`"));
        }
    }
    Ok(())
}

/// An SRV name is `_service._proto.domain` (RFC 2782).
fn check_srv_name(name: &str) -> Result<(), String> {
    check_dns_name(name)?;
    let mut labels = name.split('.');
    let (service, proto) = (labels.next().unwrap_or(""), labels.next().unwrap_or(""));
    if !service.starts_with('_') || !proto.starts_with('_') || labels.next().is_none() {
        return Err(format!(
            "`{name}` is not an SRV name: write `_service._proto.domain`, e.g. `_orders._tcp.example.internal`"
        ));
    }
    Ok(())
}

fn validate_dns(dns: &super::Dns, c: &super::Cluster, at: &[Seg], p: &mut Problems) {
    let here = |f: &str| -> Vec<Seg> { at.iter().cloned().chain([key(f)]).collect() };
    if !c.uses_dns() {
        p.add(
            at,
            "only used by a cluster with `srv` or with endpoints given by host name",
        );
    }
    for (i, server) in dns.servers.iter().enumerate() {
        if crate::upstream::dns::name_server(server).is_err() {
            p.add(
                &[here("servers"), vec![Seg::Index(i)]].concat(),
                format!("`{server}` is not a name server address (write `ip` or `ip:port`)"),
            );
        }
    }
    if dns.min_ttl.is_zero() {
        p.add(&here("min_ttl"), "must be greater than 0");
    } else if dns.min_ttl > dns.max_ttl {
        p.add(
            &here("min_ttl"),
            format!(
                "{} is more than max_ttl ({})",
                humantime::format_duration(dns.min_ttl),
                humantime::format_duration(dns.max_ttl)
            ),
        );
    }
}

pub fn validate(config: &Config) -> Vec<Problem> {
    let mut p = Problems {
        found: Vec::new(),
        plugins: HashMap::new(),
    };

    if config.server.threads == 0 {
        p.add(&[key("server"), key("threads")], "must be at least 1");
    }

    for (i, entry) in config.server.trusted_proxies.iter().enumerate() {
        if let Err(e) = portico_common::ip_network(entry) {
            p.add(&[key("server"), key("trusted_proxies"), Seg::Index(i)], e);
        }
    }

    if config.listeners.is_empty() {
        p.add(&[key("listeners")], "at least one listener is required");
    }
    let mut seen_listen = HashSet::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = [key("listeners"), Seg::Index(i)];
        match l.address.parse::<SocketAddr>() {
            Ok(addr) => {
                if !seen_listen.insert(addr) {
                    p.add(
                        &[at[0].clone(), at[1].clone(), key("address")],
                        format!("`{addr}` is listed twice"),
                    );
                }
            }
            Err(_) => p.add(
                &[at[0].clone(), at[1].clone(), key("address")],
                format!("`{}` is not an ip:port address", l.address),
            ),
        }
        if let Some(tls) = &l.tls {
            validate_listener_tls(tls, &[at[0].clone(), at[1].clone(), key("tls")], &mut p);
        }
        if l.h2c && l.tls.is_some() {
            p.add(
                &[at[0].clone(), at[1].clone(), key("h2c")],
                "only for plaintext listeners; a TLS listener offers HTTP/2 by ALPN (`tls.http2`)",
            );
        } else if l.h2c && l.proxy_protocol {
            p.add(
                &[at[0].clone(), at[1].clone(), key("h2c")],
                "cannot be combined with `proxy_protocol` on one listener",
            );
        }
    }
    if config.admin.address.parse::<SocketAddr>().is_err() {
        p.add(
            &[key("admin"), key("address")],
            format!("`{}` is not an ip:port address", config.admin.address),
        );
    }
    for (i, host) in config.admin.allowed_hosts.iter().enumerate() {
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            p.add(
                &[key("admin"), key("allowed_hosts"), Seg::Index(i)],
                format!("`{host}` is not a host name (no port, scheme or wildcard)"),
            );
        }
    }
    if let Err((field, message)) = config.admin.read_token() {
        p.add(&[key("admin"), key(field)], message);
    }
    if config.admin.metrics_auth
        && config.admin.token.is_none()
        && config.admin.token_file.is_none()
    {
        p.add(
            &[key("admin"), key("metrics_auth")],
            "needs the admin token: set [admin] token_file or token",
        );
    }
    if let Some(metrics) = &config.admin.metrics_address {
        match metrics.parse::<SocketAddr>() {
            Err(_) => p.add(
                &[key("admin"), key("metrics_address")],
                format!("`{metrics}` is not an ip:port address"),
            ),
            Ok(addr) => {
                let taken = config.admin.address.parse::<SocketAddr>().ok() == Some(addr)
                    || config
                        .listeners
                        .iter()
                        .any(|l| l.address.parse::<SocketAddr>().ok() == Some(addr));
                if taken && addr.port() != 0 {
                    p.add(
                        &[key("admin"), key("metrics_address")],
                        format!("`{addr}` is already a listener or the admin address"),
                    );
                }
            }
        }
    }

    let ratio = config.logging.success_sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        p.add(
            &[key("logging"), key("success_sample_ratio")],
            format!("{ratio} is outside 0.0–1.0"),
        );
    }
    if config.logging.access_log.trim().is_empty() {
        p.add(
            &[key("logging"), key("access_log")],
            "must be `stdout`, `off` or a file path",
        );
    }
    for (field, value) in [
        ("max_uri_bytes", config.limits.max_uri_bytes as u64),
        ("max_header_bytes", config.limits.max_header_bytes as u64),
    ] {
        if value == 0 {
            p.add(&[key("limits"), key(field)], "must be greater than 0");
        }
    }
    // `keepalive_timeout` alone may be 0 (keep-alive off); without the others a client
    // could hold a connection for ever.
    for (field, value) in [
        ("first_byte_timeout", config.limits.first_byte_timeout),
        ("header_timeout", config.limits.header_timeout),
        ("body_timeout", config.limits.body_timeout),
        ("send_timeout", config.limits.send_timeout),
        ("proxy_header_timeout", config.limits.proxy_header_timeout),
        ("upgrade_idle_timeout", config.limits.upgrade_idle_timeout),
    ] {
        if value.is_zero() {
            p.add(&[key("limits"), key(field)], "must be longer than 0s");
        }
    }

    if let Some(tracing) = &config.tracing {
        validate_tracing(tracing, &mut p);
    }
    validate_cache(&config.cache, &mut p);
    validate_clusters(config, &mut p);
    validate_plugins(&config.plugins, &[key("plugins")], &mut p);
    validate_routes(config, &mut p);
    p.found
}

fn validate_cache(cache: &super::CacheSection, p: &mut Problems) {
    let at = |f: &str| vec![key("cache"), key(f)];
    // The store's weights are in memory: a budget past the address space is a typo.
    let most = usize::MAX as u64;
    for (field, value) in [
        ("max_bytes", cache.max_bytes),
        ("max_object_size", cache.max_object_size),
    ] {
        if value == 0 {
            p.add(&at(field), "must be greater than 0");
        } else if value > most {
            p.add(
                &at(field),
                format!("{value} is more than this machine can address"),
            );
        }
    }
    if cache.max_object_size > cache.max_bytes {
        p.add(
            &at("max_object_size"),
            format!(
                "{} is larger than max_bytes ({}): such an object could never be stored",
                cache.max_object_size, cache.max_bytes
            ),
        );
    }
}

fn validate_tracing(t: &super::Tracing, p: &mut Problems) {
    let at = |f: &str| vec![key("tracing"), key(f)];
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        p.add(
            &at("sample_ratio"),
            format!("{} is outside 0.0–1.0", t.sample_ratio),
        );
    }
    if !(1..=65_536).contains(&t.batch_size) {
        p.add(&at("batch_size"), "must be between 1 and 65536");
    }
    if !(1..=1_048_576).contains(&t.queue_size) {
        p.add(&at("queue_size"), "must be between 1 and 1048576");
    }
    if t.flush_interval.is_zero() {
        p.add(&at("flush_interval"), "must be greater than 0");
    }
    if t.max_retries > 10 {
        p.add(&at("max_retries"), "must be at most 10");
    }
    // The fields the environment can fill in are checked with it, as the exporter will
    // see them.
    if let Err(problems) = crate::observe::otlp::settings::resolve(t) {
        for problem in problems {
            let mut here = at(problem.field);
            here.extend(problem.key.as_deref().map(key));
            p.add(&here, problem.message);
        }
    }
}

fn validate_clusters(config: &Config, p: &mut Problems) {
    for (name, c) in &config.clusters {
        let at = [key("clusters"), key(name)];
        let sub = |tail: &[Seg]| -> Vec<Seg> { at.iter().chain(tail).cloned().collect() };
        match &c.srv {
            Some(_) if !c.endpoints.is_empty() || c.endpoints_file.is_some() => p.add(
                &sub(&[key("srv")]),
                "a cluster takes one of `endpoints`, `endpoints_file` or `srv`",
            ),
            Some(name) => {
                if let Err(e) = check_srv_name(name) {
                    p.add(&sub(&[key("srv")]), e);
                }
            }
            None => {}
        }
        if let Some(dns) = &c.dns {
            validate_dns(dns, c, &sub(&[key("dns")]), p);
        }
        match &c.endpoints_file {
            Some(_) if !c.endpoints.is_empty() => p.add(
                &sub(&[key("endpoints_file")]),
                "a cluster takes `endpoints` or `endpoints_file`, not both",
            ),
            // The file as it is now: a watched file that turns bad later is rejected by
            // the watch, and the last good set stays.
            Some(file) => {
                if let Err(e) =
                    crate::upstream::discovery::read_endpoints_file(std::path::Path::new(file))
                {
                    p.add(&sub(&[key("endpoints_file")]), e);
                }
            }
            None if c.endpoints.is_empty() && c.srv.is_none() => p.add(
                &sub(&[key("endpoints")]),
                "a cluster needs at least one endpoint (`endpoints`, `endpoints_file` or `srv`)",
            ),
            None => {}
        }
        let mut seen = HashSet::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            let e_at = sub(&[key("endpoints"), Seg::Index(i)]);
            if e.weight == 0 {
                p.add(
                    &[e_at.clone(), vec![key("weight")]].concat(),
                    "weight must be at least 1 (remove the endpoint to stop traffic)",
                );
            }
            // A host name is only checked for its form: it is resolved by the running
            // gateway (and re-resolved), so `portico check` works offline.
            let checked = match e.address.parse::<SocketAddr>() {
                Ok(addr) => Ok(addr.to_string()),
                Err(_) => split_host_port(&e.address)
                    .map(|(host, port)| format!("{}:{port}", host.to_ascii_lowercase())),
            };
            match checked {
                Ok(id) => {
                    if !seen.insert(id) {
                        p.add(
                            &[e_at.clone(), vec![key("address")]].concat(),
                            format!("endpoint `{}` is listed twice", e.address),
                        );
                    }
                }
                Err(msg) => p.add(&[e_at, vec![key("address")]].concat(), msg),
            }
        }
        if c.lb == LbKind::ConsistentHash {
            match &c.hash {
                None => p.add(
                    &sub(&[key("hash")]),
                    "lb = \"consistent_hash\" needs `hash = { by = \"header\" | \"cookie\" | \"client_ip\", name = ... }`",
                ),
                Some(h) if h.by != HashBy::ClientIp && h.name.as_deref().unwrap_or("").is_empty() => {
                    p.add(&sub(&[key("hash"), key("name")]), "hashing by header or cookie needs a name")
                }
                Some(_) => {}
            }
        } else if c.hash.is_some() {
            p.add(
                &sub(&[key("hash")]),
                "only used with lb = \"consistent_hash\"",
            );
        }
        validate_cluster_tls(c, &at, p);
        match c.protocol {
            super::UpstreamProtocol::H2 if !c.tls => p.add(
                &sub(&[key("protocol")]),
                "`h2` is HTTP/2 over TLS and needs `tls = true` (HTTP/2 in the clear is `h2c`)",
            ),
            super::UpstreamProtocol::H2c if c.tls => p.add(
                &sub(&[key("protocol")]),
                "`h2c` is HTTP/2 in the clear; with `tls = true` write `h2`",
            ),
            _ => {}
        }
        match c.max_h2_streams {
            Some(_) if !c.protocol.is_h2() => p.add(
                &sub(&[key("max_h2_streams")]),
                "only used with protocol = \"h2\" or \"h2c\"",
            ),
            Some(0) => p.add(&sub(&[key("max_h2_streams")]), "must be at least 1"),
            _ => {}
        }
        if c.timeouts.connect.is_zero() || c.timeouts.read.is_zero() || c.timeouts.write.is_zero() {
            p.add(&sub(&[key("timeouts")]), "timeouts must be greater than 0");
        }
        if let Some(hc) = &c.health_check {
            let hc_at = |f: &str| sub(&[key("health_check"), key(f)]);
            match hc.kind {
                super::HealthCheckKind::Http => {
                    if !hc.path.starts_with('/') {
                        p.add(&hc_at("path"), format!("`{}` must start with /", hc.path));
                    }
                    if hc.service.is_some() {
                        p.add(&hc_at("service"), "only used with kind = \"grpc\"");
                    }
                }
                super::HealthCheckKind::Grpc => {
                    if !c.protocol.is_h2() {
                        p.add(
                            &hc_at("kind"),
                            "gRPC health checks need the cluster's protocol = \"h2\" or \"h2c\"",
                        );
                    }
                    if !hc.path.is_empty() {
                        p.add(
                            &hc_at("path"),
                            "not used by kind = \"grpc\" (it calls grpc.health.v1.Health/Check; name a `service` instead)",
                        );
                    }
                }
            }
            if hc.expected_status.is_empty()
                || hc.expected_status.iter().any(|s| !(100..=599).contains(s))
            {
                p.add(
                    &hc_at("expected_status"),
                    "list HTTP statuses between 100 and 599",
                );
            }
            if hc.healthy_threshold == 0 {
                p.add(&hc_at("healthy_threshold"), "must be at least 1");
            }
            if hc.unhealthy_threshold == 0 {
                p.add(&hc_at("unhealthy_threshold"), "must be at least 1");
            }
            if hc.interval.is_zero() || hc.timeout.is_zero() {
                p.add(
                    &hc_at("interval"),
                    "interval and timeout must be greater than 0",
                );
            } else if hc.timeout > hc.interval {
                p.add(&hc_at("timeout"), "must not be longer than the interval");
            }
        }
        if let Some(b) = &c.breaker {
            validate_breaker(b, &sub(&[key("breaker")]), p);
        }
        if let Some(b) = &c.endpoint_breaker {
            validate_breaker(b, &sub(&[key("endpoint_breaker")]), p);
        }
        if let Some(b) = &c.bulkhead {
            if b.max_concurrent == 0 {
                p.add(
                    &sub(&[key("bulkhead"), key("max_concurrent")]),
                    "must be at least 1",
                );
            }
            if b.min_concurrent == 0 || b.min_concurrent > b.max_concurrent {
                p.add(
                    &sub(&[key("bulkhead"), key("min_concurrent")]),
                    "must be between 1 and max_concurrent",
                );
            }
        }
        if c.max_requests_per_endpoint == Some(0) {
            p.add(
                &sub(&[key("max_requests_per_endpoint")]),
                "must be at least 1",
            );
        }
        if !(0.0..=10.0).contains(&c.retry_budget.ratio) {
            p.add(
                &sub(&[key("retry_budget"), key("ratio")]),
                "must be between 0.0 and 10.0",
            );
        }
        if c.outlier.base_ejection > c.outlier.max_ejection {
            p.add(
                &sub(&[key("outlier"), key("base_ejection")]),
                "must not be longer than max_ejection",
            );
        }
    }
}

/// A file a TLS setting names: it must exist, and `parse` (which reads it) must accept it.
/// Returns whether it passed.
fn check_file(
    path: &str,
    at: &[Seg],
    p: &mut Problems,
    parse: impl FnOnce(&str) -> Result<(), String>,
) -> bool {
    if path.trim().is_empty() {
        p.add(at, "must be a file path");
        return false;
    }
    if !Path::new(path).is_file() {
        p.add(at, format!("file `{path}` does not exist"));
        return false;
    }
    match parse(path) {
        Ok(()) => true,
        Err(msg) => {
            p.add(at, msg);
            false
        }
    }
}

/// A certificate file and its key file: each readable and parseable, and the key the
/// certificate's.
fn check_pair(cert: &str, key_file: &str, cert_at: &[Seg], key_at: &[Seg], p: &mut Problems) {
    use crate::runtime::tls;
    let cert_ok = check_file(cert, cert_at, p, |f| tls::read_certificates(f).map(drop));
    let key_ok = check_file(key_file, key_at, p, |f| tls::read_private_key(f).map(drop));
    if cert_ok && key_ok {
        let files = super::CertificateFiles {
            cert: cert.to_string(),
            key: key_file.to_string(),
        };
        match tls::certified_key(&files) {
            Ok(_) => {}
            Err(tls::PairError::Cert(m)) => p.add(cert_at, m),
            Err(tls::PairError::Key(m)) => p.add(key_at, m),
        }
    }
}

fn validate_listener_tls(tls: &super::ListenerTls, at: &[Seg], p: &mut Problems) {
    let field = |tail: &[Seg]| -> Vec<Seg> { at.iter().chain(tail).cloned().collect() };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key_file)) => check_pair(
            cert,
            key_file,
            &field(&[key("cert")]),
            &field(&[key("key")]),
            p,
        ),
        (Some(_), None) => p.add(&field(&[key("key")]), "`cert` needs its `key`"),
        (None, Some(_)) => p.add(&field(&[key("cert")]), "`key` needs its `cert`"),
        (None, None) if tls.certificates.is_empty() => p.add(
            at,
            "give `cert` and `key`, or `certificates = [{ cert = ..., key = ... }, ...]`",
        ),
        (None, None) => {}
    }
    for (i, pair) in tls.certificates.iter().enumerate() {
        let base = [key("certificates"), Seg::Index(i)];
        check_pair(
            &pair.cert,
            &pair.key,
            &field(&[base[0].clone(), base[1].clone(), key("cert")]),
            &field(&[base[0].clone(), base[1].clone(), key("key")]),
            p,
        );
    }
    match &tls.client_ca {
        Some(ca) => {
            check_file(ca, &field(&[key("client_ca")]), p, |f| {
                crate::runtime::tls::read_roots(f).map(drop)
            });
        }
        None if tls.client_auth.is_some() => p.add(
            &field(&[key("client_auth")]),
            "needs `client_ca`, the CAs that sign client certificates",
        ),
        None => {}
    }
}

fn validate_cluster_tls(c: &super::Cluster, at: &[Seg], p: &mut Problems) {
    let field = |f: &str| -> Vec<Seg> { at.iter().cloned().chain([key(f)]).collect() };
    if !c.tls {
        for (name, set) in [
            ("ca_file", c.ca_file.is_some()),
            ("client_cert", c.client_cert.is_some()),
            ("client_key", c.client_key.is_some()),
            ("sni", c.sni.is_some()),
            ("verify", !c.verify),
        ] {
            if set {
                p.add(&field(name), "only used with `tls = true`");
            }
        }
        return;
    }
    if let Some(ca) = &c.ca_file {
        check_file(ca, &field("ca_file"), p, |f| {
            crate::runtime::tls::read_certificates(f).map(drop)
        });
    }
    match (&c.client_cert, &c.client_key) {
        (Some(cert), Some(key_file)) => check_pair(
            cert,
            key_file,
            &field("client_cert"),
            &field("client_key"),
            p,
        ),
        (Some(_), None) => p.add(&field("client_key"), "`client_cert` needs its `client_key`"),
        (None, Some(_)) => p.add(
            &field("client_cert"),
            "`client_key` needs its `client_cert`",
        ),
        (None, None) => {}
    }
    if c.sni.as_deref().is_some_and(|s| s.trim().is_empty()) {
        p.add(
            &field("sni"),
            "must not be empty (an empty SNI would turn certificate verification off)",
        );
    }
}

fn validate_plugins(plugins: &[PluginRef], at: &[Seg], p: &mut Problems) {
    for (i, plugin) in plugins.iter().enumerate() {
        // Building is what checks a table, and the same table always builds the same way,
        // so each distinct one is built once however many routes repeat it.
        let key = plugin.shared_key(|key| p.plugins.get_key_value(key).map(|(k, _)| k.clone()));
        let outcome = match p.plugins.get(&**key) {
            Some(outcome) => outcome.clone(),
            None => {
                let config = toml::Value::Table(plugin.config.clone());
                let outcome = portico_plugins::build(&plugin.name, config)
                    .err()
                    .map(|e| plugin_problem(&e));
                p.plugins.insert(key.clone(), outcome.clone());
                outcome
            }
        };
        if let Some((field, msg)) = outcome {
            let mut path = at.to_vec();
            path.push(Seg::Index(i));
            path.extend(field);
            p.add(&path, msg);
        }
    }
}

/// Where in a plugin's table a build error is (below the plugin), and what to say.
fn plugin_problem(e: &portico_plugins::BuildError) -> (Vec<Seg>, String) {
    let field = match e {
        portico_plugins::BuildError::UnknownPlugin(_) => vec![key("name")],
        portico_plugins::BuildError::InvalidConfig { field, .. } => field
            .iter()
            .flat_map(|f| f.split('.'))
            .flat_map(|part| {
                // `allow[1]`: the key, then the list index, so the place is the entry's.
                let indexed = part.strip_suffix(']').and_then(|p| p.split_once('['));
                match indexed.and_then(|(name, i)| Some((name, i.parse().ok()?))) {
                    Some((name, i)) => vec![key(name), Seg::Index(i)],
                    None => vec![key(part)],
                }
            })
            .collect(),
    };
    let msg = match e {
        portico_plugins::BuildError::UnknownPlugin(name) => format!(
            "unknown plugin `{name}` (built-in plugins: {})",
            portico_plugins::BUILTIN_NAMES.join(", ")
        ),
        other => other.to_string(),
    };
    (field, msg)
}

fn check_cluster_ref(config: &Config, cluster: &str, at: &[Seg], p: &mut Problems) {
    if !config.clusters.contains_key(cluster) {
        let known: Vec<&str> = config.clusters.keys().map(String::as_str).collect();
        p.add(
            at,
            format!(
                "unknown cluster `{cluster}` (defined: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
}

fn validate_versions(config: &Config, i: usize, r: &super::Route, p: &mut Problems) {
    let base = |tail: &[Seg]| -> Vec<Seg> {
        [key("routes"), Seg::Index(i)]
            .iter()
            .chain(tail)
            .cloned()
            .collect()
    };
    let mut names = HashMap::new();
    for (j, v) in r.versions.iter().enumerate() {
        let at = |f: &str| base(&[key("versions"), Seg::Index(j), key(f)]);
        let name = normalize_version(&v.name);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            p.add(
                &at("name"),
                format!("`{}` is not a version name like `2` or `v2.1`", v.name),
            );
        } else if let Some(first) = names.insert(name.to_string(), j) {
            p.add(
                &at("name"),
                format!(
                    "version `{}` is listed twice (first at versions[{first}])",
                    v.name
                ),
            );
        }
        check_cluster_ref(config, &v.cluster, &at("cluster"), p);
        if let Some(rw) = &v.rewrite_prefix {
            if !rw.starts_with('/') {
                p.add(&at("rewrite_prefix"), format!("`{rw}` must start with /"));
            }
        }
        if let Some(d) = &v.deprecated {
            let d_at = |f: &str| base(&[key("versions"), Seg::Index(j), key("deprecated"), key(f)]);
            if humantime::parse_rfc3339_weak(&d.since).is_err() {
                p.add(
                    &d_at("since"),
                    format!(
                        "`{}` is not an RFC 3339 time like 2026-06-01T00:00:00Z",
                        d.since
                    ),
                );
            }
            if let Some(sunset) = &d.sunset {
                if humantime::parse_rfc3339_weak(sunset).is_err() {
                    p.add(
                        &d_at("sunset"),
                        format!("`{sunset}` is not an RFC 3339 time like 2027-01-01T00:00:00Z"),
                    );
                }
            }
        }
    }
    for (j, v) in r.versions.iter().enumerate() {
        if let Some(successor) = v.deprecated.as_ref().and_then(|d| d.successor.as_ref()) {
            if !names.contains_key(normalize_version(successor)) {
                p.add(
                    &base(&[
                        key("versions"),
                        Seg::Index(j),
                        key("deprecated"),
                        key("successor"),
                    ]),
                    format!("successor `{successor}` is not one of this route's versions"),
                );
            }
        }
    }
    if let Some(default) = r.versioning.as_ref().and_then(|v| v.default.as_ref()) {
        let at = base(&[key("versioning"), key("default")]);
        match names.get(normalize_version(default)) {
            None => p.add(
                &at,
                format!("default version `{default}` is not one of this route's versions"),
            ),
            Some(&j) if r.versions[j].retired => {
                p.add(&at, format!("default version `{default}` is retired"))
            }
            Some(_) => {}
        }
    }
    if let Some(v) = &r.versioning {
        if v.sources.is_empty() {
            p.add(
                &base(&[key("versioning"), key("sources")]),
                "list at least one source",
            );
        }
        if http::HeaderName::from_bytes(v.header.as_bytes()).is_err() {
            p.add(
                &base(&[key("versioning"), key("header")]),
                format!("`{}` is not a valid header name", v.header),
            );
        }
    }
}

fn validate_retry(retry: &super::RetryPolicy, at: &[Seg], p: &mut Problems) {
    let field = |f: &str| -> Vec<Seg> { at.iter().cloned().chain([key(f)]).collect() };
    if !(1..=10).contains(&retry.attempts) {
        p.add(&field("attempts"), "must be between 1 and 10");
    }
    for (j, on) in retry.on.iter().enumerate() {
        let known = matches!(on.as_str(), "connect_failure" | "reset" | "timeout")
            || on.parse::<u16>().is_ok_and(|s| (400..=599).contains(&s))
            || super::grpc_code(on).is_some();
        if !known {
            p.add(
                &[field("on"), vec![Seg::Index(j)]].concat(),
                format!(
                    "`{on}` is not `connect_failure`, `reset`, `timeout`, a 4xx/5xx status or a gRPC status name other than `ok` (`unavailable`, `resource_exhausted`, ...)"
                ),
            );
        }
    }
    if retry.backoff_base > retry.backoff_cap {
        p.add(
            &field("backoff_base"),
            "must not be longer than backoff_cap",
        );
    }
    if retry.per_try_timeout.is_some_and(|t| t.is_zero()) {
        p.add(&field("per_try_timeout"), "must be greater than 0");
    }
}

fn validate_breaker(b: &super::Breaker, at: &[Seg], p: &mut Problems) {
    let field = |f: &str| -> Vec<Seg> { at.iter().cloned().chain([key(f)]).collect() };
    if !(0.0..=1.0).contains(&b.failure_rate) || b.failure_rate == 0.0 {
        p.add(
            &field("failure_rate"),
            format!("{} is outside (0.0, 1.0]", b.failure_rate),
        );
    }
    if b.min_requests == 0 {
        p.add(&field("min_requests"), "must be at least 1");
    }
    if b.half_open_probes == 0 {
        p.add(&field("half_open_probes"), "must be at least 1");
    }
    if b.window < std::time::Duration::from_secs(1) {
        p.add(&field("window"), "must be at least 1s");
    }
    if b.open_for.is_zero() || b.open_for > b.max_open {
        p.add(
            &field("open_for"),
            "must be greater than 0 and not longer than max_open",
        );
    }
}

/// `[routes.cache]`: settings the cache cannot honour are refused, not ignored.
fn validate_route_cache(
    config: &Config,
    i: usize,
    route: &super::Route,
    cache: &super::RouteCache,
    p: &mut Problems,
) {
    let at = |f: &str| vec![key("routes"), Seg::Index(i), key("cache"), key(f)];
    if cache.methods.is_empty() {
        p.add(&at("methods"), "must name GET, HEAD or both");
    }
    for (j, m) in cache.methods.iter().enumerate() {
        let m_at = [at("methods"), vec![Seg::Index(j)]].concat();
        if m != "GET" && m != "HEAD" {
            p.add(
                &m_at,
                format!("`{m}` cannot be cached: only GET and HEAD responses are stored"),
            );
        }
    }
    let reachable =
        route.methods.is_empty() || cache.methods.iter().any(|m| route.methods.contains(m));
    if !cache.methods.is_empty() && !reachable {
        p.add(
            &at("methods"),
            "none of these methods is among the route's `methods`, so no request reaches the cache",
        );
    }
    for (field, value) in [
        ("default_ttl", cache.default_ttl),
        ("stale_if_error", cache.stale_if_error),
        ("stale_while_revalidate", cache.stale_while_revalidate),
        ("lock_timeout", Some(cache.lock_timeout)),
    ] {
        if value.is_some_and(|v| v.is_zero()) {
            p.add(
                &at(field),
                "must be longer than 0s (leave it out to turn it off)",
            );
        }
    }
    // Pingora's cache metadata keeps these windows in whole seconds of a u32.
    for (field, value) in [
        ("default_ttl", cache.default_ttl),
        ("stale_if_error", cache.stale_if_error),
        ("stale_while_revalidate", cache.stale_while_revalidate),
    ] {
        if value.is_some_and(|v| v.as_secs() > i32::MAX as u64) {
            p.add(&at(field), "must be at most 68 years");
        }
    }
    if cache.lock_timeout > std::time::Duration::from_secs(60) {
        p.add(
            &at("lock_timeout"),
            "must be at most 60s: waiting requests hold their client that long",
        );
    }
    if let super::CacheQuery::Ignore(names) = &cache.query {
        if names.is_empty() {
            p.add(
                &at("query"),
                "`ignore` needs at least one parameter name (or use \"sorted\")",
            );
        }
        for (j, name) in names.iter().enumerate() {
            if name.is_empty() || name.contains(['&', '=', '#']) {
                p.add(
                    &[at("query"), vec![key("ignore"), Seg::Index(j)]].concat(),
                    format!("`{name}` is not a query parameter name"),
                );
            }
        }
    }
    if cache.per_identity.is_some() {
        // The identity comes from the jwt plugin; without one every request would bypass.
        let authenticated = route
            .plugins
            .iter()
            .chain(&config.plugins)
            .any(|p| p.name == "jwt");
        if !authenticated {
            p.add(
                &at("per_identity"),
                "needs a `jwt` plugin on the route (or a global one): without a verified token there is no identity to key by",
            );
        }
    }
}

/// What the checks of one route alone depend on besides the route: the cluster names (a
/// route must name a defined one) and whether a global `jwt` plugin exists (a per-identity
/// cache needs one). A route that passed its checks in an equal context passes them again.
fn route_context(config: &Config) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for name in config.clusters.keys() {
        h.update(&(name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
    }
    h.update(&[u8::from(config.plugins.iter().any(|p| p.name == "jwt"))]);
    h.digest()
}

/// What a route matches on, normalized: two routes with equal signatures can never both be
/// reached.
type Matchers<'a> = (
    BTreeSet<String>,
    &'a str,
    PathMatchKind,
    BTreeSet<&'a str>,
    BTreeSet<(String, Option<&'a str>)>,
);

fn matchers(r: &super::Route) -> Matchers<'_> {
    let hosts: BTreeSet<String> = r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    let methods: BTreeSet<&str> = r.methods.iter().map(String::as_str).collect();
    let headers: BTreeSet<(String, Option<&str>)> = r
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.as_deref()))
        .collect();
    let path = if r.path_match == PathMatchKind::Prefix && r.path.len() > 1 {
        r.path.trim_end_matches('/')
    } else {
        r.path.as_str()
    };
    (hosts, path, r.path_match, methods, headers)
}

/// [`matchers`] as a 128-bit hash, worked out once per route (see `Route::checked`).
fn matchers_hash(r: &super::Route) -> u128 {
    *r.checked.matchers.get_or_init(|| {
        use std::hash::Hash as _;
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        matchers(r).hash(&mut h);
        h.digest128()
    })
}

fn validate_routes(config: &Config, p: &mut Problems) {
    // Sized up front: growing them rehashes every key so far, big keys included.
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(config.routes.len());
    // Two routes with identical matchers can never both be reached: the second is dead.
    // Keyed by the signature's hash; equal hashes are compared in full before a report.
    let mut seen: HashMap<u128, usize> = HashMap::with_capacity(config.routes.len());
    let context = route_context(config);
    for (i, r) in config.routes.iter().enumerate() {
        let at = |f: &str| vec![key("routes"), Seg::Index(i), key(f)];
        if r.id.trim().is_empty() {
            p.add(&at("id"), "must not be empty");
        } else if let Some(first) = ids.insert(&r.id, i) {
            p.add(
                &at("id"),
                format!(
                    "duplicate route id `{}` (first used by routes[{first}])",
                    r.id
                ),
            );
        }
        // The route's own checks, unless it passed them already in this context (a
        // reload's unchanged routes: the running config passed them).
        if r.checked.valid_in.get() != Some(&context) {
            let found = p.found.len();
            validate_route_alone(config, i, r, p);
            if p.found.len() == found {
                let _ = r.checked.valid_in.set(context);
            }
        }
        // A later duplicate is named against the one before it, as it always was.
        let hash = matchers_hash(r);
        if let Some(&first) = seen.get(&hash) {
            if matchers(r) == matchers(&config.routes[first]) {
                seen.insert(hash, i);
                p.add(
                    &at("path"),
                    format!(
                        "route `{}` has the same hosts, path, methods and headers as routes[{first}] (`{}`), so it can never match",
                        r.id, config.routes[first].id
                    ),
                );
            }
        } else {
            seen.insert(hash, i);
        }
        validate_plugins(
            &r.plugins,
            &[key("routes"), Seg::Index(i), key("plugins")],
            p,
        );
    }
}

/// The checks of routes[i] that look at nothing but the route and [`route_context`]'s
/// parts of the config (not its plugins: building them reads files, checked every time).
fn validate_route_alone(config: &Config, i: usize, r: &super::Route, p: &mut Problems) {
    let at = |f: &str| vec![key("routes"), Seg::Index(i), key(f)];
    if let Some(limits) = &r.limits {
        let at = |f: &str| vec![key("routes"), Seg::Index(i), key("limits"), key(f)];
        if limits.max_body_bytes == Some(0) {
            p.add(&at("max_body_bytes"), "must be greater than 0");
        }
        for (field, value) in [
            ("body_timeout", limits.body_timeout),
            ("send_timeout", limits.send_timeout),
            ("response_header_timeout", limits.response_header_timeout),
            ("upgrade_idle_timeout", limits.upgrade_idle_timeout),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                p.add(&at(field), "must be longer than 0s");
            }
        }
    }
    if let Some(compress) = &r.compress {
        validate_compress(compress, &at("compress"), p);
    }
    if let Some(cache) = &r.cache {
        validate_route_cache(config, i, r, cache, p);
    }
    if !r.path.starts_with('/') {
        p.add(&at("path"), format!("`{}` must start with /", r.path));
    } else if let Err(e) = crate::router::normalize_path(&r.path) {
        p.add(&at("path"), format!("`{}`: {e}", r.path));
    }
    for (j, host) in r.hosts.iter().enumerate() {
        let body = host.strip_prefix("*.").unwrap_or(host);
        let ok = !body.is_empty()
            && !body.contains('*')
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            p.add(
                &[key("routes"), Seg::Index(i), key("hosts"), Seg::Index(j)],
                format!("`{host}` is not a host name or `*.suffix` wildcard"),
            );
        }
    }
    for (j, m) in r.methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() || m.to_uppercase() != *m {
            p.add(
                &[key("routes"), Seg::Index(i), key("methods"), Seg::Index(j)],
                format!("`{m}` is not an upper-case HTTP method"),
            );
        }
    }
    for (j, h) in r.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            p.add(
                &[
                    key("routes"),
                    Seg::Index(i),
                    key("headers"),
                    Seg::Index(j),
                    key("name"),
                ],
                format!("`{}` is not a valid header name", h.name),
            );
        }
    }
    match (&r.cluster, r.versions.is_empty()) {
        (Some(cluster), true) => check_cluster_ref(config, cluster, &at("cluster"), p),
        (None, true) => p.add(
            &at("cluster"),
            "a route needs `cluster` (or `versions`, each with its own cluster)",
        ),
        (Some(_), false) => p.add(
            &at("cluster"),
            "a route with `versions` routes by version; set `versioning.default` instead of `cluster`",
        ),
        (None, false) => validate_versions(config, i, r, p),
    }
    if r.versioning.is_some() && r.versions.is_empty() {
        p.add(
            &at("versioning"),
            "`versioning` needs `versions` to choose from",
        );
    }
    if let Some(retry) = &r.retry {
        validate_retry(retry, &at("retry"), p);
    }
    if r.timeout.is_some_and(|t| t.is_zero()) {
        p.add(&at("timeout"), "must be greater than 0");
    }
    if r.strip_prefix && r.rewrite_prefix.is_some() {
        p.add(
            &at("rewrite_prefix"),
            "use either strip_prefix or rewrite_prefix, not both",
        );
    }
    if (r.strip_prefix || r.rewrite_prefix.is_some()) && r.path_match == PathMatchKind::Exact {
        p.add(
            &at("path_match"),
            "prefix rewriting needs path_match = \"prefix\"",
        );
    }
    for (j, protocol) in r.upgrades.iter().enumerate() {
        let at = [key("routes"), Seg::Index(i), key("upgrades"), Seg::Index(j)];
        let name = protocol.split('/').next().unwrap_or_default();
        if name.eq_ignore_ascii_case("h2c") {
            p.add(
                &at,
                "`h2c` cannot be allowed: it would open an HTTP/2 tunnel past routing and plugins",
            );
        } else if protocol.is_empty()
            || !protocol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
        {
            p.add(&at, format!("`{protocol}` is not a protocol name"));
        }
    }
    if let Some(rw) = &r.rewrite_prefix {
        if !rw.starts_with('/') {
            p.add(&at("rewrite_prefix"), format!("`{rw}` must start with /"));
        }
    }
}

fn validate_compress(c: &super::Compress, at: &[Seg], p: &mut Problems) {
    let field = |f: &str| {
        let mut path = at.to_vec();
        path.push(key(f));
        path
    };
    if c.algorithms.is_empty() {
        p.add(
            &field("algorithms"),
            "must name at least one of zstd, br, gzip (remove `compress` to turn it off)",
        );
    }
    let mut seen = HashSet::new();
    for (j, a) in c.algorithms.iter().enumerate() {
        let mut path = field("algorithms");
        path.push(Seg::Index(j));
        if crate::proxy::compress::Algorithm::from_name(a).is_none() {
            p.add(
                &path,
                format!("`{a}` is not a supported coding (zstd, br, gzip)"),
            );
        } else if !seen.insert(a.as_str()) {
            p.add(&path, format!("`{a}` is listed twice"));
        }
    }
    if c.content_types.is_empty() {
        p.add(&field("content_types"), "must list at least one media type");
    }
    for (j, t) in c.content_types.iter().enumerate() {
        if let Err(e) = crate::proxy::compress::TypePattern::parse(t) {
            let mut path = field("content_types");
            path.push(Seg::Index(j));
            p.add(&path, format!("`{t}`: {e}"));
        }
    }
    let mut levels = field("levels");
    for (name, level, range) in [
        ("gzip", c.levels.gzip, 1..=9),
        ("br", c.levels.br, 0..=11),
        ("zstd", c.levels.zstd, 1..=19),
    ] {
        if !range.contains(&level) {
            levels.push(key(name));
            p.add(
                &levels,
                format!(
                    "{name} level must be {}–{} (was {level})",
                    range.start(),
                    range.end()
                ),
            );
            levels.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;

    const BASE: &str = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n[admin]\n";

    #[test]
    fn a_route_with_the_matchers_of_an_earlier_one_is_refused() {
        let two_routes = |first: &str, second: &str| {
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n\
                 [[routes]]\nid = \"a\"\ncluster = \"c\"\n{first}\n\
                 [[routes]]\nid = \"b\"\ncluster = \"c\"\n{second}\n\
                 [clusters.c]\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n"
            );
            match load_str("t.toml", &text) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        // Host case, a prefix's trailing slash and the order of methods do not matter.
        let dead = two_routes(
            "hosts = [\"API.example\"]\npath = \"/v1\"\nmethods = [\"GET\", \"POST\"]",
            "hosts = [\"api.example\"]\npath = \"/v1/\"\nmethods = [\"POST\", \"GET\"]",
        );
        assert!(dead.contains("t.toml:"), "{dead}");
        assert!(dead.contains("routes[1].path"), "{dead}");
        assert!(dead.contains("same hosts, path, methods and headers as routes[0] (`a`)"));
        // Any difference in a matcher keeps both routes.
        for (first, second) in [
            ("path = \"/v1\"", "path = \"/v1\"\npath_match = \"exact\""),
            ("path = \"/v1\"", "path = \"/v1\"\nmethods = [\"GET\"]"),
            (
                "path = \"/v1\"\nheaders = [{ name = \"x-t\", value = \"1\" }]",
                "path = \"/v1\"\nheaders = [{ name = \"X-T\", value = \"2\" }]",
            ),
            ("path = \"/v1\"", "path = \"/v1\"\nhosts = [\"a.example\"]"),
        ] {
            assert_eq!(two_routes(first, second), "", "{first:?} / {second:?}");
        }
    }

    #[test]
    fn upgrades_and_trusted_proxies_are_validated() {
        let text = |extra: &str, server: &str| {
            format!(
                "[server]\n{server}\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nid = \"r\"\npath = \"/\"\ncluster = \"c\"\n{extra}\n[clusters.c]\nendpoints = [{{ address = \"127.0.0.1:1\" }}]\n"
            )
        };
        let errors = |extra: &str, server: &str| match crate::config::load_str(
            "t.toml",
            &text(extra, server),
        ) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert_eq!(errors("upgrades = [\"websocket\", \"x-stream/2\"]", ""), "");
        assert!(errors("upgrades = [\"h2c\"]", "").contains("routes[0].upgrades[0]"));
        assert!(errors("upgrades = [\"a b\"]", "").contains("not a protocol name"));
        assert_eq!(
            errors(
                "",
                "trusted_proxies = [\"10.0.0.0/8\", \"::1\", \"192.168.1.7\"]"
            ),
            ""
        );
        let bad = errors("", "trusted_proxies = [\"10.0.0.0/33\"]");
        assert!(bad.contains("server.trusted_proxies[0]"), "{bad}");
        assert!(errors("on_mismatch = \"406\"", "").contains("on_mismatch"));
    }

    #[test]
    fn dns_discovery_settings_are_located() {
        let errors = |cluster: &str| {
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\n[[routes]]\nid = \"r\"\npath = \"/\"\ncluster = \"c\"\n[clusters.c]\n{cluster}\n"
            );
            match load_str("t.toml", &text) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        // A host name is checked for its form only: no DNS at load.
        assert_eq!(
            errors("endpoints = [{ address = \"orders.invalid:8080\" }]"),
            ""
        );
        assert_eq!(errors("srv = \"_orders._tcp.example.internal.\""), "");
        let e = errors("srv = \"orders.example.internal\"");
        assert!(
            e.contains("t.toml:8:") && e.contains("clusters.c.srv"),
            "{e}"
        );
        let e = errors("srv = \"_orders._tcp.x\"\nendpoints = [{ address = \"127.0.0.1:1\" }]");
        assert!(
            e.contains("one of `endpoints`, `endpoints_file` or `srv`"),
            "{e}"
        );
        let e = errors(
            "endpoints = [{ address = \"o.internal:1\" }]\ndns = { min_ttl = \"1m\", max_ttl = \"10s\" }",
        );
        assert!(
            e.contains("t.toml:9:") && e.contains("clusters.c.dns.min_ttl"),
            "{e}"
        );
        let e = errors("endpoints = [{ address = \"o.internal:1\" }]\ndns = { min_ttl = \"0s\" }");
        assert!(e.contains("must be greater than 0"), "{e}");
        let e = errors(
            "endpoints = [{ address = \"o.internal:1\" }]\ndns = { servers = [\"ns.example\"] }",
        );
        assert!(e.contains("clusters.c.dns.servers[0]"), "{e}");
        let e = errors("endpoints = [{ address = \"127.0.0.1:1\" }]\ndns = {}");
        assert!(e.contains("only used by a cluster with `srv`"), "{e}");
        let e = errors("endpoints = [{ address = \"o_k!.internal:1\" }]");
        assert!(e.contains("is not a host name"), "{e}");
        let e = errors("endpoints = [{ address = \"o.internal:0\" }]");
        assert!(e.contains("is not a port"), "{e}");
        let e =
            errors("endpoints = [{ address = \"O.internal:1\" }, { address = \"o.internal:1\" }]");
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn admin_token_settings_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = "0123456789abcdef0123456789abcdef";
        let file = dir.path().join("admin.token");
        std::fs::write(&file, format!("{good}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        let text = format!("{BASE}token_file = \"{}\"\n", file.display());
        let config = load_str("t.toml", &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.admin.read_token().unwrap().as_deref(), Some(good));

        let error = |admin: &str| {
            let text = format!("{BASE}{admin}");
            let errors = load_str("t.toml", &text).expect_err(&text).0;
            assert_eq!(errors.len(), 1, "{errors:?}");
            let e = &errors[0];
            (
                e.field.clone(),
                e.location.as_ref().map(|l| l.line),
                e.message.clone(),
            )
        };
        let (field, line, message) = error("token = \"short\"\n");
        assert_eq!((field.as_str(), line), ("admin.token", Some(5)));
        assert!(message.contains("at least 32"), "{message}");
        let (field, _, message) = error(&format!("token = \"{good} x\"\n"));
        assert_eq!(field, "admin.token");
        assert!(message.contains("without spaces"), "{message}");
        let (field, line, message) = error(&format!(
            "token = \"{good}\"\ntoken_file = \"{}\"\n",
            file.display()
        ));
        assert_eq!((field.as_str(), line), ("admin.token", Some(5)));
        assert!(message.contains("not both"), "{message}");
        let (field, line, message) = error("\ntoken_file = \"/nonexistent/admin.token\"\n");
        assert_eq!((field.as_str(), line), ("admin.token_file", Some(6)));
        assert!(message.contains("cannot read"), "{message}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            let (field, _, message) = error(&format!("token_file = \"{}\"\n", file.display()));
            assert_eq!(field, "admin.token_file");
            assert!(message.contains("readable by every user"), "{message}");
        }
        let (field, _, message) = error("metrics_auth = true\n");
        assert_eq!(field, "admin.metrics_auth");
        assert!(message.contains("needs the admin token"), "{message}");
        let (field, _, _) = error("metrics_address = \"127.0.0.1:8080\"\n");
        assert_eq!(field, "admin.metrics_address");
    }

    #[test]
    fn admin_allowed_hosts_are_plain_host_names() {
        let ok = format!("{BASE}allowed_hosts = [\"admin.internal\", \"ops-1.example.com\"]\n");
        let config = load_str("t.toml", &ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.admin.allowed_hosts.len(), 2);
        let bad = format!(
            "{BASE}allowed_hosts = [\"ok.example\", \"evil.example:80\", \"*.example\", \"\", \"http://x\"]\n"
        );
        let Err(errors) = load_str("t.toml", &bad) else {
            panic!("accepted {bad}")
        };
        let errors = errors.0;
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "admin.allowed_hosts[1]",
                "admin.allowed_hosts[2]",
                "admin.allowed_hosts[3]",
                "admin.allowed_hosts[4]"
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn cache_bounds_are_validated_with_their_location() {
        let config = load_str("t.toml", BASE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cache, crate::config::CacheSection::default());
        let ok = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n[cache]\nmax_bytes = 1048576\nmax_object_size = 65536\n";
        let config = load_str("t.toml", ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.cache.limits().max_bytes, 1 << 20);
        assert_eq!(config.cache.limits().max_object_size, 1 << 16);

        let errors = |cache: &str| {
            let text = format!("[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n[cache]\n{cache}");
            let errors = load_str("t.toml", &text).expect_err(&text).0;
            errors
                .iter()
                .map(|e| {
                    (
                        e.field.clone(),
                        e.location.as_ref().map(|l| l.line),
                        e.message.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        // A zero budget, and the default max_object_size above it (located at the section).
        let found = errors("max_bytes = 0\n");
        assert_eq!(found.len(), 2, "{found:?}");
        let zero = found
            .iter()
            .find(|f| f.0 == "cache.max_bytes")
            .expect("max_bytes");
        assert_eq!(zero.1, Some(5));
        assert!(zero.2.contains("greater than 0"), "{found:?}");
        let found = errors("max_bytes = 1000\nmax_object_size = 2000\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].0.as_str(), found[0].1),
            ("cache.max_object_size", Some(6))
        );
        assert!(found[0].2.contains("larger than max_bytes"), "{found:?}");
        let found = errors("max_byte = 10\n");
        assert_eq!(found[0].0, "cache.max_byte", "{found:?}");
    }
}
