//! The files every container of a pod shares, kept on the node under
//! `<state-dir>/pods/<uid>/` and bind-mounted in: `/etc/hosts` (managed as
//! the kubelet does), `/etc/resolv.conf` (from `dnsPolicy`/`dnsConfig`),
//! `/etc/hostname`, and `/dev/shm` (one 64 MiB tmpfs, so shared memory works
//! across the pod's containers, which share an IPC namespace).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSpec;

use crate::desired::DesiredPod;
use crate::host::{private_files, remove_tree, SafePath, UnsafeComponent};
use crate::runtime::labels;

/// The pod's shared files: read by containers running as any user.
const SHARED_FILE_MODE: u32 = 0o644;

/// containerd's `defaultShmSize`.
pub const SHM_SIZE: u64 = 64 << 20;

/// Kubernetes' limits on resolv.conf.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The DNS domain pods would live in on a cluster; used for `subdomain`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Where a pod's shared files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    dir: SafePath,
    volumes: SafePath,
}

impl PodFiles {
    /// `<state-dir>/pods/<uid>`. The UID also comes from containerd's
    /// labels (for pods no manifest names any more), so it is checked here
    /// too: one that is not a plain name is refused.
    pub fn new(state_dir: &Path, uid: &str) -> Result<PodFiles, UnsafeComponent> {
        let dir = SafePath::base(state_dir).join(&["pods", uid])?;
        Ok(PodFiles {
            volumes: dir.join(&["volumes"])?,
            dir,
        })
    }
    pub fn dir(&self) -> PathBuf {
        self.dir.path()
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir().join("etc-hosts")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir().join("resolv.conf")
    }
    pub fn hostname(&self) -> PathBuf {
        self.dir().join("hostname")
    }
    pub fn shm(&self) -> PathBuf {
        self.dir().join("shm")
    }
    /// Root of the pod's volumes.
    pub fn volumes(&self) -> &SafePath {
        &self.volumes
    }

    /// The files of the pods a container ID (`labels::container_id`) may
    /// belong to: those whose directory's UID gives the ID's prefix. The ID
    /// alone carries only a shortened UID, and the container may be gone
    /// from containerd with its labels.
    pub fn of_container(state_dir: &Path, container_id: &str) -> Vec<PodFiles> {
        let Some(prefix) = labels::prefix_of(container_id) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(state_dir.join("pods")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|uid| labels::id_prefix(uid) == prefix)
            .filter_map(|uid| PodFiles::new(state_dir, &uid).ok())
            .collect()
    }
}

/// The content of the pod's `/etc/hosts`, as the kubelet writes it: for a
/// pod network, localhost lines plus the pod IP with its hostname (FQDN
/// first with `subdomain`); with `hostNetwork`, the node's own file. Then
/// `hostAliases`.
pub fn hosts_file(
    pod: &DesiredPod,
    hostname: &str,
    pod_ip: Option<&str>,
    node_hosts: &str,
) -> String {
    let spec = pod.pod.spec.clone().unwrap_or_default();
    let mut out = String::new();
    if spec.host_network.unwrap_or(false) {
        out.push_str("# Kubernetes-managed hosts file (host network).\n");
        out.push_str(node_hosts);
        if !node_hosts.ends_with('\n') && !node_hosts.is_empty() {
            out.push('\n');
        }
    } else {
        out.push_str("# Kubernetes-managed hosts file.\n");
        out.push_str("127.0.0.1\tlocalhost\n");
        out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
        out.push_str("fe00::0\tip6-localnet\n");
        out.push_str("fe00::0\tip6-mcastprefix\n");
        out.push_str("fe00::1\tip6-allnodes\n");
        out.push_str("fe00::2\tip6-allrouters\n");
        if let Some(ip) = pod_ip {
            match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
                Some(subdomain) => out.push_str(&format!(
                    "{ip}\t{hostname}.{subdomain}.{}.svc.{CLUSTER_DOMAIN}\t{hostname}\n",
                    pod.namespace()
                )),
                None => out.push_str(&format!("{ip}\t{hostname}\n")),
            }
        }
    }
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
    out
}

/// What resolv.conf a pod gets, and whether to warn that `ClusterFirst`
/// fell back to the node's DNS (there is no cluster DNS on a standalone
/// node, so the kubelet does the same and records `MissingClusterDNS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub content: String,
    pub missing_cluster_dns: bool,
}

