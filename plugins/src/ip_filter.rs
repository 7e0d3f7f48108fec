//! The `ip-filter` plugin: lets a request through or refuses it with `403` by the client's
//! address — the address the gateway derived ([`PluginCtx::client_ip`]: the PROXY header's
//! source, or the client behind `[server] trusted_proxies`, else the TCP peer), never a
//! header the client wrote itself.
//!
//! ```toml
//! [[routes.plugins]]            # or [[plugins]] for every request, before routing
//! name = "ip-filter"
//! allow = ["10.0.0.0/8", "192.168.1.7"]   # if not empty, only these may pass
//! deny = ["10.0.13.0/24"]                 # always refused, even when also allowed
//! ```
//!
//! A request whose address is unknown passes only when `allow` is empty.

use std::net::IpAddr;

use async_trait::async_trait;
use http::StatusCode;
use ipnet::IpNet;
use serde::Deserialize;

use crate::build::{parse_config, BuildError};
use crate::{Flow, Hooks, Plugin, PluginCtx, RequestHeader};

/// The registry name.
pub const NAME: &str = "ip-filter";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    allow: Vec<String>,
    deny: Vec<String>,
}

/// The built `ip-filter` plugin.
#[derive(Debug)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// A CIDR block (`10.0.0.0/8`, `2001:db8::/32`) or a single address; host bits set below
/// the prefix (`10.0.0.1/8`) are refused as a likely typo.
fn network(text: &str) -> Result<IpNet, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has host bits set below its prefix (did you mean `{}`?)",
            net.trunc()
        ));
    }
    Ok(net)
}

impl IpFilter {
    /// Builds the plugin from its config table.
    pub fn from_config(config: toml::Value) -> Result<Self, BuildError> {
        let config: Config = parse_config(NAME, config)?;
        let list = |entries: &[String], field: &str| -> Result<Vec<IpNet>, BuildError> {
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    network(e).map_err(|m| BuildError::invalid(NAME, format!("{field}[{i}]"), m))
                })
                .collect()
        };
        Ok(IpFilter {
            allow: list(&config.allow, "allow")?,
            deny: list(&config.deny, "deny")?,
        })
    }

    /// Whether a request from `client` may pass.
    pub fn admits(&self, client: Option<IpAddr>) -> bool {
        let Some(ip) = client.map(|ip| ip.to_canonical()) else {
            return self.allow.is_empty();
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[async_trait]
impl Plugin for IpFilter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            request: true,
            ..Hooks::default()
        }
    }

    fn shareable(&self) -> bool {
        true
    }

    async fn request(&self, ctx: &mut PluginCtx, req: &mut RequestHeader) -> Flow {
        if self.admits(ctx.client_ip) {
            return Flow::Continue;
        }
        Flow::Respond(crate::problem_response(
            StatusCode::FORBIDDEN,
            "address-forbidden",
            "Forbidden",
            "requests from this client address are not accepted here",
            req,
            ctx,
            0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(src: &str) -> Result<IpFilter, BuildError> {
        IpFilter::from_config(toml::from_str(src).expect("test TOML"))
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn allow_and_deny_lists() {
        let f = filter(
            r#"allow = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]
deny = ["10.0.13.0/24"]"#,
        )
        .unwrap();
        assert!(f.admits(ip("10.1.2.3")));
        assert!(f.admits(ip("192.168.1.7")));
        assert!(f.admits(ip("2001:db8::5")));
        assert!(
            f.admits(ip("::ffff:10.1.2.3")),
            "IPv4-mapped is the IPv4 client"
        );
        assert!(!f.admits(ip("10.0.13.9")), "deny wins over allow");
        assert!(!f.admits(ip("192.168.1.8")));
        assert!(!f.admits(None), "unknown address with an allow list");
        let deny_only = filter(r#"deny = ["203.0.113.0/24"]"#).unwrap();
        assert!(deny_only.admits(ip("198.51.100.1")));
        assert!(deny_only.admits(None));
        assert!(!deny_only.admits(ip("203.0.113.200")));
        assert!(filter("").unwrap().admits(ip("1.2.3.4")));
    }

    #[test]
    fn bad_entries_name_their_field() {
        for (src, field) in [
            (r#"allow = ["10.0.0.0/8", "10.0.0.0/33"]"#, "allow[1]"),
            (r#"deny = ["nope"]"#, "deny[0]"),
            (r#"deny = ["10.0.0.1/8"]"#, "deny[0]"),
        ] {
            match filter(src) {
                Err(BuildError::InvalidConfig { field: f, .. }) => {
                    assert_eq!(f.as_deref(), Some(field), "{src}")
                }
                other => panic!("{src}: {other:?}"),
            }
        }
    }
}
