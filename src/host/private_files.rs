//! Files and directories that only root may read: the agent's state
//! (checkpoints, the event journal, CNI results, network namespaces, the
//! sockets) holds pod specs, environment values and addresses, and the
//! container logs hold whatever the containers print, secrets included.
//!
//! Modes are given when a file or directory is created (`open` with
//! `O_CREAT|O_EXCL` and a mode, `mkdir` with a mode), never fixed up
//! afterwards by path, so there is no moment when a new file is readable
//! by others. An existing one that is looser (left by an older version, or
//! made by hand) is tightened through its open descriptor (`fchmod`), so a
//! swap of the path cannot redirect the change.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A directory only root can enter.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// A file only root can read.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Why a configured directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is owned by uid {owner}, not by uid {me} that podkeeper runs as; another user \
         could read or replace what podkeeper keeps there, so it is refused \
         (fix with: chown {me} {path}, or choose another directory)",
        path = .path.display()
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("{path} is not a directory", path = .path.display())]
    NotADirectory { path: PathBuf },
}

/// Makes the configured directory `path` (state or log directory) ready at
/// start-up: created with `mode` if missing, refused if another user owns
/// it, and tightened to `mode` if it allows more. Returns the mode it had
/// when it was tightened, for the caller to log. A symlink is followed (an
/// operator may point the state directory elsewhere); its target is what
/// is checked and changed.
pub fn secure_dir(path: &Path, mode: u32) -> Result<Option<u32>, DirError> {
    let io = |source| DirError::Io {
        path: path.into(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(io)?;
    let dir = File::open(path).map_err(io)?;
    let meta = dir.metadata().map_err(io)?;
    if !meta.is_dir() {
        return Err(DirError::NotADirectory { path: path.into() });
    }
    let me = effective_uid();
    if meta.uid() != me {
        return Err(DirError::ForeignOwner {
            path: path.into(),
            owner: meta.uid(),
            me,
        });
    }
    tighten(&dir, mode).map_err(io)
}

/// Creates the directory `path` and any missing parents with `mode`, and
/// tightens `path` itself to `mode` if it already existed looser. The last
/// component is opened without following a symlink.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(path)?;
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| with_path(e, path))?;
    tighten(&dir, mode)?;
    Ok(())
}

/// Opens `path` for appending, creating it with `mode`; an existing file is
/// tightened to `mode`. A symlink in its place is refused.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    tighten(&file, mode)?;
    Ok(file)
}

/// Replaces `path` with `content` so a crash or a power cut leaves the old
/// or the new file, never half of one or an empty one: written to
/// `<path>.tmp` created 0600 with `O_EXCL` (a leftover from a crash is
/// removed first), fsynced, renamed over, and the directory fsynced so the
/// rename itself is on disk. Every state file is written through here.
/// Blocking (two fsyncs): async callers run it on a blocking thread.
pub fn write_private(path: &Path, content: &[u8]) -> io::Result<()> {
    write_file(path, content, PRIVATE_FILE_MODE, None)
}

/// [`write_private`] for a file with `mode` and, when given, owned by
/// group `group`: both are set on the temporary file through its
/// descriptor before the rename, so the file never appears with others.
pub fn write_file(path: &Path, content: &[u8], mode: u32, group: Option<u32>) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)
    };
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&temporary)?;
            create()?
        }
        other => other?,
    };
    let written = set_group_and_mode(&file, group, mode)
        .and_then(|()| file.write_all(content))
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temporary, path))
        .and_then(|()| sync_parent(path));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// Flushes the directory holding `path`: a rename is an update of the
/// directory, lost in a power cut until the directory itself is synced.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Gives the open `file` to `group` (when given) and then sets `mode`
/// exactly: `fchown` clears set-id bits, so the mode comes last.
fn set_group_and_mode(file: &File, group: Option<u32>, mode: u32) -> io::Result<()> {
    if let Some(gid) = group {
        // SAFETY: a valid descriptor; uid -1 leaves the owner unchanged.
        if unsafe { libc::fchown(file.as_raw_fd(), u32::MAX, gid) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: a valid descriptor; fchmod has no other preconditions.
    if unsafe { libc::fchmod(file.as_raw_fd(), mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lets members of `group` pass through the directory `path` (owner's
/// bits kept, group execute only, nothing for others): they reach the one
/// file inside that is theirs by name, and cannot list or read the rest.
pub fn open_dir_to_group(path: &Path, group: u32) -> io::Result<()> {
    let dir = File::open(path).map_err(|e| with_path(e, path))?;
    let owner = dir.metadata()?.mode() & 0o700;
    set_group_and_mode(&dir, Some(group), owner | 0o010)
}

/// The id of the group named `name`, if the host has one.
pub fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    let mut group = std::mem::MaybeUninit::<libc::group>::uninit();
    let mut buffer = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer's length
    // is passed; the result is only read when `found` is set.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            group.as_mut_ptr(),
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: getgrnam_r filled `group` (found points at it).
    Some(unsafe { group.assume_init() }.gr_gid)
}

/// Why an operator's file (token file, keys, client CA) is refused.
#[derive(Debug, thiserror::Error)]
pub enum TrustedFileError {
    #[error("{path}: {source}", path = .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is owned by uid {owner}, not by uid {me} that podkeeper runs as; another user \
         could change it (fix with: chown {me} {path})",
        path = .path.display()
    )]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path} has mode {mode:04o}: {why} (fix with: chmod {fix:04o} {path})",
        path = .path.display()
    )]
    Loose {
        path: PathBuf,
        mode: u32,
        why: &'static str,
        fix: u32,
    },
    #[error("{path} is larger than {max} bytes", path = .path.display())]
    TooLarge { path: PathBuf, max: u64 },
}

