//! The manifest directory: lists, watches and re-reads it, and publishes the
//! resulting desired pods.
//!
//! Every trigger (start, an inotify event, the periodic re-list; see
//! [`crate::watch`]) does the same full pass over the directory. A file that stops parsing keeps its last good
//! pod running: only removing the file removes the pod. A pass first checks
//! the directory's permissions (see [`permissions`]): while anyone but root
//! could write it, nothing in it is read and every pod keeps its last good
//! version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::{info, warn};

use super::parse::{parse_manifest, MAX_MANIFEST_BYTES};
use super::permissions;
use crate::desired::{DesiredPod, DesiredSet, DesiredWriter};
use crate::host::blocking;
use crate::status::events::{EventType, ObjectRef, Recorder};
use crate::watch::DirWatch;

/// What the source remembers about one manifest file between passes.
#[derive(Default)]
struct FileRecord {
    /// The bytes last read, to skip re-parsing unchanged files.
    content: Vec<u8>,
    /// The last version that parsed; keeps running while the file is broken.
    last_good: Option<Arc<DesiredPod>>,
    /// The error of the current content, if it does not parse.
    error: Option<String>,
}

pub struct ManifestSource {
    dir: PathBuf,
    node_name: String,
    resync: Duration,
    writer: DesiredWriter,
    recorder: Recorder,
    files: BTreeMap<PathBuf, FileRecord>,
    /// Ignored entries present at the last pass, already logged: each is
    /// logged once while it stays (not on every re-list), and forgotten
    /// when it goes so editors' ever-new temporary names do not pile up.
    ignored: HashSet<PathBuf>,
    /// Files whose pod lost a duplicate name at the last pass, already
    /// reported: reported again only after the conflict went away.
    duplicates: HashSet<PathBuf>,
    dir_missing_reported: bool,
    /// Why the directory was refused at the last pass, already reported.
    dir_insecure: Option<String>,
}

impl ManifestSource {
    pub fn new(
        dir: PathBuf,
        node_name: String,
        resync: Duration,
        writer: DesiredWriter,
        recorder: Recorder,
    ) -> Self {
        ManifestSource {
            dir,
            node_name,
            resync,
            writer,
            recorder,
            files: BTreeMap::new(),
            ignored: HashSet::new(),
            duplicates: HashSet::new(),
            dir_missing_reported: false,
            dir_insecure: None,
        }
    }

    /// Reads the directory now and then whenever it changes, until the task
    /// is dropped. Each pass (listing, permission checks, reads) runs on a
    /// blocking thread: a slow or huge directory never stalls the runtime.
    pub async fn run(mut self) {
        let mut watch = DirWatch::new(self.dir.clone(), self.resync, may_be_manifest);
        loop {
            watch.next(None).await;
            let pass = blocking::unblock(move || {
                self.sync();
                Ok(self)
            });
            // Only a runtime shutting down fails it (a panic is resumed).
            let Ok(source) = pass.await else {
                return;
            };
            self = source;
        }
    }

    /// One full pass: read every manifest, then publish the desired set.
    pub fn sync(&mut self) {
        if !self.dir_is_secure() {
            let set = self.desired_set();
            return self.writer.replace(set);
        }
        let present = self.list_manifests();
        self.files.retain(|path, _| present.contains(path));
        for path in present {
            self.read_file(&path);
        }
        let set = self.desired_set();
        self.writer.replace(set);
    }

