use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};

use super::*;

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
}

/// A directory `name` under `parent` with `mode`.
fn dir_with_mode(parent: &Path, name: &str, mode: u32) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    set_mode(&dir, mode);
    dir
}

fn manifest(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    set_mode(&path, 0o644);
    path
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    open_manifest(path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// The path of the object an insecure error names.
fn refused(result: Result<impl std::fmt::Debug, OpenError>) -> PathBuf {
    match result {
        Err(OpenError::Insecure(e)) => e.path,
        other => panic!("expected an insecure manifest, got {other:?}"),
    }
}

#[test]
fn root_owned_and_not_foreign_writable_passes() {
    assert_eq!(mode_reason(0o100644, 0, 0), None);
    assert_eq!(mode_reason(0o040755, 0, 0), None);
    assert_eq!(mode_reason(0o100600, 0, 0), None);
}

#[test]
fn group_or_other_write_is_refused() {
    assert_eq!(
        mode_reason(0o100664, 0, 0).as_deref(),
        Some("writable by group or others (mode 0664)")
    );
    assert!(mode_reason(0o100646, 0, 0).is_some());
    assert!(
        mode_reason(0o041777, 0, 0).is_some(),
        "sticky does not help"
    );
}

#[test]
fn another_owner_is_refused() {
    assert_eq!(
        mode_reason(0o100644, 1000, 0).as_deref(),
        Some("owned by uid 1000, not root")
    );
}

#[test]
fn the_agents_own_user_is_trusted() {
    assert_eq!(mode_reason(0o100644, 1000, 1000), None);
    assert!(mode_reason(0o100664, 1000, 1000).is_some());
    assert!(mode_reason(0o100644, 1001, 1000).is_some());
}

/// The file-system checks; the part about another owner needs root to
/// chown.
#[test]
fn checks_the_directory_and_its_manifests() {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    assert!(check_dir(&dir.path().join("missing")).is_ok());
    assert!(check_dir(dir.path()).is_ok());

    let web = manifest(dir.path(), "web.yaml", "");
    assert!(check_dir(dir.path()).is_ok());

    // An ignored entry is never read, so its mode does not matter.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "").unwrap();
    set_mode(&notes, 0o666);
    assert!(check_dir(dir.path()).is_ok());

    set_mode(&web, 0o666);
    let error = check_dir(dir.path()).unwrap_err();
    assert!(error.to_string().contains("mode 0666"), "{error}");
    assert_eq!(refused(check_dir(dir.path())), web);
    set_mode(&web, 0o644);

    if effective_uid() == 0 {
        std::os::unix::fs::chown(&web, Some(65534), None).unwrap();
        let error = check_dir(dir.path()).unwrap_err();
        assert!(error.to_string().contains("owned by uid 65534"), "{error}");
        std::os::unix::fs::chown(&web, Some(0), None).unwrap();
    }

    set_mode(dir.path(), 0o775);
    assert_eq!(refused(check_dir(dir.path())), dir.path());
}

#[test]
fn a_symlinked_manifest_into_a_world_writable_directory_is_refused() {
    let top = tempfile::tempdir().unwrap();
    let manifests = dir_with_mode(top.path(), "manifests", 0o755);
    let open = dir_with_mode(top.path(), "open", 0o777);
    let target = manifest(&open, "web.yaml", "kind: Pod");
    let link = manifests.join("web.yaml");
    symlink(&target, &link).unwrap();
    // The target itself is root's and 0644: only its directory is open.
    assert_eq!(refused(open_manifest(&link)), open);
    assert_eq!(refused(check_dir(&manifests)), open);

    // Sticky does not help the directory that holds the manifest.
    set_mode(&open, 0o1777);
    assert_eq!(refused(open_manifest(&link)), open);
}

#[test]
fn a_directory_on_the_way_is_checked_and_may_be_sticky() {
    let top = tempfile::tempdir().unwrap();
    let shared = dir_with_mode(top.path(), "shared", 0o777);
    let manifests = dir_with_mode(&shared, "manifests", 0o755);
    let web = manifest(&manifests, "web.yaml", "kind: Pod");
    // Anyone could rename `manifests` away and put their own in its place.
    assert_eq!(refused(open_manifest(&web)), shared);
    assert_eq!(refused(check_manifest_dir(&manifests)), shared);
    // Sticky and root's, like /tmp: nobody else can move root's entries.
    set_mode(&shared, 0o1777);
    assert_eq!(read(&web), "kind: Pod");
    assert!(check_manifest_dir(&manifests).is_ok());
}

#[test]
fn a_symlink_to_a_safe_place_is_followed() {
    let top = tempfile::tempdir().unwrap();
    let manifests = dir_with_mode(top.path(), "manifests", 0o755);
    let store = dir_with_mode(top.path(), "store", 0o755);
    manifest(&store, "web.yaml", "kind: Pod");
    let link = manifests.join("web.yaml");
    symlink("../store/./web.yaml", &link).unwrap();
    assert_eq!(read(&link), "kind: Pod");

    // A link whose target goes away is a manifest that went away.
    std::fs::remove_file(store.join("web.yaml")).unwrap();
    assert!(matches!(open_manifest(&link), Err(OpenError::Gone(_))));
}

#[test]
fn the_file_read_is_the_file_checked() {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let web = manifest(dir.path(), "web.yaml", "checked");
    let mut file = open_manifest(&web).unwrap();
    // Replaced after the check by one anybody could have written.
    let other = manifest(dir.path(), "other", "replaced");
    set_mode(&other, 0o666);
    std::fs::rename(&other, &web).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    assert_eq!(text, "checked");
    assert!(matches!(open_manifest(&web), Err(OpenError::Insecure(_))));
}

#[test]
fn a_symlink_loop_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let a = dir.path().join("a.yaml");
    symlink("b.yaml", &a).unwrap();
    symlink("a.yaml", dir.path().join("b.yaml")).unwrap();
    assert!(matches!(
        open_manifest(&a),
        Err(OpenError::Unreadable { .. })
    ));
}

#[test]
fn a_manifest_that_is_a_directory_is_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let sub = dir_with_mode(dir.path(), "sub.yaml", 0o755);
    assert!(matches!(
        open_manifest(&sub),
        Err(OpenError::Unreadable { .. })
    ));
}
