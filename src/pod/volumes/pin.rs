//! Pinning a resolved subPath for runc, as the kubelet's
//! `prepareSubpathTarget` does: the descriptor [`open_sub_path`] returned
//! is bind-mounted onto a mount point only the agent can reach, and runc
//! is given that mount point. runc resolves its mount sources by path; a
//! path inside a volume that a container can write would be resolved again
//! after the check, so a container swapping a directory for a symlink in
//! between could have a host path mounted instead.
//!
//! [`open_sub_path`]: super::sub_path::open_sub_path

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::host::{fd, SafePath};
use crate::runtime::pod_files::PodFiles;

use super::cleanup::cleanup;

/// Directory of the volume root holding the pinned subPaths, one
/// directory per container ID; containers mount volumes below the root
/// (`empty-dir/<name>`, ...), never the root itself, so cannot reach it.
const SUB_PATHS: &str = "volume-subpaths";
/// The pin directories: for root only, like the volume root.
const PIN_DIR_MODE: u32 = 0o750;
/// The empty file a file subPath is mounted onto.
const PIN_FILE_MODE: u32 = 0o640;

/// `<root>/volume-subpaths/<container-id>`. Keyed by container ID rather
/// than name (the kubelet's choice) because an ID names one run: a new
/// run never touches the pins of an earlier one, and removing a container
/// by ID releases exactly its pins.
fn pins_of(root: &Path, container_id: &str) -> io::Result<SafePath> {
    SafePath::base(root)
        .join(&[SUB_PATHS, container_id])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Bind-mounts what `target` holds onto
/// `<root>/volume-subpaths/<container-id>/<index>` (a directory or an
/// empty file, as `target` is) and returns that mount point, the mount
/// source to give runc. `index` is the volumeMount's position.
pub(super) fn pin_sub_path(
    root: &Path,
    container_id: &str,
    index: usize,
    target: &OwnedFd,
) -> io::Result<PathBuf> {
    let dir = pins_of(root, container_id)?.path();
    DirBuilder::new()
        .recursive(true)
        .mode(PIN_DIR_MODE)
        .create(&dir)?;
    let point = dir.join(index.to_string());
    if fd::is_type(&fd::fstat(target.as_fd())?, libc::S_IFDIR) {
        DirBuilder::new().mode(PIN_DIR_MODE).create(&point)?;
    } else {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PIN_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&point)?;
    }
    fd::bind_mount_fd(target, &point)?;
    Ok(point)
}

/// Unmounts and removes the pins of one container (a missing directory is
/// fine), once runc no longer needs them: the container is being created
/// again under the same ID, could not be created, or is removed. The
/// container's own mounts are copies and stay.
pub fn release_sub_paths(root: &Path, container_id: &str) -> io::Result<()> {
    cleanup(&pins_of(root, container_id)?)
}

/// Releases the pins of a container just removed, in the directory of the
/// pod its ID belongs to. Failures are logged: the pod's release unmounts
/// and removes whatever is left under its volume root.
pub fn release_removed_container(state_dir: &Path, container_id: &str) {
    for files in PodFiles::of_container(state_dir, container_id) {
        if let Err(e) = release_sub_paths(&files.volumes().path(), container_id) {
            tracing::warn!(container = container_id, error = %e, "cannot release the pinned subPaths");
        }
    }
}
