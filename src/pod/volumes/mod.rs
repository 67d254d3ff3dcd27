//! A pod's volumes on the node, the way the kubelet's volume manager and
//! `makeMounts` treat them.
//!
//! [`prepare`] makes every volume of the pod exist under the pod's volume
//! directory (or checks it on the host, for hostPath) before any container
//! is created; [`container_mounts`] turns one container's `volumeMounts`
//! into OCI bind mounts, handling `subPath`/`subPathExpr` and mount
//! propagation as the kubelet and containerd's CRI plugin do; [`cleanup`]
//! removes the pod's volumes once no container uses them.
//!
//! Supported sources are the ones a pod without a control plane can have:
//! emptyDir (on disk or tmpfs), hostPath and downwardAPI (metadata only).
//! Everything else names an API object or an external storage system and is
//! refused with a clear error instead of being silently ignored.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Volume;

use crate::desired::DesiredPod;

mod cleanup;
mod downward_api;
mod host_path;
mod local;
mod mounts;
mod pin;
mod sub_path;
#[cfg(test)]
mod test_support;

pub use cleanup::cleanup;
pub use mounts::{container_mounts, rootfs_propagation};
pub use pin::{release_removed_container, release_sub_paths};

use downward_api::plan_downward_api;
use host_path::{check_host_path, create_host_path, plan_host_path};
use local::{plan_empty_dir, prepare_local, Undo};

/// Subdirectory of the volume root holding emptyDir volumes.
const EMPTY_DIR: &str = "empty-dir";
/// Subdirectory of the volume root holding downwardAPI volumes.
const DOWNWARD_API: &str = "downward-api";
/// emptyDir permissions: world-writable, so containers running as any user
/// can share it (the kubelet's `defaultPerm`).
const EMPTY_DIR_MODE: u32 = 0o777;
/// hostPath `DirectoryOrCreate` directories (the kubelet's `MkdirAll(0755)`).
const HOST_DIR_MODE: u32 = 0o755;
/// hostPath `FileOrCreate` files (the kubelet's `OpenFile(O_CREATE, 0644)`).
const HOST_FILE_MODE: u32 = 0o644;
/// The volume root and the directories grouping volumes by kind (the
/// kubelet's pod volume directory mode).
const ROOT_MODE: u32 = 0o750;
/// Directories podkeeper makes for downwardAPI volumes and their items.
const DOWNWARD_DIR_MODE: u32 = 0o755;
/// `defaultMode` of a downwardAPI volume when the manifest gives none.
const DOWNWARD_DEFAULT_MODE: u32 = 0o644;
/// Symlinks followed while resolving a subPath before giving up, as the
/// kernel's ELOOP limit.
const MAX_SYMLINKS: usize = 40;

/// Why a volume could not be prepared or mounted; `field` points into the
/// pod like the API server's validation errors do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct VolumeError {
    pub field: String,
    pub message: String,
}

impl VolumeError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> VolumeError {
        VolumeError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The kubelet's reason for this error: `FailedMount` (an event on the
    /// pod; its containers stay `ContainerCreating`) when a volume of the
    /// pod could not be set up, `CreateContainerConfigError` (the waiting
    /// reason of one container) when that container's mounts are wrong.
    /// Derived from `field` so errors built elsewhere classify the same way.
    pub fn reason(&self) -> &'static str {
        let container_field = [
            "spec.containers[",
            "spec.initContainers[",
            "spec.ephemeralContainers[",
        ]
        .iter()
        .any(|prefix| self.field.starts_with(prefix));
        if container_field {
            "CreateContainerConfigError"
        } else {
            "FailedMount"
        }
    }
}

/// The pod's volumes, prepared on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolumes {
    root: PathBuf,
    volumes: BTreeMap<String, PreparedVolume>,
}

/// One prepared volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    /// Where the volume's content is on the node: the bind mount source.
    pub path: PathBuf,
    /// Mounted read-only whatever the volumeMount says: the kubelet makes
    /// downwardAPI (like configMap and secret) volumes read-only so that a
    /// container cannot change what the node writes there.
    pub read_only: bool,
    pub kind: VolumeKind,
}

/// What kind of volume a [`PreparedVolume`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// emptyDir on the disk of the volume root.
    EmptyDir,
    /// emptyDir with `medium: Memory`: a tmpfs mounted on the node.
    MemoryEmptyDir,
    /// hostPath with the `type` it was checked against.
    HostPath(HostPathType),
    DownwardApi,
}

/// hostPath `type`, which says what must be at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPathType {
    /// `""` or no type: nothing is checked (and, as containerd's CRI plugin
    /// does, a missing path becomes a directory when a container mounts it).
    Unchecked,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl PreparedVolumes {
    /// The volume root `prepare` was given.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn get(&self, name: &str) -> Option<&PreparedVolume> {
        self.volumes.get(name)
    }

    /// Volumes by name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &PreparedVolume)> {
        self.volumes.iter().map(|(name, v)| (name.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.volumes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.volumes.is_empty()
    }
}

