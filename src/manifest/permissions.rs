//! Who may write the manifests. A static pod can run privileged containers
//! with the host's filesystem mounted, so whoever can write a manifest is
//! root on the node: the manifest directory and every manifest in it must be
//! owned by root and writable by nobody else. (Owned by the agent's own user
//! also passes, as in sshd's StrictModes: that user can do all the agent can
//! anyway, and the agent runs as root in production.)
//!
//! Checking a path and then reading it by path would leave a window in
//! which the file, or a directory above it, is swapped for another; so a
//! manifest is found by walking from `/` one component at a time through
//! file descriptors ([`open_manifest`]): every directory on the way is
//! checked by `fstat` on the descriptor the next step is opened from, a
//! symlink is followed only by reading it and walking its target the same
//! way (so its target, and every directory on the way to it, is checked
//! too), and the manifest is checked by `fstat` on the very descriptor that
//! is then read.
//!
//! Directories on the way may be writable by others only when they are
//! sticky and root's (like `/tmp`): nobody else can then rename or remove
//! what root put there. The directory that holds a manifest may not be
//! writable by others at all, sticky or not: anyone could add a manifest.
//!
//! The agent checks the whole directory at start-up and refuses to run
//! otherwise ([`check_dir`]); afterwards the source checks the directory
//! on every pass ([`check_manifest_dir`]) and opens each manifest with
//! [`open_manifest`], so a directory or file loosened while the agent runs
//! is not read.

use std::collections::VecDeque;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::source::{classify, Entry};
use crate::host::fd;

/// Group and others' write bits.
const FOREIGN_WRITE: u32 = 0o022;

/// Symlinks one manifest path may pass through: the kernel's own limit.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is {reason}; a static pod can run privileged containers, so the manifest \
     directory, its manifests and every directory on the way to them must be owned by \
     root and writable only by root (fix with: chown root {path} && chmod go-w {path})",
    path = .path.display()
)]
pub struct InsecureManifest {
    pub path: PathBuf,
    pub reason: String,
}

/// Why a manifest (or the directory) could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Nothing there (any more): not an error for the caller.
    #[error("{}: not found", .0.display())]
    Gone(PathBuf),
    #[error(transparent)]
    Insecure(#[from] InsecureManifest),
    #[error("{path}: cannot check its permissions ({source})", path = .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
}

