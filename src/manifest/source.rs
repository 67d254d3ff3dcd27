//! The manifest directory: lists, watches and re-reads it, and publishes the
//! resulting desired pods.
//!
//! Every trigger (start, an inotify event, the periodic re-list; see
//! [`crate::watch`]) does the same full pass over the directory. A file that stops parsing keeps its last good
//! pod running: only removing the file removes the pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::{info, warn};

use super::parse::{parse_manifest, MAX_MANIFEST_BYTES};
use super::permissions;
use crate::desired::{DesiredPod, DesiredSet, DesiredWriter};
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
        }
    }

    /// Reads the directory now and then whenever it changes, until the task
    /// is dropped.
    pub async fn run(mut self) {
        let mut watch = DirWatch::new(self.dir.clone(), self.resync, may_be_manifest);
        loop {
            watch.next(None).await;
            self.sync();
        }
    }

    /// One full pass: read every manifest, then publish the desired set.
    pub fn sync(&mut self) {
        let present = self.list_manifests();
        self.files.retain(|path, _| present.contains(path));
        for path in present {
            self.read_file(&path);
        }
        let set = self.desired_set();
        self.writer.replace(set);
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
        // Checked on every pass, not only at start-up: a manifest someone
        // else can write would let them run privileged containers.
        if let Some(reason) = permissions::insecure_reason(path) {
            let message =
                format!("refused: {reason}; manifests must be root's and writable only by root");
            return self.set_error(path, Vec::new(), "FailedParse", message);
        }
        let content = match read_limited(path) {
            Ok(content) => content,
            // Removed since the listing: the same as not listed, no error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.files.remove(path);
                return;
            }
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
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    let cannot_read =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot_read)?;
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
mod tests {
    use super::*;
    use crate::desired;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: NAME\nspec:\n  containers:\n  - name: c\n    image: busybox:1\n";

    fn source(dir: &Path) -> (ManifestSource, desired::DesiredReader) {
        let (source, reader, _events) = source_with_events(dir);
        (source, reader)
    }

    fn source_with_events(
        dir: &Path,
    ) -> (
        ManifestSource,
        desired::DesiredReader,
        tokio::sync::mpsc::Receiver<crate::status::events::Occurrence>,
    ) {
        let (writer, reader) = desired::channel();
        let (recorder, events) = crate::status::events::test_recorder();
        let source = ManifestSource::new(
            dir.into(),
            "node1".into(),
            Duration::from_secs(20),
            writer,
            recorder,
        );
        (source, reader, events)
    }

    /// The reasons of the events recorded since the last call.
    fn reasons(
        events: &mut tokio::sync::mpsc::Receiver<crate::status::events::Occurrence>,
    ) -> Vec<String> {
        std::iter::from_fn(|| events.try_recv().ok())
            .map(|o| o.reason)
            .collect()
    }

    fn names(reader: &desired::DesiredReader) -> Vec<String> {
        let mut names: Vec<_> = reader
            .snapshot()
            .pods
            .values()
            .map(|p| p.name().to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn only_manifest_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, name: &str| {
            std::fs::write(dir.path().join(file), POD.replace("NAME", name)).unwrap()
        };
        write("a.yaml", "a");
        write("b.yml", "b");
        write("c.json.yaml", "c");
        write("a.yaml~", "backup");
        write("a.yaml.bak", "bak");
        write(".hidden.yaml", "hidden");
        write("notes.txt", "txt");
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let (mut source, reader) = source(dir.path());
        source.sync();
        assert_eq!(names(&reader), ["a-node1", "b-node1", "c-node1"]);
    }

    #[test]
    fn a_broken_edit_keeps_the_last_good_pod() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        std::fs::write(&path, POD.replace("NAME", "web")).unwrap();
        let (mut source, reader) = source(dir.path());
        source.sync();
        let uid = reader.snapshot().pods.keys().next().cloned().unwrap();
        std::fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata: [").unwrap();
        source.sync();
        assert_eq!(reader.snapshot().pods.keys().next(), Some(&uid));
        std::fs::write(
            &path,
            POD.replace("NAME", "web").replace("busybox:1", "busybox:2"),
        )
        .unwrap();
        source.sync();
        let snapshot = reader.snapshot();
        assert_eq!(snapshot.pods.len(), 1);
        assert_ne!(snapshot.pods.keys().next(), Some(&uid));
    }

    #[test]
    fn removing_the_file_removes_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        std::fs::write(&path, POD.replace("NAME", "web")).unwrap();
        let (mut source, reader) = source(dir.path());
        source.sync();
        std::fs::remove_file(&path).unwrap();
        source.sync();
        assert!(reader.snapshot().pods.is_empty());
        assert!(reader.snapshot().synced);
    }

