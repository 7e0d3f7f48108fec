//! The token service's config file (`conf/auth.toml`): plain serde structs with
//! `deny_unknown_fields`, defaults that are safe for production, and validation whose
//! errors name the file, line, column and field, like the gateway's own config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use portico_common::config_error::{location_of, ConfigError, ConfigErrors};

/// The whole `auth.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Where the token service listens, `ip:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The `iss` of every token and the base of every endpoint URL in the metadata.
    /// Default: `http://<listen>`; set the public `https://` URL in production.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `sqlite://<path>` (relative paths are relative to this file's directory) or
    /// `postgres://user@host:port/db`. `${NAME}` is replaced by an environment variable.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Worker threads of the service's runtime.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Open client connections served at once; more wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The operators' listener, `ip:port` or `off`: `/metrics` and `/healthz`, never on
    /// the public `listen`. Loopback by default.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// How long a client may take to send a request's header, and then its body; past
    /// either it gets 408 and the connection is closed.
    #[serde(
        default = "default_read_timeout",
        with = "portico_common::humantime_serde"
    )]
    pub header_read_timeout: Duration,
    #[serde(
        default = "default_read_timeout",
        with = "portico_common::humantime_serde"
    )]
    pub body_read_timeout: Duration,
    /// Peers (addresses or CIDR blocks) whose `X-Forwarded-For` is believed: a TLS
    /// terminator or load balancer in front of the service. The source address the limits
    /// count by is then the rightmost address in that header not in this list; without it,
    /// every client behind such a proxy would share the proxy's limits.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub tokens: Tokens,
    #[serde(default)]
    pub keys: Keys,
    #[serde(default)]
    pub failed_auth: FailedAuth,
    #[serde(default)]
    pub secret_checks: SecretChecks,
    #[serde(default)]
    pub argon2: Argon2Cost,
    #[serde(default)]
    pub postgres: Postgres,
    /// The directory of the config file; relative SQLite paths resolve against it so the
    /// CLI and the service find the same database whatever their working directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Signing algorithms the service can issue tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    ES256,
    RS256,
    EdDSA,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "ES256" => Some(Algorithm::ES256),
            "RS256" => Some(Algorithm::RS256),
            "EdDSA" => Some(Algorithm::EdDSA),
            _ => None,
        }
    }
}

/// What the issued access tokens look like.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tokens {
    /// `exp - iat` of every token.
    #[serde(with = "portico_common::humantime_serde")]
    pub lifetime: Duration,
    /// Algorithm of newly generated signing keys (a change takes effect through a
    /// rotation, which the service starts by itself).
    pub algorithm: Algorithm,
    /// Modulus size of generated RSA keys (2048, 3072 or 4096).
    pub rsa_bits: usize,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            lifetime: Duration::from_secs(600),
            algorithm: Algorithm::ES256,
            rsa_bits: 2048,
        }
    }
}

/// The PostgreSQL connections (`database_url = "postgres://…"`); TLS is set in the URL,
/// libpq-style: `sslmode`, `sslrootcert` (see `pg_tls`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Postgres {
    /// Connections kept open and shared by every request (each pipelines queries); a
    /// broken one is replaced on its next use.
    pub pool_size: usize,
}

impl Default for Postgres {
    fn default() -> Self {
        Postgres { pool_size: 4 }
    }
}

/// Signing-key rotation.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keys {
    /// Age of the newest key after which a new one is generated; `off` disables the
    /// schedule (`portico auth keys rotate` still works).
    #[serde(with = "optional_duration")]
    pub rotate_every: Option<Duration>,
    /// How long a new key is published in the JWKS before it signs anything, so every
    /// verifier can fetch it first.
    #[serde(with = "portico_common::humantime_serde")]
    pub publish_ahead: Duration,
    /// How often each replica re-reads the key set from the database.
    #[serde(with = "portico_common::humantime_serde")]
    pub refresh_interval: Duration,
    /// How long an old key stays published after the last token it signed has expired
    /// (clock skew between hosts and verifiers' caches).
    #[serde(with = "portico_common::humantime_serde")]
    pub retire_grace: Duration,
    /// `Cache-Control: max-age` of the JWKS response.
    #[serde(with = "portico_common::humantime_serde")]
    pub jwks_max_age: Duration,
    /// A file holding the 32-byte key that encrypts the private keys in the database
    /// (AES-256-GCM): 64 hex digits, base64, or 32 raw bytes; not readable by every user.
    /// Relative paths are relative to this file's directory.
    pub key_encryption_key_file: Option<PathBuf>,
    /// The same key as text (64 hex digits or base64), normally `${NAME}` of an
    /// environment variable. At most one of the two.
    pub key_encryption_key: Option<String>,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            rotate_every: Some(Duration::from_secs(30 * 24 * 3600)),
            publish_ahead: Duration::from_secs(600),
            refresh_interval: Duration::from_secs(30),
            retire_grace: Duration::from_secs(120),
            jwks_max_age: Duration::from_secs(300),
            key_encryption_key_file: None,
            key_encryption_key: None,
        }
    }
}

