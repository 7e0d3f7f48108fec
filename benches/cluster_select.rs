//! The cost of choosing an endpoint and starting/finishing an attempt on it, for a cluster
//! with fixed endpoints and for one whose endpoints come from a file (an `ArcSwap` load per
//! selection), so discovery's price on the request path is measured, not guessed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use portico::upstream::{Cluster, HashInput, Outcome};

fn cluster(body: &str) -> Cluster {
    let def: portico::config::Cluster = toml::from_str(body).expect("cluster definition");
    Cluster::build("bench", &def).expect("cluster")
}

fn bench(c: &mut Criterion) {
    let list = r#"[{"address": "127.0.0.1:1"}, {"address": "127.0.0.1:2", "weight": 2}, {"address": "127.0.0.1:3"}, {"address": "127.0.0.1:4"}]"#;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("e.json");
    std::fs::write(&file, list).expect("endpoints file");
    let fixed = cluster(
        r#"endpoints = [{ address = "127.0.0.1:1" }, { address = "127.0.0.1:2", weight = 2 }, { address = "127.0.0.1:3" }, { address = "127.0.0.1:4" }]"#,
    );
    let discovered = cluster(&format!("endpoints_file = {:?}", file.to_str().unwrap()));
    let headers = http::HeaderMap::new();
    let input = HashInput {
        client_ip: None,
        headers: &headers,
    };
    let mut group = c.benchmark_group("cluster_select");
    for (name, cluster) in [("fixed", &fixed), ("discovered", &discovered)] {
        group.bench_function(format!("{name}/select"), |b| {
            b.iter(|| black_box(cluster.select(black_box(&input), &[]).is_ok()))
        });
        group.bench_function(format!("{name}/select_start_finish"), |b| {
            b.iter(|| {
                let e = cluster.select(&input, &[]).expect("endpoint");
                let attempt = cluster.start(&e).expect("attempt");
                cluster.finish(&attempt.endpoint, attempt.probe, Outcome::Response(200));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
