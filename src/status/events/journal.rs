//! The events' file under the state directory, so history survives agent
//! restarts and reboots without a database.
//!
//! An append-only journal of JSON lines, each a whole `core/v1` Event; the
//! last line of a name wins. Appending never rewrites what is there, so a
//! SIGKILL can at worst tear the last line, which the next start drops and
//! truncates away. When the file holds many more lines than live events it
//! is rewritten whole: a new file, fsync, rename over the old one, fsync of
//! the directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Event;
use tracing::warn;

use crate::host::private_files;

/// Lines beyond the live events before the file is rewritten, on top of
/// as many lines as there are live events.
const SLACK_LINES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("event journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Journal {
    path: PathBuf,
    file: File,
    /// Lines in the file, live or superseded.
    lines: usize,
    /// A failed append may have left a torn line in the middle of the file:
    /// rewrite it before appending again.
    torn: bool,
}

impl Journal {
    /// Opens (creating) the journal at `path` and reads its events. Lines
    /// that are not events are skipped; a torn or invalid tail is cut off so
    /// that new lines start clean.
    pub fn open(path: &Path) -> Result<(Journal, HashMap<String, Event>), JournalError> {
        let io = |source| JournalError::Io {
            path: path.into(),
            source,
        };
        let file =
            private_files::open_append(path, private_files::PRIVATE_FILE_MODE).map_err(io)?;
        let mut reader = BufReader::new(&file);
        let mut events = HashMap::new();
        let mut line = Vec::new();
        let (mut offset, mut valid_end, mut lines) = (0u64, 0u64, 0usize);
        // Invalid lines followed by valid ones, and those since the last valid one.
        let (mut inner_invalid, mut trailing_invalid) = (0usize, 0usize);
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(io)?;
            if read == 0 {
                break;
            }
            offset += read as u64;
            let parsed = line
                .ends_with(b"\n")
                .then(|| serde_json::from_slice::<Event>(&line).ok())
                .flatten();
            match parsed.and_then(|e| Some((e.metadata.name.clone()?, e))) {
                Some((name, event)) => {
                    events.insert(name, event);
                    valid_end = offset;
                    lines += 1;
                    inner_invalid += std::mem::take(&mut trailing_invalid);
                }
                None => trailing_invalid += 1,
            }
        }
        if valid_end < offset {
            warn!(path = %path.display(), bytes = offset - valid_end, "dropping the torn end of the event journal");
            file.set_len(valid_end).map_err(io)?;
        }
        if inner_invalid > 0 {
            warn!(path = %path.display(), lines = inner_invalid, "skipped event journal lines that are not events");
        }
        let journal = Journal {
            path: path.into(),
            file,
            lines: lines + inner_invalid,
            // Invalid lines in the middle are rewritten away at once.
            torn: inner_invalid > 0,
        };
        Ok((journal, events))
    }

    /// Appends the current version of `events`, in one write.
    pub fn append(&mut self, events: &[Arc<Event>]) -> Result<(), JournalError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::new();
        for event in events {
            serialize_line(event, &mut batch);
        }
        match self.file.write_all(&batch) {
            Ok(()) => {
                self.lines += events.len();
                Ok(())
            }
            Err(source) => {
                self.torn = true;
                Err(JournalError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }

    /// Whether the file should be rewritten with only the `live` events.
    pub fn wants_rewrite(&self, live: usize) -> bool {
        self.torn || self.lines > 2 * live + SLACK_LINES
    }

    /// Replaces the file by one holding exactly `events`, atomically.
    pub fn rewrite<'a>(
        &mut self,
        events: impl Iterator<Item = &'a Arc<Event>>,
    ) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let mut content = Vec::new();
        let mut lines = 0;
        for event in events {
            serialize_line(event, &mut content);
            lines += 1;
        }
        private_files::write_private(&self.path, &content).map_err(io)?;
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        self.lines = lines;
        self.torn = false;
        Ok(())
    }
}

fn serialize_line(event: &Event, out: &mut Vec<u8>) {
    // An Event is plain data: serializing it to memory cannot fail.
    if serde_json::to_writer(&mut *out, event).is_ok() {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn event(name: &str, count: i32) -> Arc<Event> {
        Arc::new(Event {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            count: Some(count),
            ..Default::default()
        })
    }

    #[test]
    fn the_last_line_of_a_name_wins_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        {
            let (mut journal, events) = Journal::open(&path).unwrap();
            assert!(events.is_empty());
            journal.append(&[event("a", 1), event("b", 1)]).unwrap();
            journal.append(&[event("a", 2)]).unwrap();
        }
        let good_len = std::fs::metadata(&path).unwrap().len();
        // A write torn by SIGKILL or power loss.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"metadata":{"name":"c"},"cou"#).unwrap();
        drop(f);
        let (mut journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events["a"].count, Some(2));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        // New lines start clean after the cut.
        journal.append(&[event("c", 1)]).unwrap();
        let (_, events) = Journal::open(&path).unwrap();
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn garbage_in_the_middle_is_skipped_and_rewritten_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(
            &path,
            "{\"metadata\":{\"name\":\"a\"}}\n\0\0\0garbage\n{\"metadata\":{\"name\":\"b\"}}\n",
        )
        .unwrap();
        let (mut journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events.len(), 2);
        assert!(journal.wants_rewrite(2));
        let live: Vec<_> = events.into_values().map(Arc::new).collect();
        journal.rewrite(live.iter()).unwrap();
        assert!(!journal.wants_rewrite(2));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_journal_far_beyond_its_live_events_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        for i in 0..=(2 + SLACK_LINES) {
            journal.append(&[event("a", i as i32)]).unwrap();
        }
        assert!(journal.wants_rewrite(1));
        journal.rewrite([event("a", 7)].iter()).unwrap();
        journal.append(&[event("b", 1)]).unwrap();
        let (journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events["a"].count, Some(7));
        assert_eq!(events.len(), 2);
        assert!(!journal.wants_rewrite(2));
        assert!(!dir.path().join("events.jsonl.tmp").exists());
    }
}