/// Back-off after failed client authentication, per process, in memory. Keyed by the
/// client id *and* the source address, so failures from one place never refuse the same
/// client id elsewhere; and by the source address alone, so one place cannot spray many
/// ids. A refused attempt costs no argon2 time.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedAuth {
    /// Consecutive failures of one client id from one source address before it backs off.
    pub max_failures: u32,
    /// Failures from one source address, whatever the client ids, before it backs off.
    pub address_max_failures: u32,
    /// The first back-off; each further failure doubles it, up to `max_backoff`.
    #[serde(with = "portico_common::humantime_serde")]
    pub backoff: Duration,
    /// The longest back-off (429 with `Retry-After`). `lockout` is its former name.
    #[serde(with = "portico_common::humantime_serde", alias = "lockout")]
    pub max_backoff: Duration,
    /// Each quiet `window` after a back-off ends halves the failure count, so an old
    /// burst of failures is forgotten and a success forgets it at once.
    #[serde(with = "portico_common::humantime_serde")]
    pub window: Duration,
    /// Entries per table (client id and address, address) at most. A full table drops
    /// forgotten entries, then the least recently failed ones, never new failures.
    pub max_tracked: usize,
}

impl Default for FailedAuth {
    fn default() -> Self {
        FailedAuth {
            max_failures: 5,
            address_max_failures: 20,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            window: Duration::from_secs(60),
            max_tracked: 100_000,
        }
    }
}

/// What one source address may spend on secret checks (argon2), counted before the hash,
/// so an unauthenticated flood queues behind its own address instead of every client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretChecks {
    /// Secret checks per second per source address, sustained (a token bucket).
    pub per_address_rate: f64,
    /// Secret checks one source address may make at once after a quiet spell.
    pub per_address_burst: u32,
    /// Checks waiting for a hashing slot (two per core) at most; more get 503 with
    /// `Retry-After: 1` at once instead of queueing without end.
    pub max_queued: usize,
}

impl Default for SecretChecks {
    fn default() -> Self {
        SecretChecks {
            per_address_rate: 10.0,
            per_address_burst: 50,
            max_queued: 256,
        }
    }
}

/// Cost of the argon2id hashes of client secrets. Defaults follow OWASP's minimum
/// (19 MiB, 2 passes); lower only for tests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Argon2Cost {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9100".into()
}
fn default_database_url() -> String {
    "sqlite://portico-auth.db".into()
}
fn default_threads() -> usize {
    2
}
fn default_max_connections() -> usize {
    1024
}
fn default_admin_listen() -> String {
    "127.0.0.1:9190".into()
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            listen: default_listen(),
            issuer: None,
            database_url: default_database_url(),
            threads: default_threads(),
            max_connections: default_max_connections(),
            admin_listen: default_admin_listen(),
            header_read_timeout: default_read_timeout(),
            body_read_timeout: default_read_timeout(),
            trusted_proxies: Vec::new(),
            tokens: Tokens::default(),
            keys: Keys::default(),
            failed_auth: FailedAuth::default(),
            secret_checks: SecretChecks::default(),
            argon2: Argon2Cost::default(),
            postgres: Postgres::default(),
            base_dir: PathBuf::from("."),
        }
    }
}

/// Where the client registry, keys and revocations live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres { url: String, pool_size: usize },
}