/// Makes every volume of the pod exist on the node under `root` (the agent
/// passes `<state-dir>/pods/<uid>/volumes`):
/// - emptyDir: a directory `<root>/empty-dir/<name>` with mode 0777 like the
///   kubelet's; `medium: Memory` mounts a tmpfs there (`size=<sizeLimit>`
///   when a positive sizeLimit is set, else the kernel's default of half the
///   RAM);
/// - hostPath: checks `type` as the kubelet does, creating the directory
///   (`DirectoryOrCreate`, 0755, with parents) or empty file
///   (`FileOrCreate`, 0644, parent must exist);
/// - downwardAPI: one file per item under `<root>/downward-api/<name>/`
///   with the pod's metadata, in the kubelet's format and modes.
///
/// Every volume is validated before anything is created, and every hostPath
/// is checked before any is created, so a bad manifest leaves nothing
/// behind; what this call created under `root` is removed again if a later
/// step fails. Idempotent: calling it again (a retry, or for a pod whose
/// volumes are in use) keeps existing directories and mounts and rewrites
/// downwardAPI files in place.
pub fn prepare(pod: &DesiredPod, root: &Path) -> Result<PreparedVolumes, VolumeError> {
    let volumes = pod
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    let mut plans = Vec::with_capacity(volumes.len());
    let mut names = HashSet::new();
    for (index, volume) in volumes.iter().enumerate() {
        check_volume_name(index, &volume.name)?;
        if !names.insert(volume.name.as_str()) {
            return Err(VolumeError::new(
                format!("spec.volumes[{}].name", volume.name),
                "duplicate volume name in this pod",
            ));
        }
        plans.push((volume.name.as_str(), plan_volume(pod, volume)?));
    }

    // hostPath: check everything that must already exist before creating
    // anything, so one missing socket does not leave created directories.
    let mut to_create = Vec::new();
    for (name, plan) in &plans {
        if let Plan::HostPath { path, typ } = plan {
            if check_host_path(name, path, *typ)? {
                to_create.push((*name, path, *typ));
            }
        }
    }
    for (name, path, typ) in to_create {
        create_host_path(name, path, typ)?;
    }

    let mut undo = Undo::default();
    match prepare_local(&plans, root, &mut undo) {
        Ok(prepared) => Ok(PreparedVolumes {
            root: root.to_path_buf(),
            volumes: prepared,
        }),
        Err(e) => {
            undo.run();
            Err(e)
        }
    }
}

/// What `prepare` will do for one volume, decided before any I/O.
enum Plan {
    EmptyDir {
        /// `None` for disk; `Some(size)` for tmpfs, `size` in bytes if limited.
        tmpfs: Option<Option<u64>>,
    },
    HostPath {
        path: PathBuf,
        typ: HostPathType,
    },
    DownwardApi {
        files: Vec<DownwardFile>,
    },
}

struct DownwardFile {
    /// Relative to the volume directory; validated.
    path: PathBuf,
    content: Vec<u8>,
    mode: u32,
}

