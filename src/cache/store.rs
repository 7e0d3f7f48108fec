//! The edge cache's storage: an in-memory [`Storage`] for pingora-cache, bounded in bytes.
//!
//! Entries live in a map sharded by their cache key's combined hash (primary and variance), so
//! lookups of different keys rarely meet on a lock. Their total weight (body, meta and a fixed
//! overhead per entry) is bounded by `[cache] max_bytes` with pingora-lru's sharded LRU, the
//! policy behind pingora-cache's own eviction manager; the store admits and evicts by itself
//! when a write is committed, so the bound holds however `HttpCache` is enabled (pass no
//! eviction manager to `HttpCache::enable`).
//!
//! Bodies are never copied whole: a response is kept as the chunks it arrived in (each copied
//! once, into a buffer of its own size, so the accounted bytes are the bytes held), a hit reads
//! them out one by one, and a response still being written is readable by concurrent requests
//! as it arrives (a "partial hit", as pingora's `MemCache` does). A write that passes
//! `[cache] max_object_size` is abandoned at once, with [`ERR_RESPONSE_TOO_LARGE`].
//!
//! The store is process-wide ([`store`]): config reloads keep it, and with it every entry. A
//! reload that changes a route's cache settings must not have old entries served under the new
//! ones; the proxy puts a hash of the route's cache settings into the key, so such a route
//! misses and its old entries age out. Each entry keeps the host and path of its request
//! ([`set_origin`]), so it can be purged by URL, host or path prefix ([`super::purge`]).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::max_file_size::ERR_RESPONSE_TOO_LARGE;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType, Storage,
};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryKey, CacheKey, CacheMeta};
use pingora_error::{Error, ErrorType, Result};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::watch;

/// Map and LRU shards: enough that 2–16 worker threads rarely wait on each other.
const SHARDS: usize = 16;

/// What an entry costs beyond its body and meta bytes: its map slot, LRU node, object header
/// and origin. An estimate, so that many tiny responses cannot hold far more than `max_bytes`.
const ENTRY_OVERHEAD: usize = 256;

/// `[cache] max_bytes` when not set: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// `[cache] max_object_size` when not set: 8 MiB.
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 8 * 1024 * 1024;

/// The store's bounds (`[cache] max_bytes` and `max_object_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The total weight of committed entries.
    pub max_bytes: usize,
    /// The largest body stored; a longer one is abandoned as it passes this.
    pub max_object_size: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES as usize,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE as usize,
        }
    }
}

/// The host and path (with query) of the request an entry answers, kept with it for purges.
/// The host is compared without case, port or a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    host: Box<str>,
    path: Box<str>,
}

