//! Watching a directory the robust way: inotify for promptness plus a
//! periodic full re-read, because inotify alone misses edits
//! (kubernetes#52939) and cannot watch a directory that does not exist yet.
//! Callers always re-read the whole directory when woken, so a lost event
//! only delays a change until the next re-read.
//!
//! A burst of events wakes the caller at once when it says the files are
//! whole: written and closed, or renamed into place (how tools and careful
//! operators install files). A file still being written, or one that went
//! away, may be half of something (a copy in progress, an editor's save
//! that renames the old file aside before writing the new one): then the
//! burst is given [`SETTLE`] to finish, so a pod is neither read half-written
//! nor removed and recreated around a save.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::Watcher;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};

/// How long an unfinished burst (a file still open for writing, a file
/// gone) is given to finish before the caller is woken anyway.
const SETTLE: Duration = Duration::from_millis(100);

/// Events buffered between two wake-ups; beyond that the burst counts as
/// unfinished and the caller re-reads everything after [`SETTLE`].
const EVENT_BUFFER: usize = 1024;

/// Which directory entries the caller reads; events about others never
/// hold a wake-up back.
pub type Relevant = fn(&Path) -> bool;

pub struct DirWatch {
    dir: PathBuf,
    relevant: Relevant,
    events_tx: mpsc::Sender<notify::Event>,
    events_rx: mpsc::Receiver<notify::Event>,
    /// Set when an event was lost (buffer full, or notify reported an
    /// error): the burst cannot be judged.
    lost: Arc<AtomicBool>,
    watcher: Option<notify::RecommendedWatcher>,
    ticker: Interval,
}

impl DirWatch {
    /// The first [`DirWatch::next`] returns at once, for the initial read.
    pub fn new(dir: PathBuf, resync: Duration, relevant: Relevant) -> DirWatch {
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        DirWatch {
            dir,
            relevant,
            events_tx,
            events_rx,
            lost: Arc::new(AtomicBool::new(false)),
            watcher: None,
            ticker: tokio::time::interval(resync),
        }
    }

    /// Waits until the directory should be read again: a finished (or
    /// settled) burst of changes, the periodic re-read, or `deadline` if
    /// given.
    pub async fn next(&mut self, deadline: Option<Instant>) {
        if self.watcher.is_none() {
            self.watcher = self.start_watch();
        }
        let far = Instant::now() + Duration::from_secs(86400);
        tokio::select! {
            _ = self.ticker.tick() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {}
            Some(event) = self.events_rx.recv() => self.finish_burst(event).await,
        }
    }

    /// Collects the burst that `first` opened until it is finished or has
    /// had [`SETTLE`].
    async fn finish_burst(&mut self, first: notify::Event) {
        let settled = Instant::now() + SETTLE;
        let mut burst = Burst::default();
        burst.add(&first, self.relevant);
        loop {
            while let Ok(event) = self.events_rx.try_recv() {
                burst.add(&event, self.relevant);
            }
            if self.lost.swap(false, Ordering::Relaxed) {
                burst.uncertain = true;
            }
            if burst.finished() {
                return;
            }
            tokio::select! {
                Some(event) = self.events_rx.recv() => burst.add(&event, self.relevant),
                _ = tokio::time::sleep_until(settled) => {
                    while self.events_rx.try_recv().is_ok() {}
                    return;
                }
            }
        }
    }

    /// `None` if the directory cannot be watched (yet); re-reads cover it.
    fn start_watch(&self) -> Option<notify::RecommendedWatcher> {
        let events = self.events_tx.clone();
        let lost = self.lost.clone();
        let handler = move |result: notify::Result<notify::Event>| match result {
            // notify also reports opens (IN_OPEN): the caller's own re-read
            // would wake it again, a re-read every time forever. Only
            // changes count, a writer closing its file among them.
            Ok(event) if !is_change(&event.kind) => {}
            Ok(event) => {
                if events.try_send(event).is_err() {
                    lost.store(true, Ordering::Relaxed);
                }
            }
            Err(_) => lost.store(true, Ordering::Relaxed),
        };
        let mut watcher = notify::recommended_watcher(handler).ok()?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::NonRecursive)
            .ok()?;
        Some(watcher)
    }
}

