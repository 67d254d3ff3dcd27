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
            // notify also reports opens (IN_OPEN): the caller's own re-read
            // would wake it again, a re-read every SETTLE forever. Only
            // changes count, a writer closing its file among them.
            if result.is_ok_and(|event| is_change(&event.kind)) {
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

/// Whether an event can mean the directory's content changed: anything but
/// an open or a read.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading the directory (as every caller does when woken) must not
    /// wake the watch again; changing it must.
    #[tokio::test]
    async fn only_changes_wake_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut watch = DirWatch::new(dir.path().into(), Duration::from_secs(3600));
        watch.next(None).await;
        let woken_early = |deadline: Instant| Instant::now() < deadline;
        for _ in 0..3 {
            std::fs::read_dir(dir.path()).unwrap().for_each(drop);
            std::fs::read(&file).unwrap();
            let deadline = Instant::now() + Duration::from_millis(400);
            watch.next(Some(deadline)).await;
            assert!(!woken_early(deadline), "a read woke the watch");
        }
        std::fs::write(&file, "b").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        watch.next(Some(deadline)).await;
        assert!(woken_early(deadline), "a write did not wake the watch");
    }
}
