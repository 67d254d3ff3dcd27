//! The air-gap images directory: archives an operator drops there are
//! imported at start and whenever they appear, without a restart.
//!
//! What was imported is remembered in the state directory by file name,
//! size, modification time and content hash, so a restart does not redo
//! imports, a re-copied identical archive is recognised by its hash, and a
//! broken (corrupt or half-copied) archive is reported once and retried only
//! when the file changes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{info, warn};

use super::service::ImageService;
use crate::host::{private_files, state_file};
use crate::status::events::{EventType, ObjectRef, Recorder};
use crate::watch::DirWatch;

/// A file modified more recently than this may still be being copied.
const SETTLING: Duration = Duration::from_secs(2);

/// Far above the records of any images directory (~300 bytes an archive).
const MAX_RECORDS_BYTES: u64 = 16 << 20;

/// What is known about one archive file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ArchiveRecord {
    size: u64,
    modified_ns: u128,
    sha256: String,
    images: Vec<String>,
    /// Why the import failed; retried when the file changes.
    error: Option<String>,
}

pub struct ImportDir {
    dir: PathBuf,
    records_file: PathBuf,
    resync: Duration,
    images: Arc<ImageService>,
    recorder: Recorder,
    records: BTreeMap<String, ArchiveRecord>,
    /// Unchanged archives already reported as skipped in this run.
    reported: std::collections::HashSet<String>,
}

impl ImportDir {
    pub fn new(
        dir: PathBuf,
        state_dir: &Path,
        resync: Duration,
        images: Arc<ImageService>,
        recorder: Recorder,
    ) -> ImportDir {
        let records_file = state_dir.join("imported-archives.json");
        let records = load_records(&records_file);
        ImportDir {
            dir,
            records_file,
            resync,
            images,
            recorder,
            records,
            reported: Default::default(),
        }
    }

    /// Imports what is there now, then whatever appears, until dropped.
    pub async fn run(mut self) {
        let mut watch = DirWatch::new(self.dir.clone(), self.resync, |path| {
            archive_name(path).is_some()
        });
        let mut deadline = None;
        loop {
            watch.next(deadline).await;
            deadline = self.scan().await;
        }
    }

