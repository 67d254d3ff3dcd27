//! The cache of ADD results, like libcni's: DEL and CHECK must pass the
//! result of ADD as `prevResult`, and portmap's DEL needs the port mappings
//! ADD got, also after the agent restarted. One file per
//! network/sandbox/interface, written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{NetworkError, PortMapping};
use crate::host::{blocking, private_files, state_file};

/// Marks the file format, so a future change can tell old files apart.
const KIND: &str = "podkeeperCniCacheV1";

/// Far above any ADD result (a few addresses, routes and port mappings).
const MAX_BYTES: u64 = 1 << 20;

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

/// Writes the entry crash-safe ([`private_files::write_private`]), so a
/// crash or a power cut never leaves half a result that would block DEL;
/// on a blocking thread, as the fsyncs block.
pub(super) async fn write(dir: PathBuf, entry: CachedResult) -> Result<(), NetworkError> {
    let target = path(
        &dir,
        &entry.network_name,
        &entry.container_id,
        &entry.if_name,
    );
    blocking::unblock(move || Ok(write_now(&dir, &entry)))
        .await
        .map_err(|e| cache_error(&target, e))?
}

fn write_now(dir: &Path, entry: &CachedResult) -> Result<(), NetworkError> {
    let target = path(
        dir,
        &entry.network_name,
        &entry.container_id,
        &entry.if_name,
    );
    private_files::create_dir(dir, private_files::PRIVATE_DIR_MODE)
        .map_err(|e| cache_error(dir, e))?;
    let bytes = serde_json::to_vec(entry).map_err(|e| cache_error(&target, e))?;
    private_files::write_private(&target, &bytes).map_err(|e| cache_error(&target, e))
}

/// The cached entry, or `None` when there is none, or only an empty or
/// torn one (logged): DEL then runs without `prevResult`, as for a sandbox
/// whose ADD never finished.
pub(super) fn read(
    dir: &Path,
    network: &str,
    container_id: &str,
    if_name: &str,
) -> Result<Option<CachedResult>, NetworkError> {
    let path = path(dir, network, container_id, if_name);
    let entry = state_file::read_json::<CachedResult>(&path, "CNI result cache", MAX_BYTES)
        .map_err(|e| cache_error(&path, e))?;
    let Some(entry) = entry else {
        return Ok(None);
    };
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
    use crate::host::state_file::tests::logged;
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
        write_now(&results, &entry).unwrap();
        assert!(results.join("net-sbx1-eth0").is_file());
        assert_eq!(
            read(&results, "net", "sbx1", "eth0").unwrap(),
            Some(entry.clone())
        );
        // Rewriting replaces it; no temporary file is left.
        write_now(&results, &entry).unwrap();
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
    fn an_empty_or_torn_entry_is_absent_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("net-sbx1-eth0");
        for torn in ["", "{\"kind\":\"podkeeperCni"] {
            std::fs::write(&file, torn).unwrap();
            let log = logged(|| assert_eq!(read(dir.path(), "net", "sbx1", "eth0").unwrap(), None));
            assert!(log.contains("net-sbx1-eth0"), "{log}");
        }
    }

    #[test]
    fn an_entry_of_another_kind_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut entry = CachedResult::new("net", "sbx1", "eth0", &[], json!({}));
        entry.kind = "other".into();
        let content = serde_json::to_vec(&entry).unwrap();
        std::fs::write(dir.path().join("net-sbx1-eth0"), content).unwrap();
        let err = read(dir.path(), "net", "sbx1", "eth0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("net-sbx1-eth0"), "{err}");
    }
}
