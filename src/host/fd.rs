//! Thin, safe wrappers over the `*at` system calls the rest of `host/`
//! and the volume code build on. Working relative to a descriptor already
//! opened, never by a path re-resolved later, is what keeps a container
//! that renames or swaps directories from redirecting the agent: a name
//! is looked up in the directory the descriptor holds, whatever happened
//! to that directory's path since.

use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::{fs, io};

/// Flags that open `name` itself, even a symlink, for looking at it
/// (`fstat`, `readlinkat`) or as the directory of later `*at` calls,
/// without granting read or write access to its content.
pub const PATH_NOFOLLOW: libc::c_int = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Flags that open the directory `name` for reading, refusing a symlink.
pub const DIR_NOFOLLOW: libc::c_int =
    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// A name as the kernel takes it; a NUL byte cannot be one.
pub fn c_name(name: impl AsRef<std::ffi::OsStr>) -> io::Result<CString> {
    CString::new(name.as_ref().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a name must not contain a NUL byte",
        )
    })
}

/// A trusted directory (from the agent's configuration or made by the
/// agent) opened by path, following symlinks, as the start of a walk.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let file = fs::File::open(path)?;
    if !file.metadata()?.is_dir() {
        return Err(io::Error::from(io::ErrorKind::NotADirectory));
    }
    Ok(file.into())
}

/// `open(path, flags | O_CLOEXEC)` for a trusted absolute path such as `/`,
/// the start of a walk that must not follow a symlink on its first step.
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dir, name, flags | O_CLOEXEC)`: `name` is looked up in `dir` only.
pub fn open_at(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat(dir, name, mode)`; the umask applies, so callers that need an
/// exact mode set it afterwards with [`fchmod`] on the opened directory.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor and a NUL-terminated name.
    if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fchmod` on a descriptor opened for reading (not `O_PATH`, which the
/// kernel refuses): the mode lands on the inode the descriptor holds, not
/// on whatever a path names by now.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fstat` of a descriptor, `O_PATH` ones included.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct for a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether a `stat` mode is of the given `S_IF*` type.
pub fn is_type(st: &libc::stat, typ: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == typ
}

/// The target of the symlink a [`PATH_NOFOLLOW`] descriptor holds
/// (`readlinkat` with an empty name), so the link read is the one opened.
/// A target longer than `PATH_MAX` is an error, never a truncated path.
pub fn read_link(link: BorrowedFd<'_>) -> io::Result<OsString> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: a valid descriptor, an empty NUL-terminated name and a
    // buffer of the length given.
    let len = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = len as usize;
    if len >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(len);
    Ok(OsString::from_vec(buf))
}

/// Bind-mounts (recursively) the file or directory `fd` holds onto
/// `target`, through `/proc/self/fd`: the kernel takes the inode the
/// descriptor pins, so nothing that happened to its path since it was
/// opened (a component swapped for a symlink) changes what is mounted.
/// `target` must be a trusted path (made by the agent).
pub fn bind_mount_fd(fd: impl AsFd, target: &Path) -> io::Result<()> {
    let source = c_name(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))?;
    let target = c_name(target.as_os_str())?;
    // SAFETY: NUL-terminated source and target; a bind mount reads no
    // filesystem type or data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn open_at_does_not_follow_and_read_link_reads_the_opened_link() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("d")).unwrap();
        symlink("d", tmp.path().join("l")).unwrap();
        let base = open_dir(tmp.path()).unwrap();
        let name = c_name("l").unwrap();
        let err = open_at(base.as_fd(), &name, DIR_NOFOLLOW).unwrap_err();
        // ELOOP, or ENOTDIR where the kernel checks O_DIRECTORY first.
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{err}"
        );
        let link = open_at(base.as_fd(), &name, PATH_NOFOLLOW).unwrap();
        assert!(is_type(&fstat(link.as_fd()).unwrap(), libc::S_IFLNK));
        assert_eq!(read_link(link.as_fd()).unwrap(), "d");
        c_name("a\0b").unwrap_err();
    }

    #[test]
    fn fchmod_sets_the_exact_mode_of_a_made_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let base = open_dir(tmp.path()).unwrap();
        let name = c_name("new").unwrap();
        mkdir_at(base.as_fd(), &name, 0o777).unwrap();
        let dir = open_at(base.as_fd(), &name, DIR_NOFOLLOW).unwrap();
        fchmod(dir.as_fd(), 0o1777).unwrap();
        let st = fstat(dir.as_fd()).unwrap();
        assert!(is_type(&st, libc::S_IFDIR));
        assert_eq!(st.st_mode & 0o7777, 0o1777);
    }
}
