//! What response compression costs per request and what it saves: a 10 KiB JSON body (an
//! API's list answer) through the gateway's own path — `Policy::start` on the response
//! header (eligibility, `Accept-Encoding` negotiation, header rewrite, a fresh encoder), then
//! the body in one chunk to the end of the stream — for each coding at the route defaults
//! (`gzip 6`, `br 4`, `zstd 3`) and at the ends of their ranges for comparison. Before
//! timing, it prints each coding's compressed size and the bytes saved.
//!
//! `decision/identity` is the header work alone for a client that accepts no coding on a
//! compressing route (the response still gets `Vary`); a route without `compress` does none
//! of this (one branch on an `Option`).
//!
//!     cargo bench --bench compression

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pingora_http::{RequestHeader, ResponseHeader};
use portico::proxy::compress::Policy;

#[path = "support/json_body.rs"]
mod json_body;
use json_body::json_body;

fn policy(coding: &str, level: u32) -> Policy {
    let mut c = portico::config::Compress {
        algorithms: vec![coding.to_string()],
        ..Default::default()
    };
    match coding {
        "gzip" => c.levels.gzip = level,
        "br" => c.levels.br = level,
        _ => c.levels.zstd = level,
    }
    Policy::new("bench".into(), &c)
}

fn request(accept: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/items", None).expect("request");
    req.insert_header("accept-encoding", accept)
        .expect("header");
    req
}

fn response(len: usize) -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, Some(4)).expect("response");
    resp.insert_header("content-type", "application/json")
        .expect("header");
    resp.insert_header("content-length", len).expect("header");
    resp.insert_header("etag", "\"abc\"").expect("header");
    resp
}

/// The whole response: header decision, then the body to the end of the stream.
fn compress(policy: &Policy, req: &RequestHeader, body: &Bytes) -> usize {
    let mut resp = response(body.len());
    let Some(mut encoding) = policy.start(req, &mut resp) else {
        return body.len();
    };
    let mut chunk = Some(body.clone());
    encoding.filter(&mut chunk, true).expect("encodes");
    chunk.map_or(0, |c| c.len())
}

fn bench(c: &mut Criterion) {
    let body = json_body();
    let cases = [
        ("gzip", 6, "default"),
        ("br", 4, "default"),
        ("zstd", 3, "default"),
        ("gzip", 1, "fastest"),
        ("gzip", 9, "smallest"),
        ("br", 1, "fastest"),
        ("br", 11, "smallest"),
        ("zstd", 1, "fastest"),
        ("zstd", 19, "smallest"),
    ];
    println!("10 KiB JSON body: {} bytes", body.len());
    for (coding, level, what) in cases {
        let out = compress(&policy(coding, level), &request(coding), &body);
        println!(
            "  {coding:>4} level {level:>2} ({what:>8}): {out:>5} bytes, ratio {:.3}, saved {} bytes ({:.1} %)",
            out as f64 / body.len() as f64,
            body.len() - out,
            100.0 * (body.len() - out) as f64 / body.len() as f64
        );
    }

    let mut group = c.benchmark_group("compression");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for (coding, level, _) in cases {
        let policy = policy(coding, level);
        let req = request(coding);
        group.bench_function(format!("{coding}/{level}"), |b| {
            b.iter(|| black_box(compress(&policy, &req, black_box(&body))))
        });
    }
    let policy = policy("gzip", 6);
    let req = request("identity");
    group.bench_function("decision/identity", |b| {
        b.iter(|| {
            let mut resp = response(body.len());
            black_box(policy.start(black_box(&req), &mut resp).is_none())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
