//! The machine's PostgreSQL for the tests that need one: the token service's test helper,
//! included here so there is one.

#[path = "../../crates/auth/tests/support/postgres.rs"]
mod shared;
pub use shared::*;
