//! The cache of ADD results, like libcni's: DEL and CHECK must pass the
//! result of ADD as `prevResult`, and portmap's DEL needs the port mappings
//! ADD got, also after the agent restarted. One file per
//! network/sandbox/interface, written atomically.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{NetworkError, PortMapping};
use crate::host::private_files;

/// Marks the file format, so a future change can tell old files apart.
const KIND: &str = "podkeeperCniCacheV1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct CachedResult {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    /// The port mappings ADD got: portmap's DEL removes nothing without
    /// them.
    #[serde(rename = "portMappings", default)]
    pub port_mappings: Vec<PortMapping>,
    /// The last plugin's ADD result.
    pub result: Value,
}

impl CachedResult {
    pub fn new(
        network: &str,
        container_id: &str,
        if_name: &str,
        port_mappings: &[PortMapping],
        result: Value,
    ) -> Self {
        CachedResult {
            kind: KIND.to_string(),
            container_id: container_id.to_string(),
            if_name: if_name.to_string(),
            network_name: network.to_string(),
            port_mappings: port_mappings.to_vec(),
            result,
        }
    }
}

/// `<dir>/<network>-<container id>-<ifname>`, libcni's naming.
pub(super) fn path(dir: &Path, network: &str, container_id: &str, if_name: &str) -> PathBuf {
    dir.join(format!("{network}-{container_id}-{if_name}"))
}

fn cache_error(path: &Path, reason: impl std::fmt::Display) -> NetworkError {
    NetworkError::Cache {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes the entry through a temporary file and a rename, so a crash never
/// leaves half a result that would block DEL.
pub(super) fn write(dir: &Path, entry: &CachedResult) -> Result<(), NetworkError> {
    let target = path(
        dir,
        &entry.network_name,
        &entry.container_id,
        &entry.if_name,
    );
    private_files::create_dir(dir, private_files::PRIVATE_DIR_MODE)
        .map_err(|e| cache_error(dir, e))?;
    let bytes = serde_json::to_vec(entry).map_err(|e| cache_error(&target, e))?;
    let mut tmp = tempfile_in(dir).map_err(|e| cache_error(dir, e))?;
    let written = tmp
        .1
        .write_all(&bytes)
        .and_then(|()| tmp.1.sync_all())
        .and_then(|()| std::fs::rename(&tmp.0, &target));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp.0);
        return Err(cache_error(&target, e));
    }
    Ok(())
}

/// A new file `.tmp-<pid>-<n>` in `dir`, created exclusively.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(private_files::PRIVATE_FILE_MODE)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            // Left by an earlier process with the same PID: try the next.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The cached entry, or `None` when there is none.
pub(super) fn read(
    dir: &Path,
    network: &str,
    container_id: &str,
    if_name: &str,
) -> Result<Option<CachedResult>, NetworkError> {
    let path = path(dir, network, container_id, if_name);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cache_error(&path, e)),
    };
    let entry: CachedResult = serde_json::from_slice(&bytes).map_err(|e| cache_error(&path, e))?;
    if entry.kind != KIND {
        return Err(cache_error(&path, format!("unknown kind {:?}", entry.kind)));
    }
    Ok(Some(entry))
}

/// Removes the entry; a missing one is fine.
pub(super) fn remove(
    dir: &Path,
    network: &str,
    container_id: &str,
    if_name: &str,
) -> Result<(), NetworkError> {
    let path = path(dir, network, container_id, if_name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(cache_error(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_round_trip_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        let mappings = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }];
        let entry = CachedResult::new("net", "sbx1", "eth0", &mappings, json!({"ips": []}));
        write(&results, &entry).unwrap();
        assert!(results.join("net-sbx1-eth0").is_file());
        assert_eq!(
            read(&results, "net", "sbx1", "eth0").unwrap(),
            Some(entry.clone())
        );
        // Rewriting replaces it; no temporary file is left.
        write(&results, &entry).unwrap();
        let names: Vec<_> = std::fs::read_dir(&results)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["net-sbx1-eth0"]);
        remove(&results, "net", "sbx1", "eth0").unwrap();
        assert_eq!(read(&results, "net", "sbx1", "eth0").unwrap(), None);
        remove(&results, "net", "sbx1", "eth0").unwrap();
    }

    #[test]
    fn a_corrupt_entry_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("net-sbx1-eth0"), "{").unwrap();
        let err = read(dir.path(), "net", "sbx1", "eth0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("net-sbx1-eth0"), "{err}");
    }
}
