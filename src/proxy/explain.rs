//! "Which route, cluster and plugins would this request get?" answered without sending it:
//! the same cleaning, normalisation, route match, version selection and route policy as a
//! real request, run against one [`Snapshot`]. `portico routes` prints the answer for a
//! config file; the admin console (`GET /admin/explain`) returns it as JSON for the running
//! config. One implementation, so the two can never disagree with the proxy or each other.

use serde::Serialize;

use crate::runtime::{Rewrite, Snapshot};

/// The question: a method, a request target (`/path?query`) and headers (`Host` selects
/// the host; without one the question is "on any host").
pub struct Question<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: &'a [(String, String)],
}

/// The question could not be asked: it is not a request at all (exit 2 for the CLI, 400
/// for the admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotARequest(pub String);

/// The answer, as the proxy would give it.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub method: String,
    pub target: String,
    /// The path after normalisation, when it differs from the one asked about.
    pub normalised: Option<String>,
    pub global_plugins: Vec<&'static str>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Routed(Box<Routed>),
    /// The request would be answered by the gateway itself with this status.
    Refused {
        status: u16,
        detail: String,
    },
}

#[derive(Debug, Serialize)]
pub struct Routed {
    pub route: String,
    pub version: Option<String>,
    /// The deprecation headers the version adds (`Deprecation`, `Sunset`, `Link`).
    pub deprecation: Vec<(String, String)>,
    pub cluster: String,
    pub lb: String,
    /// The HTTP version the cluster speaks upstream (`http1`, `h2`, `h2c`).
    pub protocol: &'static str,
    /// Endpoint address and weight (for a DNS-discovered endpoint, its name and the
    /// address it resolved to; with SRV priorities, the level).
    pub endpoints: Vec<(String, u32)>,
    /// Where the endpoints come from when discovered: file, DNS names or SRV.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// The request line sent upstream.
    pub upstream: String,
    pub attempts: u32,
    pub deadline: Option<String>,
    /// The route's own limits and timeouts (`routes.limits`), when it has any.
    pub limits: Option<String>,
    /// The route's response compression (`routes.compress`), when it has it.
    pub compress: Option<String>,
    /// The route's cache policy (`routes.cache`), when it has one.
    pub cache: Option<String>,
    pub route_plugins: Vec<&'static str>,
}

/// Runs `question` through `snapshot` the way the proxy would.
pub fn explain(snapshot: &Snapshot, question: &Question<'_>) -> Result<Explanation, NotARequest> {
    let Question {
        method,
        target,
        headers,
    } = *question;
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| NotARequest(format!("`{method}` is not an HTTP method")))?;
    let global_plugins = snapshot.global_plugins.names.clone();
    // An absolute-form target (`http://host/path`) is explained as the proxy routes it
    // (`headers::to_origin_form`): by its path, with its authority as the Host when the
    // question names none, and refused when a Host names another.
    let implied_headers;
    let implied_target;
    let mut headers = headers;
    let mut origin_target = target;
    if !target.starts_with('/') {
        use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
        if let RawTargetAuthority::Absolute {
            authority,
            path_and_query,
            ..
        } = raw_target_authority(target.as_bytes())
        {
            let authority = String::from_utf8_lossy(authority).into_owned();
            let host = headers
                .iter()
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("host"));
            match host {
                Some((_, h)) if !h.trim().eq_ignore_ascii_case(&authority) => {
                    return Ok(Explanation {
                        method: method.to_string(),
                        target: target.to_string(),
                        normalised: None,
                        global_plugins,
                        outcome: Outcome::Refused {
                            status: 400,
                            detail: "the Host header differs from the request target's authority"
                                .to_string(),
                        },
                    });
                }
                Some(_) => {}
                None => {
                    implied_headers = headers
                        .iter()
                        .cloned()
                        .chain(std::iter::once(("Host".to_string(), authority)))
                        .collect::<Vec<_>>();
                    headers = &implied_headers;
                }
            }
            // The classifier splits on ASCII delimiters only: a suffix of `target`.
            let rest = target
                .get(target.len() - path_and_query.len()..)
                .unwrap_or_default();
            origin_target = if rest.starts_with('/') { rest } else { "/" };
            if rest.starts_with('?') {
                implied_target = format!("/{rest}");
                origin_target = &implied_target;
            }
        }
    }
    let (raw_path, query) = origin_target
        .split_once('?')
        .map_or((origin_target, None), |(p, q)| (p, Some(q)));
    let answer = |normalised: Option<String>, outcome| Explanation {
        method: method.to_string(),
        target: target.to_string(),
        normalised,
        global_plugins: global_plugins.clone(),
        outcome,
    };
    let bad_request = |detail: String| Outcome::Refused {
        status: 400,
        detail,
    };
    let path = match crate::router::normalize_path(raw_path) {
        Ok(p) => p.into_owned(),
        Err(e) => return Ok(answer(None, bad_request(e.to_string()))),
    };
    let normalised = (path != raw_path).then(|| path.clone());
    let traits = match crate::router::inspect_path(&path) {
        Ok(t) => t,
        Err(e) => return Ok(answer(normalised, bad_request(e.to_string()))),
    };
    let query_suffix = query.map(|q| format!("?{q}")).unwrap_or_default();
    let request_target = format!("{path}{query_suffix}");
    let mut req =
        pingora_http::RequestHeader::build(method.clone(), request_target.as_bytes(), None)
            .map_err(|e| NotARequest(format!("`{target}` is not a request target: {e}")))?;
    for (name, value) in headers {
        let n = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| NotARequest(format!("`{name}` is not a header name")))?;
        let v = http::HeaderValue::from_str(value.trim())
            .map_err(|_| NotARequest(format!("the value of `{name}` is not a header value")))?;
        let _ = req.append_header(n, v);
    }
    if !req.headers.contains_key(http::header::HOST) {
        // Without a Host the question is "on any host"; an HTTP/1.0 request may leave Host
        // out, where HTTP/1.1 would be refused for it.
        req.set_version(http::Version::HTTP_10);
    }
    let checked = super::clean_request(&mut req, &snapshot.identity_headers, false)
        .and_then(|()| super::resolve(snapshot, &req))
        .and_then(|resolved| {
            super::check_route_policy(&resolved.route, traits, &req).map(|()| resolved)
        });
    let outcome = match checked {
        Ok(resolved) => {
            let (route, target) = (&resolved.route, &resolved.target);
            let base = resolved.unversioned_path.as_deref().unwrap_or(&path);
            let upstream_path = match &target.rewrite {
                Rewrite::None => base.to_string(),
                Rewrite::Prefix { prefix, with } => {
                    crate::router::rewrite_prefix(base, prefix, with)
                }
            };
            let cluster = &target.cluster;
            Outcome::Routed(Box::new(Routed {
                route: route.id.to_string(),
                version: target.version.as_deref().map(str::to_string),
                deprecation: target
                    .deprecation
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect(),
                cluster: cluster.name.clone(),
                lb: format!("{:?}", cluster.definition.lb),
                protocol: cluster.definition.protocol.as_str(),
                endpoints: cluster
                    .endpoints()
                    .iter()
                    .map(|e| {
                        let mut name = e.name.clone();
                        if name != e.addr.to_string() {
                            name = format!("{name} ({})", e.addr);
                        }
                        if e.priority != 0 {
                            name = format!("{name} priority {}", e.priority);
                        }
                        (name, e.weight)
                    })
                    .collect(),
                discovery: discovery_summary(&cluster.definition),
                upstream: format!("{method} {upstream_path}{query_suffix}"),
                attempts: route.retry.attempts,
                deadline: route
                    .deadline
                    .map(|d| humantime::format_duration(d).to_string()),
                limits: route.limits.as_deref().map(|l| l.summary()),
                compress: route.compress.as_deref().map(|c| c.summary().to_string()),
                cache: route.cache.as_deref().map(|c| c.summary.clone()),
                route_plugins: route.plugins.names.clone(),
            }))
        }
        Err(e) => Outcome::Refused {
            status: e.status(),
            detail: e.detail().to_string(),
        },
    };
    Ok(answer(normalised, outcome))
}

