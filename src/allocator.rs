//! The binary's global allocator (chosen by Cargo feature) and how jemalloc is tuned: freed
//! memory goes back to the OS within about a second, from jemalloc's background thread,
//! so the memory of closed connections is returned even when no new request arrives to
//! trigger jemalloc's purging (benches/load/RESULTS.md, "memory"). That thread runs at nice 10
//! like the reload and retiring threads (`runtime::lower_allocator_priority`): it has no
//! deadline, and its long `madvise` calls after a reload delayed the proxy thread.

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A C string pointer jemalloc reads before `main` (its `malloc_conf` global).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: it points to a `'static` byte string that is never written.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
unsafe impl Sync for MallocConf {}

/// Dirty pages are purged after 1 s instead of 10 s, without the muzzy stage, by one
/// background thread rather than only inside later allocations. The thread cache keeps
/// blocks up to 64 KiB instead of 32 KiB: Pingora allocates a 64 KiB buffer for every
/// upstream response body, which would otherwise go to the shared arena (and its page
/// purging) on every request. Overridable at start with the `_RJEM_MALLOC_CONF` environment
/// variable.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache_max:65536"
        .as_ptr(),
);

/// Starts jemalloc's background purging thread again. A forked child (Pingora's `-d`
/// daemon) inherits the setting but not the thread, which jemalloc leaves disabled there.
pub fn after_fork() {
    #[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
    {
        let mut on = true;
        // SAFETY: a documented mallctl name with a `bool` value, passed by pointer and size.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"background_thread".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&mut on as *mut bool).cast(),
                std::mem::size_of::<bool>(),
            )
        };
        if rc != 0 {
            log::warn!("jemalloc: cannot start the background purging thread (error {rc})");
        }
    }
}

/// A Pingora background service that runs [`after_fork`] once the server has daemonized
/// (services start in the final process).
pub struct AfterFork;

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for AfterFork {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        after_fork();
        portico::runtime::lower_allocator_priority();
    }
}
