//! portico: an API gateway for service-to-service REST traffic, built on Pingora.
//!
//! The binary (`src/main.rs`) is only the command line; everything else lives here so
//! tests and benchmarks use the same code. `docs/ARCHITECTURE.md` in the repository is the
//! map: the crates, the modules, one request's path through the proxy phases, and how a
//! config file becomes the snapshot the proxy runs on.

pub mod admin;
pub mod cache;
pub mod config;
pub mod demo;
pub mod observe;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod upstream;

/// The token service (crate `portico-auth`), here for `portico auth` and the demo.
pub use portico_auth as auth;
/// The client library (crate `portico-client`); the proxy shares its `Retry-After` parser.
pub use portico_client as client;
