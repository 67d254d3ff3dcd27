//! One container's `volumeMounts` as OCI bind mounts, with propagation.

use std::collections::{HashMap, HashSet};
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, VolumeMount};
use oci_spec::runtime::Mount;

use super::pin::{pin_sub_path, release_sub_paths};
use super::sub_path::{open_sub_path, sub_path};
use super::{
    HostPathType, PreparedVolume, PreparedVolumes, VolumeError, VolumeKind, HOST_DIR_MODE,
};

/// OCI mounts for one container's `volumeMounts`, as containerd's CRI plugin
/// builds them from the kubelet's: `bind` mounts with `rbind`, the
/// propagation (`rprivate`, `rslave` for HostToContainer, `rshared` for
/// Bidirectional, which only privileged containers may use) and `ro`/`rw`,
/// sorted so that a parent directory is mounted before what is mounted
/// inside it.
///
/// `subPath`, or `subPathExpr` expanded (`$(VAR)`) with `env` (the
/// container's final environment; a missing or empty variable is an error,
/// as in the kubelet), selects a path inside the volume: relative, without
/// `..`, opened by file descriptor through symlinks only as long as they
/// stay inside the volume, and created as a directory (with the volume's
/// permissions) when missing. As the kubelet does, the opened subPath is
/// pinned: bind-mounted from its descriptor onto
/// `<volume root>/volume-subpaths/<container_id>/<index>`, which becomes
/// the mount source, so a container swapping a directory for a symlink
/// cannot redirect runc's mount. Pins left by an earlier call for the same
/// `container_id` are released first; the caller releases them
/// ([`release_sub_paths`]) when the container is not created or removed.
/// A hostPath without a type that does not exist is created as a
/// directory, as containerd's CRI plugin does for missing mount sources.
pub fn container_mounts(
    prepared: &PreparedVolumes,
    container: &Container,
    container_id: &str,
    list: &str,
    privileged: bool,
    env: &HashMap<String, String>,
) -> Result<Vec<Mount>, VolumeError> {
    // Everything that can be wrong with the manifest is checked before
    // anything is created on the node.
    let mut checked = Vec::new();
    let mut destinations = HashSet::new();
    for (index, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let at = |field: &str| {
            format!(
                "{list}[{}].volumeMounts[{}]{field}",
                container.name, mount.name
            )
        };
        let volume = prepared.get(&mount.name).ok_or_else(|| {
            VolumeError::new(
                at(".name"),
                format!("no volume named {:?} in spec.volumes", mount.name),
            )
        })?;
        let destination = mount_destination(&mount.mount_path)
            .map_err(|m| VolumeError::new(at(".mountPath"), m))?;
        if !destinations.insert(destination.clone()) {
            return Err(VolumeError::new(
                at(".mountPath"),
                format!(
                    "{:?} is already mounted by another volumeMount of this container",
                    mount.mount_path
                ),
            ));
        }
        let propagation = propagation(mount, privileged)
            .map_err(|m| VolumeError::new(at(".mountPropagation"), m))?;
        check_recursive_read_only(mount)
            .map_err(|m| VolumeError::new(at(".recursiveReadOnly"), m))?;
        let sub = sub_path(mount, env, &at)?;
        let read_only = mount.read_only.unwrap_or(false) || volume.read_only;
        checked.push((
            index,
            at(""),
            volume,
            destination,
            propagation,
            sub,
            read_only,
        ));
    }

    let root = prepared.root();
    release_sub_paths(root, container_id).map_err(|e| {
        VolumeError::new(
            format!("{list}[{}].volumeMounts", container.name),
            format!("releasing the subPaths pinned earlier: {e}"),
        )
    })?;
    let mut mounts = Vec::with_capacity(checked.len());
    for (index, at, volume, destination, propagation, sub, read_only) in checked {
        let source = match mount_source(root, container_id, index, volume, sub) {
            Ok(source) => source,
            Err((field, message)) => {
                if let Err(e) = release_sub_paths(root, container_id) {
                    tracing::warn!(container = container_id, error = %e, "cannot release the pinned subPaths");
                }
                return Err(VolumeError::new(format!("{at}{field}"), message));
            }
        };
        let options = vec![
            "rbind".to_string(),
            propagation.to_string(),
            if read_only { "ro" } else { "rw" }.to_string(),
        ];
        let mut oci = Mount::default();
        oci.set_destination(destination)
            .set_typ(Some("bind".into()))
            .set_source(Some(source))
            .set_options(Some(options));
        mounts.push(oci);
    }
    // Stable: mounts at the same depth keep the manifest's order.
    mounts.sort_by_key(|m| m.destination().components().count());
    Ok(mounts)
}

