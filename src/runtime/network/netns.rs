//! Network namespaces pinned by a bind mount, like `ip netns add`, without
//! iproute2.
//!
//! A namespace lives as long as a process is in it or a mount pins it. The
//! pod's namespace must exist before its sandbox task (the CNI plugins fill
//! it first, and the task joins it by path) and outlive restarts of that
//! task, so it is pinned on a file: a throwaway thread unshares its network
//! namespace and bind-mounts `/proc/self/task/<tid>/ns/net` there. Only
//! that thread ever is in the new namespace; the agent's other threads are
//! untouched.
//!
//! The mount is made in the agent's mount namespace: the agent must run in
//! the host's (no `PrivateMounts=`, `ProtectSystem=` or the like in its
//! unit), or containerd and runc would not see it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::host::private_files;

/// `NSFS_MAGIC` from linux/magic.h: the file system of `/proc/*/ns/*` and of
/// bind mounts of them.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Bound for unmounting a path pinned several times over.
const MAX_UNMOUNTS: usize = 8;

/// Creates a new network namespace pinned at `<dir>/<name>` and returns that
/// path. Fails with `AlreadyExists` if the file exists (a namespace from an
/// earlier run is the caller's to reuse or remove).
///
/// Brings `lo` up: runc configures loopback only in namespaces it creates
/// itself, not in one it joins by path, and a CNI configuration from the
/// node's config dir need not include the loopback plugin (containerd runs
/// it separately for this reason). Pods expect 127.0.0.1 to work.
pub fn create(dir: &Path, name: &str) -> io::Result<PathBuf> {
    crate::host::safe_path::check(name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    private_files::create_dir(dir, private_files::PRIVATE_DIR_MODE)?;
    let path = dir.join(name);
    // The mount point; create_new so two creators cannot share a namespace.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(private_files::PRIVATE_FILE_MODE)
        .open(&path)?;
    let target = path.clone();
    let pinned = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || pin_new_netns(&target))
        .and_then(|handle| {
            handle
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the netns thread panicked")))
        });
    if let Err(e) = pinned {
        let _ = remove(&path);
        return Err(e);
    }
    Ok(path)
}

/// Runs on its own thread, which it leaves in the new namespace; the thread
/// then ends, and with it its membership.
fn pin_new_netns(target: &Path) -> io::Result<()> {
    // SAFETY: unshare(2) changes only the calling thread's namespaces (this
    // thread is used for nothing else).
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::other(format!(
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        )));
    }
    bring_loopback_up()?;
    // SAFETY: gettid(2) has no preconditions.
    let tid = unsafe { libc::gettid() };
    let source = CString::new(format!("/proc/self/task/{tid}/ns/net"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let target_c = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: both strings are valid and NUL-terminated; a bind mount takes
    // no file system type or data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::other(format!(
            "bind-mounting the new netns on {}: {}",
            target.display(),
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace.
fn bring_loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor owned by nobody else.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed,
    // which lives across both calls.
    unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::other(format!(
                "SIOCGIFFLAGS lo: {}",
                io::Error::last_os_error()
            )));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::other(format!(
                "SIOCSIFFLAGS lo: {}",
                io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Unmounts (lazily, so a process still inside does not make it fail) and
/// removes a pinned namespace. A missing file, or one no longer mounted, is
/// fine. The namespace itself goes away when its last process leaves.
pub fn remove(path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Only namespaces are unmounted (also when pinned more than once), so a
    // plain file needs no privilege to be removed.
    for _ in 0..MAX_UNMOUNTS {
        if !is_netns(path) {
            break;
        }
        // SAFETY: c_path is a valid NUL-terminated string.
        if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: not a mount point (a /proc/<pid>/ns/net path).
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(io::Error::other(format!(
                "unmounting {}: {e}",
                path.display()
            )));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `path` is a live network namespace (a mounted nsfs file), as
/// opposed to a missing file or the bare mount point left after a reboot.
pub fn is_netns(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all zeros is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is valid; stat is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs by architecture.
    let fs_type = stat.f_type as i64;
    fs_type == NSFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", ".", "..", "a/b"] {
            let err = create(dir.path(), name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn a_plain_file_is_not_a_netns() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x");
        std::fs::write(&file, "").unwrap();
        assert!(!is_netns(&file));
        assert!(!is_netns(&dir.path().join("missing")));
        // Removing a file that is not mounted, and a missing one, is fine.
        remove(&file).unwrap();
        assert!(!file.exists());
        remove(&file).unwrap();
    }

    #[test]
    fn the_own_netns_is_one() {
        assert!(is_netns(Path::new("/proc/self/ns/net")));
    }
}