/// Reads an operator's file that decides who gets in (credentials, a CA):
/// it must be owned by the user podkeeper runs as and grant none of the
/// `forbidden` mode bits, checked on the descriptor that is then read. A
/// symlink is followed (such files are often links into a certificate
/// store); what it points at is what is checked.
pub fn read_trusted(
    path: &Path,
    forbidden: u32,
    why: &'static str,
    max: u64,
) -> Result<Vec<u8>, TrustedFileError> {
    use std::io::Read;
    let io = |source| TrustedFileError::Io {
        path: path.into(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let me = effective_uid();
    if meta.uid() != me {
        return Err(TrustedFileError::ForeignOwner {
            path: path.into(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & forbidden != 0 {
        return Err(TrustedFileError::Loose {
            path: path.into(),
            mode,
            why,
            fix: mode & !forbidden,
        });
    }
    if meta.len() > max {
        return Err(TrustedFileError::TooLarge {
            path: path.into(),
            max,
        });
    }
    let mut content = Vec::new();
    file.take(max).read_to_end(&mut content).map_err(io)?;
    Ok(content)
}

/// Takes away every permission bit of the open `file` that `mode` does not
/// grant (`fchmod`, so the object checked is the one changed). Returns the
/// mode it had when it changed anything.
pub fn tighten(file: &File, mode: u32) -> io::Result<Option<u32>> {
    let old = file.metadata()?.mode() & 0o7777;
    if old & !mode == 0 {
        return Ok(None);
    }
    // SAFETY: a valid descriptor; fchmod has no other preconditions.
    if unsafe { libc::fchmod(file.as_raw_fd(), old & mode) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(old))
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap()
    }

    #[test]
    fn a_loose_directory_is_tightened_and_its_old_mode_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        assert_eq!(secure_dir(&state, 0o700).unwrap(), None);
        assert_eq!(mode(&state), 0o700);
        set_mode(&state, 0o755);
        assert_eq!(secure_dir(&state, 0o700).unwrap(), Some(0o755));
        assert_eq!(mode(&state), 0o700);
        set_mode(&state, 0o777);
        assert_eq!(secure_dir(&state, 0o750).unwrap(), Some(0o777));
        assert_eq!(mode(&state), 0o750);
    }

    #[test]
    fn a_stricter_directory_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        set_mode(tmp.path(), 0o700);
        assert_eq!(secure_dir(tmp.path(), 0o750).unwrap(), None);
        assert_eq!(mode(tmp.path()), 0o700);
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if effective_uid() != 0 {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(tmp.path(), Some(65534), None).unwrap();
        let error = secure_dir(tmp.path(), 0o700).unwrap_err();
        assert!(matches!(error, DirError::ForeignOwner { owner: 65534, .. }));
        assert!(error.to_string().contains("owned by uid 65534"), "{error}");
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("state");
        fs::write(&file, "").unwrap();
        assert!(secure_dir(&file, 0o700).is_err());
    }

    #[test]
    fn create_dir_makes_parents_private_and_tightens_an_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_dir(&dir, 0o700).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        set_mode(&dir, 0o755);
        create_dir(&dir, 0o700).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn create_dir_does_not_follow_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        set_mode(&target, 0o755);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_dir(&link, 0o700).is_err());
        assert_eq!(mode(&target), 0o755);
    }

    #[test]
    fn private_files_are_0600_from_the_start_and_replace_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pod.json");
        write_private(&path, b"one").unwrap();
        assert_eq!(mode(&path), 0o600);
        // A stale temporary of a crash does not stop the next write.
        fs::write(tmp.path().join("pod.json.tmp"), "torn").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert!(!tmp.path().join("pod.json.tmp").exists());
    }

    #[test]
    fn open_append_creates_with_the_mode_and_tightens_an_old_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.jsonl");
        open_append(&path, 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        set_mode(&path, 0o644);
        open_append(&path, 0o600).unwrap();
        assert_eq!(mode(&path), 0o600);
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(open_append(&link, 0o600).is_err());
    }
}