/// The bind mount source of one volumeMount: the volume, or its subPath
/// opened and pinned. Errors carry the field (relative to the mount) they
/// are about.
fn mount_source(
    root: &Path,
    container_id: &str,
    index: usize,
    volume: &PreparedVolume,
    sub: Option<(&'static str, String)>,
) -> Result<PathBuf, (&'static str, String)> {
    if volume.kind == VolumeKind::HostPath(HostPathType::Unchecked) {
        create_unchecked_host_path(&volume.path)
            .map_err(|e| ("", format!("creating {}: {e}", volume.path.display())))?;
    }
    let Some((field, sub)) = sub else {
        return Ok(volume.path.clone());
    };
    let target = open_sub_path(&volume.path, &sub).map_err(|m| (field, m))?;
    pin_sub_path(root, container_id, index, &target)
        .map_err(|e| (field, format!("pinning subPath {sub:?}: {e}")))
}

/// The rootfs propagation a container needs for `mounts` to propagate as
/// asked, as containerd's CRI plugin sets it: `rshared` with any
/// Bidirectional mount, else `rslave` with any HostToContainer mount. For
/// the spec builder (`linux.rootfsPropagation`).
pub fn rootfs_propagation(mounts: &[Mount]) -> Option<&'static str> {
    let has = |option: &str| {
        mounts
            .iter()
            .any(|m| m.options().iter().flatten().any(|o| o.as_str() == option))
    };
    if has("rshared") {
        Some("rshared")
    } else if has("rslave") {
        Some("rslave")
    } else {
        None
    }
}

/// The container path: absolute as the kubelet makes it (a relative
/// `mountPath` is taken from `/`), cleaned so duplicates are recognized.
fn mount_destination(mount_path: &str) -> Result<PathBuf, String> {
    if mount_path.is_empty() {
        return Err("a mountPath is required".into());
    }
    if mount_path.contains('\0') {
        return Err("mountPath must not contain NUL".into());
    }
    let mut clean = PathBuf::from("/");
    for component in Path::new(mount_path).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    Ok(clean)
}

fn propagation(mount: &VolumeMount, privileged: bool) -> Result<&'static str, String> {
    match mount.mount_propagation.as_deref() {
        None | Some("") | Some("None") => Ok("rprivate"),
        Some("HostToContainer") => Ok("rslave"),
        Some("Bidirectional") if privileged => Ok("rshared"),
        Some("Bidirectional") => {
            Err("Bidirectional mount propagation is available only to privileged containers".into())
        }
        Some(other) => Err(format!(
            "unknown mode {other:?}; expected None, HostToContainer or Bidirectional"
        )),
    }
}

/// `recursiveReadOnly`: containerd 1.6 cannot report support for recursive
/// read-only mounts, so, like the kubelet on such a runtime, `IfPossible`
/// falls back to a plain `ro` mount and `Enabled` is refused.
fn check_recursive_read_only(mount: &VolumeMount) -> Result<(), String> {
    let read_only = mount.read_only.unwrap_or(false);
    match mount.recursive_read_only.as_deref() {
        None | Some("") | Some("Disabled") => Ok(()),
        Some("IfPossible") | Some("Enabled") if !read_only => {
            Err("recursiveReadOnly needs readOnly: true".into())
        }
        Some("IfPossible") => Ok(()),
        Some("Enabled") => Err(
            "recursive read-only mounts are not supported by containerd 1.6; use IfPossible".into(),
        ),
        Some(other) => Err(format!(
            "unknown value {other:?}; expected Disabled, IfPossible or Enabled"
        )),
    }
}

