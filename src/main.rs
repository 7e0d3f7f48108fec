//! The `portico` command line: serve, check, routes, demo, cache purge and auth (the token
//! service).
//! Everything it runs lives in the libraries; this file only parses arguments and maps
//! results to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use portico::config;
use portico::proxy::explain;
use portico::runtime::{serve, Snapshot};

mod allocator;

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "An API gateway for service-to-service REST traffic, built on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The OAuth2 token service: serve it, or manage its clients and signing keys.
    Auth(portico::auth::cli::AuthArgs),
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(short, long, default_value = "conf/portico.toml")]
        config: PathBuf,
        /// Run in the background (daemonize).
        #[arg(short, long)]
        daemon: bool,
        /// Take the listening sockets over from a running portico (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Load and build everything, then exit without serving.
        #[arg(short, long)]
        test: bool,
    },
    /// Validate a config file: exit 0 when valid, 2 with every problem listed when not.
    Check {
        #[arg(short, long, default_value = "conf/portico.toml")]
        config: PathBuf,
    },
    /// Read the effective config: defaults filled in, `${ENV}` references substituted.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Explain which route, cluster and plugins a request would get, without sending it.
    Routes {
        #[arg(short, long, default_value = "conf/portico.toml")]
        config: PathBuf,
        /// The request method, e.g. GET.
        method: String,
        /// The request path, e.g. /orders/42?x=1.
        path: String,
        /// A request header, `Name: value` (repeatable); `Host: …` selects the host.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// The edge cache of a running gateway, through its admin API.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Run the gateway with two example services and a ready config on loopback.
    Demo {
        /// The gateway listener (falls back to a free port when taken).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The admin listener (falls back to a free port when taken).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
        /// Skip service A's scripted walk-through; just serve.
        #[arg(long)]
        no_script: bool,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Purge cached responses: every variant of one URL (--url), a host's paths under a prefix
    /// (--host, --prefix), or one cache key hash (--key). Sent to `POST /admin/cache/purge` at
    /// the config's [admin] address with its token; prints the answer, with the count purged.
    /// Exit 0 when done, 1 when the gateway could not do it, 2 for a bad request or config.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["url", "host", "key"])))]
    Purge {
        #[arg(short, long, default_value = "conf/portico.toml")]
        config: PathBuf,
        /// The admin API's `host:port`, instead of the config's [admin] address.
        #[arg(long)]
        admin: Option<String>,
        /// An absolute URL (https://api.example/v1/orders/7?full=1): that host and exact path.
        #[arg(long)]
        url: Option<String>,
        /// A host: its entries, all of them or those under --prefix.
        #[arg(long)]
        host: Option<String>,
        /// A path prefix (a plain string prefix, starting with /); needs --host.
        #[arg(long, requires = "host")]
        prefix: Option<String>,
        /// A cache key hash, 32 hex digits.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the value of each KEY, one per line: a string as it is, a number or boolean
    /// as written, a table or array as JSON, and an empty line for a setting that is not
    /// set. Keys are dotted paths: `server.pid_file`, `listeners.0.address`,
    /// `clusters."api.v2".lb`. Exit 2 when the config is invalid, 1 for a path that leads
    /// nowhere (through a value that is not a table or array).
    Get {
        #[arg(short, long, default_value = "conf/portico.toml")]
        config: PathBuf,
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's own output is the show; only warnings (ejections, breakers) join it. The
    // proxy's per-request 5xx details would repeat what the bulkhead and timeout scenes
    // print themselves.
    let default_filter = if matches!(cli.command, Command::Demo { .. }) {
        "warn,pingora_proxy=off,pingora_core=off,portico::proxy=error,portico_auth=error"
    } else {
        "info"
    };
    init_logging(matches!(cli.command, Command::Auth(_)), default_filter);
    match cli.command {
        Command::Serve {
            config,
            daemon,
            upgrade,
            test,
        } => {
            let loaded = match config::load_file(&config) {
                Ok(c) => c,
                Err(errors) => return report(&errors),
            };
            let options = serve::ProcessOptions {
                upgrade,
                daemon,
                test,
            };
            match serve::build(loaded, Some(config), &options) {
                Ok((mut server, _)) => {
                    if test {
                        println!("configuration and services built; exiting (--test)");
                        return ExitCode::SUCCESS;
                    }
                    if daemon {
                        server.add_service(pingora_core::services::background::background_service(
                            "allocator after fork",
                            allocator::AfterFork,
                        ));
                    }
                    serve::run(server);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portico: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config } => match config::load_file(&config) {
            Ok(c) => {
                for warning in config::lint(&c) {
                    eprintln!("warning: {}: {warning}", config.display());
                }
                // DNS may be unreachable where the config is checked: a name that does
                // not resolve now is a warning (the gateway starts and keeps trying).
                for (name, cluster) in c.clusters.iter().filter(|(_, c)| c.uses_dns()) {
                    if let Err(e) = portico::upstream::dns::check_resolves(cluster) {
                        eprintln!(
                            "warning: {}: clusters.{name}: does not resolve now ({e}); the gateway starts with no endpoints for it and keeps resolving",
                            config.display()
                        );
                    }
                }
                println!(
                    "{}: ok ({} listeners, {} routes, {} clusters)",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len(),
                    c.clusters.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => report(&errors),
        },
        Command::Config {
            action: ConfigAction::Get { config, keys },
        } => config_get(&config, &keys),
        Command::Routes {
            config,
            method,
            path,
            headers,
        } => explain(&config, &method, &path, &headers),
        Command::Auth(args) => portico::auth::cli::run(args),
        Command::Cache {
            action:
                CacheAction::Purge {
                    config,
                    admin,
                    url,
                    host,
                    prefix,
                    key,
                },
        } => {
            use portico::cache::purge::Purge;
            let purge = match (url, host, key) {
                (Some(url), _, _) => Purge::url(&url),
                (_, Some(host), _) => Purge::prefix(&host, prefix.as_deref().unwrap_or("")),
                (_, _, Some(key)) => Purge::key(&key),
                _ => Err("give --url, --host or --key".to_string()),
            };
            match purge {
                Ok(purge) => cache_purge(&config, admin.as_deref(), &purge),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Demo {
            listen,
            admin,
            no_script,
        } => {
            match portico::demo::run(portico::demo::DemoOptions {
                listen,
                admin,
                no_script,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portico demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `RUST_LOG` filters (default `info`). `PORTICO_LOG_FORMAT=json` writes one JSON object
/// per line (timestamp, level, target, message) for central collection; `text` is the
/// human format. The token service defaults to JSON, everything else to text. When stderr
/// is systemd's journal, every line starts with its syslog priority
/// ([`portico::observe::journal`]) and the text format leaves the timestamp to journald.
fn init_logging(json_by_default: bool, default_filter: &str) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter));
    let json = match std::env::var("PORTICO_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => json_by_default,
    };
    let journal = portico::observe::journal::stderr_is_journal();
    if journal && !json {
        builder.format(|buf, record| {
            use portico::observe::journal;
            let message = record.args().to_string();
            let text = format!("[{} {}] {message}", record.level(), record.target());
            journal::write_prefixed(buf, journal::priority(record.level(), &message), &text)
        });
    } else if json {
        builder.format(move |buf, record| {
            use std::io::Write;
            let message = record.args().to_string();
            let mut line = serde_json::json!({
                "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
            });
            // Structured events (a JSON object as the message) keep their fields at the
            // top level instead of becoming an escaped string.
            match serde_json::from_str::<serde_json::Value>(&message) {
                Ok(serde_json::Value::Object(fields)) => {
                    for (k, v) in fields {
                        line.as_object_mut().map(|o| o.entry(k).or_insert(v));
                    }
                }
                _ => line["message"] = serde_json::Value::String(message.clone()),
            }
            if journal {
                let priority = portico::observe::journal::priority(record.level(), &message);
                write!(buf, "<{priority}>")?;
            }
            writeln!(buf, "{line}")
        });
    }
    // Pingora's known noise goes in as debug (observe::log_noise); the filter still decides.
    let logger = builder.build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(portico::observe::log_noise::Demoting::new(logger))).is_ok() {
        log::set_max_level(max_level);
    }
}

/// `portico config get`: what `serve` would use, for scripts (systemd/portico-upgrade).
fn config_get(path: &std::path::Path, keys: &[String]) -> ExitCode {
    let loaded = match config::load_file(path) {
        Ok(c) => c,
        Err(errors) => return report(&errors),
    };
    let mut lines = Vec::with_capacity(keys.len());
    for key in keys {
        match config::effective_value(&loaded, key) {
            Ok(value) => lines.push(config::value_as_line(value.as_ref())),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
    }
    for line in lines {
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// `portico cache purge`: the config file names the admin API and its token.
fn cache_purge(
    config_path: &std::path::Path,
    admin: Option<&str>,
    purge: &portico::cache::purge::Purge,
) -> ExitCode {
    let loaded = match config::load_file(config_path) {
        Ok(c) => c,
        Err(errors) => return report(&errors),
    };
    let token = match loaded.admin.read_token() {
        Ok(token) => token,
        Err((field, e)) => {
            eprintln!("error: {}: [admin] {field}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    let address = admin.unwrap_or(&loaded.admin.address);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portico: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(portico::cache::purge::send(
        address,
        token.as_deref(),
        purge,
    )) {
        Ok(answer) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portico cache purge: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints every config problem and returns exit code 2, like `nginx -t`.
fn report(errors: &config::ConfigErrors) -> ExitCode {
    for e in &errors.0 {
        eprintln!("error: {e}");
    }
    eprintln!("{} problem(s) found", errors.0.len());
    ExitCode::from(2)
}

/// `portico routes`: the config file's answer to one request, printed; exit 0 when routed,
/// 1 when the gateway would refuse it, 2 when the question is not a request.
fn explain(
    config_path: &std::path::Path,
    method: &str,
    target: &str,
    headers: &[String],
) -> ExitCode {
    let mut loaded = match config::load_file(config_path) {
        Ok(c) => c,
        Err(errors) => return report(&errors),
    };
    loaded.logging.access_log = "off".into();
    let snapshot = match Snapshot::build(loaded, None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portico: {e}");
            return ExitCode::from(1);
        }
    };
    let mut pairs = Vec::with_capacity(headers.len());
    for h in headers {
        match h.split_once(':') {
            Some((n, v)) => pairs.push((n.to_string(), v.to_string())),
            None => {
                eprintln!("error: header `{h}` is not `Name: value`");
                return ExitCode::from(2);
            }
        }
    }
    let question = explain::Question {
        method,
        target,
        headers: &pairs,
    };
    match explain::explain(&snapshot, &question) {
        Ok(answer) => {
            print!("{answer}");
            match answer.outcome {
                explain::Outcome::Routed(_) => ExitCode::SUCCESS,
                explain::Outcome::Refused { .. } => ExitCode::from(1),
            }
        }
        Err(explain::NotARequest(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
