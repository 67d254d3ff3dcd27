//! What `prepare` creates under the volume root: emptyDir directories
//! (tmpfs for `medium: Memory`) and downwardAPI files, undone on failure.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;

use crate::host::{remove_tree, SafePath};
use crate::runtime::quantity;

use super::{
    Plan, PreparedVolume, VolumeError, VolumeKind, DOWNWARD_API, DOWNWARD_DIR_MODE, EMPTY_DIR,
    EMPTY_DIR_MODE, ROOT_MODE,
};

pub(super) fn plan_empty_dir(
    source: &EmptyDirVolumeSource,
    at: &dyn Fn(&str) -> String,
) -> Result<Plan, VolumeError> {
    match source.medium.as_deref().unwrap_or("") {
        "" => Ok(Plan::EmptyDir { tmpfs: None }),
        "Memory" => {
            let size = match &source.size_limit {
                None => None,
                Some(quantity) => {
                    let field = at("emptyDir.sizeLimit");
                    let parsed = quantity::parse(quantity.0.trim())
                        .map_err(|e| VolumeError::new(&field, format!("{:?}: {e}", quantity.0)))?;
                    if parsed.is_negative() {
                        return Err(VolumeError::new(field, "must not be negative"));
                    }
                    // Like the kubelet, a zero limit means "no limit".
                    u64::try_from(parsed.value())
                        .ok()
                        .filter(|bytes| *bytes > 0)
                }
            };
            Ok(Plan::EmptyDir { tmpfs: Some(size) })
        }
        medium if medium.starts_with("HugePages") => Err(VolumeError::new(
            at("emptyDir.medium"),
            format!("medium {medium} is not supported by podkeeper"),
        )),
        medium => Err(VolumeError::new(
            at("emptyDir.medium"),
            format!("unknown medium {medium:?}; expected \"\" or \"Memory\""),
        )),
    }
}

/// Things `prepare` created under the volume root, undone in reverse order
/// when a later step fails.
#[derive(Default)]
pub(super) struct Undo {
    steps: Vec<UndoStep>,
}

enum UndoStep {
    /// A directory tree that did not exist before this call.
    Remove(PathBuf),
    /// A tmpfs this call mounted.
    Unmount(PathBuf),
}

impl Undo {
    pub(super) fn run(self) {
        for step in self.steps.into_iter().rev() {
            let result = match &step {
                UndoStep::Remove(path) => remove_created(path),
                UndoStep::Unmount(path) => unmount(path, 0),
            };
            if let Err(e) = result {
                let path = match &step {
                    UndoStep::Remove(p) | UndoStep::Unmount(p) => p,
                };
                tracing::warn!(path = %path.display(), "undoing a failed volume setup: {e}");
            }
        }
    }
}

/// Removes a directory this call created, by descriptor as every tree
/// under the volume root is removed: a container may have written to it.
fn remove_created(path: &Path) -> io::Result<()> {
    let name = path.file_name().and_then(|name| name.to_str());
    let (Some(parent), Some(name)) = (path.parent(), name) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    let dir = SafePath::base(parent)
        .join(&[name])
        .map_err(io::Error::other)?;
    remove_tree(&dir)
}

/// Creates `dir` with `mode` (exactly, whatever the umask) and its missing
/// parents with `parent_mode`, recording the topmost directory it created in
/// `undo`. An existing `dir` keeps its mode unless its permission bits
/// differ (a tmpfs root keeps its sticky bit, as with the kubelet).
fn create_dir(dir: &Path, mode: u32, parent_mode: u32, undo: &mut Undo) -> io::Result<()> {
    let mut missing = None;
    for ancestor in dir.ancestors() {
        match fs::symlink_metadata(ancestor) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = Some(ancestor),
            Err(e) => return Err(e),
        }
    }
    // Recorded first, so a failure halfway still removes what was made.
    if let Some(top) = missing {
        undo.steps.push(UndoStep::Remove(top.to_path_buf()));
    }
    if let Some(parent) = dir.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(parent_mode)
            .create(parent)?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    if fs::metadata(dir)?.mode() & 0o777 != mode {
        fs::set_permissions(dir, Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Creates the volume root with the kubelet's pod volume directory mode
/// (only root looks inside; containers see their volumes through bind
/// mounts). Only the root itself is undone on failure: its parents (the
/// pod's directory, the agent's `pods` directory) may be shared with other
/// parts of the agent, or other pods' workers, by then.
fn create_root(root: &Path, undo: &mut Undo) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            undo.steps.push(UndoStep::Remove(root.to_path_buf()));
        }
        Err(e) => return Err(e),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(ROOT_MODE)
        .create(root)?;
    if fs::metadata(root)?.mode() & 0o777 != ROOT_MODE {
        fs::set_permissions(root, Permissions::from_mode(ROOT_MODE))?;
    }
    Ok(())
}

