//! What a pod worker must remember across agent restarts that containerd
//! does not: restart counts, the crash back-off, the last run's end. One
//! small JSON file per pod under `<state-dir>/pods/`, written by the pod's
//! worker (its only writer) whenever the pod's status changes, read once
//! when a new worker adopts the pod.
//!
//! Writes go through [`private_files::write_private`] (temporary file,
//! fsync, rename, fsync of the directory), so a crash or a power cut leaves
//! the old or the new file, never half of one. An empty or torn file (left
//! by an older version) is handled as absent and logged, and one that
//! cannot be read is not fatal: either way the worker falls back to what
//! the containers' labels say.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::plan::CrashBackoff;
use super::state::{ContainerRecord, PodRecord, RunState};
use crate::host::safe_path::{self, SafePath, UnsafeComponent};
use crate::host::{private_files, state_file};

/// Marks the format, so a later one can tell old files apart.
const VERSION: u32 = 1;

/// Far above any checkpoint (a few hundred bytes per container).
const MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    version: u32,
    containers: BTreeMap<String, SavedContainer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedContainer {
    container_id: Option<String>,
    image_id: String,
    state: RunState,
    last_state: Option<RunState>,
    last_container_id: Option<String>,
    restart_count: i32,
    runs: u32,
    attempts: u32,
    /// When the last run ended, while its restart is pending.
    finished: Option<jiff::Timestamp>,
    /// The crash back-off's delay (seconds) and when it was last raised.
    crash: Option<(u64, jiff::Timestamp)>,
    stop_signal: i32,
}

/// Converts between the monotonic clock the worker plans with and the wall
/// clock a file can keep.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    pub now: Instant,
    pub wall: jiff::Timestamp,
}

impl Clocks {
    pub fn now() -> Clocks {
        Clocks {
            now: Instant::now(),
            wall: jiff::Timestamp::now(),
        }
    }

    fn to_wall(self, at: Instant) -> jiff::Timestamp {
        let ago = self.now.saturating_duration_since(at);
        let ago = jiff::SignedDuration::try_from(ago).unwrap_or(jiff::SignedDuration::ZERO);
        self.wall.checked_sub(ago).unwrap_or(self.wall)
    }

    /// A wall time in the past as an instant; times in the future (a clock
    /// that jumped back) count as now.
    fn to_instant(self, at: jiff::Timestamp) -> Instant {
        let ago = self.wall.duration_since(at);
        let ago = Duration::try_from(ago).unwrap_or(Duration::ZERO);
        self.now.checked_sub(ago).unwrap_or(self.now)
    }
}

impl Checkpoint {
    pub fn of(record: &PodRecord, clocks: Clocks) -> Checkpoint {
        let containers = record
            .init_containers
            .iter()
            .chain(&record.containers)
            .map(|c| {
                let saved = SavedContainer {
                    container_id: c.container_id.clone(),
                    image_id: c.image_id.clone(),
                    state: c.state.clone(),
                    last_state: c.last_state.clone(),
                    last_container_id: c.last_container_id.clone(),
                    restart_count: c.restart_count,
                    runs: c.runs,
                    attempts: c.attempts,
                    finished: c.finished.map(|t| clocks.to_wall(t)),
                    crash: c
                        .crash
                        .entry()
                        .map(|(delay, updated)| (delay.as_secs(), clocks.to_wall(updated))),
                    stop_signal: c.stop_signal,
                };
                (c.name.clone(), saved)
            })
            .collect();
        Checkpoint {
            version: VERSION,
            containers,
        }
    }

    /// Restores what was saved into the records of containers that still
    /// exist in the pod (a checkpoint is per pod UID, so they all should).
    pub fn restore(&self, record: &mut PodRecord, clocks: Clocks) {
        for c in record
            .init_containers
            .iter_mut()
            .chain(record.containers.iter_mut())
        {
            if let Some(saved) = self.containers.get(&c.name) {
                saved.restore(c, clocks);
            }
        }
    }

    /// `<state-dir>/pods/<uid>.json`; a UID that is not one plain name
    /// (it may come from a container's labels) is refused.
    pub fn path(state_dir: &Path, uid: &str) -> Result<PathBuf, UnsafeComponent> {
        let file = format!("{}.json", safe_path::check(uid)?);
        Ok(SafePath::base(state_dir).join(&["pods", &file])?.path())
    }