/// What a burst of events says about the files the caller reads.
#[derive(Debug, Default)]
struct Burst {
    /// Created or written, not yet closed or renamed into place.
    unfinished: HashSet<PathBuf>,
    /// A file went away or an event was not understood: more may follow.
    uncertain: bool,
}

impl Burst {
    fn add(&mut self, event: &notify::Event, relevant: Relevant) {
        let paths: Vec<&PathBuf> = event.paths.iter().filter(|p| relevant(p)).collect();
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for path in paths {
                    self.unfinished.remove(path);
                }
            }
            // Renamed within the directory: the old name went, the new one
            // arrived whole.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let [from, to] = event.paths.as_slice() {
                    self.uncertain |= relevant(from);
                    self.unfinished.remove(to);
                } else {
                    self.uncertain = true;
                }
            }
            EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => {
                self.unfinished.extend(paths.into_iter().cloned());
            }
            // Permissions or times: the content is whole.
            EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Access(_) => {}
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => {
                self.uncertain |= !paths.is_empty();
            }
            EventKind::Any | EventKind::Other => self.uncertain = true,
        }
    }

    fn finished(&self) -> bool {
        self.unfinished.is_empty() && !self.uncertain
    }
}

/// Whether an event can mean the directory's content changed: anything but
/// an open or a read.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind};

    fn yaml(path: &Path) -> bool {
        path.extension().is_some_and(|e| e == "yaml")
    }

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        notify::Event {
            kind,
            paths: paths.iter().map(PathBuf::from).collect(),
            attrs: Default::default(),
        }
    }

    fn burst(events: &[notify::Event]) -> Burst {
        let mut burst = Burst::default();
        for e in events {
            burst.add(e, yaml);
        }
        burst
    }

    const CREATE: EventKind = EventKind::Create(CreateKind::File);
    const WRITE: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));
    const CLOSE: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));
    const FROM: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::From));
    const TO: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::To));
    const BOTH: EventKind = EventKind::Modify(ModifyKind::Name(RenameMode::Both));

    #[test]
    fn a_file_renamed_into_place_is_finished_at_once() {
        let b = burst(&[
            event(CREATE, &["/d/.web.yaml.tmp"]),
            event(WRITE, &["/d/.web.yaml.tmp"]),
            event(CLOSE, &["/d/.web.yaml.tmp"]),
            event(FROM, &["/d/.web.yaml.tmp"]),
            event(TO, &["/d/web.yaml"]),
            event(BOTH, &["/d/.web.yaml.tmp", "/d/web.yaml"]),
        ]);
        assert!(b.finished(), "{b:?}");
    }

    #[test]
    fn a_file_written_in_place_is_finished_when_closed() {
        let open = [
            event(CREATE, &["/d/web.yaml"]),
            event(WRITE, &["/d/web.yaml"]),
        ];
        assert!(!burst(&open).finished());
        let closed = [
            open[0].clone(),
            open[1].clone(),
            event(CLOSE, &["/d/web.yaml"]),
        ];
        assert!(burst(&closed).finished());
        let chmod = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Permissions));
        assert!(burst(&[event(chmod, &["/d/web.yaml"])]).finished());
    }

    #[test]
    fn a_file_going_away_waits_for_the_rest_of_the_save() {
        // An editor renaming the old file aside, then writing the new one.
        let save = [
            event(FROM, &["/d/web.yaml"]),
            event(TO, &["/d/web.yaml~"]),
            event(BOTH, &["/d/web.yaml", "/d/web.yaml~"]),
            event(CREATE, &["/d/web.yaml"]),
            event(CLOSE, &["/d/web.yaml"]),
        ];
        assert!(!burst(&save).finished());
        let removed = EventKind::Remove(RemoveKind::File);
        assert!(!burst(&[event(removed, &["/d/web.yaml"])]).finished());
        assert!(burst(&[event(removed, &["/d/notes.txt"])]).finished());
        assert!(!burst(&[event(EventKind::Any, &[])]).finished());
    }

    /// Reading the directory (as every caller does when woken) must not
    /// wake the watch again; changing it must.
    #[tokio::test]
    async fn only_changes_wake_the_watch() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, "a").unwrap();
        let mut watch = DirWatch::new(dir.path().into(), Duration::from_secs(3600), |_| true);
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