    /// Whether the directory, and every directory on the way to it, can be
    /// written only by root; an `InsecureManifestDir` warning when it stops
    /// being so. A missing directory is left to the listing to report.
    fn dir_is_secure(&mut self) -> bool {
        let error = match permissions::check_manifest_dir(&self.dir) {
            Ok(()) | Err(permissions::OpenError::Gone(_)) => {
                if self.dir_insecure.take().is_some() {
                    info!(dir = %self.dir.display(), "the manifest directory is writable only by root again; reading it");
                }
                return true;
            }
            Err(e) => e.to_string(),
        };
        if self.dir_insecure.as_deref() != Some(error.as_str()) {
            warn!(dir = %self.dir.display(), error = %error, "not reading the manifest directory; pods keep their last good version");
            self.recorder.record(
                ObjectRef::manifest_file(&self.dir),
                EventType::Warning,
                "InsecureManifestDir",
                format!("{error}; manifests are not read until this is fixed, pods keep their last good version"),
            );
            self.dir_insecure = Some(error);
        }
        false
    }

    /// Paths of the files that are manifests, logging each ignored entry once.
    fn list_manifests(&mut self) -> Vec<PathBuf> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                self.dir_missing_reported = false;
                entries
            }
            Err(e) => {
                if !self.dir_missing_reported {
                    warn!(dir = %self.dir.display(), error = %e, "cannot read the manifest directory; running no pods from it");
                    self.dir_missing_reported = true;
                }
                return Vec::new();
            }
        };
        let mut manifests = Vec::new();
        let mut ignored = HashSet::new();
        for entry in entries.flatten() {
            let path = entry.path();
            match classify(&path) {
                Entry::Manifest => manifests.push(path),
                Entry::Ignored(why) => {
                    if !self.ignored.contains(&path) {
                        info!(file = %path.display(), "ignoring {why}");
                    }
                    ignored.insert(path);
                }
            }
        }
        self.ignored = ignored;
        manifests.sort();
        manifests
    }

    fn read_file(&mut self, path: &Path) {
        // Checked on every pass, not only at start-up, on the file that is
        // then read: a manifest someone else can write would let them run
        // privileged containers.
        let file = match permissions::open_manifest(path) {
            Ok(file) => file,
            // Removed since the listing: the same as not listed, no error.
            Err(permissions::OpenError::Gone(_)) => {
                self.files.remove(path);
                return;
            }
            Err(e) => {
                let message = format!("refused: {e}");
                return self.set_error(path, Vec::new(), "FailedParse", message);
            }
        };
        let content = match read_limited(file) {
            Ok(content) => content,
            Err(e) => return self.set_error(path, Vec::new(), "FailedParse", e.to_string()),
        };
        let record = self.files.entry(path.to_path_buf()).or_default();
        if record.content == content && (record.last_good.is_some() || record.error.is_some()) {
            return;
        }
        match parse_manifest(&content, path, &self.node_name) {
            Ok(mut pod) => {
                record.content = content;
                record.error = None;
                if record.last_good.as_ref().map(|p| p.uid()) == Some(pod.uid()) {
                    // A formatting-only edit: the same pod, first seen earlier.
                    return;
                }
                let now = jiff::Timestamp::now();
                pod.pod.metadata.creation_timestamp = Some(Time(now));
                pod.pod
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert("kubernetes.io/config.seen".into(), now.to_string());
                info!(file = %path.display(), pod = %pod.name(), namespace = %pod.namespace(), uid = %pod.uid(), "manifest read");
                record.last_good = Some(Arc::new(pod));
            }
            Err(e) => self.set_error(path, content, e.reason, e.to_string()),
        }
    }

    /// Records that `path` does not currently give a pod, with a Warning
    /// event of `reason`; the last good version, if any, stays.
    fn set_error(&mut self, path: &Path, content: Vec<u8>, reason: &'static str, message: String) {
        let record = self.files.entry(path.to_path_buf()).or_default();
        // New broken content with the same error is recorded again (the
        // event log counts it); only re-reading the same bytes is not.
        let repeated =
            record.error.as_deref() == Some(message.as_str()) && record.content == content;
        record.content = content;
        if repeated {
            return;
        }
        let keeping = record.last_good.as_ref().map(|p| p.name().to_string());
        match &keeping {
            Some(pod) => {
                warn!(file = %path.display(), error = %message, "manifest is invalid; pod {pod} keeps running from its last good version")
            }
            None => {
                warn!(file = %path.display(), error = %message, "manifest is invalid; no pod started from it")
            }
        }
        let note = keeping
            .map(|pod| format!(" (pod {pod} keeps its last good version)"))
            .unwrap_or_default();
        self.recorder.record(
            ObjectRef::manifest_file(path),
            EventType::Warning,
            reason,
            format!("{}: {message}{note}", path.display()),
        );
        record.error = Some(message);
    }

    /// The pods to run: one per file, the first file (by name) winning when
    /// two define the same namespace/name, as the kubelet does, or the same
    /// UID (a given `metadata.uid` copied into two files: the pods would
    /// share one identity, and with it their directories and containers).
    fn desired_set(&mut self) -> DesiredSet {
        let mut by_name: HashMap<(String, String), PathBuf> = HashMap::new();
        let mut by_uid: HashMap<&str, &PathBuf> = HashMap::new();
        let mut duplicates = HashSet::new();
        let mut set = DesiredSet::new();
        for (path, record) in &self.files {
            let Some(pod) = &record.last_good else {
                continue;
            };
            let key = (pod.namespace().to_string(), pod.name().to_string());
            let duplicate = match (by_name.get(&key), by_uid.get(pod.uid())) {
                (Some(first), _) => Some(("pod name", pod.name(), first)),
                (None, Some(first)) => Some(("uid", pod.uid(), *first)),
                (None, None) => None,
            };
            if let Some((what, value, first)) = duplicate {
                duplicates.insert(path.clone());
                if !self.duplicates.contains(path) {
                    let message = format!(
                        "Error validating pod {} from {} due to duplicate {what} {value:?}, ignoring (already defined by {})",
                        pod.name(), path.display(), first.display()
                    );
                    warn!(file = %path.display(), "{message}");
                    self.recorder.record(
                        ObjectRef::pod(pod),
                        EventType::Warning,
                        "FailedValidation",
                        message,
                    );
                }
                continue;
            }
            by_name.insert(key, path.clone());
            by_uid.insert(pod.uid(), path);
            set.insert(pod.uid().to_string(), pod.clone());
        }
        self.duplicates = duplicates;
        set
    }
}

