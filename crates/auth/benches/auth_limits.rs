//! What the token service spends on an authentication attempt it refuses, against one it
//! checks: the limiter's decision (a refused attempt, and a new failure recorded into full
//! tables, eviction included) next to one argon2id check at the default cost. The gap is
//! why every limit is checked before the hash.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use portico_auth::config::{Argon2Cost, FailedAuth, SecretChecks};
use portico_auth::limiter::AuthLimiter;
use portico_auth::secrets;

fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth");
    group.sample_size(10);
    let cost = Argon2Cost::default();
    let hash = secrets::hash_secret(&secrets::generate_secret(), &cost).expect("hash");
    group.bench_function("argon2id check, default cost (19 MiB, t=2)", |b| {
        b.iter(|| secrets::verify_secret(black_box("a wrong secret"), &hash))
    });
    group.finish();

    // Tables full (100,000 entries each) of one-failure entries, and one attacker backing off.
    let limiter = AuthLimiter::new(FailedAuth::default(), SecretChecks::default());
    for i in 0..100_000u32 {
        limiter.failed(&format!("random-{i}"), address(i));
    }
    let attacker = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    for _ in 0..FailedAuth::default().max_failures {
        limiter.failed("service-a", attacker);
    }
    c.bench_function("limiter: refused attempt (backing off), tables full", |b| {
        b.iter(|| limiter.admit(black_box("service-a"), attacker))
    });
    let mut n = 1_000_000u32;
    c.bench_function(
        "limiter: new failure from a new address, tables full (eviction amortised)",
        |b| {
            b.iter(|| {
                n += 1;
                limiter.failed(black_box("random-id"), address(n))
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