impl AuthConfig {
    /// The database named by `database_url`, with `${NAME}` expanded.
    pub fn database(&self) -> Result<Database, String> {
        let url = expand_env(&self.database_url)?;
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("`sqlite://` needs a file path".into());
            }
            let path = Path::new(path);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                self.base_dir.join(path)
            };
            Ok(Database::Sqlite(path))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            crate::pg_tls::PgSettings::parse(&url)?;
            Ok(Database::Postgres {
                url,
                pool_size: self.postgres.pool_size,
            })
        } else {
            Err("must start with `sqlite://` or `postgres://`".into())
        }
    }

    /// The key that encrypts signing keys at rest, if one is configured; the error names
    /// the setting.
    pub fn key_encryption_key(&self) -> Result<Option<crate::at_rest::Kek>, String> {
        match (
            &self.keys.key_encryption_key_file,
            &self.keys.key_encryption_key,
        ) {
            (Some(_), Some(_)) => Err("keys.key_encryption_key_file and keys.key_encryption_key \
                                       are both set; keep one"
                .into()),
            (Some(file), None) => {
                let path = if file.is_absolute() {
                    file.clone()
                } else {
                    self.base_dir.join(file)
                };
                let content = read_secret_file(&path)
                    .map_err(|e| format!("keys.key_encryption_key_file: {e}"))?;
                crate::at_rest::Kek::parse(&content)
                    .map(Some)
                    .map_err(|e| format!("keys.key_encryption_key_file: `{}` {e}", path.display()))
            }
            (None, Some(text)) => {
                let text = expand_env(text).map_err(|e| format!("keys.key_encryption_key: {e}"))?;
                crate::at_rest::Kek::parse_text(text.as_bytes())
                    .map(Some)
                    .map_err(|e| format!("keys.key_encryption_key: the value {e}"))
            }
            (None, None) => Ok(None),
        }
    }

    /// The admin listener's address; `None` when `admin_listen = "off"`.
    pub fn admin_address(&self) -> Option<&str> {
        (self.admin_listen != "off").then_some(self.admin_listen.as_str())
    }

    /// `trusted_proxies` as networks (validated at load).
    pub fn trusted_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|e| portico_common::ip_network(e).ok())
            .collect()
    }

    /// The issuer, defaulting to `http://<listen address>`.
    pub fn issuer_for(&self, bound: std::net::SocketAddr) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"))
    }
}

