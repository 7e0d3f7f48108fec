//! Steady client traffic through a gateway while a test changes something under it,
//! counting every answer that is not 200.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::Gateway;

/// Clients sending requests until stopped; every answer that is not 200 is counted.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// `clients` loops sending `GET path` one after another.
    pub fn start(gw: &Gateway, path: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let workers = (0..clients)
            .map(|_| {
                let (client, url) = (gw.client.clone(), gw.url(path));
                let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::SeqCst) {
                        let ok =
                            matches!(client.get(&url).send().await, Ok(r) if r.status() == 200);
                        sent.fetch_add(1, Ordering::SeqCst);
                        if !ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            sent,
            failed,
            workers,
        }
    }

    /// Stops the clients: (sent, failed).
    pub async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            w.await.expect("traffic worker");
        }
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}
