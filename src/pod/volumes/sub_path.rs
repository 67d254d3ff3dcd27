//! `subPath` and `subPathExpr`: expanding, checking and resolving a path
//! inside a volume without following symlinks out of it.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::VolumeMount;

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

/// Resolves `sub` inside the volume at `base` the way the kernel would
/// resolve `base/sub`, except that a symlink leading out of the volume (by
/// `..` or an absolute target elsewhere) is an error rather than followed.
/// Missing components are created as directories with the volume's
/// permissions (the kubelet's `SafeMakeDir`). Returns a symlink-free path.
/// Errors do not name where a symlink points: that is the node's business.
pub(super) fn resolve_sub_path(base: &Path, sub: &str) -> Result<PathBuf, String> {
    let real_base =
        fs::canonicalize(base).map_err(|e| format!("volume {}: {e}", base.display()))?;
    let perm = fs::metadata(&real_base)
        .map_err(|e| format!("volume {}: {e}", base.display()))?
        .mode()
        & 0o777;
    let outside = |through: &Path| {
        format!(
            "subPath {sub:?} leads outside the volume through the symlink {:?}",
            through.strip_prefix(&real_base).unwrap_or(through)
        )
    };
    let mut current = real_base.clone();
    // Components still to walk, last one first.
    let mut pending: Vec<OsString> = components_of(Path::new(sub));
    pending.reverse();
    let mut links = 0;
    // The symlink that brought us where we are, for error messages.
    let mut last_link: Option<PathBuf> = None;
    while let Some(part) = pending.pop() {
        if part == ".." {
            if current == real_base {
                return Err(outside(last_link.as_deref().unwrap_or(Path::new(sub))));
            }
            current.pop();
            continue;
        }
        let next = current.join(&part);
        let meta = match fs::symlink_metadata(&next) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match DirBuilder::new().mode(perm).create(&next) {
                    Ok(()) => {}
                    // Created meanwhile: look again.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        pending.push(part);
                        continue;
                    }
                    Err(e) => return Err(format!("creating subPath {sub:?}: {e}")),
                }
                fs::set_permissions(&next, Permissions::from_mode(perm))
                    .map_err(|e| format!("creating subPath {sub:?}: {e}"))?;
                current = next;
                continue;
            }
            Err(e) => return Err(format!("subPath {sub:?}: {e}")),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(format!(
                    "subPath {sub:?}: too many levels of symbolic links"
                ));
            }
            let target = fs::read_link(&next).map_err(|e| format!("subPath {sub:?}: {e}"))?;
            if target.is_absolute() {
                // Only an absolute link back into the volume itself is fine.
                let inside = target
                    .strip_prefix(&real_base)
                    .or_else(|_| target.strip_prefix(base))
                    .map_err(|_| outside(&next))?;
                current = real_base.clone();
                pending.extend(components_of(inside).into_iter().rev());
            } else {
                pending.extend(components_of(&target).into_iter().rev());
            }
            last_link = Some(next);
            continue;
        }
        if !meta.is_dir() && !pending.is_empty() {
            return Err(format!(
                "subPath {sub:?}: {:?} is not a directory",
                next.strip_prefix(&real_base).unwrap_or(&next)
            ));
        }
        current = next;
    }
    Ok(current)
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
    use std::os::unix::fs::symlink;

    #[test]
    fn sub_path_is_created_as_a_directory_with_the_volume_mode() {
        let tmp = tempfile::tempdir().unwrap();
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
        assert_eq!(list[0].source().as_deref(), Some(expected.as_path()));
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
        for sub in [
            "real/app.conf",
            "link/app.conf",
            "absolute-link/app.conf",
            "./real//app.conf",
        ] {
            let list = mounts(
                &host_path("h", &host, "Directory"),
                &format!("    - {{name: h, mountPath: /etc/app.conf, subPath: \"{sub}\"}}\n"),
                &tmp.path().join("v"),
                false,
                &[],
            )
            .unwrap();
            assert_eq!(list[0].source().as_deref(), Some(real.as_path()), "{sub}");
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

    #[test]
    fn sub_path_expr_is_expanded_with_the_container_env() {
        let tmp = tempfile::tempdir().unwrap();
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
        assert_eq!(list[0].source().as_deref(), Some(expected.as_path()));
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
