//! Config at scale, in process: where the time and the memory of loading a large config go.
//! For each size (default 10,000 and 100,000 routes, `CONFIG_SCALE_ROUTES=10000,100000`)
//! it generates the config of `benches/support/scale_config.rs` and times each phase of
//! what `portico check` and a reload do — the TOML parse, `config::load_str` (parse,
//! serde, validation), the lint, `Snapshot::build` (plugins, targets, metrics handles, the
//! route table), dropping a snapshot — and counts the bytes each result holds with a
//! counting allocator. Medians of `CONFIG_SCALE_RUNS` (default 3) runs. It also times what
//! a reload does against that running snapshot (`config::load_str_reusing` and
//! `Snapshot::build` with the previous snapshot): of the same text, and of the text with one
//! route's plugin table changed.
//!
//! `config_scale gen --routes N [--upstream ADDR] [--listen ADDR] [--admin ADDR]
//! [--runtime-dir DIR] [--admin-token-file FILE] [--traffic-host NAME] [--strict]` prints
//! such a config instead (`--strict`: the jwt routes with a header-chosen version answer 404
//! instead of falling through, see `Spec::fallthrough`); `benches/config_scale.sh` uses it
//! for the process-level numbers (`portico check`, the gateway's RSS, `POST /admin/reload`).

#[path = "support/scale_config.rs"]
mod scale_config;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use scale_config::Spec;

/// The system allocator, counting the bytes held now and at the peak.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = HELD.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                HELD.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Peak bytes held while `f` runs, above what was held when it started.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = held();
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("gen") {
        let routes = arg(&args, "--routes").map_or(100_000, |r| r.parse().expect("--routes N"));
        let mut spec = Spec::with_routes(routes);
        if let Some(a) = arg(&args, "--upstream") {
            spec.upstream = a;
        }
        if let Some(a) = arg(&args, "--listen") {
            spec.listen = a;
        }
        if let Some(a) = arg(&args, "--admin") {
            spec.admin = a;
        }
        spec.runtime_dir = arg(&args, "--runtime-dir");
        spec.admin_token_file = arg(&args, "--admin-token-file");
        spec.traffic_host = arg(&args, "--traffic-host");
        spec.fallthrough = !args.iter().any(|a| a == "--strict");
        print!("{}", scale_config::generate(&spec));
        return;
    }
    // `cargo bench` passes `--bench`; a filter argument is not used.
    let sizes: Vec<usize> = std::env::var("CONFIG_SCALE_ROUTES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("CONFIG_SCALE_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    println!(
        "| routes | config bytes | TOML parse | load_str (parse, serde, validate) | lint | Snapshot::build | reload, same text | reload, one route changed | drop snapshot | Config held | Snapshot held (besides the routes its Config shares) | peak during load + build |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // `CONFIG_SCALE_STRICT=1`: the `--strict` shape above.
    let strict = std::env::var("CONFIG_SCALE_STRICT").is_ok_and(|v| v == "1");
    for routes in sizes {
        let mut spec = Spec::with_routes(routes);
        spec.fallthrough = !strict;
        let text = scale_config::generate(&spec);
        // The first rate-limit route (`h0-p7-v1`) with another rate.
        let one_changed = text.replacen("rate = 500\n", "rate = 501\n", 1);
        assert_ne!(one_changed, text, "the generator has no rate-limit route");
        let mut rows = Vec::new();
        for _ in 0..runs {
            rows.push(measure(&text, &one_changed));
        }
        let median = |f: fn(&Row) -> Duration| {
            let mut v: Vec<Duration> = rows.iter().map(f).collect();
            v.sort();
            v[v.len() / 2]
        };
        let last = rows.first().expect("one run at least");
        let per_route = |bytes: usize| {
            format!(
                "{:.1} MiB ({} B/route)",
                bytes as f64 / 1048576.0,
                bytes / spec.routes()
            )
        };
        println!(
            "| {} | {:.1} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} MiB |",
            spec.routes(),
            text.len() as f64 / 1048576.0,
            ms(median(|r| r.parse)),
            ms(median(|r| r.load)),
            ms(median(|r| r.lint)),
            ms(median(|r| r.build)),
            ms(median(|r| r.reload_same)),
            ms(median(|r| r.reload_one_changed)),
            ms(median(|r| r.drop)),
            per_route(last.config_bytes),
            per_route(last.snapshot_bytes),
            last.peak as f64 / 1048576.0,
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

struct Row {
    parse: Duration,
    load: Duration,
    lint: Duration,
    build: Duration,
    reload_same: Duration,
    reload_one_changed: Duration,
    drop: Duration,
    config_bytes: usize,
    snapshot_bytes: usize,
    peak: usize,
}

/// A reload's in-process work: load `text` against the running snapshot's config and build
/// the next snapshot from it and the running one.
// Not inlined, so a profiler can count it apart (`callgrind --toggle-collect=config_scale::reload`).
#[inline(never)]
fn reload(text: &str, running: &portico::runtime::Snapshot) -> portico::runtime::Snapshot {
    let (config, load) = timed(|| {
        portico::config::load_str_reusing("scale.toml", text, Some(&running.config))
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let (snapshot, build) = timed(|| {
        portico::runtime::Snapshot::build(config, Some(running)).unwrap_or_else(|e| panic!("{e}"))
    });
    // `CONFIG_SCALE_PHASES=1`: a reload's two halves on stderr (the lint is in the build).
    if std::env::var("CONFIG_SCALE_PHASES").is_ok_and(|v| v == "1") {
        eprintln!(
            "reload: load_str_reusing {}, Snapshot::build {}",
            ms(load),
            ms(build)
        );
    }
    snapshot
}

fn measure(text: &str, one_changed: &str) -> Row {
    let (doc, parse) = timed(|| toml_edit::ImDocument::parse(text).expect("parses"));
    drop(doc);
    let before = held();
    let ((config, load, lint, snapshot, build, config_bytes, snapshot_bytes), peak) =
        peak_of(|| {
            let (config, load) = timed(|| {
                portico::config::load_str("scale.toml", text).unwrap_or_else(|e| panic!("{e}"))
            });
            let config_bytes = held() - before;
            let (warnings, lint) = timed(|| portico::config::lint(&config));
            // The generated config has no admin token (the process-level script reloads
            // without one); every other warning means the generator is wrong.
            let unexpected = warnings.iter().find(|w| w.field != "admin");
            assert!(unexpected.is_none(), "{unexpected:?}");
            // What the snapshot holds besides the routes its config shares with `config` (the
            // clone shares them, see `config::by_route`): the rest of its config, and all it built.
            let before_build = held();
            let (snapshot, build) = timed(|| {
                portico::runtime::Snapshot::build(config.clone(), None)
                    .unwrap_or_else(|e| panic!("{e}"))
            });
            let snapshot_bytes = held().saturating_sub(before_build);
            (
                config,
                load,
                lint,
                snapshot,
                build,
                config_bytes,
                snapshot_bytes,
            )
        });
    drop(config);
    let (same, reload_same) = timed(|| reload(text, &snapshot));
    assert_eq!(same.version, snapshot.version);
    drop(same);
    let (changed, reload_one_changed) = timed(|| reload(one_changed, &snapshot));
    assert_ne!(changed.version, snapshot.version);
    drop(changed);
    let ((), drop) = timed(|| drop(snapshot));
    Row {
        parse,
        load,
        lint,
        build,
        reload_same,
        reload_one_changed,
        drop,
        config_bytes,
        snapshot_bytes,
        peak,
    }
}
