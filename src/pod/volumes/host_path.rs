//! hostPath volumes: checking `type` against what is on the node, and
//! creating what `DirectoryOrCreate` and `FileOrCreate` ask for.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path};

use k8s_openapi::api::core::v1::HostPathVolumeSource;

use super::{HostPathType, Plan, VolumeError, HOST_DIR_MODE, HOST_FILE_MODE};

pub(super) fn plan_host_path(
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
pub(super) fn check_host_path(
    name: &str,
    path: &Path,
    typ: HostPathType,
) -> Result<bool, VolumeError> {
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

pub(super) fn create_host_path(
    name: &str,
    path: &Path,
    typ: HostPathType,
) -> Result<(), VolumeError> {
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

#[cfg(test)]
mod tests {
    use crate::pod::volumes::test_support::*;

    use std::os::unix::net::UnixListener;

    use std::fs;
    use std::path::PathBuf;
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
    fn host_paths_must_be_absolute_and_without_dot_dot() {
        let tmp = tempfile::tempdir().unwrap();
        for path in ["relative/dir", "/var/../etc"] {
            let volume = format!("  - name: h\n    hostPath: {{path: \"{path}\"}}\n");
            let err = prepare_one(&volume, tmp.path()).unwrap_err();
            assert_eq!(err.field, "spec.volumes[h].hostPath.path", "{path}");
        }
    }
}