    #[test]
    fn the_first_file_wins_a_duplicate_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), POD.replace("NAME", "web")).unwrap();
        let second = POD.replace("NAME", "web").replace("busybox:1", "busybox:2");
        std::fs::write(dir.path().join("b.yaml"), second).unwrap();
        let (mut source, reader) = source(dir.path());
        source.sync();
        let snapshot = reader.snapshot();
        assert_eq!(snapshot.pods.len(), 1);
        let pod = snapshot.pods.values().next().unwrap();
        assert!(pod.source.ends_with("a.yaml"));
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = POD.replace("NAME", "big");
        text.push_str(&format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES as usize)));
        std::fs::write(dir.path().join("big.yaml"), text).unwrap();
        let (mut source, reader) = source(dir.path());
        source.sync();
        assert!(reader.snapshot().pods.is_empty());
    }

    #[test]
    fn a_missing_directory_is_an_empty_set() {
        let (mut source, reader) = source(Path::new("/nonexistent/podkeeper-manifests"));
        source.sync();
        assert!(reader.snapshot().synced);
        assert!(reader.snapshot().pods.is_empty());
    }

    #[test]
    fn ignored_entries_are_remembered_only_while_present() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("web.yaml~");
        std::fs::write(&backup, POD.replace("NAME", "web")).unwrap();
        let (mut source, _reader) = source(dir.path());
        source.sync();
        source.sync();
        assert!(source.ignored.contains(&backup));
        std::fs::remove_file(&backup).unwrap();
        source.sync();
        assert!(source.ignored.is_empty());
    }

    #[test]
    fn a_broken_file_is_reported_once_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        std::fs::write(&path, POD.replace("NAME", "web")).unwrap();
        let (mut source, _reader, mut events) = source_with_events(dir.path());
        source.sync();
        std::fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata: [").unwrap();
        source.sync();
        source.sync();
        assert_eq!(reasons(&mut events), ["FailedParse"]);
        std::fs::write(&path, POD.replace("NAME", "web")).unwrap();
        source.sync();
        assert_eq!(reasons(&mut events), Vec::<String>::new());
    }

    #[test]
    fn a_manifest_others_can_write_is_refused_and_the_last_good_pod_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        let set_mode =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::write(&path, POD.replace("NAME", "web")).unwrap();
        set_mode(0o644);
        let (mut source, reader, mut events) = source_with_events(dir.path());
        source.sync();
        let uid = reader.snapshot().pods.keys().next().cloned().unwrap();

        // Loosened and edited: the edit is not read, the running pod stays.
        set_mode(0o666);
        std::fs::write(&path, POD.replace("NAME", "other")).unwrap();
        source.sync();
        assert_eq!(reader.snapshot().pods.keys().next(), Some(&uid));
        assert_eq!(reasons(&mut events), ["FailedParse"]);

        set_mode(0o644);
        source.sync();
        assert_eq!(names(&reader), ["other-node1"]);

        let fresh = dir.path().join("fresh.yaml");
        std::fs::write(&fresh, POD.replace("NAME", "fresh")).unwrap();
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o646)).unwrap();
        source.sync();
        assert_eq!(names(&reader), ["other-node1"]);
    }

    #[test]
    fn a_duplicate_is_reported_once_and_again_after_the_conflict_went_away() {
        let dir = tempfile::tempdir().unwrap();
        let second = dir.path().join("b.yaml");
        std::fs::write(dir.path().join("a.yaml"), POD.replace("NAME", "web")).unwrap();
        let other = POD.replace("NAME", "web").replace("busybox:1", "busybox:2");
        std::fs::write(&second, &other).unwrap();
        let (mut source, reader, mut events) = source_with_events(dir.path());
        source.sync();
        source.sync();
        assert_eq!(reasons(&mut events), ["FailedValidation"]);
        std::fs::write(&second, POD.replace("NAME", "other")).unwrap();
        source.sync();
        assert_eq!(names(&reader), ["other-node1", "web-node1"]);
        std::fs::write(&second, &other).unwrap();
        source.sync();
        assert_eq!(reasons(&mut events), ["FailedValidation"]);
        assert_eq!(names(&reader), ["web-node1"]);
    }

    #[test]
    fn a_refused_value_is_a_failed_validation_warning() {
        let dir = tempfile::tempdir().unwrap();
        let text = POD
            .replace("NAME", "web")
            .replace("  name: web\n", "  name: web\n  uid: /var/lib\n");
        std::fs::write(dir.path().join("web.yaml"), text).unwrap();
        let (mut source, reader, mut events) = source_with_events(dir.path());
        source.sync();
        assert!(reader.snapshot().pods.is_empty());
        let event = events.try_recv().unwrap();
        assert_eq!(event.reason, "FailedValidation");
        let prefix = format!("{}: metadata.uid: ", dir.path().join("web.yaml").display());
        assert!(event.message.starts_with(&prefix), "{}", event.message);
    }

    #[test]
    fn the_first_file_wins_a_duplicate_uid() {
        let dir = tempfile::tempdir().unwrap();
        let with_uid = |name: &str| {
            POD.replace("NAME", name).replace(
                &format!("  name: {name}\n"),
                &format!("  name: {name}\n  uid: 3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d\n"),
            )
        };
        std::fs::write(dir.path().join("a.yaml"), with_uid("web")).unwrap();
        std::fs::write(dir.path().join("b.yaml"), with_uid("other")).unwrap();
        let (mut source, reader, mut events) = source_with_events(dir.path());
        source.sync();
        assert_eq!(names(&reader), ["web-node1"]);
        let event = events.try_recv().unwrap();
        assert_eq!(event.reason, "FailedValidation");
        assert!(event.message.contains("duplicate uid"), "{}", event.message);
    }

    #[test]
    fn a_file_removed_between_listing_and_reading_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        std::fs::write(&path, POD.replace("NAME", "web")).unwrap();
        let (mut source, reader, mut events) = source_with_events(dir.path());
        source.sync();
        std::fs::remove_file(&path).unwrap();
        source.read_file(&path);
        assert!(source.files.is_empty());
        assert_eq!(reasons(&mut events), Vec::<String>::new());
        source.sync();
        assert!(reader.snapshot().pods.is_empty());
    }
}
