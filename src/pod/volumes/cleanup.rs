//! Removing a pod's volume root: unmounting what is mounted under it, then
//! deleting the tree through file descriptors ([`remove_tree`]).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::{fs, io};

use super::local::unmount;
use crate::host::{remove_tree, SafePath};

/// Unmounts every mount at or under `root` (tmpfs emptyDirs, or anything
/// else left there) with MNT_DETACH, then removes `root` without following
/// symlinks and without descending into another filesystem, so hostPath
/// content (never under `root`, but reachable through a symlink or a stray
/// bind mount) is never touched. A missing `root` is fine; a `root` that is
/// not the directory its components name (a symlink on the way) is refused
/// before anything is unmounted.
pub fn cleanup(root: &SafePath) -> io::Result<()> {
    let path = root.path();
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory; not removing it", path.display()),
            ))
        }
        Ok(_) => {}
    }
    let real = fs::canonicalize(&path)?;
    let mut expected = fs::canonicalize(root.trusted())?;
    expected.extend(root.components());
    if real != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} leads to {} through a symlink; not removing it",
                path.display(),
                real.display()
            ),
        ));
    }
    // Stacked mounts need one unmount each; a few rounds cover them.
    for _ in 0..8 {
        let mut mounted = mounts_at_or_under(&real)?;
        if mounted.is_empty() {
            break;
        }
        mounted.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in &mounted {
            match unmount(point, libc::MNT_DETACH) {
                Ok(()) => tracing::debug!(path = %point.display(), "unmounted"),
                // Gone already (a parent's lazy unmount took it along).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("unmounting {}: {e}", point.display()),
                    ))
                }
            }
        }
    }
    let left = mounts_at_or_under(&real)?;
    if !left.is_empty() {
        return Err(io::Error::other(format!(
            "not removing {}: still mounted: {left:?}",
            path.display()
        )));
    }
    remove_tree(root)
}

/// Mount points at or below `dir` (canonical), from /proc/self/mountinfo.
fn mounts_at_or_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
        .filter(|point| point.starts_with(dir))
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_point(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|d| (d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use crate::pod::volumes::test_support::*;

    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    #[test]
    fn cleanup_removes_the_root_but_never_follows_symlinks_out_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("keep"), "precious").unwrap();
        let safe_root = SafePath::base(tmp.path())
            .join(&["pods", "uid", "volumes"])
            .unwrap();
        let root = safe_root.path();
        let volumes = format!(
            "  - name: cache\n    emptyDir: {{}}\n  - name: info\n    downwardAPI: {{items: [{{path: n, fieldRef: {{fieldPath: metadata.name}}}}]}}\n{}",
            host_path("h", &host, "Directory")
        );
        let prepared = prepare_one(&volumes, &root).unwrap();
        let cache = &prepared.get("cache").unwrap().path;
        // What a container could leave behind in its emptyDir.
        fs::create_dir_all(cache.join("deep/er")).unwrap();
        fs::write(cache.join("deep/er/file"), "x").unwrap();
        symlink(&host, cache.join("to-host-dir")).unwrap();
        symlink(host.join("keep"), cache.join("deep/to-host-file")).unwrap();
        cleanup(&safe_root).unwrap();
        assert!(!root.exists());
        assert!(
            tmp.path().join("pods/uid").is_dir(),
            "only the volume root goes"
        );
        assert_eq!(fs::read_to_string(host.join("keep")).unwrap(), "precious");
        // Again, and for a root that never existed.
        cleanup(&safe_root).unwrap();
        cleanup(&SafePath::base(tmp.path()).join(&["never"]).unwrap()).unwrap();
    }

    #[test]
    fn cleanup_refuses_a_root_that_is_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("keep"), "x").unwrap();
        symlink(&host, tmp.path().join("root")).unwrap();
        let root = SafePath::base(tmp.path()).join(&["root"]).unwrap();
        cleanup(&root).unwrap_err();
        assert!(host.join("keep").exists());
        // A symlink further up: nothing under its target is unmounted or
        // removed.
        fs::create_dir(host.join("volumes")).unwrap();
        fs::write(host.join("volumes/keep"), "x").unwrap();
        cleanup(&root.join(&["volumes"]).unwrap()).unwrap_err();
        assert!(host.join("volumes/keep").exists());
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(
            unescape_mount_point("/a\\040b\\011c\\134d"),
            PathBuf::from("/a b\tc\\d")
        );
        assert_eq!(unescape_mount_point("/x\\0"), PathBuf::from("/x\\0"));
    }
}
