//! Shared by the token service's integration tests (and, for PostgreSQL, the gateway's).

pub mod postgres;