    /// One pass over the directory; returns when to look again for files
    /// that were still being written.
    pub async fn scan(&mut self) -> Option<Instant> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return None;
        };
        let mut present = Vec::new();
        let mut again: Option<Instant> = None;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = archive_name(&path) else {
                continue;
            };
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            present.push(name.clone());
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let modified_ns = modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            if let Some(record) = self.records.get(&name) {
                if record.size == meta.len() && record.modified_ns == modified_ns {
                    if self.reported.insert(name.clone()) {
                        match &record.error {
                            None => {
                                info!(archive = %path.display(), images = ?record.images, "archive already imported; skipped")
                            }
                            Some(e) => {
                                info!(archive = %path.display(), error = %e, "archive failed to import before and is unchanged; skipped")
                            }
                        }
                    }
                    continue;
                }
            }
            let age = SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default();
            if age < SETTLING {
                let at = Instant::now() + (SETTLING - age);
                again = Some(again.map_or(at, |a| a.min(at)));
                continue;
            }
            self.consider(&path, name, meta.len(), modified_ns).await;
        }
        let before = self.records.len();
        self.records.retain(|name, _| present.contains(name));
        if self.records.len() != before {
            self.save().await;
        }
        again
    }

    async fn consider(&mut self, path: &Path, name: String, size: u64, modified_ns: u128) {
        let hash_path = path.to_path_buf();
        let sha256 = match tokio::task::spawn_blocking(move || file_sha256(&hash_path)).await {
            Ok(Ok(sha256)) => sha256,
            Ok(Err(e)) => {
                warn!(archive = %path.display(), error = %e, "cannot read image archive");
                return;
            }
            Err(_) => return,
        };
        if let Some(record) = self.records.get_mut(&name) {
            if record.sha256 == sha256 && record.error.is_none() {
                info!(archive = %path.display(), "archive already imported (same content); skipped");
                record.size = size;
                record.modified_ns = modified_ns;
                self.save().await;
                return;
            }
        }
        let started = std::time::Instant::now();
        let (images, error) = match self.images.import_archive(path).await {
            Ok(images) => {
                info!(archive = %path.display(), images = ?images, "imported image archive in {:?}", started.elapsed());
                self.recorder.record(
                    ObjectRef::image_archive(path),
                    EventType::Normal,
                    "Imported",
                    format!("Imported {} from {}", images.join(", "), path.display()),
                );
                (images, None)
            }
            Err(e) => {
                warn!(archive = %path.display(), error = %e, "cannot import image archive; it is retried when the file changes");
                self.recorder.record(
                    ObjectRef::image_archive(path),
                    EventType::Warning,
                    "ImportFailed",
                    format!("{}: {e}", path.display()),
                );
                (Vec::new(), Some(e.to_string()))
            }
        };
        self.records.insert(
            name,
            ArchiveRecord {
                size,
                modified_ns,
                sha256,
                images,
                error,
            },
        );
        self.save().await;
    }

    /// Writes the records crash-safe, on a blocking thread (fsyncs): a
    /// crash or a power cut leaves the old or the new file.
    async fn save(&self) {
        let path = self.records_file.clone();
        let result = match serde_json::to_vec_pretty(&self.records) {
            Ok(bytes) => {
                tokio::task::spawn_blocking(move || private_files::write_private(&path, &bytes))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = result {
            warn!(file = %self.records_file.display(), error = %e, "cannot save the imported-archive records");
        }
    }
}

/// The records kept by an earlier run. An empty, torn or unreadable file
/// (logged) counts as none: archives are hashed again and an image already
/// there is recognised by containerd, so nothing is lost but time.
fn load_records(path: &Path) -> BTreeMap<String, ArchiveRecord> {
    state_file::read_json(path, "imported-archive records", MAX_RECORDS_BYTES)
        .unwrap_or_else(|e| {
            warn!(file = %path.display(), error = %e, "cannot read the imported-archive records; importing again");
            None
        })
        .unwrap_or_default()
}

/// The file name if `path` may be an archive: not a dot-file and not a
/// download or editor leftover.
fn archive_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?.to_string();
    let temporary = [".tmp", ".part", ".partial", ".crdownload", "~"];
    if name.starts_with('.') || temporary.iter().any(|s| name.ends_with(s)) {
        return None;
    }
    Some(name)
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(super::digest::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::state_file::tests::logged;

    #[test]
    fn temporary_and_hidden_files_are_not_archives() {
        for name in [
            ".busybox.tar",
            "a.tar.part",
            "a.tar.tmp",
            "a.tar~",
            "a.crdownload",
        ] {
            assert_eq!(archive_name(Path::new(name)), None, "{name}");
        }
        for name in ["busybox.tar", "app.tar.gz", "app.oci", "app.tar.zst"] {
            assert_eq!(archive_name(Path::new(name)).as_deref(), Some(name));
        }
    }

    #[test]
    fn empty_or_torn_records_are_none_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("imported-archives.json");
        for torn in ["", "{\"busybox.tar\":{\"size\":12,\"modif"] {
            std::fs::write(&path, torn).unwrap();
            let log = logged(|| assert!(load_records(&path).is_empty()));
            assert!(log.contains("imported-archives.json"), "{log}");
        }
        let kept = r#"{"a.tar":{"size":1,"modified_ns":2,"sha256":"x","images":[],"error":null}}"#;
        std::fs::write(&path, kept).unwrap();
        assert_eq!(load_records(&path)["a.tar"].size, 1);
    }

    #[test]
    fn file_hashes_are_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            file_sha256(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
