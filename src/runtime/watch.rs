//! Reloading the config when its file changes (`[server] watch_config = true`).
//!
//! The file is polled once a second rather than watched with inotify (the `notify` crate):
//! one `stat` a second costs nothing, needs no extra dependency or thread, and sees every
//! way a file gets replaced — an editor's rename, a symlink swap by a config-management
//! tool, a bind-mounted file — which inotify watches tend to lose track of. A change of
//! size, modification time or inode triggers a read; the reload happens only when the
//! content hash differs from what was last loaded, once the content has been stable for
//! 500 ms (editors and tools write in several steps).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::State;

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// How long the content must stay the same before it is loaded.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// Debounce rounds at most before loading whatever is there.
const MAX_SETTLE_ROUNDS: usize = 10;

/// What `stat` said last time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stat(path: &Path) -> Option<Seen> {
    use std::os::unix::fs::MetadataExt;
    // Follows symlinks: a swapped link target is a change.
    let meta = std::fs::metadata(path).ok()?;
    Some(Seen {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

async fn read_hash(path: &Path) -> Option<u64> {
    tokio::fs::read(path)
        .await
        .ok()
        .map(|b| super::content_hash(&b))
}

/// The state of the watch between polls.
#[derive(Default)]
pub struct ConfigWatch {
    seen: Option<Seen>,
}

impl ConfigWatch {
    /// One poll: reloads when the file's content changed and has settled. Returns whether
    /// a reload was attempted.
    pub async fn poll(&mut self, state: &Arc<State>) -> bool {
        let Some(path) = state.config_path.clone() else {
            return false;
        };
        let now = stat(&path);
        if now.is_none() || now == self.seen {
            // Gone (being replaced, or deleted: keep the running config) or unchanged.
            return false;
        }
        self.seen = now;
        let Some(mut hash) = read_hash(&path).await else {
            return false;
        };
        if Some(hash) == state.file_hash() {
            return false;
        }
        for _ in 0..MAX_SETTLE_ROUNDS {
            tokio::time::sleep(DEBOUNCE).await;
            match read_hash(&path).await {
                Some(again) if again == hash => break,
                Some(again) => hash = again,
                None => return false,
            }
        }
        self.seen = stat(&path);
        if Some(hash) == state.file_hash() {
            return false;
        }
        log::info!("{} changed: reloading the config", path.display());
        let _ = super::reload(state).await;
        true
    }
}
