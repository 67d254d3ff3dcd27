//! `subPath` and `subPathExpr`: expanding, checking and opening a path
//! inside a volume by file descriptor, without following symlinks out of it.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::{fs, io};

use k8s_openapi::api::core::v1::VolumeMount;

use crate::host::fd;
use crate::runtime::env;

use super::{VolumeError, MAX_SYMLINKS};

/// The mount's subPath (with the field it came from), `subPathExpr`
/// expanded; `None` for the whole volume.
pub(super) fn sub_path(
    mount: &VolumeMount,
    env: &HashMap<String, String>,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<(&'static str, String)>, VolumeError> {
    let plain = mount.sub_path.as_deref().unwrap_or("");
    let expr = mount.sub_path_expr.as_deref().unwrap_or("");
    let (field, sub) = match (plain.is_empty(), expr.is_empty()) {
        (true, true) => return Ok(None),
        (false, false) => {
            return Err(VolumeError::new(
                at(".subPathExpr"),
                "subPath and subPathExpr are mutually exclusive",
            ))
        }
        (false, true) => (".subPath", plain.to_string()),
        (true, false) => {
            let expanded = expand_sub_path_expr(expr, env)
                .map_err(|m| VolumeError::new(at(".subPathExpr"), m))?;
            (".subPathExpr", expanded)
        }
    };
    if sub.starts_with('/') {
        return Err(VolumeError::new(
            at(field),
            format!("{sub:?} must be a relative path"),
        ));
    }
    if sub.split('/').any(|part| part == "..") {
        return Err(VolumeError::new(
            at(field),
            format!("{sub:?} must not contain '..'"),
        ));
    }
    if sub.contains('\0') {
        return Err(VolumeError::new(at(field), "must not contain NUL"));
    }
    // An expression that expands to nothing but separators means the
    // whole volume, as `filepath.Join(volume, sub)` does in the kubelet.
    if sub.split('/').all(|part| part.is_empty() || part == ".") {
        return Ok(None);
    }
    Ok(Some((field, sub)))
}

/// The longest subPathExpr expansion: the kernel's `PATH_MAX`, as no
/// longer path can be mounted. A container's variables may total 1 MiB,
/// so without it every volumeMount naming one many times could take that
/// many times over.
const MAX_SUB_PATH_BYTES: usize = libc::PATH_MAX as usize;

/// Expands `$(VAR)` in a subPathExpr with Kubernetes' syntax
/// ([`env::expand`]). Unlike in `command` and `env`, a variable that is
/// missing or empty is an error, as the kubelet has it: the mount would
/// otherwise silently land elsewhere in the volume.
fn expand_sub_path_expr(expr: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let missing = RefCell::new(BTreeSet::new());
    let lookup = |name: &str| match env.get(name).filter(|v| !v.is_empty()) {
        Some(value) => Some(value.as_str()),
        None => {
            missing.borrow_mut().insert(name.to_string());
            None
        }
    };
    let out = env::expand(expr, &lookup, MAX_SUB_PATH_BYTES)
        .map_err(|e| format!("{expr:?}: {e}, longer than any path"))?;
    let missing = missing.into_inner();
    if missing.is_empty() {
        Ok(out)
    } else {
        let names: Vec<String> = missing.into_iter().collect();
        Err(format!("{expr:?}: missing value for {}", names.join(", ")))
    }
}

/// Most directories a subPath walk holds open at once (one descriptor per
/// level), so a subPath or a chain of symlinks cannot exhaust descriptors.
const MAX_DEPTH: usize = 256;
/// How often a name that vanished or appeared while being created is
/// looked up again before giving up: a container racing the walk gets an
/// error, never a loop.
const MAX_RETRIES: usize = 16;

/// Opens `sub` inside the volume at `base` the way the kernel would resolve
/// `base/sub`, except that a symlink leading out of the volume (by `..` or
/// an absolute target elsewhere) is an error rather than followed. Missing
/// components are created as directories with the volume's permissions (the
/// kubelet's `SafeMakeDir`). Returns a descriptor of what `sub` names, to be
/// bind-mounted from (`pin::pin_sub_path`).
///
/// Every step is relative to a descriptor already held: each name is opened
/// with `O_NOFOLLOW` in the directory opened before it, a symlink is read
/// from the descriptor of the link itself and resolved by this walk, `..`
/// goes back to the directory the walk came from, and a created directory
/// gets its mode by `fchmod` on its own descriptor. So a container that
/// swaps a directory of the volume for a symlink while this runs can make
/// it fail, but never makes it create, chmod or return anything outside the
/// volume. Errors do not name where a symlink points: that is the node's
/// business.
pub(super) fn open_sub_path(base: &Path, sub: &str) -> Result<OwnedFd, String> {
    let in_volume = |e: io::Error| format!("volume {}: {e}", base.display());
    let real_base = fs::canonicalize(base).map_err(in_volume)?;
    let root = fd::open_dir(&real_base).map_err(in_volume)?;
    let perm = fd::fstat(root.as_fd()).map_err(in_volume)?.st_mode & 0o777;
    let failed = |e: io::Error| format!("subPath {sub:?}: {e}");
    let outside = |link: &OsStr| {
        format!("subPath {sub:?} leads outside the volume through the symlink {link:?}")
    };
    // The directories walked so far, the volume first: `..` pops one.
    let mut dirs: Vec<OwnedFd> = vec![root];
    // Components still to walk, last one first.
    let mut pending: Vec<OsString> = components_of(Path::new(sub));
    pending.reverse();
    let (mut links, mut retries) = (0, 0);
    while let Some(part) = pending.pop() {
        if part == ".." {
            if dirs.len() == 1 {
                return Err(outside(&part));
            }
            dirs.pop();
            continue;
        }
        let name = fd::c_name(&part).map_err(failed)?;
        let dir = dirs.last().expect("the volume is never popped").as_fd();
        let (opened, created) = match fd::open_at(dir, &name, fd::PATH_NOFOLLOW) {
            Ok(opened) => (opened, false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match make_dir(dir, &name, perm) {
                    Ok(made) => (made, true),
                    // Made or removed meanwhile: look again.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                        ) && retries < MAX_RETRIES =>
                    {
                        retries += 1;
                        pending.push(part);
                        continue;
                    }
                    Err(e) => return Err(format!("creating subPath {sub:?}: {e}")),
                }
            }
            Err(e) => return Err(failed(e)),
        };
        let st = fd::fstat(opened.as_fd()).map_err(failed)?;
        if !created && fd::is_type(&st, libc::S_IFLNK) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(format!(
                    "subPath {sub:?}: too many levels of symbolic links"
                ));
            }
            let target = PathBuf::from(fd::read_link(opened.as_fd()).map_err(failed)?);
            if target.is_absolute() {
                // Only an absolute link back into the volume itself is fine.
                let inside = target
                    .strip_prefix(&real_base)
                    .or_else(|_| target.strip_prefix(base))
                    .map_err(|_| outside(&part))?;
                dirs.truncate(1);
                pending.extend(components_of(inside).into_iter().rev());
            } else {
                pending.extend(components_of(&target).into_iter().rev());
            }
            continue;
        }
        if !fd::is_type(&st, libc::S_IFDIR) && !pending.is_empty() {
            return Err(format!("subPath {sub:?}: {part:?} is not a directory"));
        }
        if dirs.len() > MAX_DEPTH {
            return Err(format!(
                "subPath {sub:?}: more than {MAX_DEPTH} directories deep"
            ));
        }
        dirs.push(opened);
    }
    Ok(dirs.pop().expect("the volume is never popped"))
}