/// Checks the manifest directory and every entry that would be read as a
/// manifest. A missing directory passes: the source reports it and runs
/// nothing until it appears, and the files then get the per-file check.
pub fn check_dir(dir: &Path) -> Result<(), OpenError> {
    match check_manifest_dir(dir) {
        Err(OpenError::Gone(_)) => return Ok(()),
        other => other?,
    }
    let entries = std::fs::read_dir(dir).map_err(|source| OpenError::Unreadable {
        path: dir.into(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if matches!(classify(&path), Entry::Manifest) {
            match open_manifest(&path) {
                Ok(_) | Err(OpenError::Gone(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Checks the manifest directory itself and every directory on the way to
/// it (see the module doc).
pub fn check_manifest_dir(dir: &Path) -> Result<(), OpenError> {
    walk(dir, Want::Directory).map(drop)
}

/// Opens the manifest at `path` for reading, after checking it and every
/// directory and symlink on the way; the file returned is the one checked.
pub fn open_manifest(path: &Path) -> Result<File, OpenError> {
    walk(path, Want::File).map(File::from)
}

#[derive(Clone, Copy, PartialEq)]
enum Want {
    File,
    Directory,
}

/// Resolves `path` from `/` by descriptors, checking as it goes, and
/// returns the descriptor of the file (opened for reading) or directory.
fn walk(path: &Path, want: Want) -> Result<OwnedFd, OpenError> {
    let unreadable = |path: &Path, source| OpenError::Unreadable {
        path: path.into(),
        source,
    };
    let absolute = std::path::absolute(path).map_err(|e| unreadable(path, e))?;
    let root = fd::open(c"/", libc::O_PATH | libc::O_DIRECTORY).map_err(|e| unreadable(path, e))?;
    check(&root, Path::new("/"), Strictness::OnTheWay)?;
    // The directories entered so far, each with the path it was reached by.
    let mut dirs: Vec<(OwnedFd, PathBuf)> = vec![(root, PathBuf::from("/"))];
    let mut pending = components(&absolute);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            continue;
        }
        let (parent, parent_path) = dirs.last().expect("the root is never popped");
        let here = parent_path.join(&name);
        let c_name = CString::new(name.as_bytes()).map_err(|e| unreadable(&here, e.into()))?;
        let opened = match fd::open_at(parent.as_fd(), &c_name, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OpenError::Gone(here)),
            Err(e) => return Err(unreadable(&here, e)),
        };
        let st = fd::fstat(opened.as_fd()).map_err(|e| unreadable(&here, e))?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                if !trusted(st.st_uid, effective_uid()) {
                    return Err(insecure(
                        &here,
                        format!("a symlink owned by uid {}, not root", st.st_uid),
                    ));
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(unreadable(&here, io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let target = fd::read_link(opened.as_fd()).map_err(|e| unreadable(&here, e))?;
                if Path::new(&target).is_absolute() {
                    dirs.truncate(1);
                }
                for component in components(Path::new(&target)).into_iter().rev() {
                    pending.push_front(component);
                }
            }
            libc::S_IFDIR => {
                check(&opened, &here, Strictness::OnTheWay)?;
                dirs.push((opened, here));
            }
            _ if pending.is_empty() && want == Want::File => {
                // The directory that holds the manifest: nobody else may
                // add or replace a file in it, sticky or not.
                check(parent, parent_path, Strictness::Holder)?;
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
                let file = match fd::open_at(parent.as_fd(), &c_name, flags) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(OpenError::Gone(here))
                    }
                    Err(e) => return Err(unreadable(&here, e)),
                };
                check(&file, &here, Strictness::Holder)?;
                return Ok(file);
            }
            _ => {
                return Err(unreadable(
                    &here,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ))
            }
        }
    }
    let (dir, dir_path) = dirs.pop().expect("the root is never popped");
    match want {
        Want::Directory => {
            check(&dir, &dir_path, Strictness::Holder)?;
            Ok(dir)
        }
        Want::File => Err(unreadable(
            &dir_path,
            io::Error::from_raw_os_error(libc::EISDIR),
        )),
    }
}

/// The named components of `path` (`.` and the root dropped; `..` kept for
/// the walk to go up by).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum Strictness {
    /// A directory passed through: sticky and root's may be world-writable.
    OnTheWay,
    /// A manifest, or the directory holding one: nobody else may write.
    Holder,
}

fn check(fd: &OwnedFd, path: &Path, strictness: Strictness) -> Result<(), OpenError> {
    let st = fd::fstat(fd.as_fd()).map_err(|source| OpenError::Unreadable {
        path: path.into(),
        source,
    })?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFDIR && kind != libc::S_IFREG {
        return Err(insecure(path, "not a regular file".into()));
    }
    let sticky_passage = strictness == Strictness::OnTheWay && st.st_mode & libc::S_ISVTX != 0;
    let mode = if sticky_passage {
        st.st_mode & !FOREIGN_WRITE
    } else {
        st.st_mode
    };
    match mode_reason(mode, st.st_uid, effective_uid()) {
        None => Ok(()),
        Some(reason) => Err(insecure(path, reason)),
    }
}

fn insecure(path: &Path, reason: String) -> OpenError {
    OpenError::Insecure(InsecureManifest {
        path: path.into(),
        reason,
    })
}

/// The rule itself: owner root (or `me`), no group or other write bit.
fn mode_reason(mode: u32, uid: u32, me: u32) -> Option<String> {
    if !trusted(uid, me) {
        return Some(format!("owned by uid {uid}, not root"));
    }
    if mode & FOREIGN_WRITE != 0 {
        return Some(format!(
            "writable by group or others (mode {:04o})",
            mode & 0o7777
        ));
    }
    None
}

fn trusted(owner: u32, me: u32) -> bool {
    owner == 0 || owner == me
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests;