/// The volume name becomes a directory name: it must be a DNS label, as the
/// API server requires, so it cannot be `..` or contain a `/`.
fn check_volume_name(index: usize, name: &str) -> Result<(), VolumeError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(VolumeError::new(
            format!("spec.volumes[{index}].name"),
            format!(
                "{name:?} must be a DNS label: at most 63 lowercase letters, digits and '-', \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

fn plan_volume(pod: &DesiredPod, volume: &Volume) -> Result<Plan, VolumeError> {
    let at = |field: &str| format!("spec.volumes[{}].{field}", volume.name);
    let sources = volume_sources(volume);
    if sources.len() > 1 {
        return Err(VolumeError::new(
            at("name"),
            format!(
                "a volume has exactly one source, found {}",
                sources.join(" and ")
            ),
        ));
    }
    if let Some(empty_dir) = &volume.empty_dir {
        return plan_empty_dir(empty_dir, &at);
    }
    if let Some(host_path) = &volume.host_path {
        return plan_host_path(host_path, &at);
    }
    if let Some(downward) = &volume.downward_api {
        return plan_downward_api(pod, downward, &at);
    }
    match sources.first() {
        // The API server defaults a volume without a source to emptyDir.
        None => Ok(Plan::EmptyDir { tmpfs: None }),
        Some(source) => Err(unsupported_source(&at(source), source)),
    }
}

/// The source fields a volume sets, by their API names (`hostPath`, `nfs`,
/// ...), read from its JSON form so that sources added to the API later are
/// named too.
fn volume_sources(volume: &Volume) -> Vec<String> {
    match serde_json::to_value(volume) {
        Ok(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .filter(|(key, value)| key != "name" && !value.is_null())
            .map(|(key, _)| key)
            .collect(),
        _ => Vec::new(),
    }
}

fn unsupported_source(field: &str, source: &str) -> VolumeError {
    const API_OBJECTS: [&str; 5] = [
        "configMap",
        "secret",
        "projected",
        "persistentVolumeClaim",
        "ephemeral",
    ];
    let why = if API_OBJECTS.contains(&source) {
        "static pods cannot reference API objects"
    } else {
        "supported: emptyDir, hostPath, downwardAPI"
    };
    VolumeError::new(
        field,
        format!("volume type {source} is not supported by podkeeper ({why})"),
    )
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use std::fs;

    #[test]
    fn unsupported_volume_types_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            ("configMap: {name: cfg}", "configMap", true),
            ("secret: {secretName: s}", "secret", true),
            ("projected: {sources: []}", "projected", true),
            (
                "persistentVolumeClaim: {claimName: c}",
                "persistentVolumeClaim",
                true,
            ),
            ("nfs: {server: nas, path: /x}", "nfs", false),
            ("image: {reference: busybox}", "image", false),
        ];
        for (source, typ, api_object) in cases {
            let volume = format!("  - name: x\n    {source}\n");
            let err = prepare_one(&volume, tmp.path()).unwrap_err();
            assert_eq!(err.field, format!("spec.volumes[x].{typ}"));
            assert!(
                err.message.starts_with(&format!(
                    "volume type {typ} is not supported by podkeeper ("
                )),
                "{err}"
            );
            assert_eq!(
                err.message
                    .contains("static pods cannot reference API objects"),
                api_object,
                "{err}"
            );
            assert_eq!(err.reason(), "FailedMount");
        }
        let two = "  - name: x\n    emptyDir: {}\n    hostPath: {path: /tmp}\n";
        let err = prepare_one(two, tmp.path()).unwrap_err();
        assert!(err.message.contains("emptyDir and hostPath"), "{err}");
    }

    #[test]
    fn volume_names_are_dns_labels_and_unique() {
        let tmp = tempfile::tempdir().unwrap();
        // Manifests are validated before this; a pod built otherwise is not.
        let renamed = |names: [&str; 2]| {
            let mut p = pod(
                "  - name: a\n    emptyDir: {}\n  - name: b\n    emptyDir: {}\n",
                "      []\n",
            );
            let volumes = p.pod.spec.as_mut().unwrap().volumes.as_mut().unwrap();
            for (volume, name) in volumes.iter_mut().zip(names) {
                volume.name = name.into();
            }
            prepare(&p, tmp.path()).unwrap_err()
        };
        assert_eq!(renamed(["../x", "b"]).field, "spec.volumes[0].name");
        assert_eq!(renamed(["a", "a"]).field, "spec.volumes[a].name");
    }

    #[test]
    fn prepare_twice_keeps_content_and_gives_the_same_volumes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("v");
        let volumes = format!(
            "  - name: cache\n    emptyDir: {{}}\n  - name: info\n    downwardAPI:\n      items:\n      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}\n{}{}",
            host_path("d", &tmp.path().join("hd"), "DirectoryOrCreate"),
            host_path("f", &tmp.path().join("hf"), "FileOrCreate")
        );
        let p = pod(&volumes, "      []\n");
        let first = prepare(&p, &root).unwrap();
        let cache = first.get("cache").unwrap().path.clone();
        fs::write(cache.join("kept"), "data").unwrap();
        fs::write(tmp.path().join("hf"), "host data").unwrap();
        let second = prepare(&p, &root).unwrap();
        assert_eq!(first, second);
        assert_eq!(fs::read_to_string(cache.join("kept")).unwrap(), "data");
        assert_eq!(
            fs::read_to_string(tmp.path().join("hf")).unwrap(),
            "host data"
        );
        assert_eq!(
            fs::read_to_string(second.get("info").unwrap().path.join("name")).unwrap(),
            "web-node1"
        );
    }

    #[test]
    fn reasons_follow_the_field() {
        let e = |field: &str| VolumeError::new(field, "x");
        assert_eq!(e("spec.volumes[a].hostPath.path").reason(), "FailedMount");
        assert_eq!(e("spec.volumes").reason(), "FailedMount");
        assert_eq!(
            e("spec.containers[web].volumeMounts[a].subPath").reason(),
            "CreateContainerConfigError"
        );
        assert_eq!(
            e("spec.initContainers[i].volumeMounts[a].name").reason(),
            "CreateContainerConfigError"
        );
        assert_eq!(
            e("spec.volumes[a].emptyDir.medium").to_string(),
            "spec.volumes[a].emptyDir.medium: x"
        );
    }
}
