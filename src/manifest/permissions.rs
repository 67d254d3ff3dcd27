//! Who may write the manifests. A static pod can run privileged containers
//! with the host's filesystem mounted, so whoever can write a manifest is
//! root on the node: the manifest directory and every manifest in it must be
//! owned by root and writable by nobody else. (Owned by the agent's own user
//! also passes, as in sshd's StrictModes: that user can do all the agent can
//! anyway, and the agent runs as root in production.)
//!
//! The agent checks the whole directory once at start-up and refuses to run
//! otherwise ([`check_dir`]); afterwards the source refuses each manifest
//! that fails [`insecure_reason`] before reading it, so a file added or
//! loosened while the agent runs is not run either.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::source::{classify, Entry};

/// Group and others' write bits.
const FOREIGN_WRITE: u32 = 0o022;

#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is {reason}; a static pod can run privileged containers, so the manifest \
     directory and its manifests must be owned by root and writable only by root \
     (fix with: chown root {path} && chmod go-w {path})",
    path = .path.display()
)]
pub struct InsecureManifest {
    pub path: PathBuf,
    pub reason: String,
}

/// Checks the manifest directory and every entry that would be read as a
/// manifest. A missing directory passes: the source reports it and runs
/// nothing until it appears, and the files then get the per-file check.
pub fn check_dir(dir: &Path) -> Result<(), InsecureManifest> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(InsecureManifest {
                path: dir.to_path_buf(),
                reason: format!("not readable to check its permissions ({e})"),
            })
        }
    };
    refuse(dir, insecure_reason(dir))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if matches!(classify(&path), Entry::Manifest) {
            refuse(&path, insecure_reason(&path))?;
        }
    }
    Ok(())
}

fn refuse(path: &Path, reason: Option<String>) -> Result<(), InsecureManifest> {
    match reason {
        None => Ok(()),
        Some(reason) => Err(InsecureManifest {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

/// Why `path` may be changed by someone other than root, if it may. A
/// symlink must itself be root's (its own mode means nothing), and what it
/// points to is judged like a file. A path that vanished passes: there is
/// nothing left to read, and the reader treats that as a removal.
pub fn insecure_reason(path: &Path) -> Option<String> {
    let unchecked = |e: std::io::Error| {
        (e.kind() != std::io::ErrorKind::NotFound).then(|| format!("not checkable ({e})"))
    };
    let link = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => return unchecked(e),
    };
    if link.file_type().is_symlink() && !trusted(link.uid(), effective_uid()) {
        return Some(format!("a symlink owned by uid {}, not root", link.uid()));
    }
    match std::fs::metadata(path) {
        Ok(meta) => mode_reason(meta.mode(), meta.uid(), effective_uid()),
        Err(e) => unchecked(e),
    }
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
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

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
        let set_mode = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set_mode(dir.path(), 0o755);
        assert!(check_dir(&dir.path().join("missing")).is_ok());
        assert!(check_dir(dir.path()).is_ok());

        let manifest = dir.path().join("web.yaml");
        std::fs::write(&manifest, "").unwrap();
        set_mode(&manifest, 0o644);
        assert!(check_dir(dir.path()).is_ok());

        // An ignored entry is never read, so its mode does not matter.
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, "").unwrap();
        set_mode(&notes, 0o666);
        assert!(check_dir(dir.path()).is_ok());

        set_mode(&manifest, 0o666);
        let error = check_dir(dir.path()).unwrap_err();
        assert_eq!(error.path, manifest);
        assert!(error.to_string().contains("mode 0666"), "{error}");
        set_mode(&manifest, 0o644);

        if effective_uid() == 0 {
            std::os::unix::fs::chown(&manifest, Some(65534), None).unwrap();
            let error = check_dir(dir.path()).unwrap_err();
            assert!(error.to_string().contains("owned by uid 65534"), "{error}");
            std::os::unix::fs::chown(&manifest, Some(0), None).unwrap();
        }

        set_mode(dir.path(), 0o775);
        let error = check_dir(dir.path()).unwrap_err();
        assert_eq!(error.path, dir.path());
    }
}