pub(super) enum Entry {
    Manifest,
    Ignored(&'static str),
}

/// Only regular `.yaml`, `.yml` and `.json` files that are not dot-files are
/// manifests. The kubelet reads every non-dot file, so an editor's
/// `web.yaml~` or `web.yaml.bak` silently overrides the real manifest
/// (kubernetes#136962); podkeeper does not.
pub(super) fn classify(path: &Path) -> Entry {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.starts_with('.') {
        return Entry::Ignored("a dot-file");
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Entry::Ignored("an entry that cannot be read");
    };
    if meta.is_dir() {
        return Entry::Ignored("a subdirectory (manifests are not read recursively)");
    }
    if !meta.is_file() {
        return Entry::Ignored("a file that is not a regular file");
    }
    if has_manifest_extension(path) {
        Entry::Manifest
    } else {
        Entry::Ignored("a file not ending in .yaml, .yml or .json")
    }
}

fn has_manifest_extension(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Whether `path` may be a manifest by its name alone (it may be gone):
/// what the directory watch waits to see written whole.
fn may_be_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_none_or(|n| n.to_string_lossy().starts_with('.'));
    !hidden && has_manifest_extension(path)
}

/// Reads at most the kubelet's manifest size limit; a larger file is an
/// `InvalidData` error whose text is the one reported.
fn read_limited(file: File) -> std::io::Result<Vec<u8>> {
    let cannot_read =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot read: {e}"));
    let mut content = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(cannot_read)?;
    if content.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than the {} MiB manifest limit",
                MAX_MANIFEST_BYTES >> 20
            ),
        ));
    }
    Ok(content)
}

#[cfg(test)]
mod tests;
