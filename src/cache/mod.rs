//! The edge cache: the in-memory store the cached responses live in ([`store`]) and purging
//! them by key, URL, host or path prefix ([`purge`]).

pub mod purge;
pub mod store;