pub fn resolv_conf(spec: &PodSpec, node_resolv: &str) -> ResolvConf {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_network = spec.host_network.unwrap_or(false);
    let (base, missing_cluster_dns) = match policy {
        "None" => (Parsed::default(), false),
        "Default" => (Parsed::from(node_resolv), false),
        "ClusterFirstWithHostNet" => (Parsed::from(node_resolv), true),
        // ClusterFirst on the host network is Default, without a warning.
        _ if host_network => (Parsed::from(node_resolv), false),
        _ => (Parsed::from(node_resolv), true),
    };
    let mut merged = base;
    if let Some(config) = &spec.dns_config {
        for ns in config.nameservers.iter().flatten() {
            if !merged.nameservers.contains(ns) {
                merged.nameservers.push(ns.clone());
            }
        }
        for search in config.searches.iter().flatten() {
            if !merged.searches.contains(search) {
                merged.searches.push(search.clone());
            }
        }
        for option in config.options.iter().flatten() {
            let rendered = match &option.value {
                Some(value) => format!("{}:{value}", option.name.clone().unwrap_or_default()),
                None => option.name.clone().unwrap_or_default(),
            };
            let name = option.name.clone().unwrap_or_default();
            merged
                .options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            merged.options.push(rendered);
        }
    }
    merged.nameservers.truncate(MAX_NAMESERVERS);
    merged.searches.truncate(MAX_SEARCHES);
    let mut content = String::new();
    if !merged.searches.is_empty() {
        content.push_str(&format!("search {}\n", merged.searches.join(" ")));
    }
    for ns in &merged.nameservers {
        content.push_str(&format!("nameserver {ns}\n"));
    }
    if !merged.options.is_empty() {
        content.push_str(&format!("options {}\n", merged.options.join(" ")));
    }
    ResolvConf {
        content,
        missing_cluster_dns,
    }
}

#[derive(Debug, Default)]
struct Parsed {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl From<&str> for Parsed {
    fn from(text: &str) -> Parsed {
        let mut parsed = Parsed::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => parsed.nameservers.extend(words.next().map(String::from)),
                Some("search") | Some("domain") => {
                    parsed.searches = words.map(String::from).collect()
                }
                Some("options") => parsed.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        parsed
    }
}

/// Writes the pod's files and mounts its `/dev/shm` tmpfs (unless the pod
/// uses the host's IPC namespace). Safe to repeat. Blocking (fsyncs): async
/// callers run it on a blocking thread.
pub fn prepare(
    files: &PodFiles,
    hosts: &str,
    resolv: &str,
    hostname: &str,
    host_ipc: bool,
) -> std::io::Result<()> {
    private_files::create_dir(&files.dir(), private_files::PRIVATE_DIR_MODE)?;
    write_atomically(&files.hosts(), hosts)?;
    write_atomically(&files.resolv_conf(), resolv)?;
    write_atomically(&files.hostname(), &format!("{hostname}\n"))?;
    if !host_ipc && !is_mount_point(&files.shm())? {
        std::fs::create_dir_all(files.shm())?;
        mount_tmpfs(&files.shm(), SHM_SIZE)?;
    }
    Ok(())
}

/// Unmounts `/dev/shm` and removes the pod's directory without following
/// symlinks or crossing mounts (see [`remove_tree`]). Missing is fine.
pub fn cleanup(files: &PodFiles) -> std::io::Result<()> {
    if is_mount_point(&files.shm()).unwrap_or(false) {
        unmount(&files.shm())?;
    }
    remove_tree(&files.dir)
}

/// Crash-safe, readable by every container user (they are bind-mounted).
fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    private_files::write_file(path, content.as_bytes(), SHARED_FILE_MODE, None)
}

fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    let Ok(canonical) = std::fs::canonicalize(path) else {
        return Ok(false);
    };
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let target = canonical.to_string_lossy();
    Ok(mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount_point| mount_point == target))
}