/// `name` made in `dir` as a directory with exactly `perm`: created with
/// `mkdirat`, opened without following a symlink (one swapped in since is
/// refused), and `fchmod`ed through that descriptor.
fn make_dir(dir: BorrowedFd<'_>, name: &CStr, perm: u32) -> io::Result<OwnedFd> {
    fd::mkdir_at(dir, name, perm)?;
    let made = fd::open_at(dir, name, fd::DIR_NOFOLLOW)?;
    fd::fchmod(made.as_fd(), perm)?;
    Ok(made)
}

/// The normal and `..` components of a path, as owned names.
fn components_of(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::pod::volumes::test_support::*;

    use super::*;
    use std::collections::HashMap;
    use std::fs;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn sub_path_is_created_as_a_directory_with_the_volume_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let _unpin = Unpin(tmp.path().into());
        let list = mounts(
            "  - name: cache\n    emptyDir: {}\n",
            "    - {name: cache, mountPath: /logs, subPath: app/logs}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap();
        let expected = fs::canonicalize(tmp.path())
            .unwrap()
            .join("empty-dir/cache/app/logs");
        assert_pinned(&list[0], tmp.path(), 0, &expected);
        assert!(expected.is_dir());
        assert_eq!(mode(&expected), 0o777);
        assert_eq!(mode(expected.parent().unwrap()), 0o777);
    }

    #[test]
    fn sub_path_may_name_a_file_and_follow_symlinks_inside_the_volume() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir_all(host.join("real")).unwrap();
        fs::write(host.join("real/app.conf"), "x").unwrap();
        symlink("real", host.join("link")).unwrap();
        symlink(host.join("real"), host.join("absolute-link")).unwrap();
        let real = fs::canonicalize(host.join("real/app.conf")).unwrap();
        let root = tmp.path().join("v");
        let _unpin = Unpin(root.clone());
        for sub in [
            "real/app.conf",
            "link/app.conf",
            "absolute-link/app.conf",
            "./real//app.conf",
        ] {
            let list = mounts(
                &host_path("h", &host, "Directory"),
                &format!("    - {{name: h, mountPath: /etc/app.conf, subPath: \"{sub}\"}}\n"),
                &root,
                false,
                &[],
            )
            .unwrap();
            assert_pinned(&list[0], &root, 0, &real);
            assert!(list[0].source().as_ref().unwrap().is_file(), "{sub}");
        }
    }

    #[test]
    fn sub_path_with_dot_dot_or_absolute_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for sub in ["../x", "a/../../x", "a/..", "/etc"] {
            let err = mounts(
                "  - name: cache\n    emptyDir: {}\n",
                &format!("    - {{name: cache, mountPath: /x, subPath: \"{sub}\"}}\n"),
                tmp.path(),
                false,
                &[],
            )
            .unwrap_err();
            assert_eq!(
                err.field, "spec.containers[app].volumeMounts[cache].subPath",
                "{sub}"
            );
            assert_eq!(err.reason(), "CreateContainerConfigError");
        }
    }

    #[test]
    fn sub_path_through_a_symlink_pointing_outside_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        let secret = tmp.path().join("secret");
        fs::create_dir_all(&host).unwrap();
        fs::create_dir_all(&secret).unwrap();
        symlink(&secret, host.join("absolute")).unwrap();
        symlink("../secret", host.join("relative")).unwrap();
        symlink("inner/../../secret", host.join("sneaky")).unwrap();
        fs::create_dir(host.join("inner")).unwrap();
        symlink("/etc/passwd", host.join("passwd")).unwrap();
        symlink("loop", host.join("loop")).unwrap();
        for sub in [
            "absolute",
            "relative/x",
            "sneaky",
            "passwd",
            "loop",
            "absolute/new-dir",
        ] {
            let err = mounts(
                &host_path("h", &host, "Directory"),
                &format!("    - {{name: h, mountPath: /x, subPath: \"{sub}\"}}\n"),
                &tmp.path().join("v"),
                false,
                &[],
            )
            .unwrap_err();
            assert_eq!(
                err.field, "spec.containers[app].volumeMounts[h].subPath",
                "{sub}"
            );
            assert!(
                !err.message.contains(&secret.display().to_string()),
                "the error must not reveal the target: {err}"
            );
        }
        assert!(!secret.join("new-dir").exists());
        assert!(!secret.join("x").exists());
    }

    /// A container swapping a directory of its volume for a symlink to a
    /// host directory while the agent opens a subPath through it: the walk
    /// may fail, but never creates, chmods or returns anything outside.
    #[test]
    fn a_directory_swapped_for_a_symlink_never_leads_the_walk_outside() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let volume = tmp.path().join("volume");
        let host = tmp.path().join("host");
        fs::create_dir(&volume).unwrap();
        fs::create_dir(&host).unwrap();
        fs::set_permissions(&volume, fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(&host, fs::Permissions::from_mode(0o700)).unwrap();
        let real_volume = fs::canonicalize(&volume).unwrap();
        let (stop, swaps) = (AtomicBool::new(false), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let sub = volume.join("sub");
                while !stop.load(Ordering::Relaxed) {
                    let n = swaps.fetch_add(1, Ordering::Relaxed);
                    let _ = fs::create_dir(&sub);
                    std::thread::yield_now();
                    // The directory (with what the walk made in it) moves
                    // away inside the volume; a symlink takes its place.
                    let _ = fs::rename(&sub, volume.join(format!("old-{n}")));
                    let _ = symlink(&host, &sub);
                    std::thread::yield_now();
                    let _ = fs::remove_file(&sub);
                }
            });
            // Checked here, asserted once the racing thread has stopped.
            let outcome = (|| {
                let mut walks = 0;
                while walks < 2000 || swaps.load(Ordering::Relaxed) < 200 {
                    walks += 1;
                    if let Ok(opened) = open_sub_path(&volume, "sub/x/y") {
                        let at = fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd()));
                        let at = at.unwrap();
                        if !at.starts_with(&real_volume) {
                            return Err(format!("walk {walks} ended at {at:?}"));
                        }
                    }
                    if fs::read_dir(&host).unwrap().count() != 0 {
                        return Err(format!(
                            "walk {walks} created something in the host directory"
                        ));
                    }
                    if walks > 1_000_000 {
                        return Err("the racing thread never ran".into());
                    }
                }
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            outcome
        })
        .unwrap();
        assert_eq!(mode(&host), 0o700);
    }

    #[test]
    fn sub_path_expr_is_expanded_with_the_container_env() {
        let tmp = tempfile::tempdir().unwrap();
        let _unpin = Unpin(tmp.path().into());
        let volume = "  - name: cache\n    emptyDir: {}\n";
        let env = [("POD_NAME", "web-node1"), ("EMPTY", "")];
        let list = mounts(
            volume,
            "    - {name: cache, mountPath: /logs, subPathExpr: \"$(POD_NAME)/logs$$x$y\"}\n",
            tmp.path(),
            false,
            &env,
        )
        .unwrap();
        let expected = fs::canonicalize(tmp.path())
            .unwrap()
            .join("empty-dir/cache/web-node1/logs$x$y");
        assert_pinned(&list[0], tmp.path(), 0, &expected);
        assert!(expected.is_dir());

        for (expr, message) in [
            ("$(NOPE)/x", "missing value for NOPE"),
            ("$(EMPTY)", "missing value for EMPTY"),
            ("$(POD_NAME)/../..", "'..'"),
        ] {
            let err = mounts(
                volume,
                &format!("    - {{name: cache, mountPath: /logs, subPathExpr: \"{expr}\"}}\n"),
                tmp.path(),
                false,
                &env,
            )
            .unwrap_err();
            assert_eq!(
                err.field,
                "spec.containers[app].volumeMounts[cache].subPathExpr"
            );
            assert!(err.message.contains(message), "{expr}: {err}");
        }
        let err = mounts(
            volume,
            "    - {name: cache, mountPath: /l, subPath: a, subPathExpr: b}\n",
            tmp.path(),
            false,
            &env,
        )
        .unwrap_err();
        assert!(err.message.contains("mutually exclusive"), "{err}");
    }

    #[test]
    fn sub_path_expr_refuses_missing_or_empty_variables() {
        let env: HashMap<String, String> = [("A", "1"), ("E", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(expand_sub_path_expr("$(A)-$$(Z)", &env).unwrap(), "1-$(Z)");
        let err = expand_sub_path_expr("$(Z)$(Y)$(Z)$(E)", &env).unwrap_err();
        assert!(err.ends_with("missing value for E, Y, Z"), "{err}");
    }

    #[test]
    fn sub_path_expr_expansion_is_bounded() {
        let env = HashMap::from([("A".to_string(), "a".repeat(1000))]);
        assert!(expand_sub_path_expr("$(A)/$(A)", &env).is_ok());
        let Err(err) = expand_sub_path_expr(&"$(A)".repeat(5), &env) else {
            panic!("the expansion was not bounded");
        };
        assert!(err.contains("expands to more than 4096 bytes"), "{err}");
    }
}
