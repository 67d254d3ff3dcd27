//! Removing a directory tree that containers may have written to (a pod's
//! volumes) or that sits where pod-derived names point (a pod's state and
//! log directories) without ever leaving it: every step is an `openat` or
//! `unlinkat` relative to a directory already opened, with `O_NOFOLLOW`,
//! so a symlink planted anywhere, or swapped in while the removal runs, is
//! removed as a link and never followed; a directory on another mount (a
//! stray bind mount of a host directory) is an error, never emptied.

use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::{fs, io};

use super::{fd, SafePath};

/// How deep a tree may go: each level holds one open descriptor while its
/// entries are removed, and a container must not be able to exhaust them.
const MAX_DEPTH: usize = 256;

/// Removes the directory at `path` and everything in it, like
/// `rm -r --one-file-system` but race-free: the components below the
/// trusted base are opened one by one without following symlinks, and so
/// is every entry of the tree. A missing path is fine. A path whose last
/// component is a symlink or not a directory is refused (something put it
/// there in place of the directory this code made); the link's target is
/// never touched.
pub fn remove_tree(path: &SafePath) -> io::Result<()> {
    let (last, parents) = match path.components().split_last() {
        Some(split) => split,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not removing the base directory {}", path.path().display()),
            ))
        }
    };
    let context =
        |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.path().display()));
    let mut parent = match open_base(path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e)),
    };
    for name in parents {
        parent = match open_dir_at(&parent, &name_of(name)?) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(context(e)),
        };
    }
    let last = name_of(last)?;
    let top = match open_dir_at(&parent, &last) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e)),
    };
    let mount = mount_of(&parent).map_err(context)?;
    if mount_of(&top).map_err(context)? != mount {
        return Err(context(io::Error::other(
            "it is a mount point; not removing it",
        )));
    }
    remove_contents(top, mount).map_err(context)?;
    unlink_at(&parent, &last, libc::AT_REMOVEDIR).map_err(context)
}

/// One directory being emptied: its descriptor, the names left to remove,
/// and its own name in its parent.
struct Level {
    dir: OwnedFd,
    entries: std::vec::IntoIter<CString>,
    name: Option<CString>,
}

/// Empties `top` depth-first without recursion (a deep tree cannot
/// overflow the stack), holding one descriptor per level.
fn remove_contents(top: OwnedFd, mount: Mount) -> io::Result<()> {
    let mut stack = vec![Level {
        entries: entries(&top)?,
        dir: top,
        name: None,
    }];
    while let Some(level) = stack.last_mut() {
        let Some(name) = level.entries.next() else {
            let done = stack.pop().expect("the level just looked at");
            if let (Some(parent), Some(name)) = (stack.last(), done.name) {
                drop(done.dir);
                unlink_at(&parent.dir, &name, libc::AT_REMOVEDIR).map_err(|e| named(e, &name))?;
            }
            continue;
        };
        let dir = match open_dir_at(&level.dir, &name) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // A symlink (ELOOP under O_NOFOLLOW) or anything else that is
            // not a directory: the entry itself goes.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                match unlink_at(&level.dir, &name, 0) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(named(e, &name)),
                    _ => continue,
                }
            }
            Err(e) => return Err(named(e, &name)),
        };
        if mount_of(&dir)? != mount {
            return Err(named(
                io::Error::other("a mount point; not removing it"),
                &name,
            ));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(named(
                io::Error::other(format!("more than {MAX_DEPTH} directories deep")),
                &name,
            ));
        }
        stack.push(Level {
            entries: entries(&dir)?,
            dir,
            name: Some(name),
        });
    }
    Ok(())
}

fn named(e: io::Error, name: &CStr) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", name.to_string_lossy()))
}

