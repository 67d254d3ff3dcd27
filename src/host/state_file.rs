//! Reading back the agent's own state files (pod checkpoints, import
//! records, CNI results, the PKI) at start.
//!
//! They are written through [`private_files::write_private`], which syncs
//! the file and its directory, so a crash leaves the old or the new one.
//! A file written by an older version (rename without fsync), or on a disk
//! that lied about a flush, can still come back empty or torn after a power
//! cut. Such a file is handled as absent, with a warning naming it: what it
//! held is rebuilt or re-learned as when it never existed, and refusing it
//! would only stop the agent or the pod. A file larger than any the agent
//! writes is an error, not read whole into memory.
//!
//! [`private_files::write_private`]: super::private_files::write_private

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::de::DeserializeOwned;
use tracing::warn;

/// The content of the state file `path` (`what` names it in the log);
/// `None` when it is missing or empty. Opened without following a symlink:
/// the state directory is root's alone and its files are never links.
pub fn read(path: &Path, what: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut content = Vec::new();
    file.take(max + 1).read_to_end(&mut content)?;
    if content.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", path.display()),
        ));
    }
    if content.is_empty() {
        warn!(file = %path.display(), "the {what} file is empty (cut short by a crash or power loss); handled as absent");
        return Ok(None);
    }
    Ok(Some(content))
}

/// The JSON state file `path` as a `T`; `None` when it is missing, empty
/// or does not parse (torn).
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str, max: u64) -> io::Result<Option<T>> {
    let Some(content) = read(path, what, max)? else {
        return Ok(None);
    };
    match serde_json::from_slice(&content) {
        Ok(value) => Ok(Some(value)),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "the {what} file is torn or unreadable; handled as absent");
            Ok(None)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What `f` logs, as text.
    pub(crate) fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = sink.0.lock().unwrap().clone();
        String::from_utf8_lossy(&text).into_owned()
    }

    #[test]
    fn an_empty_or_torn_file_is_logged_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        std::fs::write(&path, "").unwrap();
        let log = logged(|| assert!(read(&path, "test", 64).unwrap().is_none()));
        assert!(log.contains("state.json") && log.contains("empty"), "{log}");
        std::fs::write(&path, "{\"a\":").unwrap();
        let log = logged(|| {
            let value = read_json::<serde_json::Value>(&path, "test", 64).unwrap();
            assert!(value.is_none());
        });
        assert!(log.contains("state.json") && log.contains("torn"), "{log}");
    }

    #[test]
    fn missing_empty_and_torn_files_are_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        assert!(read_json::<Vec<u32>>(&path, "test", 64).unwrap().is_none());
        std::fs::write(&path, "").unwrap();
        assert!(read(&path, "test", 64).unwrap().is_none());
        assert!(read_json::<Vec<u32>>(&path, "test", 64).unwrap().is_none());
        std::fs::write(&path, "[1, 2").unwrap();
        assert!(read_json::<Vec<u32>>(&path, "test", 64).unwrap().is_none());
        std::fs::write(&path, "[1, 2]").unwrap();
        assert_eq!(read_json(&path, "test", 64).unwrap(), Some(vec![1u32, 2]));
    }

    #[test]
    fn an_oversized_file_is_an_error_and_a_symlink_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        std::fs::write(&path, "[1, 2]").unwrap();
        assert_eq!(read(&path, "test", 6).unwrap().unwrap(), b"[1, 2]");
        let error = read(&path, "test", 5).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let link = tmp.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read(&link, "test", 64).is_err());
    }
}