    /// Blocking (fsyncs): async callers run it on a blocking thread.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        private_files::create_dir(dir, private_files::PRIVATE_DIR_MODE)?;
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        private_files::write_private(path, &bytes)
    }

    /// The saved checkpoint; `Ok(None)` if there is none, or only an empty
    /// or torn one.
    pub fn load(path: &Path) -> Result<Option<Checkpoint>, String> {
        let checkpoint = state_file::read_json::<Checkpoint>(path, "pod checkpoint", MAX_BYTES)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let Some(checkpoint) = checkpoint else {
            return Ok(None);
        };
        if checkpoint.version != VERSION {
            return Err(format!(
                "{}: unknown version {}",
                path.display(),
                checkpoint.version
            ));
        }
        Ok(Some(checkpoint))
    }

    pub fn remove(path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl SavedContainer {
    fn restore(&self, c: &mut ContainerRecord, clocks: Clocks) {
        c.container_id = self.container_id.clone();
        c.image_id = self.image_id.clone();
        c.state = self.state.clone();
        c.last_state = self.last_state.clone();
        c.last_container_id = self.last_container_id.clone();
        c.restart_count = self.restart_count;
        c.runs = self.runs;
        c.attempts = self.attempts;
        c.finished = self.finished.map(|t| clocks.to_instant(t));
        c.stop_signal = self.stop_signal;
        c.crash = CrashBackoff::restored(
            self.crash
                .map(|(secs, at)| (Duration::from_secs(secs), clocks.to_instant(at))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::state_file::tests::logged;

    fn record() -> PodRecord {
        let mut crashed =
            ContainerRecord::new("app".into(), "busybox".into(), RunState::creating());
        let _ = crashed.begin_attempt();
        crashed.started(
            "pk-x-c-app-0".into(),
            "sha256:1".into(),
            jiff::Timestamp::UNIX_EPOCH,
        );
        let now = Instant::now();
        crashed.ended(RunState::exited(1, false, None, None), now);
        let _ = crashed.begin_attempt();
        crashed.started(
            "pk-x-c-app-1".into(),
            "sha256:1".into(),
            jiff::Timestamp::UNIX_EPOCH,
        );
        crashed.ended(RunState::exited(2, false, None, None), now);
        let _ = crashed.wait_crash_backoff("web_default(x)");
        PodRecord {
            sandbox_pid: Some(7),
            ..PodRecord::new("Always".into(), vec![], vec![crashed])
        }
    }

    #[test]
    fn a_checkpoint_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = Checkpoint::path(dir.path(), "uid-1").unwrap();
        let clocks = Clocks::now();
        let original = record();
        Checkpoint::of(&original, clocks).save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap().unwrap();

        let mut restored = original.clone();
        restored.containers[0] =
            ContainerRecord::new("app".into(), "busybox".into(), RunState::creating());
        loaded.restore(&mut restored, clocks);
        let (a, b) = (&original.containers[0], &restored.containers[0]);
        assert_eq!(b.restart_count, 1);
        assert_eq!(b.runs, 2);
        assert_eq!(b.state, a.state);
        assert_eq!(b.last_state, a.last_state);
        assert_eq!(b.last_container_id.as_deref(), Some("pk-x-c-app-1"));
        assert_eq!(b.crash.delay(), a.crash.delay());
        // Wall-clock round trips lose at most sub-microsecond precision.
        let drift = |x: Instant, y: Instant| x.max(y) - x.min(y);
        assert!(drift(b.finished.unwrap(), a.finished.unwrap()) < Duration::from_millis(1));
    }

    #[test]
    fn missing_empty_and_torn_files_are_none_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = Checkpoint::path(dir.path(), "uid-2").unwrap();
        assert_eq!(Checkpoint::load(&path), Ok(None));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for torn in [&b""[..], b"{\"version\":1,\"contai"] {
            std::fs::write(&path, torn).unwrap();
            let log = logged(|| assert_eq!(Checkpoint::load(&path), Ok(None)));
            assert!(log.contains("uid-2.json"), "{log}");
        }
        std::fs::write(&path, b"{\"version\":9,\"containers\":{}}").unwrap();
        assert!(Checkpoint::load(&path).unwrap_err().contains("uid-2.json"));
        Checkpoint::remove(&path).unwrap();
        Checkpoint::remove(&path).unwrap();
    }

    #[test]
    fn a_save_leaves_a_private_file_and_no_temporary() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = Checkpoint::path(dir.path(), "uid-3").unwrap();
        Checkpoint::of(&record(), Clocks::now())
            .save(&path)
            .unwrap();
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["uid-3.json"]);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_uid_that_is_not_a_plain_name_has_no_checkpoint_path() {
        for uid in ["/etc/passwd", "../x", "..", "", "a/b", "a\0"] {
            Checkpoint::path(Path::new("/state"), uid).unwrap_err();
        }
    }

    #[test]
    fn times_survive_the_conversion_and_future_times_become_now() {
        let clocks = Clocks::now();
        let past = clocks
            .now
            .checked_sub(Duration::from_secs(30))
            .unwrap_or(clocks.now);
        let back = clocks.to_instant(clocks.to_wall(past));
        assert!(back.max(past) - back.min(past) < Duration::from_millis(1));
        let future = clocks.wall + jiff::SignedDuration::from_secs(60);
        assert_eq!(clocks.to_instant(future), clocks.now);
    }
}