fn mount_tmpfs(path: &Path, size: u64) -> std::io::Result<()> {
    let target = c_path(path)?;
    let options =
        std::ffi::CString::new(format!("mode=1777,size={size}")).map_err(std::io::Error::other)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            c"shm".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn unmount(path: &Path) -> std::io::Result<()> {
    let target = c_path(path)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn c_path(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra: &str) -> DesiredPod {
        let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n{extra}  containers: [{{name: c, image: x}}]\n");
        crate::manifest::parse::parse_manifest(text.as_bytes(), Path::new("/m/w.yaml"), "n1")
            .unwrap()
    }

    #[test]
    fn hosts_file_lists_localhost_the_pod_and_aliases() {
        let p = pod("  hostAliases:\n  - {ip: 192.0.2.9, hostnames: [db, db.local]}\n");
        let text = hosts_file(&p, "web-n1", Some("10.85.0.4"), "");
        assert!(text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(text.contains("\n10.85.0.4\tweb-n1\n"));
        assert!(text.ends_with("\n# Entries added by HostAliases.\n192.0.2.9\tdb\tdb.local\n"));
    }

    #[test]
    fn subdomain_puts_the_fqdn_first() {
        let p = pod("  hostname: h\n  subdomain: sub\n");
        let text = hosts_file(&p, "h", Some("10.85.0.4"), "");
        assert!(
            text.contains("10.85.0.4\th.sub.default.svc.cluster.local\th\n"),
            "{text}"
        );
    }

    #[test]
    fn host_network_pods_get_the_node_hosts_file() {
        let p = pod("  hostNetwork: true\n");
        let text = hosts_file(&p, "node", None, "127.0.0.1 localhost\n192.0.2.1 node");
        assert_eq!(text, "# Kubernetes-managed hosts file (host network).\n127.0.0.1 localhost\n192.0.2.1 node\n");
    }

    const NODE: &str = "# generated\nsearch example.com lan\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions ndots:2 edns0\n";

    fn spec(extra: &str) -> PodSpec {
        pod(extra).pod.spec.unwrap()
    }

    #[test]
    fn cluster_first_falls_back_to_the_node_with_a_warning() {
        let r = resolv_conf(&spec(""), NODE);
        assert!(r.missing_cluster_dns);
        assert_eq!(r.content, "search example.com lan\nnameserver 192.0.2.53\nnameserver 192.0.2.54\noptions ndots:2 edns0\n");
        let host = resolv_conf(&spec("  hostNetwork: true\n"), NODE);
        assert!(!host.missing_cluster_dns);
    }

    #[test]
    fn default_uses_the_node_and_none_only_dns_config() {
        assert!(!resolv_conf(&spec("  dnsPolicy: Default\n"), NODE).missing_cluster_dns);
        let none = resolv_conf(
            &spec("  dnsPolicy: None\n  dnsConfig: {nameservers: [1.1.1.1], searches: [a.b], options: [{name: ndots, value: '5'}, {name: rotate}]}\n"),
            NODE,
        );
        assert_eq!(
            none.content,
            "search a.b\nnameserver 1.1.1.1\noptions ndots:5 rotate\n"
        );
    }

    #[test]
    fn dns_config_merges_into_the_base_and_caps_nameservers() {
        let r = resolv_conf(
            &spec("  dnsPolicy: Default\n  dnsConfig: {nameservers: [192.0.2.53, 9.9.9.9, 8.8.8.8], searches: [extra], options: [{name: ndots, value: '1'}]}\n"),
            NODE,
        );
        assert_eq!(
            r.content,
            "search example.com lan extra\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nnameserver 9.9.9.9\noptions edns0 ndots:1\n"
        );
    }

    #[test]
    fn prepared_files_land_in_the_pod_dir_and_cleanup_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let files = PodFiles::new(dir.path(), "uid1").unwrap();
        prepare(&files, "hosts\n", "nameserver 1.1.1.1\n", "web", true).unwrap();
        assert_eq!(std::fs::read_to_string(files.hostname()).unwrap(), "web\n");
        assert_eq!(std::fs::read_to_string(files.hosts()).unwrap(), "hosts\n");
        cleanup(&files).unwrap();
        assert!(!files.dir().exists());
        cleanup(&files).unwrap();
    }

    #[test]
    fn a_uid_that_is_not_a_plain_name_gets_no_pod_files() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        for uid in [victim.to_str().unwrap(), "../..", "..", "", "a/b"] {
            PodFiles::new(&dir.path().join("state"), uid).unwrap_err();
        }
        assert!(victim.is_dir());
    }

    #[test]
    fn cleanup_never_follows_a_symlink_out_of_the_pod_dir() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("keep"), "x").unwrap();
        let files = PodFiles::new(&dir.path().join("state"), "uid1").unwrap();
        prepare(&files, "", "", "web", true).unwrap();
        std::os::unix::fs::symlink(&victim, files.dir().join("to-victim")).unwrap();
        cleanup(&files).unwrap();
        assert!(!files.dir().exists());
        assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "x");
    }
}