/// Replaces `${NAME}` with the environment variable's value (for a database password).
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${`".to_string())?;
        let name = &after[..end];
        let value =
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The content of a secret file, which must be a file not readable by every user (as the
/// gateway's token files).
fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read `{shown}`: {e}"))?;
    if !meta.is_file() {
        return Err(format!("`{shown}` is not a file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            return Err(format!(
                "`{shown}` is readable by every user (mode {mode:04o}); `chmod o-r {shown}`"
            ));
        }
    }
    std::fs::read(path).map_err(|e| format!("cannot read `{shown}`: {e}"))
}

/// Reads and validates an auth config file.
pub fn load_file(path: &Path) -> Result<AuthConfig, ConfigErrors> {
    let (name, text) = portico_common::config_error::read_config_file(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let base_dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    };
    load(&name, &text, base_dir)
}

/// Parses and validates auth config text; `file` names it in errors, relative paths are
/// relative to the working directory.
pub fn load_str(file: &str, text: &str) -> Result<AuthConfig, ConfigErrors> {
    load(file, text, PathBuf::new())
}

fn load(file: &str, text: &str, base_dir: PathBuf) -> Result<AuthConfig, ConfigErrors> {
    let error = |offset: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_string(),
        location: offset.map(|o| location_of(text, o)),
        field,
        message,
    };
    let parsed = toml::Deserializer::parse(text).map_err(|e| (String::new(), e));
    let deserialized = parsed.and_then(|deserializer| {
        serde_path_to_error::deserialize(deserializer)
            .map_err(|e| (e.path().to_string(), e.into_inner()))
    });
    let mut config: AuthConfig = deserialized.map_err(|(path, inner)| {
        let field = if path == "." { String::new() } else { path };
        ConfigErrors(vec![error(
            inner.span().map(|s| s.start),
            field,
            inner.message().trim().to_string(),
        )])
    })?;
    config.base_dir = base_dir;
    let problems = validate(&config);
    if problems.is_empty() {
        return Ok(config);
    }
    let doc = toml_edit::ImDocument::parse(text).ok();
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|(path, message)| {
            let offset = doc.as_ref().and_then(|d| span_of(d.as_table(), &path));
            error(offset, path.join("."), message)
        })
        .collect();
    errors.sort_by_key(|e| e.location.as_ref().map(|l| (l.line, l.column)));
    Err(ConfigErrors(errors))
}

/// Everything serde cannot check, as (field path, message).
fn validate(c: &AuthConfig) -> Vec<(Vec<&'static str>, String)> {
    let mut p = Vec::new();
    if c.listen.parse::<std::net::SocketAddr>().is_err() {
        p.push((vec!["listen"], format!("`{}` is not ip:port", c.listen)));
    }
    if let Some(issuer) = &c.issuer {
        if let Err(e) = check_issuer(issuer) {
            p.push((vec!["issuer"], e));
        }
    }
    if let Err(e) = c.database() {
        p.push((vec!["database_url"], e));
    }
    if let Err(e) = c.key_encryption_key() {
        let field = if c.keys.key_encryption_key.is_some() {
            "key_encryption_key"
        } else {
            "key_encryption_key_file"
        };
        // The message names the setting itself; the location comes from the field.
        let e = e.split_once(": ").map_or(e.clone(), |(_, m)| m.to_string());
        p.push((vec!["keys", field], e));
    }
    if !(1..=64).contains(&c.postgres.pool_size) {
        p.push((vec!["postgres", "pool_size"], "must be 1 to 64".into()));
    }
    if c.threads == 0 {
        p.push((vec!["threads"], "must be at least 1".into()));
    }
    if c.max_connections == 0 {
        p.push((vec!["max_connections"], "must be at least 1".into()));
    }
    if let Some(admin) = c.admin_address() {
        match admin.parse::<std::net::SocketAddr>() {
            Err(_) => p.push((
                vec!["admin_listen"],
                format!("`{admin}` is not ip:port (or `off`)"),
            )),
            Ok(a) if a.port() != 0 && c.listen.parse::<std::net::SocketAddr>() == Ok(a) => {
                p.push((
                    vec!["admin_listen"],
                    "must differ from `listen`: the admin listener is for operators only".into(),
                ))
            }
            Ok(_) => {}
        }
    }
    for (field, d) in [
        ("header_read_timeout", c.header_read_timeout),
        ("body_read_timeout", c.body_read_timeout),
    ] {
        if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
            p.push((vec![field], "must be between 100ms and 5m".into()));
        }
    }
    if let Some(bad) = c
        .trusted_proxies
        .iter()
        .find_map(|e| portico_common::ip_network(e).err())
    {
        p.push((vec!["trusted_proxies"], bad));
    }
    let t = &c.tokens;
    if t.lifetime < Duration::from_secs(1) || t.lifetime > Duration::from_secs(24 * 3600) {
        p.push((
            vec!["tokens", "lifetime"],
            "must be between 1s and 24h".into(),
        ));
    }
    if ![2048, 3072, 4096].contains(&t.rsa_bits) {
        p.push((
            vec!["tokens", "rsa_bits"],
            "must be 2048, 3072 or 4096".into(),
        ));
    }
    let k = &c.keys;
    if k.refresh_interval < Duration::from_millis(100) {
        p.push((
            vec!["keys", "refresh_interval"],
            "must be at least 100ms".into(),
        ));
    }
    // Every replica must have re-read the key set at least once between a key's creation
    // and its first signature, or a verifier could meet a kid its issuer never published.
    if k.publish_ahead < k.refresh_interval * 2 {
        p.push((
            vec!["keys", "publish_ahead"],
            format!(
                "must be at least twice keys.refresh_interval ({})",
                humantime::format_duration(k.refresh_interval)
            ),
        ));
    }
    if let Some(every) = k.rotate_every {
        if every <= k.publish_ahead {
            p.push((
                vec!["keys", "rotate_every"],
                "must be longer than keys.publish_ahead".into(),
            ));
        }
    }
    let f = &c.failed_auth;
    if f.max_failures == 0 {
        p.push((
            vec!["failed_auth", "max_failures"],
            "must be at least 1".into(),
        ));
    }
    if f.address_max_failures < f.max_failures {
        p.push((
            vec!["failed_auth", "address_max_failures"],
            "must be at least failed_auth.max_failures".into(),
        ));
    }
    if f.window.is_zero() {
        p.push((vec!["failed_auth", "window"], "must be positive".into()));
    }
    if f.backoff.is_zero() {
        p.push((vec!["failed_auth", "backoff"], "must be positive".into()));
    }
    if f.max_backoff < f.backoff {
        p.push((
            vec!["failed_auth", "max_backoff"],
            "must be at least failed_auth.backoff".into(),
        ));
    }
    if f.max_tracked < 16 {
        p.push((
            vec!["failed_auth", "max_tracked"],
            "must be at least 16".into(),
        ));
    }
    let s = &c.secret_checks;
    if !(s.per_address_rate.is_finite() && s.per_address_rate > 0.0) {
        p.push((
            vec!["secret_checks", "per_address_rate"],
            "must be a positive number of checks per second".into(),
        ));
    }
    if s.per_address_burst == 0 {
        p.push((
            vec!["secret_checks", "per_address_burst"],
            "must be at least 1".into(),
        ));
    }
    if s.max_queued == 0 {
        p.push((
            vec!["secret_checks", "max_queued"],
            "must be at least 1".into(),
        ));
    }
    let a = &c.argon2;
    if let Err(e) = argon2::Params::new(a.memory_kib, a.iterations, a.parallelism, None) {
        p.push((vec!["argon2"], format!("invalid argon2 cost: {e}")));
    }
    p
}

fn check_issuer(issuer: &str) -> Result<(), String> {
    let rest = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".into());
    }
    if issuer.contains(['?', '#']) {
        return Err("must not have a query or fragment (RFC 8414)".into());
    }
    if issuer.ends_with('/') {
        return Err("must not end with `/` (endpoint URLs are appended to it)".into());
    }
    if issuer.chars().any(|c| c.is_whitespace()) {
        return Err("must not contain whitespace".into());
    }
    Ok(())
}

/// The byte offset of the value at a dotted key path, or of its closest existing parent.
fn span_of(root: &toml_edit::Table, path: &[&str]) -> Option<usize> {
    let mut best = None;
    let mut table: Option<&dyn toml_edit::TableLike> = Some(root);
    for key in path {
        let Some(t) = table else { break };
        let Some((k, item)) = t.get_key_value(key) else {
            break;
        };
        best = item.span().or_else(|| k.span()).map(|s| s.start).or(best);
        table = item.as_table_like();
    }
    best
}

/// A duration, or `off`.
mod optional_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}`: {e} (write e.g. `30d`, or `off`)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_common::config_error::Location;

    #[test]
    fn defaults_are_valid() {
        let c = load_str("auth.toml", "").unwrap();
        assert_eq!(c.tokens.algorithm, Algorithm::ES256);
        assert_eq!(
            c.database().unwrap(),
            Database::Sqlite(PathBuf::from("portico-auth.db"))
        );
    }

    #[test]
    fn errors_name_line_column_and_field() {
        let err = load_str(
            "a.toml",
            "listen = \"127.0.0.1:1\"\n[tokens]\nalgorithm = \"HS256\"\n",
        )
        .unwrap_err();
        let e = &err.0[0];
        assert_eq!(
            e.location,
            Some(Location {
                line: 3,
                column: 13
            })
        );
        assert_eq!(e.field, "tokens.algorithm");

        let err = load_str(
            "a.toml",
            "[keys]\npublish_ahead = \"1s\"\nrefresh_interval = \"1s\"\n",
        )
        .unwrap_err();
        let e = &err.0[0];
        assert_eq!(e.field, "keys.publish_ahead");
        assert_eq!(
            e.location,
            Some(Location {
                line: 2,
                column: 17
            })
        );

        let err = load_str("a.toml", "colour = 1\n").unwrap_err();
        assert!(err.0[0].message.contains("unknown field"), "{err}");
        assert_eq!(err.0[0].location.as_ref().unwrap().line, 1);
    }
}