impl Origin {
    pub fn new(host: &str, path: &str) -> Origin {
        Origin {
            host: normalize_host(host).into(),
            path: path.into(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// `Api.Example.:8443` → `api.example`; `[::1]:80` → `[::1]`.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let name = match host.rsplit_once(':') {
        // A port after a name, an IPv4 address or a bracketed IPv6 address.
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => host,
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Tags a cache key with the host and path of its request, so the entry written under it can
/// be purged by URL, host or prefix. The proxy calls this where it builds the key; an entry
/// whose key was not tagged can only be purged by its key.
pub fn set_origin(key: &mut CacheKey, host: &str, path: &str) {
    key.extensions.insert(Origin::new(host, path));
}

/// What the store holds now, and has done since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub bytes: usize,
    pub objects: usize,
    pub max_bytes: usize,
    pub max_object_size: usize,
    pub evictions: u64,
    pub purged: u64,
    pub too_large: u64,
}

/// The store's series: `portico_cache_{bytes,objects}` and
/// `portico_cache_{evictions,purged,too_large}_total`. Only the process-wide store registers
/// them; stores built by tests count into unregistered ones.
struct StoreMetrics {
    bytes: IntGauge,
    objects: IntGauge,
    evictions: IntCounter,
    purged: IntCounter,
    too_large: IntCounter,
}

impl StoreMetrics {
    fn new() -> StoreMetrics {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        StoreMetrics {
            bytes: gauge(
                "portico_cache_bytes",
                "Bytes the edge cache holds: bodies, metas and a fixed overhead per entry",
            ),
            objects: gauge("portico_cache_objects", "Responses the edge cache holds"),
            evictions: counter(
                "portico_cache_evictions_total",
                "Responses evicted from the edge cache to stay within [cache] max_bytes",
            ),
            purged: counter(
                "portico_cache_purged_total",
                "Responses removed from the edge cache by a purge (or stopped while being written)",
            ),
            too_large: counter(
                "portico_cache_too_large_total",
                "Responses not stored because their body passed [cache] max_object_size",
            ),
        }
    }

    fn register(&self) {
        let registry = prometheus::default_registry();
        let collectors: [Box<dyn prometheus::core::Collector>; 5] = [
            Box::new(self.bytes.clone()),
            Box::new(self.objects.clone()),
            Box::new(self.evictions.clone()),
            Box::new(self.purged.clone()),
            Box::new(self.too_large.clone()),
        ];
        for c in collectors {
            if let Err(e) = registry.register(c) {
                log::error!("cannot register an edge cache metric: {e}");
            }
        }
    }
}

/// The edge cache's storage. See the module documentation.
///
/// `N` is the number of LRU shards. The LRU evicts from the longer of two random shards, so
/// its order is exact only within a shard; tests that check the order use one.
pub struct Store<const N: usize = SHARDS> {
    shards: [RwLock<HashMap<HashBinary, Slot>>; SHARDS],
    /// Weights and recency of the committed entries, by [`lru_key`]; its data names the entry
    /// (hash and id), so an eviction never removes a newer entry written under the same key.
    lru: pingora_lru::Lru<(HashBinary, u64), N>,
    max_object_size: AtomicUsize,
    next_id: AtomicU64,
    metrics: StoreMetrics,
}

/// Everything under one combined key: the committed entry, and the writes in flight.
#[derive(Default)]
struct Slot {
    object: Option<Arc<Object>>,
    writes: Vec<Arc<Write>>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.object.is_none() && self.writes.is_empty()
    }
}

/// A committed entry. Never changed in place: a new meta makes a new `Object` around the same
/// body, so readers holding the old one are not disturbed.
struct Object {
    id: u64,
    meta: (Vec<u8>, Vec<u8>),
    body: Arc<[Bytes]>,
    len: usize,
    origin: Option<Origin>,
    weight: usize,
}

/// A response being written, readable while it is.
struct Write {
    id: u64,
    meta: (Vec<u8>, Vec<u8>),
    origin: Option<Origin>,
    body: RwLock<Vec<Bytes>>,
    progress: watch::Sender<Progress>,
    /// Purged while being written: it keeps feeding the readers it has, is found by no new
    /// lookup, and is not stored when it finishes.
    purged: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Writing {
        chunks: usize,
    },
    Done {
        chunks: usize,
    },
    /// The write failed or was abandoned: its readers must fail too, not end early as if the
    /// body were whole.
    Aborted,
}

fn shard_of(hash: &HashBinary) -> usize {
    // The hash is a blake2 digest: any byte is uniform.
    hash[0] as usize % SHARDS
}

fn lru_key(hash: &HashBinary) -> u64 {
    let (a, b) = hash.split_at(8);
    u64::from_le_bytes(a.try_into().unwrap_or_default())
        ^ u64::from_le_bytes(b.try_into().unwrap_or_default())
}

fn internal(message: impl Into<String>) -> Box<Error> {
    Error::explain(ErrorType::InternalError, message.into())
}

impl<const N: usize> Store<N> {
    pub fn new(limits: Limits) -> Store<N> {
        Store {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            lru: pingora_lru::Lru::with_capacity(limits.max_bytes, 64),
            max_object_size: AtomicUsize::new(limits.max_object_size),
            next_id: AtomicU64::new(1),
            metrics: StoreMetrics::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.lru.weight_limit(),
            max_object_size: self.max_object_size.load(Ordering::Relaxed),
        }
    }

    /// Applies new bounds (a reload): a smaller `max_bytes` evicts down to it at once; a
    /// smaller `max_object_size` applies to writes from now on.
    pub fn set_limits(&self, limits: Limits) {
        self.max_object_size
            .store(limits.max_object_size, Ordering::Relaxed);
        self.lru.set_weight_limit(limits.max_bytes);
        self.evict_to_limit();
    }

    pub fn stats(&self) -> Stats {
        let limits = self.limits();
        Stats {
            bytes: self.lru.weight(),
            objects: self.lru.len(),
            max_bytes: limits.max_bytes,
            max_object_size: limits.max_object_size,
            evictions: self.metrics.evictions.get(),
            purged: self.metrics.purged.get(),
            too_large: self.metrics.too_large.get(),
        }
    }

    /// Removes every entry whose origin `matches`, and stops storing the writes in flight whose
    /// origin does. Returns how many of both. One shard is locked at a time: a purge is rare,
    /// and scanning the entries costs nothing on the paths that read and write them (no index
    /// to keep), about a millisecond per hundred thousand entries.
    pub fn purge_matching(&self, matches: impl Fn(&Origin) -> bool) -> usize {
        let mut purged = 0;
        for shard in &self.shards {
            let mut map = shard.write();
            map.retain(|hash, slot| {
                if let Some(object) = &slot.object {
                    if object.origin.as_ref().is_some_and(&matches) {
                        self.lru.remove(lru_key(hash));
                        slot.object = None;
                        purged += 1;
                    }
                }
                for write in &slot.writes {
                    if write.origin.as_ref().is_some_and(&matches)
                        && !write.purged.swap(true, Ordering::Relaxed)
                    {
                        purged += 1;
                    }
                }
                !slot.is_empty()
            });
        }
        self.counted_purge(purged)
    }

    /// Removes the entry with this combined key hash (and stops storing its writes in
    /// flight). Returns how many of both.
    pub fn purge_hash(&self, hash: &HashBinary) -> usize {
        let purged = self.remove(hash);
        self.counted_purge(purged)
    }

    fn counted_purge(&self, purged: usize) -> usize {
        self.metrics.purged.inc_by(purged as u64);
        self.sync_gauges();
        purged
    }

    /// The removal behind both purges: the entry goes, its writes in flight are marked.
    fn remove(&self, hash: &HashBinary) -> usize {
        let mut map = self.shards[shard_of(hash)].write();
        let Some(slot) = map.get_mut(hash) else {
            return 0;
        };
        let mut removed = 0;
        if slot.object.take().is_some() {
            self.lru.remove(lru_key(hash));
            removed += 1;
        }
        for write in &slot.writes {
            if !write.purged.swap(true, Ordering::Relaxed) {
                removed += 1;
            }
        }
        if slot.is_empty() {
            map.remove(hash);
        }
        removed
    }

    fn evict_to_limit(&self) {
        let evicted = self.lru.evict_to_limit();
        for ((hash, id), _weight) in &evicted {
            let mut map = self.shards[shard_of(hash)].write();
            if let Some(slot) = map.get_mut(hash) {
                if slot.object.as_ref().is_some_and(|o| o.id == *id) {
                    slot.object = None;
                }
                if slot.is_empty() {
                    map.remove(hash);
                }
            }
        }
        self.metrics.evictions.inc_by(evicted.len() as u64);
        self.sync_gauges();
    }

    fn sync_gauges(&self) {
        self.metrics.bytes.set(self.lru.weight() as i64);
        self.metrics.objects.set(self.lru.len() as i64);
    }

    /// Stores a finished write: it replaces the entry under its key (the LRU node too), then
    /// whatever is least recently used goes until the store is within `max_bytes` again.
    fn commit(&self, hash: &HashBinary, write: &Arc<Write>) -> Result<usize> {
        let body: Arc<[Bytes]> = write.body.read().iter().cloned().collect();
        let len: usize = body.iter().map(Bytes::len).sum();
        let origin_len = write
            .origin
            .as_ref()
            .map_or(0, |o| o.host.len() + o.path.len());
        let weight = len
            + write.meta.0.len()
            + write.meta.1.len()
            + origin_len
            + body.len() * std::mem::size_of::<Bytes>()
            + ENTRY_OVERHEAD;
        {
            let mut map = self.shards[shard_of(hash)].write();
            let slot = map.entry(*hash).or_default();
            slot.writes.retain(|w| !Arc::ptr_eq(w, write));
            // Checked under the lock purges take, so a purge either sees this write or the
            // entry it becomes.
            let refusal = if write.purged.load(Ordering::Relaxed) {
                Some(internal("purged while being written; not stored"))
            } else if weight > self.lru.weight_limit() {
                Some(internal(format!(
                    "an entry of {weight} bytes cannot fit in [cache] max_bytes {}",
                    self.lru.weight_limit()
                )))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                if slot.is_empty() {
                    map.remove(hash);
                }
                return Err(refusal);
            }
            slot.object = Some(Arc::new(Object {
                id: write.id,
                meta: write.meta.clone(),
                body,
                len,
                origin: write.origin.clone(),
                weight,
            }));
            self.lru.admit(lru_key(hash), (*hash, write.id), weight);
        }
        self.evict_to_limit();
        Ok(weight)
    }

    /// Takes a write out of its slot (abandoned, or too large).
    fn drop_write(&self, hash: &HashBinary, write: &Arc<Write>) {
        let mut map = self.shards[shard_of(hash)].write();
        if let Some(slot) = map.get_mut(hash) {
            slot.writes.retain(|w| !Arc::ptr_eq(w, write));
            if slot.is_empty() {
                map.remove(hash);
            }
        }
    }

    /// Replaces the meta of the entry under `hash`, keeping its body; `None` when absent.
    fn with_meta(
        &self,
        hash: &HashBinary,
        change: impl FnOnce(&(Vec<u8>, Vec<u8>)) -> Result<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Option<()>> {
        let mut map = self.shards[shard_of(hash)].write();
        let Some(object) = map.get_mut(hash).and_then(|s| s.object.as_mut()) else {
            return Ok(None);
        };
        let meta = change(&object.meta)?;
        *object = Arc::new(Object {
            id: object.id,
            meta,
            body: object.body.clone(),
            len: object.len,
            origin: object.origin.clone(),
            weight: object.weight,
        });
        Ok(Some(()))
    }
}

/// The process-wide store: created with the default limits on first use, resized by
/// [`configure`] at start and on every reload, and never dropped.
static STORE: LazyLock<Store> = LazyLock::new(|| {
    let store = Store::new(Limits::default());
    store.metrics.register();
    store.sync_gauges();
    store
});

/// The process-wide store.
pub fn store() -> &'static Store {
    &STORE
}

/// The process-wide store as `HttpCache::enable` takes it.
pub fn storage() -> &'static (dyn Storage + Sync) {
    &*STORE
}

/// Applies `[cache]`'s limits to the process-wide store (start-up and reloads); its entries
/// stay.
pub fn configure(limits: Limits) {
    STORE.set_limits(limits);
}

/// Reads a committed entry or a write in flight.
enum Hit {
    Complete(CompleteHit),
    Partial(PartialHit),
}

struct CompleteHit {
    body: Arc<[Bytes]>,
    len: usize,
    weight: usize,
    /// The chunk holding `pos`, and where that chunk starts in the body.
    chunk: usize,
    chunk_start: usize,
    pos: usize,
    end: usize,
}

impl CompleteHit {
    fn new(object: &Object) -> CompleteHit {
        CompleteHit {
            body: object.body.clone(),
            len: object.len,
            weight: object.weight,
            chunk: 0,
            chunk_start: 0,
            pos: 0,
            end: object.len,
        }
    }

