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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeSource, EmptyDirVolumeSource, HostPathVolumeSource, Volume,
    VolumeMount,
};
use oci_spec::runtime::Mount;

use crate::desired::DesiredPod;
use crate::runtime::quantity;

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

fn plan_empty_dir(
    source: &EmptyDirVolumeSource,
    at: &dyn Fn(&str) -> String,
) -> Result<Plan, VolumeError> {
    match source.medium.as_deref().unwrap_or("") {
        "" => Ok(Plan::EmptyDir { tmpfs: None }),
        "Memory" => {
            let size = match &source.size_limit {
                None => None,
                Some(quantity) => {
                    let field = at("emptyDir.sizeLimit");
                    let parsed = quantity::parse(quantity.0.trim())
                        .map_err(|e| VolumeError::new(&field, format!("{:?}: {e}", quantity.0)))?;
                    if parsed.is_negative() {
                        return Err(VolumeError::new(field, "must not be negative"));
                    }
                    // Like the kubelet, a zero limit means "no limit".
                    u64::try_from(parsed.value())
                        .ok()
                        .filter(|bytes| *bytes > 0)
                }
            };
            Ok(Plan::EmptyDir { tmpfs: Some(size) })
        }
        medium if medium.starts_with("HugePages") => Err(VolumeError::new(
            at("emptyDir.medium"),
            format!("medium {medium} is not supported by podkeeper"),
        )),
        medium => Err(VolumeError::new(
            at("emptyDir.medium"),
            format!("unknown medium {medium:?}; expected \"\" or \"Memory\""),
        )),
    }
}

