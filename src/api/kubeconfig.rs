//! The kubeconfig the agent writes for its own API at start-up:
//! `<state-dir>/kubeconfig`, so that `kubectl --kubeconfig <it>` works with
//! TLS verified and the admin token, and nobody is tempted to use
//! `--insecure-skip-tls-verify`. Root's alone (0600), or also readable by
//! the `podkeeper` group (0640) when the host has one: the packages make
//! it so operators can be given access without sudo.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::host::private_files;

/// File name in the state directory.
pub const KUBECONFIG: &str = "kubeconfig";

/// Group whose members may read the kubeconfig (and pass through the
/// state directory to it).
pub const ACCESS_GROUP: &str = "podkeeper";

/// Where the agent writes its kubeconfig.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(KUBECONFIG)
}

/// The URL clients use for `api-listen`: a wildcard address is reached on
/// the loopback address of its family.
pub fn server_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, listen.port()))
}

/// The kubeconfig's text. Without `ca_pem` (an operator's certificate is
/// served) kubectl verifies the server against the system's trust store.
pub fn render(server: &str, ca_pem: Option<&str>, token: &str) -> String {
    let ca = ca_pem
        .map(|pem| {
            format!(
                "    certificate-authority-data: {}\n",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: podkeeper
  cluster:
    server: {server}
{ca}users:
- name: podkeeper
  user:
    token: {token}
contexts:
- name: podkeeper
  context:
    cluster: podkeeper
    user: podkeeper
current-context: podkeeper
"
    )
}

/// Writes `content` to `path` unless it holds exactly that already (its
/// checksum then stays the same across restarts and upgrades): mode 0640
/// for `group` when given, else 0600. Returns whether it wrote.
pub fn write(path: &Path, content: &str, group: Option<u32>) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let mode = if group.is_some() { 0o640 } else { 0o600 };
    let current = std::fs::symlink_metadata(path).ok();
    let same_access = current.as_ref().is_some_and(|meta| {
        meta.file_type().is_file()
            && meta.mode() & 0o7777 == mode
            && group.is_none_or(|gid| meta.gid() == gid)
    });
    if same_access && std::fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
        return Ok(false);
    }
    private_files::write_file(path, content.as_bytes(), mode, group)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_become_loopback_urls() {
        let url = |s: &str| server_url(s.parse().unwrap());
        assert_eq!(url("0.0.0.0:10250"), "https://127.0.0.1:10250");
        assert_eq!(url("[::]:10250"), "https://[::1]:10250");
        assert_eq!(url("192.0.2.7:443"), "https://192.0.2.7:443");
        assert_eq!(url("[2001:db8::1]:10250"), "https://[2001:db8::1]:10250");
    }

    #[test]
    fn the_kubeconfig_is_one_context_with_the_ca_and_token() {
        let text = render("https://127.0.0.1:10250", Some("PEM"), "abc");
        let value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(value["current-context"], "podkeeper");
        let cluster = &value["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://127.0.0.1:10250");
        assert_eq!(cluster["certificate-authority-data"], "UEVN");
        assert_eq!(value["users"][0]["user"]["token"], "abc");
        let without = render("https://node:10250", None, "abc");
        let value: serde_yaml::Value = serde_yaml::from_str(&without).unwrap();
        assert!(value["clusters"][0]["cluster"]
            .get("certificate-authority-data")
            .is_none());
    }

    #[test]
    fn an_unchanged_kubeconfig_is_not_rewritten_and_is_root_only() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KUBECONFIG);
        assert!(write(&path, "one", None).unwrap());
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert!(!write(&path, "one", None).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        assert!(write(&path, "two", None).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }
}