    /// The next piece of `pos..end`: a slice of one stored chunk, never a copy.
    fn next(&mut self) -> Option<Bytes> {
        while self.pos < self.end {
            let chunk = self.body.get(self.chunk)?;
            let chunk_end = self.chunk_start + chunk.len();
            if self.pos >= chunk_end {
                self.chunk += 1;
                self.chunk_start = chunk_end;
                continue;
            }
            let from = self.pos - self.chunk_start;
            let to = self.end.min(chunk_end) - self.chunk_start;
            self.pos += to - from;
            return Some(chunk.slice(from..to));
        }
        None
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.len),
            );
        }
        // Restarting the cursor lets one hit serve several ranges (multipart).
        self.chunk = 0;
        self.chunk_start = 0;
        self.pos = start;
        self.end = end.map_or(self.len, |e| e.min(self.len));
        Ok(())
    }
}

struct PartialHit {
    write: Arc<Write>,
    progress: watch::Receiver<Progress>,
    next: usize,
}

impl PartialHit {
    async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            let (chunks, done) = match *self.progress.borrow_and_update() {
                Progress::Writing { chunks } => (chunks, false),
                Progress::Done { chunks } => (chunks, true),
                Progress::Aborted => {
                    return Err(internal("the response being cached was abandoned"))
                }
            };
            if self.next < chunks {
                let chunk = self.write.body.read().get(self.next).cloned();
                self.next += 1;
                return Ok(chunk);
            }
            if done {
                return Ok(None);
            }
            if self.progress.changed().await.is_err() {
                return Err(internal("the response being cached was abandoned"));
            }
        }
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        match self {
            Hit::Complete(c) => Ok(c.next()),
            Hit::Partial(p) => p.next().await,
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        matches!(self, Hit::Complete(_))
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        match self {
            Hit::Complete(c) => c.seek(start, end),
            Hit::Partial(_) => Error::e_explain(
                ErrorType::InternalError,
                "a response still being written cannot seek",
            ),
        }
    }

    fn should_count_access(&self) -> bool {
        matches!(self, Hit::Complete(_))
    }

    fn get_eviction_weight(&self) -> usize {
        match self {
            Hit::Complete(c) => c.weight,
            Hit::Partial(_) => 0,
        }
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

fn partial_hit(write: &Arc<Write>) -> Result<Option<(CacheMeta, HitHandler)>> {
    let meta = CacheMeta::deserialize(&write.meta.0, &write.meta.1)?;
    let hit = Hit::Partial(PartialHit {
        write: write.clone(),
        progress: write.progress.subscribe(),
        next: 0,
    });
    Ok(Some((meta, Box::new(hit))))
}

/// Writes one response into the store.
struct Miss<const N: usize> {
    store: &'static Store<N>,
    hash: HashBinary,
    write: Arc<Write>,
    tag: U64WriteId,
    written: usize,
    /// Committed or refused: nothing left for `Drop` to abandon.
    settled: bool,
}

impl<const N: usize> Miss<N> {
    fn abandon(&mut self) {
        self.settled = true;
        self.write.progress.send_replace(Progress::Aborted);
        self.store.drop_write(&self.hash, &self.write);
    }
}

#[async_trait]
impl<const N: usize> HandleMiss for Miss<N> {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        if self.settled {
            return Err(internal("this cache write was already abandoned"));
        }
        let written = self.written + data.len();
        let limit = self.store.max_object_size.load(Ordering::Relaxed);
        if written > limit {
            // Pingora's own max-file-size check does the same: a body being streamed to
            // readers cannot be finished from anywhere else, so the write and its readers stop.
            self.abandon();
            self.store.metrics.too_large.inc();
            return Error::e_explain(
                ERR_RESPONSE_TOO_LARGE,
                format!("the body passed [cache] max_object_size ({limit} bytes)"),
            );
        }
        self.written = written;
        let chunks = {
            let mut body = self.write.body.write();
            if !data.is_empty() {
                // Copied once into a buffer of its own size: `data` may be a slice of a larger
                // read buffer, which would keep more memory alive than the store counts.
                body.push(Bytes::copy_from_slice(&data));
            }
            body.len()
        };
        self.write.progress.send_replace(if eof {
            Progress::Done { chunks }
        } else {
            Progress::Writing { chunks }
        });
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.settled {
            return Err(internal("this cache write was already abandoned"));
        }
        self.settled = true;
        let chunks = self.write.body.read().len();
        self.write.progress.send_if_modified(|p| match p {
            Progress::Writing { .. } => {
                *p = Progress::Done { chunks };
                true
            }
            _ => false,
        });
        let weight = self.store.commit(&self.hash, &self.write)?;
        Ok(MissFinishType::Created(weight))
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }
}