/// One line on where a discovered cluster's endpoints come from.
fn discovery_summary(def: &crate::config::Cluster) -> Option<String> {
    if let Some(file) = &def.endpoints_file {
        return Some(format!("file {file} (watched)"));
    }
    if !def.uses_dns() {
        return None;
    }
    let dns = def.dns.clone().unwrap_or_default();
    let names = match &def.srv {
        Some(srv) => format!("srv {srv}"),
        None => {
            let hosts: Vec<&str> = def
                .endpoints
                .iter()
                .filter(|e| e.is_hostname())
                .map(|e| e.address.as_str())
                .collect();
            format!("dns {}", hosts.join(", "))
        }
    };
    let servers = if dns.servers.is_empty() {
        "the system's name servers".to_string()
    } else {
        dns.servers.join(", ")
    };
    Some(format!(
        "{names} via {servers}, re-resolved after the TTL within {}..{}",
        humantime::format_duration(dns.min_ttl),
        humantime::format_duration(dns.max_ttl)
    ))
}

impl std::fmt::Display for Explanation {
    /// The `portico routes` text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let globals = self.global_plugins.join(", ");
        writeln!(f, "request:    {} {}", self.method, self.target)?;
        if let Some(n) = &self.normalised {
            writeln!(f, "normalised: {n}")?;
        }
        match &self.outcome {
            Outcome::Routed(r) => {
                writeln!(f, "route:      {}", r.route)?;
                if let Some(version) = &r.version {
                    writeln!(f, "version:    {version}")?;
                    for (name, value) in &r.deprecation {
                        writeln!(f, "  {name}: {value}")?;
                    }
                }
                writeln!(f, "cluster:    {} ({}, {})", r.cluster, r.lb, r.protocol)?;
                if let Some(d) = &r.discovery {
                    writeln!(f, "  discovery {d}")?;
                }
                for (name, weight) in &r.endpoints {
                    writeln!(f, "  endpoint  {name} weight {weight}")?;
                }
                writeln!(f, "upstream:   {}", r.upstream)?;
                writeln!(
                    f,
                    "retries:    up to {} attempts{}",
                    r.attempts,
                    r.deadline
                        .as_ref()
                        .map(|d| format!(", deadline {d}"))
                        .unwrap_or_default()
                )?;
                if let Some(limits) = &r.limits {
                    writeln!(f, "limits:     {limits}")?;
                }
                if let Some(compress) = &r.compress {
                    writeln!(f, "compress:   {compress}")?;
                }
                if let Some(cache) = &r.cache {
                    writeln!(f, "cache:      {cache}")?;
                }
                writeln!(
                    f,
                    "plugins:    global [{globals}] then route [{}]",
                    r.route_plugins.join(", ")
                )
            }
            Outcome::Refused { status, detail } => {
                writeln!(f, "{status} {detail}")?;
                writeln!(f, "plugins:    global [{globals}]")
            }
        }
    }
}
