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
fn a_directory_loosened_later_is_not_read_and_pods_keep_running() {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    let set_mode =
        |mode| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mode(0o755);
    std::fs::write(dir.join("web.yaml"), POD.replace("NAME", "web")).unwrap();
    let (mut source, reader, mut events) = source_with_events(&dir);
    source.sync();

    // Anyone may now drop a manifest in: it is not run, web stays.
    set_mode(0o777);
    std::fs::write(dir.join("evil.yaml"), POD.replace("NAME", "evil")).unwrap();
    source.sync();
    source.sync();
    assert_eq!(names(&reader), ["web-node1"]);
    assert_eq!(reasons(&mut events), ["InsecureManifestDir"]);

    set_mode(0o755);
    source.sync();
    assert_eq!(names(&reader), ["evil-node1", "web-node1"]);
}

#[test]
fn a_symlinked_manifest_into_a_world_writable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let target = open.path().join("web.yaml");
    std::fs::write(&target, POD.replace("NAME", "web")).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("web.yaml")).unwrap();
    let (mut source, reader, mut events) = source_with_events(dir.path());
    source.sync();
    assert!(reader.snapshot().pods.is_empty());
    assert_eq!(reasons(&mut events), ["FailedParse"]);
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