impl<const N: usize> Drop for Miss<N> {
    fn drop(&mut self) {
        if !self.settled {
            self.abandon();
        }
    }
}

#[async_trait]
impl<const N: usize> Storage for Store<N> {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hash = key.combined_bin();
        let object = {
            let map = self.shards[shard_of(&hash)].read();
            let Some(slot) = map.get(&hash) else {
                return Ok(None);
            };
            // A write in flight is newer than the stored entry (a refresh of an expired one):
            // read it as it arrives.
            if let Some(write) = slot
                .writes
                .iter()
                .rev()
                .find(|w| !w.purged.load(Ordering::Relaxed))
            {
                return partial_hit(write);
            }
            match &slot.object {
                Some(object) => object.clone(),
                None => return Ok(None),
            }
        };
        self.lru.promote(lru_key(&hash));
        let meta = CacheMeta::deserialize(&object.meta.0, &object.meta.1)?;
        Ok(Some((
            meta,
            Box::new(Hit::Complete(CompleteHit::new(&object))),
        )))
    }

    async fn lookup_streaming_write(
        &'static self,
        key: &CacheKey,
        streaming_write_tag: Option<&[u8]>,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(tag) = streaming_write_tag else {
            return self.lookup(key, trace).await;
        };
        let id: u64 = U64WriteId::try_from(tag)
            .map_err(|_| internal("a streaming write tag of the wrong length"))?
            .into();
        let hash = key.combined_bin();
        let map = self.shards[shard_of(&hash)].read();
        // A purged write is still found here: the request writing it reads its own body back.
        match map
            .get(&hash)
            .and_then(|slot| slot.writes.iter().find(|w| w.id == id))
        {
            Some(write) => partial_hit(write),
            None => Ok(None),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let hash = key.combined_bin();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (progress, _) = watch::channel(Progress::Writing { chunks: 0 });
        let write = Arc::new(Write {
            id,
            meta: meta.serialize()?,
            origin: key.extensions.get::<Origin>().cloned(),
            body: RwLock::new(Vec::new()),
            progress,
            purged: AtomicBool::new(false),
        });
        self.shards[shard_of(&hash)]
            .write()
            .entry(hash)
            .or_default()
            .writes
            .push(write.clone());
        Ok(Box::new(Miss {
            store: self,
            hash,
            write,
            tag: id.into(),
            written: 0,
            settled: false,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Entries are tracked by key alone (no entry ids): an identified target is not ours.
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let hash = target.key().combined_bin();
        let removed = match purge_type {
            PurgeType::Invalidation => self.purge_hash(&hash),
            PurgeType::Eviction => {
                let removed = self.remove(&hash);
                self.metrics.evictions.inc_by(removed as u64);
                self.sync_gauges();
                removed
            }
        };
        Ok(if removed > 0 {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if matches!(target, PurgeTarget::Exact(CacheEntryKey::Identified { .. })) {
            return Ok(PurgeOutcome::NotFound);
        }
        let hash = target.key().combined_bin();
        // A write in flight is left alone: it is a fresh response, not the stale one.
        let expired = self.with_meta(&hash, |(internal_meta, header)| {
            let mut meta = CacheMeta::deserialize(internal_meta, header)?;
            meta.expire_at(SystemTime::now());
            meta.serialize()
        })?;
        Ok(match expired {
            Some(()) => PurgeOutcome::Expired,
            None => PurgeOutcome::NotFound,
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let serialized = meta.serialize()?;
        let updated = self.with_meta(&key.combined_bin(), |_| Ok(serialized))?;
        Ok(updated.is_some())
    }

    fn support_streaming_partial_write(&self) -> bool {
        true
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use pingora_cache::trace::Span;
    use pingora_http::ResponseHeader;
    use std::time::Duration;

    fn leaked<const N: usize>(limits: Limits) -> &'static Store<N> {
        Box::leak(Box::new(Store::new(limits)))
    }

    fn small<const N: usize>(max_bytes: usize, max_object_size: usize) -> &'static Store<N> {
        leaked(Limits {
            max_bytes,
            max_object_size,
        })
    }

    fn span() -> SpanHandle {
        Span::inactive().handle()
    }

    fn meta() -> CacheMeta {
        let mut header = ResponseHeader::build(200, None).unwrap();
        header.append_header("content-type", "text/plain").unwrap();
        let now = SystemTime::now();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, header)
    }

    fn key(host: &str, path: &str) -> CacheKey {
        let mut key = CacheKey::new(format!("{host}{path}"), "");
        set_origin(&mut key, host, path);
        key
    }

    async fn put<const N: usize>(
        store: &'static Store<N>,
        key: &CacheKey,
        chunks: &[&[u8]],
    ) -> Result<usize> {
        let mut miss = store.get_miss_handler(key, &meta(), &span()).await?;
        for (i, chunk) in chunks.iter().enumerate() {
            miss.write_body(Bytes::copy_from_slice(chunk), i + 1 == chunks.len())
                .await?;
        }
        match miss.finish().await? {
            MissFinishType::Created(weight) => Ok(weight),
            MissFinishType::Appended(..) => unreachable!("the store only creates"),
        }
    }

    async fn read_all(hit: &mut HitHandler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        out
    }

    async fn get<const N: usize>(store: &'static Store<N>, key: &CacheKey) -> Option<Vec<u8>> {
        let (_, mut hit) = store.lookup(key, &span()).await.unwrap()?;
        Some(read_all(&mut hit).await)
    }

    #[tokio::test]
    async fn a_written_response_is_read_back_in_its_chunks() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("api.example", "/v1/orders/1");
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        put(store, &k, &[b"hello ", b"cached ", b"world"])
            .await
            .unwrap();

        let (meta, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(meta.response_header().status, 200);
        // Stored as it arrived: three chunks, each handed out without a copy of the whole.
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "hello ");
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "cached ");
        assert_eq!(hit.read_body().await.unwrap().unwrap(), "world");
        assert!(hit.read_body().await.unwrap().is_none());
        assert_eq!(store.stats().objects, 1);
    }

    #[tokio::test]
    async fn ranges_are_served_across_chunk_boundaries() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("api.example", "/range");
        put(store, &k, &[b"0123", b"4567", b"89"]).await.unwrap();
        let (_, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(hit.can_seek());
        assert!(hit.seek(10, None).is_err());
        hit.seek(3, Some(7)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"3456");
        hit.seek(8, None).unwrap();
        assert_eq!(read_all(&mut hit).await, b"89");
        hit.seek(0, Some(100)).unwrap();
        assert_eq!(read_all(&mut hit).await, b"0123456789");
    }

    #[tokio::test]
    async fn readers_stream_a_response_while_it_is_written() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("api.example", "/stream");
        let mut miss = store.get_miss_handler(&k, &meta(), &span()).await.unwrap();
        // The writer's own reader, found by its tag, and a concurrent request's.
        let (_, mut own) = store
            .lookup_streaming_write(&k, miss.streaming_write_tag(), &span())
            .await
            .unwrap()
            .unwrap();
        let (_, mut other) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(!other.can_seek());
        assert!(
            other.read_body().now_or_never().is_none(),
            "nothing yet: it waits"
        );

        miss.write_body(Bytes::from_static(b"part1"), false)
            .await
            .unwrap();
        assert_eq!(other.read_body().await.unwrap().unwrap(), "part1");
        assert!(other.read_body().now_or_never().is_none());
        miss.write_body(Bytes::from_static(b"part2"), true)
            .await
            .unwrap();
        assert_eq!(other.read_body().await.unwrap().unwrap(), "part2");
        assert!(other.read_body().await.unwrap().is_none());

        // A reader arriving late starts from the beginning.
        let (_, mut late) = store.lookup(&k, &span()).await.unwrap().unwrap();
        miss.finish().await.unwrap();
        assert_eq!(read_all(&mut late).await, b"part1part2");
        assert_eq!(read_all(&mut own).await, b"part1part2");
        // Committed: now a complete hit.
        let (_, hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(hit.can_seek());
    }

    #[tokio::test]
    async fn an_abandoned_write_fails_its_readers_and_stores_nothing() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("api.example", "/abandoned");
        let mut miss = store.get_miss_handler(&k, &meta(), &span()).await.unwrap();
        miss.write_body(Bytes::from_static(b"half"), false)
            .await
            .unwrap();
        let (_, mut reader) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(reader.read_body().await.unwrap().unwrap(), "half");
        drop(miss); // the upstream failed mid-body
        assert!(
            reader.read_body().await.is_err(),
            "a truncated body must not end as if it were whole"
        );
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        assert!(store.shards.iter().all(|s| s.read().is_empty()));
    }

    #[tokio::test]
    async fn a_body_over_max_object_size_is_abandoned_as_it_passes() {
        let store = small::<SHARDS>(1 << 20, 10);
        let k = key("api.example", "/big");
        let mut miss = store.get_miss_handler(&k, &meta(), &span()).await.unwrap();
        let (_, mut reader) = store.lookup(&k, &span()).await.unwrap().unwrap();
        miss.write_body(Bytes::from_static(b"123456"), false)
            .await
            .unwrap();
        assert_eq!(reader.read_body().await.unwrap().unwrap(), "123456");
        let err = miss
            .write_body(Bytes::from_static(b"789012"), false)
            .await
            .unwrap_err();
        assert_eq!(err.etype(), &ERR_RESPONSE_TOO_LARGE);
        assert!(reader.read_body().await.is_err(), "its readers fail too");
        assert!(miss.finish().await.is_err());
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!(store.stats().too_large, 1);
        assert_eq!(store.stats().objects, 0);

        // Exactly the limit is stored.
        put(store, &k, &[b"1234567890"]).await.unwrap();
        assert_eq!(get(store, &k).await.unwrap(), b"1234567890");
    }

    #[tokio::test]
    async fn the_byte_bound_evicts_the_least_recently_used() {
        // Room for about three entries of 1000 body bytes each.
        let weight = {
            let probe = leaked::<SHARDS>(Limits::default());
            put(probe, &key("h", "/probe"), &[&[b'x'; 1000]])
                .await
                .unwrap()
        };
        let store = small::<1>(weight * 3 + weight / 2, 4096);
        let keys: Vec<CacheKey> = (0..6).map(|i| key("h", &format!("/{i}"))).collect();
        for k in &keys[..3] {
            put(store, k, &[&[b'x'; 1000]]).await.unwrap();
        }
        assert_eq!(store.stats().objects, 3);
        // /0 is used again, so /1 is now the least recently used.
        assert!(get(store, &keys[0]).await.is_some());
        put(store, &keys[3], &[&[b'y'; 1000]]).await.unwrap();
        let stats = store.stats();
        assert_eq!(stats.objects, 3);
        assert_eq!(stats.evictions, 1);
        assert!(stats.bytes <= stats.max_bytes, "{stats:?}");
        assert!(get(store, &keys[1]).await.is_none(), "/1 was evicted");
        assert!(get(store, &keys[0]).await.is_some());
        assert!(get(store, &keys[3]).await.is_some());

        for k in &keys[4..] {
            put(store, k, &[&[b'z'; 1000]]).await.unwrap();
        }
        let stats = store.stats();
        assert!(stats.bytes <= stats.max_bytes, "{stats:?}");
        assert_eq!(stats.evictions, 3);
        // The map holds exactly what the LRU accounts for.
        let held: usize = store.shards.iter().map(|s| s.read().len()).sum();
        assert_eq!(held, stats.objects);
        assert_eq!(store.metrics.bytes.get() as usize, stats.bytes);
        assert_eq!(store.metrics.objects.get() as usize, stats.objects);
    }

    #[tokio::test]
    async fn shrinking_max_bytes_evicts_at_once_and_keeps_the_rest() {
        let store = leaked::<1>(Limits::default());
        for i in 0..10 {
            put(store, &key("h", &format!("/{i}")), &[&[b'x'; 500]])
                .await
                .unwrap();
        }
        let before = store.stats();
        assert_eq!(before.objects, 10);
        store.set_limits(Limits {
            max_bytes: before.bytes / 2,
            max_object_size: 1000,
        });
        let after = store.stats();
        assert!(after.bytes <= before.bytes / 2, "{after:?}");
        assert_eq!(after.objects, 5);
        assert_eq!(after.evictions, 5);
        // The most recent entries stayed.
        assert!(get(store, &key("h", "/9")).await.is_some());
        assert!(get(store, &key("h", "/0")).await.is_none());
    }

    #[tokio::test]
    async fn an_entry_larger_than_the_whole_cache_is_not_stored() {
        let store = small::<SHARDS>(600, 4096);
        let k = key("h", "/huge");
        assert!(put(store, &k, &[&[b'x'; 1000]]).await.is_err());
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        assert_eq!(store.stats().objects, 0);
    }

    #[tokio::test]
    async fn a_rewrite_replaces_the_entry_and_its_weight() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("h", "/same");
        put(store, &k, &[&[b'a'; 100]]).await.unwrap();
        let first = store.stats().bytes;
        put(store, &k, &[&[b'b'; 300]]).await.unwrap();
        let stats = store.stats();
        assert_eq!(stats.objects, 1);
        assert_eq!(stats.bytes, first + 200);
        assert_eq!(get(store, &k).await.unwrap(), vec![b'b'; 300]);
    }

    #[tokio::test]
    async fn purge_by_exact_key_through_the_storage_trait() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("api.example", "/v1/a");
        let other = key("api.example", "/v1/b");
        put(store, &k, &[b"a"]).await.unwrap();
        put(store, &other, &[b"b"]).await.unwrap();
        let compact = k.to_compact();
        let outcome = store
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Purged(None));
        assert!(get(store, &k).await.is_none());
        assert!(get(store, &other).await.is_some());
        let again = store
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span(),
            )
            .await
            .unwrap();
        assert_eq!(again, PurgeOutcome::NotFound);
        let stats = store.stats();
        assert_eq!((stats.objects, stats.purged), (1, 1));
    }

    #[tokio::test]
    async fn purge_by_prefix_host_and_url_matches_only_those() {
        let store = leaked::<SHARDS>(Limits::default());
        let entries = [
            ("api.example", "/v1/orders"),
            ("api.example", "/v1/orders/7?full=1"),
            ("api.example", "/v1/ordersheet"),
            ("api.example", "/v2/orders"),
            ("API.Example:8443", "/v1/customers"),
            ("other.example", "/v1/orders"),
        ];
        for (host, path) in entries {
            put(store, &key(host, path), &[b"x"]).await.unwrap();
        }
        let prefix = |host: &str, prefix: &str| {
            let host = normalize_host(host);
            let prefix = prefix.to_string();
            move |o: &Origin| o.host() == host && o.path().starts_with(&prefix)
        };
        assert_eq!(
            store.purge_matching(prefix("api.example", "/v1/orders/")),
            1
        );
        assert!(get(store, &key("api.example", "/v1/orders/7?full=1"))
            .await
            .is_none());
        assert!(get(store, &key("api.example", "/v1/orders"))
            .await
            .is_some());
        // A plain string prefix: /v1/orders also takes /v1/ordersheet.
        assert_eq!(store.purge_matching(prefix("api.example", "/v1/orders")), 2);
        // Exact URL.
        assert_eq!(
            store.purge_matching(
                |o: &Origin| o.host() == "other.example" && o.path() == "/v1/orders"
            ),
            1
        );
        // The whole host, named with another case and a port.
        assert_eq!(store.purge_matching(prefix("Api.Example:443", "")), 2);
        assert_eq!(store.stats().objects, 0);
        assert_eq!(store.stats().purged, 6);
    }

    #[tokio::test]
    async fn a_write_purged_in_flight_feeds_its_readers_but_is_not_stored() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("api.example", "/inflight");
        let mut miss = store.get_miss_handler(&k, &meta(), &span()).await.unwrap();
        let (_, mut reader) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert_eq!(
            store.purge_matching(|o: &Origin| o.host() == "api.example"),
            1
        );
        // New lookups miss; the writer still finds its own write by tag.
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        assert!(store
            .lookup_streaming_write(&k, miss.streaming_write_tag(), &span())
            .await
            .unwrap()
            .is_some());
        miss.write_body(Bytes::from_static(b"body"), true)
            .await
            .unwrap();
        assert!(miss.finish().await.is_err());
        assert_eq!(read_all(&mut reader).await, b"body");
        assert!(store.lookup(&k, &span()).await.unwrap().is_none());
        assert!(store.shards.iter().all(|s| s.read().is_empty()));
    }

    #[tokio::test]
    async fn expire_keeps_the_body_and_update_meta_replaces_the_meta() {
        let store = leaked::<SHARDS>(Limits::default());
        let k = key("h", "/expire");
        put(store, &k, &[b"body"]).await.unwrap();
        let compact = k.to_compact();
        let outcome = store
            .expire(PurgeTarget::Active(&compact), &span())
            .await
            .unwrap();
        assert_eq!(outcome, PurgeOutcome::Expired);
        let (meta, mut hit) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(!meta.is_fresh(SystemTime::now() + Duration::from_secs(1)));
        assert_eq!(read_all(&mut hit).await, b"body");

        assert!(store
            .update_meta(&k, &super::tests::meta(), &span())
            .await
            .unwrap());
        let (meta, _) = store.lookup(&k, &span()).await.unwrap().unwrap();
        assert!(meta.is_fresh(SystemTime::now()));
        assert!(!store
            .update_meta(&key("h", "/absent"), &super::tests::meta(), &span())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn variants_of_one_url_are_separate_entries() {
        let store = leaked::<SHARDS>(Limits::default());
        let mut gzip = key("h", "/v");
        gzip.set_variance_key(pingora_cache::key::hash_key("gzip"));
        let plain = key("h", "/v");
        put(store, &gzip, &[b"gz"]).await.unwrap();
        put(store, &plain, &[b"plain"]).await.unwrap();
        assert_eq!(get(store, &gzip).await.unwrap(), b"gz");
        assert_eq!(get(store, &plain).await.unwrap(), b"plain");
        // A URL purge takes every variant.
        assert_eq!(store.purge_matching(|o: &Origin| o.path() == "/v"), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_and_readers_stay_within_the_bound() {
        let store = small::<SHARDS>(64 * 1024, 4096);
        let mut tasks = Vec::new();
        for t in 0..8 {
            tasks.push(tokio::spawn(async move {
                for i in 0..200 {
                    let k = key("h", &format!("/{}", (t * 7 + i) % 50));
                    if i % 3 == 0 {
                        // A purge may meet the write in flight: then it is not stored.
                        if let Err(e) = put(store, &k, &[&[t as u8; 700], &[i as u8; 300]]).await {
                            assert!(e.to_string().contains("purged"), "{e}");
                        }
                    } else if let Some(body) = get(store, &k).await {
                        // Whatever is read is one whole body, never a mix of two writes.
                        assert_eq!(body.len(), 1000);
                        assert!(body[..700].iter().all(|b| *b == body[0]));
                    }
                    if i % 50 == 0 {
                        store.purge_matching(|o: &Origin| o.path().ends_with('7'));
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let stats = store.stats();
        assert!(stats.bytes <= stats.max_bytes, "{stats:?}");
        let held: usize = store
            .shards
            .iter()
            .map(|s| {
                s.read()
                    .values()
                    .filter(|slot| slot.object.is_some())
                    .count()
            })
            .sum();
        assert_eq!(held, stats.objects);
        assert!(store
            .shards
            .iter()
            .all(|s| s.read().values().all(|slot| slot.writes.is_empty())));
    }

    /// The store under pingora-cache's own state machine, in the order pingora-proxy drives
    /// it: a miss fills (its request reading its own body back by write tag), a concurrent
    /// request streams the fill, a later one hits, and `HttpCache::purge` removes it.
    #[tokio::test]
    async fn pingora_http_cache_fills_streams_hits_and_purges_through_the_store() {
        use pingora_cache::{HitStatus, HttpCache};
        let store = leaked::<SHARDS>(Limits::default());
        let request = || {
            let mut cache = HttpCache::new();
            cache.enable(store, None, None, None, None);
            cache.set_cache_key(key("api.example", "/v1/fill"));
            cache
        };

        let mut filler = request();
        assert!(filler.cache_lookup().await.unwrap().is_none());
        filler.cache_miss();
        filler.set_cache_meta(meta());
        filler.set_miss_handler().await.unwrap();
        assert!(
            filler.miss_body_reader().is_some(),
            "streaming partial write"
        );

        let mut follower = request();
        let (meta_found, hit) = follower.cache_lookup().await.unwrap().expect("partial hit");
        follower.cache_found(meta_found, hit, HitStatus::Fresh);

        let miss = filler.miss_handler().unwrap();
        miss.write_body(Bytes::from_static(b"first,"), false)
            .await
            .unwrap();
        assert_eq!(
            follower.hit_handler().read_body().await.unwrap().unwrap(),
            "first,"
        );
        let miss = filler.miss_handler().unwrap();
        miss.write_body(Bytes::from_static(b"second"), true)
            .await
            .unwrap();
        filler.finish_miss_handler().await.unwrap();
        assert_eq!(
            read_all(filler.miss_body_reader().unwrap()).await,
            b"first,second"
        );
        assert_eq!(read_all(follower.hit_handler()).await, b"second");

        let mut later = request();
        let (meta_found, hit) = later.cache_lookup().await.unwrap().expect("hit");
        assert!(hit.can_seek(), "a complete entry");
        later.cache_found(meta_found, hit, HitStatus::Fresh);
        assert_eq!(read_all(later.hit_handler()).await, b"first,second");
        later.finish_hit_handler().await.unwrap();

        let purger = request();
        assert!(purger.purge().await.unwrap());
        let mut after = request();
        assert!(after.cache_lookup().await.unwrap().is_none());
        assert_eq!(store.stats().objects, 0);
    }

    #[test]
    fn hosts_are_compared_without_case_port_or_trailing_dot() {
        assert_eq!(normalize_host("Api.Example.:8443"), "api.example");
        assert_eq!(normalize_host("api.example"), "api.example");
        assert_eq!(normalize_host("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("::1"), "::1");
    }
}
