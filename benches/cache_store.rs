//! The cost of the edge cache's store per request, through pingora-cache's `Storage` trait as
//! the proxy calls it: a hit (lookup and reading a 4 KiB body), a miss, and an insert (miss
//! handler, body, commit, eviction once the byte budget is full), with pingora's `MemCache`
//! (its test store, unbounded) beside it as the reference.

use std::hint::black_box;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta, MemCache};
use portico::cache::store::{set_origin, Limits, Store};

const KEYS: usize = 1024;

static STORE: LazyLock<Store> = LazyLock::new(|| {
    Store::new(Limits {
        // Room for about half the keys: inserts evict.
        max_bytes: KEYS / 2 * 4700,
        max_object_size: 1 << 20,
    })
});
static MEM: LazyLock<MemCache> = LazyLock::new(MemCache::new);

fn meta() -> CacheMeta {
    let mut header = pingora_http::ResponseHeader::build(200, None).expect("header");
    header
        .append_header("content-type", "application/json")
        .expect("header");
    let now = SystemTime::now();
    CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, header)
}

fn keys() -> Vec<CacheKey> {
    (0..KEYS)
        .map(|i| {
            let path = format!("/v1/orders/{i}");
            let mut key = CacheKey::new(format!("api.example{path}"), "");
            set_origin(&mut key, "api.example", &path);
            key
        })
        .collect()
}

async fn insert(storage: &'static (dyn Storage + Sync), key: &CacheKey, body: &Bytes) {
    let span = Span::inactive().handle();
    let mut miss = storage
        .get_miss_handler(key, &meta(), &span)
        .await
        .expect("miss handler");
    miss.write_body(body.clone(), true).await.expect("write");
    // A commit the byte budget refuses is still a measured insert.
    let _ = miss.finish().await;
}

async fn hit(storage: &'static (dyn Storage + Sync), key: &CacheKey) -> usize {
    let span = Span::inactive().handle();
    let Some((_meta, mut hit)) = storage.lookup(key, &span).await.expect("lookup") else {
        return 0;
    };
    let mut read = 0;
    while let Some(chunk) = hit.read_body().await.expect("read") {
        read += chunk.len();
    }
    read
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let keys = keys();
    let body = Bytes::from(vec![b'x'; 4096]);
    let stores: [(&str, &'static (dyn Storage + Sync)); 2] =
        [("store", &*STORE), ("memcache", &*MEM)];
    let mut group = c.benchmark_group("cache_store");
    for (name, storage) in stores {
        rt.block_on(async {
            for key in &keys[..KEYS / 4] {
                insert(storage, key, &body).await;
            }
        });
        group.bench_function(format!("{name}/hit_4k"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % (KEYS / 4);
                black_box(rt.block_on(hit(storage, &keys[i])))
            })
        });
        let absent = CacheKey::new("absent", "");
        group.bench_function(format!("{name}/miss"), |b| {
            b.iter(|| black_box(rt.block_on(hit(storage, &absent))))
        });
        group.bench_function(format!("{name}/insert_4k"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % KEYS;
                rt.block_on(insert(storage, &keys[i], &body))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