fn name_of(component: &str) -> io::Result<CString> {
    CString::new(component).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The trusted base, opened as any path (it comes from the configuration
/// and may itself sit below a symlink such as `/var/run`).
fn open_base(path: &SafePath) -> io::Result<OwnedFd> {
    fd::open_dir(path.trusted())
}

/// The directory `name` in `dir`, refusing to follow a symlink.
fn open_dir_at(dir: &OwnedFd, name: &CStr) -> io::Result<OwnedFd> {
    fd::open_at(dir.as_fd(), name, fd::DIR_NOFOLLOW)
}

fn unlink_at(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid descriptor and a NUL-terminated name.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The names in an open directory. Read through `/proc/self/fd`, which
/// refers to the directory the descriptor holds, whatever happened to its
/// path since it was opened.
fn entries(dir: &OwnedFd) -> io::Result<std::vec::IntoIter<CString>> {
    let listing = fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    let mut names = Vec::new();
    for entry in listing {
        let name: OsString = entry?.file_name();
        names.push(CString::new(name.into_vec()).map_err(io::Error::other)?);
    }
    Ok(names.into_iter())
}

/// Which mount a directory is on: the device and, where the kernel says
/// (5.8 and later), the mount ID, which also tells a bind mount of a
/// directory of the same filesystem apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mount {
    device: (u32, u32),
    id: Option<u64>,
}

fn mount_of(dir: &OwnedFd) -> io::Result<Mount> {
    // SAFETY: statx fills the zeroed struct; the path is empty with
    // AT_EMPTY_PATH, so it describes the descriptor itself.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Mount {
        device: (stx.stx_dev_major, stx.stx_dev_minor),
        id: (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// A directory outside the tree with a file in it, standing for host data.
    fn victim(dir: &Path) -> std::path::PathBuf {
        let victim = dir.join("victim");
        fs::create_dir_all(victim.join("sub")).unwrap();
        fs::write(victim.join("keep"), "host data").unwrap();
        fs::write(victim.join("sub/keep"), "host data").unwrap();
        victim
    }

    fn intact(victim: &Path) -> bool {
        fs::read_to_string(victim.join("keep")).is_ok()
            && fs::read_to_string(victim.join("sub/keep")).is_ok()
    }

    #[test]
    fn a_tree_goes_but_never_what_its_symlinks_point_to() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        let pod = SafePath::base(tmp.path()).join(&["pods", "uid"]).unwrap();
        let dir = pod.path();
        fs::create_dir_all(dir.join("a/b/c")).unwrap();
        fs::write(dir.join("a/b/c/file"), "x").unwrap();
        fs::write(dir.join("file"), "x").unwrap();
        symlink(&victim, dir.join("to-victim")).unwrap();
        symlink(&victim, dir.join("a/b/to-victim")).unwrap();
        symlink(victim.join("keep"), dir.join("a/to-file")).unwrap();
        symlink("/nonexistent", dir.join("dangling")).unwrap();
        let fifo = CString::new(dir.join("a/fifo").into_os_string().into_vec()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        remove_tree(&pod).unwrap();
        assert!(!dir.exists());
        assert!(tmp.path().join("pods").is_dir(), "only the tree goes");
        assert!(intact(&victim));
        // Gone already, and never there: fine.
        remove_tree(&pod).unwrap();
        let never = SafePath::base(tmp.path().join("no")).join(&["x"]).unwrap();
        remove_tree(&never).unwrap();
    }

    #[test]
    fn a_top_that_is_a_symlink_is_refused_and_its_target_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        fs::create_dir(tmp.path().join("pods")).unwrap();
        symlink(&victim, tmp.path().join("pods/uid")).unwrap();
        let pod = SafePath::base(tmp.path()).join(&["pods", "uid"]).unwrap();
        let err = remove_tree(&pod).unwrap_err();
        assert!(err.to_string().contains("pods/uid"), "{err}");
        assert!(intact(&victim));
        fs::write(tmp.path().join("pods/file"), "x").unwrap();
        let file = SafePath::base(tmp.path()).join(&["pods", "file"]).unwrap();
        remove_tree(&file).unwrap_err();
    }

    #[test]
    fn a_symlink_on_the_way_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        // `<base>/pods` replaced by a link to a directory holding `sub`.
        symlink(&victim, tmp.path().join("pods")).unwrap();
        let through = SafePath::base(tmp.path()).join(&["pods", "sub"]).unwrap();
        remove_tree(&through).unwrap_err();
        assert!(intact(&victim));
    }

    #[test]
    fn the_base_alone_is_never_removed() {
        let tmp = tempfile::tempdir().unwrap();
        remove_tree(&SafePath::base(tmp.path())).unwrap_err();
        assert!(tmp.path().is_dir());
    }

    #[test]
    fn a_tree_deeper_than_the_limit_is_an_error_not_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let top = SafePath::base(tmp.path()).join(&["top"]).unwrap();
        let deep: std::path::PathBuf = std::iter::repeat_n("d", MAX_DEPTH + 1).collect();
        fs::create_dir_all(top.path().join(&deep)).unwrap();
        let err = remove_tree(&top).unwrap_err();
        assert!(err.to_string().contains("deep"), "{err}");
        let shallow: std::path::PathBuf = std::iter::repeat_n("d", MAX_DEPTH - 1).collect();
        fs::remove_dir_all(top.path()).unwrap();
        fs::create_dir_all(top.path().join(&shallow)).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.path().exists());
    }
}
