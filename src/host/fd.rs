//! Small wrappers over the `*at` system calls, for code that walks a path
//! one component at a time through file descriptors: each step is relative
//! to a directory already opened (and checked), so renaming or swapping a
//! path after a check cannot change what is used.

use std::ffi::{CStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

/// `openat(dir, name, flags | O_CLOEXEC)`.
pub fn open_at(dir: &OwnedFd, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a valid descriptor and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open(path, flags | O_CLOEXEC)` for a trusted absolute path such as `/`.
pub fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the descriptor refers to (for an `O_PATH | O_NOFOLLOW` descriptor
/// of a symlink, the link itself).
pub fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct for a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The target of the symlink that `link` (opened `O_PATH | O_NOFOLLOW`)
/// refers to. Targets longer than `PATH_MAX` are an error.
pub fn read_link(link: &OwnedFd) -> io::Result<OsString> {
    let mut buffer = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: an empty path with a descriptor reads the link the descriptor
    // refers to; the buffer is valid for its length.
    let n = unsafe {
        libc::readlinkat(
            link.as_raw_fd(),
            c"".as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n >= buffer.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buffer.truncate(n);
    Ok(OsString::from_vec(buffer))
}