fn plan_host_path(
    source: &HostPathVolumeSource,
    at: &dyn Fn(&str) -> String,
) -> Result<Plan, VolumeError> {
    let typ = match source.type_.as_deref().unwrap_or("") {
        "" => HostPathType::Unchecked,
        "DirectoryOrCreate" => HostPathType::DirectoryOrCreate,
        "Directory" => HostPathType::Directory,
        "FileOrCreate" => HostPathType::FileOrCreate,
        "File" => HostPathType::File,
        "Socket" => HostPathType::Socket,
        "CharDevice" => HostPathType::CharDevice,
        "BlockDevice" => HostPathType::BlockDevice,
        other => {
            return Err(VolumeError::new(
                at("hostPath.type"),
                format!(
                    "unknown type {other:?}; expected \"\", DirectoryOrCreate, Directory, \
                     FileOrCreate, File, Socket, CharDevice or BlockDevice"
                ),
            ))
        }
    };
    let path = Path::new(&source.path);
    if !path.is_absolute() {
        return Err(VolumeError::new(
            at("hostPath.path"),
            format!("{:?} must be an absolute path on the node", source.path),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(VolumeError::new(
            at("hostPath.path"),
            format!("{:?} must not contain '..'", source.path),
        ));
    }
    Ok(Plan::HostPath {
        path: path.to_path_buf(),
        typ,
    })
}

/// What a path on the node is, for hostPath type checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
    Fifo,
    Other,
}

impl Found {
    fn of(meta: &fs::Metadata) -> Found {
        let t = meta.file_type();
        if t.is_dir() {
            Found::Directory
        } else if t.is_file() {
            Found::File
        } else if t.is_socket() {
            Found::Socket
        } else if t.is_char_device() {
            Found::CharDevice
        } else if t.is_block_device() {
            Found::BlockDevice
        } else if t.is_fifo() {
            Found::Fifo
        } else {
            Found::Other
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Found::Directory => "a directory",
            Found::File => "a file",
            Found::Socket => "a socket",
            Found::CharDevice => "a character device",
            Found::BlockDevice => "a block device",
            Found::Fifo => "a named pipe",
            Found::Other => "neither a file, directory, socket nor device",
        }
    }
}

/// What is at `path`, following symlinks as the bind mount will; `None` if
/// nothing is.
fn found_at(path: &Path) -> io::Result<Option<Found>> {
    match fs::metadata(path) {
        Ok(meta) => Ok(Some(Found::of(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Checks a hostPath against its type; `Ok(true)` when it is missing and
/// its type says to create it.
fn check_host_path(name: &str, path: &Path, typ: HostPathType) -> Result<bool, VolumeError> {
    let field = format!("spec.volumes[{name}].hostPath.path");
    let expected = match typ {
        HostPathType::Unchecked => return Ok(false),
        HostPathType::DirectoryOrCreate | HostPathType::Directory => Found::Directory,
        HostPathType::FileOrCreate | HostPathType::File => Found::File,
        HostPathType::Socket => Found::Socket,
        HostPathType::CharDevice => Found::CharDevice,
        HostPathType::BlockDevice => Found::BlockDevice,
    };
    let creates = matches!(
        typ,
        HostPathType::DirectoryOrCreate | HostPathType::FileOrCreate
    );
    match found_at(path) {
        Err(e) => Err(VolumeError::new(
            field,
            format!("hostPath type check failed: {}: {e}", path.display()),
        )),
        Ok(None) if creates => Ok(true),
        Ok(None) => Err(VolumeError::new(
            field,
            format!(
                "hostPath type check failed: {} does not exist; type {typ:?} expects {} there",
                path.display(),
                expected.describe()
            ),
        )),
        Ok(Some(found)) if found == expected => Ok(false),
        Ok(Some(found)) => Err(mismatch(field, path, found, expected)),
    }
}

fn mismatch(field: String, path: &Path, found: Found, expected: Found) -> VolumeError {
    VolumeError::new(
        field,
        format!(
            "hostPath type check failed: {} is {}, not {}",
            path.display(),
            found.describe(),
            expected.describe()
        ),
    )
}

fn create_host_path(name: &str, path: &Path, typ: HostPathType) -> Result<(), VolumeError> {
    let field = format!("spec.volumes[{name}].hostPath.path");
    let (expected, result) = if typ == HostPathType::DirectoryOrCreate {
        let result = DirBuilder::new()
            .recursive(true)
            .mode(HOST_DIR_MODE)
            .create(path);
        (Found::Directory, result)
    } else {
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(HOST_FILE_MODE)
            .open(path)
            .map(drop);
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::new(
                    field,
                    format!(
                        "cannot create {}: its parent directory does not exist (FileOrCreate \
                         creates the file, not its directory)",
                        path.display()
                    ),
                ))
            }
            // Something else created it meanwhile; checked below.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (Found::File, Ok(())),
            result => (Found::File, result),
        }
    };
    result
        .map_err(|e| VolumeError::new(&field, format!("cannot create {}: {e}", path.display())))?;
    // Whatever is there now (another process may have won a race) must fit.
    match found_at(path) {
        Ok(Some(found)) if found == expected => Ok(()),
        Ok(Some(found)) => Err(mismatch(field, path, found, expected)),
        Ok(None) => Err(VolumeError::new(
            field,
            format!("{} vanished right after it was created", path.display()),
        )),
        Err(e) => Err(VolumeError::new(field, format!("{}: {e}", path.display()))),
    }
}

fn plan_downward_api(
    pod: &DesiredPod,
    source: &DownwardAPIVolumeSource,
    at: &dyn Fn(&str) -> String,
) -> Result<Plan, VolumeError> {
    let default_mode = match source.default_mode {
        None => DOWNWARD_DEFAULT_MODE,
        Some(mode) => file_mode(mode)
            .ok_or_else(|| VolumeError::new(at("downwardAPI.defaultMode"), mode_message(mode)))?,
    };
    let mut files = Vec::new();
    let mut paths = HashSet::new();
    for (i, item) in source.items.iter().flatten().enumerate() {
        let item_at = |field: &str| at(&format!("downwardAPI.items[{i}].{field}"));
        let path =
            downward_item_path(&item.path).map_err(|m| VolumeError::new(item_at("path"), m))?;
        if !paths.insert(path.clone()) {
            return Err(VolumeError::new(
                item_at("path"),
                format!("{:?} is written by an earlier item too", item.path),
            ));
        }
        let mode = match item.mode {
            None => default_mode,
            Some(mode) => file_mode(mode)
                .ok_or_else(|| VolumeError::new(item_at("mode"), mode_message(mode)))?,
        };
        let content = match (&item.field_ref, &item.resource_field_ref) {
            (Some(_), Some(_)) => {
                return Err(VolumeError::new(
                    item_at("fieldRef"),
                    "an item sets fieldRef or resourceFieldRef, not both",
                ))
            }
            (Some(selector), None) => {
                if !matches!(
                    selector.api_version.as_deref(),
                    None | Some("") | Some("v1")
                ) {
                    return Err(VolumeError::new(
                        item_at("fieldRef.apiVersion"),
                        format!(
                            "{:?} is not supported; expected \"v1\"",
                            selector.api_version.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                metadata_field(pod, &selector.field_path)
                    .map_err(|m| VolumeError::new(item_at("fieldRef.fieldPath"), m))?
            }
            (None, Some(_)) => {
                return Err(VolumeError::new(
                    item_at("resourceFieldRef"),
                    "resourceFieldRef in downwardAPI volumes is not supported yet",
                ))
            }
            (None, None) => {
                return Err(VolumeError::new(
                    item_at("fieldRef"),
                    "an item needs fieldRef or resourceFieldRef",
                ))
            }
        };
        files.push(DownwardFile {
            path,
            content: content.into_bytes(),
            mode,
        });
    }
    Ok(Plan::DownwardApi { files })
}

/// A permission mode from the API (a decimal int32 that is usually written
/// in octal in YAML); only permission bits are allowed, as the API server
/// requires.
fn file_mode(mode: i32) -> Option<u32> {
    u32::try_from(mode).ok().filter(|m| *m <= 0o777)
}

fn mode_message(mode: i32) -> String {
    format!("{mode} is not a file mode: it must be between 0 and 0777 (octal), i.e. 0 and 511")
}

/// An item's path: relative, without `..` elements, not starting with `..`
/// (the kubelet reserves those names for its own bookkeeping).
fn downward_item_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("a path is required".into());
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} must be relative"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    if path.starts_with("..") {
        return Err(format!("{path:?} must not start with '..'"));
    }
    let clean: PathBuf = Path::new(path)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if clean.as_os_str().is_empty() {
        return Err(format!("{path:?} names no file"));
    }
    Ok(clean)
}

/// The value of a downwardAPI `fieldRef` in a volume: only metadata, which
/// is all the API server allows there.
fn metadata_field(pod: &DesiredPod, field_path: &str) -> Result<String, String> {
    let meta = &pod.pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    if let Some((map, key)) = subscript(field_path) {
        return match map {
            "metadata.labels" => Ok(labels.get(key).cloned().unwrap_or_default()),
            "metadata.annotations" => Ok(annotations.get(key).cloned().unwrap_or_default()),
            _ => Err(unsupported_field_path(field_path)),
        };
    }
    match field_path {
        "metadata.name" => Ok(pod.name().to_string()),
        "metadata.namespace" => Ok(pod.namespace().to_string()),
        "metadata.uid" => Ok(pod.uid().to_string()),
        "metadata.labels" => Ok(format_map(labels)),
        "metadata.annotations" => Ok(format_map(annotations)),
        _ => Err(unsupported_field_path(field_path)),
    }
}

fn unsupported_field_path(field_path: &str) -> String {
    format!(
        "{field_path:?} is not supported in downwardAPI volumes; supported: metadata.name, \
         metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, \
         metadata.labels['<key>'], metadata.annotations['<key>']"
    )
}

/// Splits `metadata.labels['key']` into the map's path and the key.
fn subscript(field_path: &str) -> Option<(&str, &str)> {
    let inner = field_path.strip_suffix("']")?;
    let (map, key) = inner.split_once("['")?;
    Some((map, key))
}

/// Labels or annotations as the kubelet writes them: `key="value"` lines
/// (value quoted like Go's `%q`), sorted by key, no trailing newline.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string quoted as Go's `strconv.Quote` does, for the characters that
/// occur in practice: backslash escapes for quotes, backslashes and control
/// characters, `\u` escapes for invisible Unicode separators and format
/// characters; everything else as is.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !go_printable(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint` above ASCII: false for control
/// characters, non-ASCII spaces, line/paragraph separators, the common
/// format characters and private use.
fn go_printable(c: char) -> bool {
    !matches!(c,
        '\u{80}'..='\u{a0}'
        | '\u{ad}'
        | '\u{1680}'
        | '\u{2000}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{205f}'..='\u{2064}'
        | '\u{3000}'
        | '\u{e000}'..='\u{f8ff}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}')
}

/// Things `prepare` created under the volume root, undone in reverse order
/// when a later step fails.
#[derive(Default)]
struct Undo {
    steps: Vec<UndoStep>,
}

enum UndoStep {
    /// A directory tree that did not exist before this call.
    Remove(PathBuf),
    /// A tmpfs this call mounted.
    Unmount(PathBuf),
}

impl Undo {
    fn run(self) {
        for step in self.steps.into_iter().rev() {
            let result = match &step {
                UndoStep::Remove(path) => remove_tree(path),
                UndoStep::Unmount(path) => unmount(path, 0),
            };
            if let Err(e) = result {
                let path = match &step {
                    UndoStep::Remove(p) | UndoStep::Unmount(p) => p,
                };
                tracing::warn!(path = %path.display(), "undoing a failed volume setup: {e}");
            }
        }
    }
}

/// Creates `dir` with `mode` (exactly, whatever the umask) and its missing
/// parents with `parent_mode`, recording the topmost directory it created in
/// `undo`. An existing `dir` keeps its mode unless its permission bits
/// differ (a tmpfs root keeps its sticky bit, as with the kubelet).
fn create_dir(dir: &Path, mode: u32, parent_mode: u32, undo: &mut Undo) -> io::Result<()> {
    let mut missing = None;
    for ancestor in dir.ancestors() {
        match fs::symlink_metadata(ancestor) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing = Some(ancestor),
            Err(e) => return Err(e),
        }
    }
    // Recorded first, so a failure halfway still removes what was made.
    if let Some(top) = missing {
        undo.steps.push(UndoStep::Remove(top.to_path_buf()));
    }
    if let Some(parent) = dir.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(parent_mode)
            .create(parent)?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    if fs::metadata(dir)?.mode() & 0o777 != mode {
        fs::set_permissions(dir, Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Creates the volume root with the kubelet's pod volume directory mode
/// (only root looks inside; containers see their volumes through bind
/// mounts). Only the root itself is undone on failure: its parents (the
/// pod's directory, the agent's `pods` directory) may be shared with other
/// parts of the agent, or other pods' workers, by then.
fn create_root(root: &Path, undo: &mut Undo) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            undo.steps.push(UndoStep::Remove(root.to_path_buf()));
        }
        Err(e) => return Err(e),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(ROOT_MODE)
        .create(root)?;
    if fs::metadata(root)?.mode() & 0o777 != ROOT_MODE {
        fs::set_permissions(root, Permissions::from_mode(ROOT_MODE))?;
    }
    Ok(())
}

fn prepare_local(
    plans: &[(&str, Plan)],
    root: &Path,
    undo: &mut Undo,
) -> Result<BTreeMap<String, PreparedVolume>, VolumeError> {
    let mut prepared = BTreeMap::new();
    let local = plans
        .iter()
        .any(|(_, plan)| !matches!(plan, Plan::HostPath { .. }));
    if local {
        create_root(root, undo).map_err(|e| {
            VolumeError::new("spec.volumes", format!("creating {}: {e}", root.display()))
        })?;
    }
    for (name, plan) in plans {
        let field = format!("spec.volumes[{name}]");
        let error = |what: &str, path: &Path, e: io::Error| {
            VolumeError::new(&field, format!("{what} {}: {e}", path.display()))
        };
        let volume = match plan {
            Plan::HostPath { path, typ } => PreparedVolume {
                path: path.clone(),
                read_only: false,
                kind: VolumeKind::HostPath(*typ),
            },
            Plan::EmptyDir { tmpfs } => {
                let dir = root.join(EMPTY_DIR).join(name);
                create_dir(&dir, EMPTY_DIR_MODE, ROOT_MODE, undo)
                    .map_err(|e| error("creating", &dir, e))?;
                if let Some(size) = tmpfs {
                    if mount_tmpfs_once(&dir, *size)
                        .map_err(|e| error("mounting a tmpfs on", &dir, e))?
                    {
                        undo.steps.push(UndoStep::Unmount(dir.clone()));
                    }
                }
                PreparedVolume {
                    path: dir,
                    read_only: false,
                    kind: if tmpfs.is_some() {
                        VolumeKind::MemoryEmptyDir
                    } else {
                        VolumeKind::EmptyDir
                    },
                }
            }
            Plan::DownwardApi { files } => {
                let dir = root.join(DOWNWARD_API).join(name);
                create_dir(&dir, DOWNWARD_DIR_MODE, ROOT_MODE, undo)
                    .map_err(|e| error("creating", &dir, e))?;
                for file in files {
                    let path = dir.join(&file.path);
                    write_file(&dir, &file.path, &file.content, file.mode)
                        .map_err(|e| error("writing", &path, e))?;
                }
                PreparedVolume {
                    path: dir,
                    read_only: true,
                    kind: VolumeKind::DownwardApi,
                }
            }
        };
        prepared.insert(name.to_string(), volume);
    }
    Ok(prepared)
}

/// Replaces `dir/rel` with a file of `content` and exactly `mode` (no
/// umask) through a rename, so a reader never sees a half-written file.
/// Directories on the way are made readable for every user.
fn write_file(dir: &Path, rel: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let mut parent = dir.to_path_buf();
    let mut parts: Vec<_> = rel.components().collect();
    let name = parts
        .pop()
        .map(|c| c.as_os_str().to_os_string())
        .unwrap_or_default();
    for part in parts {
        parent.push(part);
        match DirBuilder::new().mode(DOWNWARD_DIR_MODE).create(&parent) {
            Ok(()) => fs::set_permissions(&parent, Permissions::from_mode(DOWNWARD_DIR_MODE))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let mut temp_name = OsString::from("..");
    temp_name.push(&name);
    temp_name.push(".tmp");
    let temp = parent.join(temp_name);
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(content)?;
        file.set_permissions(Permissions::from_mode(mode))?;
        fs::rename(&temp, parent.join(&name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Mounts a tmpfs on `dir` unless one already is; `Ok(true)` if it mounted.
/// Kubelet-compatible options: only `size`, when limited.
fn mount_tmpfs_once(dir: &Path, size: Option<u64>) -> io::Result<bool> {
    if is_mount_point(dir)? {
        if is_tmpfs(dir)? {
            return Ok(false);
        }
        return Err(io::Error::other(
            "something other than a tmpfs is mounted there",
        ));
    }
    let target = cstring(dir)?;
    let data = CString::new(size.map(|s| format!("size={s}")).unwrap_or_default())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad tmpfs options"))?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives
    // the call; mount(2) only reads them.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::debug!(dir = %dir.display(), ?size, "mounted tmpfs for emptyDir");
    Ok(true)
}

/// Whether `dir` is the root of a mount: its device differs from its
/// parent's (true for every tmpfs, which is all this is asked about).
fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    Ok(fs::symlink_metadata(dir)?.dev() != fs::metadata(parent)?.dev())
}

fn is_tmpfs(dir: &Path) -> io::Result<bool> {
    let path = cstring(dir)?;
    // SAFETY: an all-zero statfs is a valid value for statfs(2) to fill.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `buf` is a valid, writable statfs.
    if unsafe { libc::statfs(path.as_ptr(), &mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.f_type == libc::TMPFS_MAGIC)
}

fn unmount(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstring(path)?;
    // SAFETY: `target` is a valid NUL-terminated path; umount2 only reads it.
    if unsafe { libc::umount2(target.as_ptr(), flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

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
/// `..`, resolved through symlinks only as long as they stay inside the
/// volume, and created as a directory (with the volume's permissions) when
/// missing. A hostPath without a type that does not exist is created as a
/// directory, as containerd's CRI plugin does for missing mount sources.
///
/// Known gap against the kubelet: the kubelet pins a resolved subPath by
/// bind-mounting an `O_PATH` descriptor of it, so a container that swaps a
/// path component for a symlink between this check and runc's mount cannot
/// redirect the mount; here the path is resolved and handed to runc as is.
pub fn container_mounts(
    prepared: &PreparedVolumes,
    container: &Container,
    list: &str,
    privileged: bool,
    env: &HashMap<String, String>,
) -> Result<Vec<Mount>, VolumeError> {
    // Everything that can be wrong with the manifest is checked before
    // anything is created on the node.
    let mut checked = Vec::new();
    let mut destinations = HashSet::new();
    for mount in container.volume_mounts.iter().flatten() {
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
        checked.push((at(""), volume, destination, propagation, sub, read_only));
    }

    let mut mounts = Vec::with_capacity(checked.len());
    for (at, volume, destination, propagation, sub, read_only) in checked {
        if volume.kind == VolumeKind::HostPath(HostPathType::Unchecked) {
            create_unchecked_host_path(&volume.path).map_err(|e| {
                VolumeError::new(&at, format!("creating {}: {e}", volume.path.display()))
            })?;
        }
        let source = match sub {
            None => volume.path.clone(),
            Some((field, sub)) => resolve_sub_path(&volume.path, &sub)
                .map_err(|m| VolumeError::new(format!("{at}{field}"), m))?,
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

/// The mount's subPath (with the field it came from), `subPathExpr`
/// expanded; `None` for the whole volume.
fn sub_path(
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

/// Expands `$(VAR)` in a subPathExpr with Kubernetes' syntax (`$$` is a
/// literal `$`; a `$` not starting a reference, or an unterminated `$(`,
/// stays as written). Unlike in `command` and `env`, a variable that is
/// missing or empty is an error, as the kubelet has it: the mount would
/// otherwise silently land elsewhere in the volume.
fn expand_sub_path_expr(expr: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut missing = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|r| r.split_once(')')) {
            match env.get(name).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(value),
                None => {
                    missing.insert(name);
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        let names: Vec<&str> = missing.into_iter().collect();
        Err(format!("{expr:?}: missing value for {}", names.join(", ")))
    }
}

/// Resolves `sub` inside the volume at `base` the way the kernel would
/// resolve `base/sub`, except that a symlink leading out of the volume (by
/// `..` or an absolute target elsewhere) is an error rather than followed.
/// Missing components are created as directories with the volume's
/// permissions (the kubelet's `SafeMakeDir`). Returns a symlink-free path.
/// Errors do not name where a symlink points: that is the node's business.
fn resolve_sub_path(base: &Path, sub: &str) -> Result<PathBuf, String> {
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

/// Unmounts every mount at or under `root` (tmpfs emptyDirs, or anything
/// else left there) with MNT_DETACH, then removes `root` without following
/// symlinks and without descending into another filesystem, so hostPath
/// content (never under `root`, but reachable through a symlink or a stray
/// bind mount) is never touched. A missing `root` is fine.
pub fn cleanup(root: &Path) -> io::Result<()> {
    match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory; not removing it", root.display()),
            ))
        }
        Ok(_) => {}
    }
    let real = fs::canonicalize(root)?;
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
            root.display()
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

/// Removes a directory tree like `rm -r --one-file-system`: symlinks are
/// removed, never followed, and a directory on another device (a mount
/// point) is an error instead of being emptied.
fn remove_tree(root: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    if !meta.is_dir() {
        return fs::remove_file(root);
    }
    remove_dir_contents(root, meta.dev())?;
    fs::remove_dir(root)
}

fn remove_dir_contents(dir: &Path, dev: u64) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            other => other?,
        };
        if meta.is_dir() {
            if meta.dev() != dev {
                return Err(io::Error::other(format!(
                    "{} is on another filesystem (a mount point); not removing it",
                    path.display()
                )));
            }
            remove_dir_contents(&path, dev)?;
            fs::remove_dir(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;

    /// A pod from manifest text: `volumes` is the YAML list under
    /// `spec.volumes` (indented by 2), `mounts` the one under the container's
    /// `volumeMounts` (indented by 4).
    fn pod(volumes: &str, mounts: &str) -> DesiredPod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels: {{app: web, tier: \"front\\\"end\"}}\n  annotations: {{note: \"a\\nb\"}}\nspec:\n  volumes:\n{volumes}  containers:\n  - name: app\n    image: busybox:1\n    volumeMounts:\n{mounts}"
        );
        crate::manifest::parse::parse_manifest(text.as_bytes(), Path::new("/m/web.yaml"), "node1")
            .unwrap()
    }

    fn container(pod: &DesiredPod) -> &Container {
        &pod.pod.spec.as_ref().unwrap().containers[0]
    }

    fn host_path(name: &str, path: &Path, typ: &str) -> String {
        format!(
            "  - name: {name}\n    hostPath: {{path: \"{}\", type: \"{typ}\"}}\n",
            path.display()
        )
    }

    fn prepare_one(volume: &str, root: &Path) -> Result<PreparedVolumes, VolumeError> {
        prepare(&pod(volume, "      []\n"), root)
    }

    fn mounts(
        volumes: &str,
        mounts_yaml: &str,
        root: &Path,
        privileged: bool,
        env: &[(&str, &str)],
    ) -> Result<Vec<Mount>, VolumeError> {
        let p = pod(volumes, mounts_yaml);
        let prepared = prepare(&p, root).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        container_mounts(
            &prepared,
            container(&p),
            "spec.containers",
            privileged,
            &env,
        )
    }

    fn options(mount: &Mount) -> Vec<String> {
        mount.options().clone().unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn some_block_device() -> Option<PathBuf> {
        fs::read_dir("/dev").ok()?.flatten().find_map(|e| {
            let is_block = e.file_type().ok()?.is_block_device();
            is_block.then(|| e.path())
        })
    }

    #[test]
    fn host_path_types_accept_what_they_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dir");
        let file = tmp.path().join("file");
        let socket = tmp.path().join("sock");
        fs::create_dir(&dir).unwrap();
        fs::write(&file, "x").unwrap();
        let _listener = UnixListener::bind(&socket).unwrap();
        let mut cases = vec![
            (dir.clone(), "Directory"),
            (dir.clone(), "DirectoryOrCreate"),
            (dir.clone(), ""),
            (file.clone(), "File"),
            (file.clone(), "FileOrCreate"),
            (socket.clone(), "Socket"),
            (PathBuf::from("/dev/null"), "CharDevice"),
        ];
        match some_block_device() {
            Some(device) => cases.push((device, "BlockDevice")),
            None => eprintln!("no block device in /dev: skipping the BlockDevice case"),
        }
        for (path, typ) in cases {
            let root = tmp.path().join("volumes");
            let prepared = prepare_one(&host_path("h", &path, typ), &root)
                .unwrap_or_else(|e| panic!("{typ} on {}: {e}", path.display()));
            let volume = prepared.get("h").unwrap();
            assert_eq!(volume.path, path);
            assert!(!volume.read_only);
            // hostPath alone puts nothing under the volume root.
            assert!(!root.exists());
        }
    }

    #[test]
    fn host_path_types_reject_what_they_do_not_name_and_say_what_was_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dir");
        let file = tmp.path().join("file");
        fs::create_dir(&dir).unwrap();
        fs::write(&file, "x").unwrap();
        let missing = tmp.path().join("missing");
        let null = PathBuf::from("/dev/null");
        let cases = [
            (&file, "Directory", "is a file, not a directory"),
            (&file, "DirectoryOrCreate", "is a file, not a directory"),
            (&dir, "File", "is a directory, not a file"),
            (&dir, "FileOrCreate", "is a directory, not a file"),
            (&file, "Socket", "is a file, not a socket"),
            (&dir, "CharDevice", "is a directory, not a character device"),
            (
                &null,
                "BlockDevice",
                "is a character device, not a block device",
            ),
            (&null, "File", "is a character device, not a file"),
            (&missing, "Directory", "does not exist"),
            (&missing, "File", "does not exist"),
            (&missing, "Socket", "does not exist"),
        ];
        for (path, typ, expected) in cases {
            let err = prepare_one(&host_path("h", path, typ), &tmp.path().join("v")).unwrap_err();
            assert_eq!(err.field, "spec.volumes[h].hostPath.path");
            assert_eq!(err.reason(), "FailedMount");
            assert!(
                err.message.contains(&path.display().to_string()) && err.message.contains(expected),
                "{typ} on {}: {err}",
                path.display()
            );
        }
        assert!(!missing.exists());
        let err = prepare_one(&host_path("h", &dir, "Fifo"), &tmp.path().join("v")).unwrap_err();
        assert_eq!(err.field, "spec.volumes[h].hostPath.type");
    }

    #[test]
    fn directory_or_create_and_file_or_create_create_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/c");
        let file = tmp.path().join("f.log");
        let volumes =
            host_path("d", &dir, "DirectoryOrCreate") + &host_path("f", &file, "FileOrCreate");
        prepare_one(&volumes, &tmp.path().join("v")).unwrap();
        assert!(dir.is_dir());
        assert_eq!(mode(&dir) & !0o755, 0, "at most 0755");
        assert!(file.is_file());
        assert_eq!(fs::read(&file).unwrap(), b"");
        assert_eq!(mode(&file) & !0o644, 0, "at most 0644");

        // FileOrCreate makes the file, not its directory.
        let deep = tmp.path().join("no/such/dir/f");
        let err = prepare_one(
            &host_path("f", &deep, "FileOrCreate"),
            &tmp.path().join("v"),
        )
        .unwrap_err();
        assert!(err.message.contains("parent directory"), "{err}");
        assert!(!tmp.path().join("no").exists());
    }

    #[test]
    fn a_failing_check_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let created = tmp.path().join("would-be-created");
        let root = tmp.path().join("v");
        let volumes = format!(
            "{}  - name: scratch\n    emptyDir: {{}}\n{}",
            host_path("d", &created, "DirectoryOrCreate"),
            host_path("s", &tmp.path().join("no.sock"), "Socket")
        );
        let err = prepare_one(&volumes, &root).unwrap_err();
        assert_eq!(err.field, "spec.volumes[s].hostPath.path");
        assert!(!created.exists());
        assert!(!root.exists());

        // A validation error after a valid volume: nothing either.
        let volumes =
            "  - name: scratch\n    emptyDir: {}\n  - name: cfg\n    configMap: {name: x}\n";
        prepare_one(volumes, &root).unwrap_err();
        assert!(!root.exists());
    }

    #[test]
    fn a_failure_while_writing_removes_only_what_this_call_created() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("v");
        let cache = "  - name: cache\n    emptyDir: {}\n";
        // "a" is written as a file, so "a/b" cannot be: an I/O error late
        // in prepare, after the emptyDir was made.
        let clash = "  - name: info\n    downwardAPI:\n      items:\n      - {path: a, fieldRef: {fieldPath: metadata.name}}\n      - {path: a/b, fieldRef: {fieldPath: metadata.name}}\n";
        let err = prepare_one(&format!("{cache}{clash}"), &root).unwrap_err();
        assert_eq!(err.field, "spec.volumes[info]");
        assert!(!root.exists(), "the new root is removed again");

        let prepared = prepare_one(cache, &root).unwrap();
        let kept = prepared.get("cache").unwrap().path.join("kept");
        fs::write(&kept, "x").unwrap();
        prepare_one(&format!("{cache}{clash}"), &root).unwrap_err();
        assert!(kept.exists(), "what existed before stays");
        assert!(!root.join("downward-api").exists());
    }

    #[test]
    fn host_paths_must_be_absolute_and_without_dot_dot() {
        let tmp = tempfile::tempdir().unwrap();
        for path in ["relative/dir", "/var/../etc"] {
            let volume = format!("  - name: h\n    hostPath: {{path: \"{path}\"}}\n");
            let err = prepare_one(&volume, tmp.path()).unwrap_err();
            assert_eq!(err.field, "spec.volumes[h].hostPath.path", "{path}");
        }
    }

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
            "spec.containers",
            false,
            &HashMap::new(),
        )
        .unwrap();
        assert!(path.is_dir());
        assert_eq!(list[0].source().as_deref(), Some(path.as_path()));
    }

    #[test]
    fn empty_dir_is_a_world_writable_directory_under_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("pods/uid/volumes");
        // A volume without a source is an emptyDir, as the API server defaults it.
        let volumes = "  - name: cache\n    emptyDir: {}\n  - name: bare\n";
        let prepared = prepare_one(volumes, &root).unwrap();
        for name in ["cache", "bare"] {
            let volume = prepared.get(name).unwrap();
            assert_eq!(volume.path, root.join("empty-dir").join(name));
            assert_eq!(volume.kind, VolumeKind::EmptyDir);
            assert!(!volume.read_only);
            assert!(volume.path.is_dir());
            assert_eq!(mode(&volume.path), 0o777);
        }
        assert_eq!(mode(&root), 0o750);
        assert_eq!(prepared.root(), root);
        assert_eq!(prepared.len(), 2);
    }

    #[test]
    fn empty_dir_media_and_size_limits_are_checked_before_mounting() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            ("{medium: Memory, sizeLimit: 1.5GB}", "emptyDir.sizeLimit"),
            ("{medium: Memory, sizeLimit: -1Mi}", "emptyDir.sizeLimit"),
            ("{medium: HugePages}", "emptyDir.medium"),
            ("{medium: Disk}", "emptyDir.medium"),
        ];
        for (source, field) in cases {
            let volume = format!("  - name: m\n    emptyDir: {source}\n");
            let err = prepare_one(&volume, tmp.path()).unwrap_err();
            assert_eq!(err.field, format!("spec.volumes[m].{field}"), "{source}");
        }
        // A disk emptyDir's sizeLimit is not enforced, so not parsed either.
        let volume = "  - name: d\n    emptyDir: {sizeLimit: 1.5GB}\n";
        prepare_one(volume, &tmp.path().join("v")).unwrap();
    }

    #[test]
    fn memory_size_limits_are_read_as_kubernetes_quantities() {
        let size = |limit: &str| {
            let source = EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    limit.into(),
                )),
            };
            match plan_empty_dir(&source, &|f: &str| f.to_string()) {
                Ok(Plan::EmptyDir { tmpfs: Some(size) }) => size,
                _ => panic!("{limit}: not a tmpfs plan"),
            }
        };
        assert_eq!(size("1Mi"), Some(1 << 20));
        assert_eq!(size("1.5Gi"), Some(3 << 29));
        assert_eq!(size("64M"), Some(64_000_000));
        assert_eq!(size("1e3"), Some(1000));
        assert_eq!(size("0"), None);
    }

    #[test]
    fn downward_api_files_hold_metadata_in_the_kubelet_format_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("v");
        let volume = "  - name: info\n    downwardAPI:\n      defaultMode: 0600\n      items:\n      - {path: name, fieldRef: {fieldPath: metadata.name}}\n      - {path: namespace, fieldRef: {fieldPath: metadata.namespace}}\n      - {path: uid, fieldRef: {fieldPath: metadata.uid, apiVersion: v1}}\n      - {path: labels, fieldRef: {fieldPath: metadata.labels}, mode: 0444}\n      - {path: meta/annotations, fieldRef: {fieldPath: metadata.annotations}}\n      - {path: app, fieldRef: {fieldPath: \"metadata.labels['app']\"}}\n      - {path: none, fieldRef: {fieldPath: \"metadata.labels['none']\"}}\n";
        let p = pod(volume, "      []\n");
        let prepared = prepare(&p, &root).unwrap();
        let info = prepared.get("info").unwrap();
        assert_eq!(info.path, root.join("downward-api/info"));
        assert!(info.read_only);
        assert_eq!(info.kind, VolumeKind::DownwardApi);
        let read = |name: &str| fs::read_to_string(info.path.join(name)).unwrap();
        assert_eq!(read("name"), "web-node1");
        assert_eq!(read("namespace"), "shop");
        assert_eq!(read("uid"), p.uid());
        assert_eq!(read("labels"), "app=\"web\"\ntier=\"front\\\"end\"");
        let uid = p.uid();
        assert_eq!(
            read("meta/annotations"),
            format!(
                "kubernetes.io/config.hash=\"{uid}\"\nkubernetes.io/config.source=\"file\"\nnote=\"a\\nb\""
            )
        );
        assert_eq!(read("app"), "web");
        assert_eq!(read("none"), "");
        assert_eq!(mode(&info.path.join("name")), 0o600);
        assert_eq!(mode(&info.path.join("labels")), 0o444);
        assert_eq!(mode(&info.path.join("meta/annotations")), 0o600);
        assert_eq!(mode(&info.path.join("meta")), 0o755);
        assert_eq!(mode(&info.path), 0o755);
        // Only the items: no temporary files left.
        let mut names: Vec<_> = fs::read_dir(&info.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["app", "labels", "meta", "name", "namespace", "none", "uid"]
        );
    }

    #[test]
    fn downward_api_default_mode_is_0644() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = "  - name: info\n    downwardAPI:\n      items:\n      - {path: name, fieldRef: {fieldPath: metadata.name}}\n";
        let prepared = prepare_one(volume, tmp.path()).unwrap();
        assert_eq!(
            mode(&prepared.get("info").unwrap().path.join("name")),
            0o644
        );
    }

    #[test]
    fn downward_api_refuses_bad_items() {
        let tmp = tempfile::tempdir().unwrap();
        let item = |item: &str| {
            format!("  - name: info\n    downwardAPI:\n      items:\n      - {item}\n")
        };
        let field = |f: &str| format!("{{path: x, fieldRef: {{fieldPath: {f}}}}}");
        let cases = [
            (
                item("{path: ../x, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "'..'",
            ),
            (
                item("{path: a/../../x, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "'..'",
            ),
            (
                item("{path: /etc/x, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "relative",
            ),
            (
                item("{path: ..data, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "start with",
            ),
            (
                item(&field("spec.nodeName")),
                "items[0].fieldRef.fieldPath",
                "not supported in downwardAPI volumes",
            ),
            (
                item("{path: x, resourceFieldRef: {resource: limits.memory, containerName: app}}"),
                "items[0].resourceFieldRef",
                "resourceFieldRef in downwardAPI volumes is not supported yet",
            ),
            (item("{path: x}"), "items[0].fieldRef", "needs fieldRef"),
            (
                item("{path: x, mode: 01000, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].mode",
                "0777",
            ),
            (
                item("{path: x, fieldRef: {fieldPath: metadata.name, apiVersion: v2}}"),
                "items[0].fieldRef.apiVersion",
                "v2",
            ),
            (
                "  - name: info\n    downwardAPI: {defaultMode: -1}\n".to_string(),
                "defaultMode",
                "0777",
            ),
        ];
        for (volume, field, message) in cases {
            let err = prepare_one(&volume, &tmp.path().join("v")).unwrap_err();
            assert_eq!(
                err.field,
                format!("spec.volumes[info].downwardAPI.{field}"),
                "{volume}"
            );
            assert!(err.message.contains(message), "{volume}: {err}");
            assert_eq!(err.reason(), "FailedMount");
        }
        assert!(!tmp.path().join("v").exists());
    }

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
        let err = prepare_one("  - name: \"../x\"\n    emptyDir: {}\n", tmp.path()).unwrap_err();
        assert_eq!(err.field, "spec.volumes[0].name");
        let twice = "  - name: a\n    emptyDir: {}\n  - name: a\n    emptyDir: {}\n";
        let err = prepare_one(twice, tmp.path()).unwrap_err();
        assert_eq!(err.field, "spec.volumes[a].name");
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
    fn expansion_follows_kubernetes_syntax() {
        let env: HashMap<String, String> = [("A", "1"), ("B", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(expand_sub_path_expr("$(A)-$(B)", &env).unwrap(), "1-2");
        assert_eq!(expand_sub_path_expr("$$(A)", &env).unwrap(), "$(A)");
        assert_eq!(expand_sub_path_expr("$A/$", &env).unwrap(), "$A/$");
        assert_eq!(expand_sub_path_expr("x$(A", &env).unwrap(), "x$(A");
        assert_eq!(expand_sub_path_expr("ü$(A)ü", &env).unwrap(), "ü1ü");
        let err = expand_sub_path_expr("$(Z)$(Y)$(Z)", &env).unwrap_err();
        assert!(err.ends_with("missing value for Y, Z"), "{err}");
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

    #[test]
    fn cleanup_removes_the_root_but_never_follows_symlinks_out_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("keep"), "precious").unwrap();
        let root = tmp.path().join("pods/uid/volumes");
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
        cleanup(&root).unwrap();
        assert!(!root.exists());
        assert!(
            tmp.path().join("pods/uid").is_dir(),
            "only the volume root goes"
        );
        assert_eq!(fs::read_to_string(host.join("keep")).unwrap(), "precious");
        // Again, and for a root that never existed.
        cleanup(&root).unwrap();
        cleanup(&tmp.path().join("never")).unwrap();
    }

    #[test]
    fn cleanup_refuses_a_root_that_is_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("keep"), "x").unwrap();
        symlink(&host, tmp.path().join("root")).unwrap();
        cleanup(&tmp.path().join("root")).unwrap_err();
        assert!(host.join("keep").exists());
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

    #[test]
    fn values_are_quoted_like_go() {
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("l1\nl2\t\r"), "\"l1\\nl2\\t\\r\"");
        assert_eq!(go_quote("\u{1}\u{7f}"), "\"\\x01\\x7f\"");
        assert_eq!(go_quote("é日本"), "\"é日本\"");
        assert_eq!(go_quote("nb\u{a0}sp\u{200b}"), "\"nb\\u00a0sp\\u200b\"");
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