fn create_unchecked_host_path(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(HOST_DIR_MODE)
            .create(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::volumes::test_support::*;
    use crate::pod::volumes::*;
    use k8s_openapi::api::core::v1::{Container, VolumeMount};
    use std::collections::HashMap;

    #[test]
    fn untyped_host_path_is_created_as_a_directory_when_mounted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("later/dir");
        let volumes = host_path("h", &path, "");
        let root = tmp.path().join("v");
        let p = pod(&volumes, "    - {name: h, mountPath: /h}\n");
        let prepared = prepare(&p, &root).unwrap();
        assert!(
            !path.exists(),
            "prepare checks nothing for an untyped hostPath"
        );
        let list = container_mounts(
            &prepared,
            container(&p),
            TEST_ID,
            "spec.containers",
            false,
            &HashMap::new(),
        )
        .unwrap();
        assert!(path.is_dir());
        assert_eq!(list[0].source().as_deref(), Some(path.as_path()));
    }

    #[test]
    fn a_mount_of_an_unknown_volume_is_a_container_config_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = mounts(
            "  - name: cache\n    emptyDir: {}\n",
            "    - {name: data, mountPath: /data}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "spec.containers[app].volumeMounts[data].name");
        assert!(err.message.contains("no volume named \"data\""), "{err}");
        assert_eq!(err.reason(), "CreateContainerConfigError");

        // The mounts are checked before any subPath is created.
        mounts(
            "  - name: cache\n    emptyDir: {}\n",
            "    - {name: cache, mountPath: /a, subPath: made}\n    - {name: data, mountPath: /b}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap_err();
        assert!(!tmp.path().join("empty-dir/cache/made").exists());
    }

    #[test]
    fn mounts_are_rbind_with_ro_or_rw_and_downward_api_is_always_ro() {
        let tmp = tempfile::tempdir().unwrap();
        let list = mounts(
            "  - name: cache\n    emptyDir: {}\n  - name: info\n    downwardAPI: {items: []}\n",
            "    - {name: cache, mountPath: /rw}\n    - {name: cache, mountPath: /ro, readOnly: true}\n    - {name: info, mountPath: /info}\n    - {name: cache, mountPath: relative}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap();
        let by_destination: HashMap<_, _> = list
            .iter()
            .map(|m| (m.destination().display().to_string(), m))
            .collect();
        let rw = by_destination["/rw"];
        assert_eq!(rw.typ().as_deref(), Some("bind"));
        assert_eq!(
            rw.source().as_deref(),
            Some(tmp.path().join("empty-dir/cache").as_path())
        );
        assert_eq!(options(rw), ["rbind", "rprivate", "rw"]);
        assert_eq!(options(by_destination["/ro"]), ["rbind", "rprivate", "ro"]);
        assert_eq!(
            options(by_destination["/info"]),
            ["rbind", "rprivate", "ro"]
        );
        // A relative mountPath is taken from the container's root, as the kubelet does.
        assert!(by_destination.contains_key("/relative"));
    }

    #[test]
    fn propagation_modes_map_to_rprivate_rslave_rshared() {
        let tmp = tempfile::tempdir().unwrap();
        let list = mounts(
            "  - name: cache\n    emptyDir: {}\n",
            "    - {name: cache, mountPath: /a}\n    - {name: cache, mountPath: /b, mountPropagation: None}\n    - {name: cache, mountPath: /c, mountPropagation: HostToContainer}\n    - {name: cache, mountPath: /d, mountPropagation: Bidirectional}\n",
            tmp.path(),
            true,
            &[],
        )
        .unwrap();
        let propagation: Vec<_> = list.iter().map(|m| options(m)[1].clone()).collect();
        assert_eq!(propagation, ["rprivate", "rprivate", "rslave", "rshared"]);
        assert_eq!(rootfs_propagation(&list), Some("rshared"));
        assert_eq!(rootfs_propagation(&list[..3]), Some("rslave"));
        assert_eq!(rootfs_propagation(&list[..2]), None);
    }

    #[test]
    fn bidirectional_propagation_needs_a_privileged_container() {
        let tmp = tempfile::tempdir().unwrap();
        let err = mounts(
            "  - name: cache\n    emptyDir: {}\n",
            "    - {name: cache, mountPath: /d, mountPropagation: Bidirectional}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "spec.containers[app].volumeMounts[cache].mountPropagation"
        );
        assert!(err.message.contains("privileged"), "{err}");
        let err = mounts(
            "  - name: cache\n    emptyDir: {}\n",
            "    - {name: cache, mountPath: /d, mountPropagation: Sideways}\n",
            tmp.path(),
            true,
            &[],
        )
        .unwrap_err();
        assert!(err.message.contains("Sideways"), "{err}");
    }

    #[test]
    fn recursive_read_only_if_possible_is_plain_ro_and_enabled_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = "  - name: cache\n    emptyDir: {}\n";
        let list = mounts(
            volume,
            "    - {name: cache, mountPath: /a, readOnly: true, recursiveReadOnly: IfPossible}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap();
        assert_eq!(options(&list[0]), ["rbind", "rprivate", "ro"]);
        let err = mounts(
            volume,
            "    - {name: cache, mountPath: /a, readOnly: true, recursiveReadOnly: Enabled}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "spec.containers[app].volumeMounts[cache].recursiveReadOnly"
        );
    }

    #[test]
    fn mounts_are_sorted_parents_first_and_destinations_are_unique() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = "  - name: cache\n    emptyDir: {}\n";
        let list = mounts(
            volume,
            "    - {name: cache, mountPath: /a/b/c}\n    - {name: cache, mountPath: /z}\n    - {name: cache, mountPath: /a/b}\n    - {name: cache, mountPath: /a}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap();
        let order: Vec<_> = list
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(order, ["/z", "/a", "/a/b", "/a/b/c"]);
        let err = mounts(
            volume,
            "    - {name: cache, mountPath: /a}\n    - {name: cache, mountPath: /a/}\n",
            tmp.path(),
            false,
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "spec.containers[app].volumeMounts[cache].mountPath"
        );
    }

    #[test]
    fn init_containers_name_their_list_in_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let p = pod("  - name: cache\n    emptyDir: {}\n", "      []\n");
        let prepared = prepare(&p, tmp.path()).unwrap();
        let init = Container {
            name: "setup".into(),
            volume_mounts: Some(vec![VolumeMount {
                name: "gone".into(),
                mount_path: "/x".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let err = container_mounts(
            &prepared,
            &init,
            TEST_ID,
            "spec.initContainers",
            false,
            &HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.field,
            "spec.initContainers[setup].volumeMounts[gone].name"
        );
        assert_eq!(err.reason(), "CreateContainerConfigError");
    }
}