pub(super) fn prepare_local(
    plans: &[(&str, Plan)],
    root: &Path,
    undo: &mut Undo,
) -> Result<BTreeMap<String, PreparedVolume>, VolumeError> {
    let mut prepared = BTreeMap::new();
    let local = plans
        .iter()
        .any(|(_, plan)| !matches!(plan, Plan::HostPath { .. }));
    if local {
        create_root(root, undo).map_err(|e| {
            VolumeError::new("spec.volumes", format!("creating {}: {e}", root.display()))
        })?;
    }
    for (name, plan) in plans {
        let field = format!("spec.volumes[{name}]");
        let error = |what: &str, path: &Path, e: io::Error| {
            VolumeError::new(&field, format!("{what} {}: {e}", path.display()))
        };
        let volume = match plan {
            Plan::HostPath { path, typ } => PreparedVolume {
                path: path.clone(),
                read_only: false,
                kind: VolumeKind::HostPath(*typ),
            },
            Plan::EmptyDir { tmpfs } => {
                let dir = volume_dir(root, EMPTY_DIR, name, &field)?;
                create_dir(&dir, EMPTY_DIR_MODE, ROOT_MODE, undo)
                    .map_err(|e| error("creating", &dir, e))?;
                if let Some(size) = tmpfs {
                    if mount_tmpfs_once(&dir, *size)
                        .map_err(|e| error("mounting a tmpfs on", &dir, e))?
                    {
                        undo.steps.push(UndoStep::Unmount(dir.clone()));
                    }
                }
                PreparedVolume {
                    path: dir,
                    read_only: false,
                    kind: if tmpfs.is_some() {
                        VolumeKind::MemoryEmptyDir
                    } else {
                        VolumeKind::EmptyDir
                    },
                }
            }
            Plan::DownwardApi { files } => {
                let dir = volume_dir(root, DOWNWARD_API, name, &field)?;
                create_dir(&dir, DOWNWARD_DIR_MODE, ROOT_MODE, undo)
                    .map_err(|e| error("creating", &dir, e))?;
                for file in files {
                    let path = dir.join(&file.path);
                    write_file(&dir, &file.path, &file.content, file.mode)
                        .map_err(|e| error("writing", &path, e))?;
                }
                PreparedVolume {
                    path: dir,
                    read_only: true,
                    kind: VolumeKind::DownwardApi,
                }
            }
        };
        prepared.insert(name.to_string(), volume);
    }
    Ok(prepared)
}

/// `<root>/<kind>/<name>`, the volume name checked to be one plain name.
fn volume_dir(root: &Path, kind: &str, name: &str, field: &str) -> Result<PathBuf, VolumeError> {
    let dir = SafePath::base(root).join(&[kind, name]);
    dir.map(|dir| dir.path())
        .map_err(|e| VolumeError::new(field, e.to_string()))
}

