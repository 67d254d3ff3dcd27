//! Watching a directory the robust way: inotify for promptness plus a
//! periodic full re-read, because inotify alone misses edits
//! (kubernetes#52939) and cannot watch a directory that does not exist yet.
//! Callers always re-read the whole directory when woken, so a lost event
//! only delays a change until the next re-read.

use std::path::PathBuf;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

/// How long to wait after an event for the rest of a burst (an editor's
/// write-rename-chmod, a copy in progress) before waking the caller.
const SETTLE: Duration = Duration::from_millis(100);

pub struct DirWatch {
    dir: PathBuf,
    poke_tx: mpsc::Sender<()>,
    poke_rx: mpsc::Receiver<()>,
    watcher: Option<notify::RecommendedWatcher>,
    ticker: Interval,
}

impl DirWatch {
    /// The first [`DirWatch::next`] returns at once, for the initial read.
    pub fn new(dir: PathBuf, resync: Duration) -> DirWatch {
        let (poke_tx, poke_rx) = mpsc::channel(1);
        DirWatch {
            dir,
            poke_tx,
            poke_rx,
            watcher: None,
            ticker: tokio::time::interval(resync),
        }
    }

    /// Waits until the directory should be read again: a settled burst of
    /// changes, the periodic re-read, or `deadline` if given.
    pub async fn next(&mut self, deadline: Option<Instant>) {
        if self.watcher.is_none() {
            self.watcher = self.start_watch();
        }
        let far = Instant::now() + Duration::from_secs(86400);
        tokio::select! {
            _ = self.ticker.tick() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {}
            Some(()) = self.poke_rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                while self.poke_rx.try_recv().is_ok() {}
            }
        }
    }

    /// `None` if the directory cannot be watched (yet); re-reads cover it.
    fn start_watch(&self) -> Option<notify::RecommendedWatcher> {
        let poke = self.poke_tx.clone();
        let handler = move |result: notify::Result<notify::Event>| {
            if result.is_ok() {
                // A full channel already holds a pending poke.
                let _ = poke.try_send(());
            }
        };
        let mut watcher = notify::recommended_watcher(handler).ok()?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .ok()?;
        Some(watcher)
    }
}