/// Replaces `dir/rel` with a file of `content` and exactly `mode` (no
/// umask) through a rename, so a reader never sees a half-written file.
/// Directories on the way are made readable for every user.
fn write_file(dir: &Path, rel: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let mut parent = dir.to_path_buf();
    let mut parts: Vec<_> = rel.components().collect();
    let name = parts
        .pop()
        .map(|c| c.as_os_str().to_os_string())
        .unwrap_or_default();
    for part in parts {
        parent.push(part);
        match DirBuilder::new().mode(DOWNWARD_DIR_MODE).create(&parent) {
            Ok(()) => fs::set_permissions(&parent, Permissions::from_mode(DOWNWARD_DIR_MODE))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let mut temp_name = OsString::from("..");
    temp_name.push(&name);
    temp_name.push(".tmp");
    let temp = parent.join(temp_name);
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(content)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        fs::rename(&temp, parent.join(&name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Mounts a tmpfs on `dir` unless one already is; `Ok(true)` if it mounted.
/// Kubelet-compatible options: only `size`, when limited.
fn mount_tmpfs_once(dir: &Path, size: Option<u64>) -> io::Result<bool> {
    if is_mount_point(dir)? {
        if is_tmpfs(dir)? {
            return Ok(false);
        }
        return Err(io::Error::other(
            "something other than a tmpfs is mounted there",
        ));
    }
    let target = cstring(dir)?;
    let data = CString::new(size.map(|s| format!("size={s}")).unwrap_or_default())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad tmpfs options"))?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; mount(2) only reads them.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::debug!(dir = %dir.display(), ?size, "mounted tmpfs for emptyDir");
    Ok(true)
}

/// Whether `dir` is the root of a mount: its device differs from its
/// parent's (true for every tmpfs, which is all this is asked about).
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    Ok(fs::symlink_metadata(dir)?.dev() != fs::metadata(parent)?.dev())
}

fn is_tmpfs(dir: &Path) -> io::Result<bool> {
    let path = cstring(dir)?;
    // SAFETY: an all-zero statfs is a valid value for statfs(2) to fill.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `buf` is a valid, writable statfs.
    if unsafe { libc::statfs(path.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type == libc::TMPFS_MAGIC)
}

pub(super) fn unmount(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstring(path)?;
    // SAFETY: `target` is a valid NUL-terminated path; umount2 only reads it.
    if unsafe { libc::umount2(target.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::volumes::test_support::*;
    use crate::pod::volumes::*;
    use k8s_openapi::api::core::v1::EmptyDirVolumeSource;
    use std::fs;

    #[test]
    fn a_failure_while_writing_removes_only_what_this_call_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("v");
        let cache = "  - name: cache\n    emptyDir: {}\n";
        // "a" is written as a file, so "a/b" cannot be: an I/O error late
        // in prepare, after the emptyDir was made.
        let clash = "  - name: info\n    downwardAPI:\n      items:\n      - {path: a, fieldRef: {fieldPath: metadata.name}}\n      - {path: a/b, fieldRef: {fieldPath: metadata.name}}\n";
        let err = prepare_one(&format!("{cache}{clash}"), &root).unwrap_err();
        assert_eq!(err.field, "spec.volumes[info]");
        assert!(!root.exists(), "the new root is removed again");

        let prepared = prepare_one(cache, &root).unwrap();
        let kept = prepared.get("cache").unwrap().path.join("kept");
        fs::write(&kept, "x").unwrap();
        prepare_one(&format!("{cache}{clash}"), &root).unwrap_err();
        assert!(kept.exists(), "what existed before stays");
        assert!(!root.join("downward-api").exists());
    }

    #[test]
    fn empty_dir_is_a_world_writable_directory_under_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods/uid/volumes");
        // A volume without a source is an emptyDir, as the API server defaults it.
        let volumes = "  - name: cache\n    emptyDir: {}\n  - name: bare\n";
        let prepared = prepare_one(volumes, &root).unwrap();
        for name in ["cache", "bare"] {
            let volume = prepared.get(name).unwrap();
            assert_eq!(volume.path, root.join("empty-dir").join(name));
            assert_eq!(volume.kind, VolumeKind::EmptyDir);
            assert!(!volume.read_only);
            assert!(volume.path.is_dir());
            assert_eq!(mode(&volume.path), 0o777);
        }
        assert_eq!(mode(&root), 0o750);
        assert_eq!(prepared.root(), root);
        assert_eq!(prepared.len(), 2);
    }

    #[test]
    fn empty_dir_media_and_size_limits_are_checked_before_mounting() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            ("{medium: Memory, sizeLimit: 1.5GB}", "emptyDir.sizeLimit"),
            ("{medium: Memory, sizeLimit: -1Mi}", "emptyDir.sizeLimit"),
            ("{medium: HugePages}", "emptyDir.medium"),
            ("{medium: Disk}", "emptyDir.medium"),
        ];
        for (source, field) in cases {
            let volume = format!("  - name: m\n    emptyDir: {source}\n");
            let err = prepare_one(&volume, tmp.path()).unwrap_err();
            assert_eq!(err.field, format!("spec.volumes[m].{field}"), "{source}");
        }
        // A disk emptyDir's sizeLimit is not enforced, so not parsed either.
        let volume = "  - name: d\n    emptyDir: {sizeLimit: 1.5GB}\n";
        prepare_one(volume, &tmp.path().join("v")).unwrap();
    }

    #[test]
    fn memory_size_limits_are_read_as_kubernetes_quantities() {
        let size = |limit: &str| {
            let source = EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    limit.into(),
                )),
            };
            match plan_empty_dir(&source, &|f: &str| f.to_string()) {
                Ok(Plan::EmptyDir { tmpfs: Some(size) }) => size,
                _ => panic!("{limit}: not a tmpfs plan"),
            }
        };
        assert_eq!(size("1Mi"), Some(1 << 20));
        assert_eq!(size("1.5Gi"), Some(3 << 29));
        assert_eq!(size("64M"), Some(64_000_000));
        assert_eq!(size("1e3"), Some(1000));
        assert_eq!(size("0"), None);
    }
}
