//! Pod-level cgroups on the host's cgroup filesystem, laid out as the
//! kubelet's cgroupfs driver does, so runc can put each container below its
//! pod (`cgroupsPath = <pod path>/<container id>`).
//!
//! cgroup v1: the pod directory is made in every mounted hierarchy that
//! runc 1.1 joins (cpuset, devices, memory, cpu, cpuacct, pids, blkio,
//! hugetlb, net_cls, net_prio, perf_event, freezer, rdma, name=systemd, and
//! the hybrid-mode unified tree). runc creates any missing part of a
//! container's path in each of them anyway, so creating the pod level in
//! all of them up front gives one consistent tree (the kubelet does the
//! same), and removal has to visit all of them regardless. Limits go into
//! cpu and memory. In cpuset, a new directory starts with empty
//! `cpuset.cpus`/`cpuset.mems`, and nothing can join it (ENOSPC, "no space
//! left on device") until they are filled; runc 1.1 fills empty parents
//! itself, but other runtimes and older runc do not, so every level created
//! here gets its parent's values, like libcontainer does for the kubelet.
//!
//! cgroup v2: one tree; `cpu memory pids` are enabled in each ancestor's
//! `cgroup.subtree_control` so the pod directory has those files.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::resources::{cpu_max, cpu_weight, memory_max, PodCgroup};

/// Where runc (and systemd) expect the cgroup hierarchies.
const CGROUP_MOUNT_ROOT: &str = "/sys/fs/cgroup";
/// runc 1.1 joins the v2 tree of a hybrid host only if it is mounted here.
const HYBRID_UNIFIED_MOUNT: &str = "/sys/fs/cgroup/unified";
/// The v1 hierarchies runc 1.1 places a container in
/// (`libcontainer/cgroups/fs/fs.go`, `subsystems`).
const RUNC_V1_SUBSYSTEMS: &[&str] = &[
    "cpuset",
    "devices",
    "memory",
    "cpu",
    "cpuacct",
    "pids",
    "blkio",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "freezer",
    "rdma",
    "name=systemd",
];
/// Every v1 controller name, to tell them from mount options in mountinfo.
const V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
    "debug",
];
/// Controllers the pod's limits need on cgroup v2.
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];
/// How long removal keeps retrying EBUSY: the kernel frees a cgroup a
/// moment after its last task has exited.
const REMOVE_RETRY_FOR: Duration = Duration::from_secs(2);
const REMOVE_RETRY_STEP: Duration = Duration::from_millis(20);

/// Which cgroup filesystem layout the host uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// V2 when /sys/fs/cgroup is the unified tree itself; hybrid hosts (v1
/// controllers plus /sys/fs/cgroup/unified) are V1, as runc sees them.
pub fn detect() -> CgroupVersion {
    if Path::new(CGROUP_MOUNT_ROOT)
        .join("cgroup.controllers")
        .exists()
    {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mountpoint: PathBuf,
    /// v1 controllers and `name=` options; empty for the v2 tree.
    controllers: Vec<String>,
    v2: bool,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }

    /// Whether runc 1.1 puts containers in this hierarchy on a v1 host.
    fn joined_by_runc(&self) -> bool {
        if self.v2 {
            return self.mountpoint == Path::new(HYBRID_UNIFIED_MOUNT);
        }
        self.controllers
            .iter()
            .any(|c| RUNC_V1_SUBSYSTEMS.contains(&c.as_str()))
    }
}

/// The cgroup hierarchies in `/proc/self/mountinfo`, one entry per
/// hierarchy (a hierarchy mounted twice is listed once, preferring the
/// mount under /sys/fs/cgroup).
fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut tail = after.split_whitespace();
        let (Some(fstype), Some(_source), Some(options)) = (tail.next(), tail.next(), tail.next())
        else {
            continue;
        };
        let v2 = match fstype {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        let Some(mountpoint) = before.split_whitespace().nth(4) else {
            continue;
        };
        let mut controllers: Vec<String> = if v2 {
            Vec::new()
        } else {
            options
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                .map(str::to_string)
                .collect()
        };
        controllers.sort();
        let hierarchy = Hierarchy {
            mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
            controllers,
            v2,
        };
        let same = |h: &Hierarchy| h.v2 == hierarchy.v2 && h.controllers == hierarchy.controllers;
        match found.iter_mut().find(|h| same(h)) {
            None => found.push(hierarchy),
            Some(existing) => {
                let preferred = |h: &Hierarchy| h.mountpoint.starts_with(CGROUP_MOUNT_ROOT);
                if !preferred(existing) && preferred(&hierarchy) {
                    *existing = hierarchy;
                }
            }
        }
    }
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounted_hierarchies() -> io::Result<Vec<Hierarchy>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// The relative components of an absolute cgroup path, refusing anything
/// that could leave the cgroup tree (`..`) or name the root itself.
fn relative_components(path: &str) -> io::Result<Vec<&str>> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cgroup path {path:?} {why}"),
        )
    };
    if !path.starts_with('/') {
        return Err(invalid("is not absolute"));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|&p| p == "." || p == "..") {
        return Err(invalid("must not contain . or .."));
    }
    if parts.is_empty() {
        return Err(invalid("names the root cgroup"));
    }
    Ok(parts)
}

/// Where `path` lives in each mounted hierarchy: on V1 every cgroup v1
/// hierarchy plus a hybrid host's unified tree; on V2 the one tree. The
/// directories need not exist; useful to find a pod's or container's files.
pub fn cgroup_dirs(path: &str, version: CgroupVersion) -> io::Result<Vec<PathBuf>> {
    let parts = relative_components(path)?;
    let mountpoints = match version {
        CgroupVersion::V1 => mounted_hierarchies()?
            .into_iter()
            .map(|h| h.mountpoint)
            .collect(),
        CgroupVersion::V2 => vec![PathBuf::from(CGROUP_MOUNT_ROOT)],
    };
    Ok(mountpoints
        .into_iter()
        .map(|m| parts.iter().fold(m, |dir, part| dir.join(part)))
        .collect())
}

/// The OCI `cgroupsPath` of a container in its pod cgroup (cgroupfs
/// driver): `<pod path>/<container id>`, as containerd's CRI builds it.
pub fn container_cgroup_path(pod_cgroup_path: &str, container_id: &str) -> String {
    format!("{}/{container_id}", pod_cgroup_path.trim_end_matches('/'))
}

/// Creates (or updates) the pod cgroup with its limits; idempotent, so it
/// is also how changed limits are applied. Writing a limit can fail while
/// containers run (v1 refuses a pod quota below a container's, and a memory
/// limit below current usage); the error names the file.
pub fn ensure_pod_cgroup(cgroup: &PodCgroup, version: CgroupVersion) -> io::Result<()> {
    match version {
        CgroupVersion::V1 => {
            let hierarchies: Vec<Hierarchy> = mounted_hierarchies()?
                .into_iter()
                .filter(Hierarchy::joined_by_runc)
                .collect();
            ensure_v1(&hierarchies, cgroup)
        }
        CgroupVersion::V2 => ensure_v2(Path::new(CGROUP_MOUNT_ROOT), cgroup),
    }
}

fn ensure_v1(hierarchies: &[Hierarchy], cgroup: &PodCgroup) -> io::Result<()> {
    let parts = relative_components(&cgroup.path)?;
    let missing = |controller: &str| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no cgroup v1 {controller} hierarchy is mounted"),
        )
    };
    if !hierarchies.iter().any(|h| h.has("cpu")) {
        return Err(missing("cpu"));
    }
    if cgroup.memory_limit.is_some() && !hierarchies.iter().any(|h| h.has("memory")) {
        return Err(missing("memory"));
    }
    for hierarchy in hierarchies {
        let dir = if hierarchy.has("cpuset") {
            make_cpuset_dirs(&hierarchy.mountpoint, &parts)?
        } else {
            let dir = join(&hierarchy.mountpoint, &parts);
            fs::create_dir_all(&dir).map_err(|e| context(e, "creating", &dir))?;
            dir
        };
        if hierarchy.has("cpu") {
            write_v1_cpu(&dir, cgroup)?;
        }
        if hierarchy.has("memory") {
            let limit = cgroup.memory_limit.filter(|&l| l > 0).unwrap_or(-1);
            write(&dir, "memory.limit_in_bytes", &limit.to_string())?;
        }
    }
    Ok(())
}

/// cpu.shares, then period, then quota (-1 is unlimited). If the kernel
/// refuses the period (the current quota would not fit it), the quota goes
/// first, as runc does.
fn write_v1_cpu(dir: &Path, cgroup: &PodCgroup) -> io::Result<()> {
    write(dir, "cpu.shares", &cgroup.cpu_shares.to_string())?;
    let quota = cgroup
        .cpu_quota
        .filter(|&q| q > 0)
        .unwrap_or(-1)
        .to_string();
    let Some(period) = cgroup.cpu_period.filter(|&p| p > 0) else {
        return write(dir, "cpu.cfs_quota_us", &quota);
    };
    let period = period.to_string();
    match write(dir, "cpu.cfs_period_us", &period) {
        Ok(()) => write(dir, "cpu.cfs_quota_us", &quota),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            write(dir, "cpu.cfs_quota_us", &quota)?;
            write(dir, "cpu.cfs_period_us", &period)
        }
        Err(e) => Err(e),
    }
}

/// Creates each missing level below the cpuset mount and gives every level
/// with empty `cpuset.cpus`/`cpuset.mems` its parent's values.
fn make_cpuset_dirs(mountpoint: &Path, parts: &[&str]) -> io::Result<PathBuf> {
    let mut parent = mountpoint.to_path_buf();
    for part in parts {
        let dir = parent.join(part);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(context(e, "creating", &dir)),
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read_trimmed(&dir.join(file))?.is_empty() {
                let inherited = read_trimmed(&parent.join(file))?;
                write(&dir, file, &inherited)?;
            }
        }
        parent = dir;
    }
    Ok(parent)
}

fn ensure_v2(root: &Path, cgroup: &PodCgroup) -> io::Result<()> {
    let parts = relative_components(&cgroup.path)?;
    let mut dir = root.to_path_buf();
    let mut enabled = Vec::new();
    for part in parts {
        enabled = enable_v2_controllers(&dir)?;
        dir = dir.join(part);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(context(e, "creating", &dir)),
        }
    }
    let has = |c: &str| enabled.iter().any(|e| e == c);
    // Shares are a relative weight, not a limit: without the cpu
    // controller there is nothing to weigh against, so only warn.
    if has("cpu") {
        write(
            &dir,
            "cpu.weight",
            &cpu_weight(cgroup.cpu_shares).to_string(),
        )?;
        write(
            &dir,
            "cpu.max",
            &cpu_max(cgroup.cpu_quota, cgroup.cpu_period),
        )?;
    } else if cgroup.cpu_quota.is_some() {
        return Err(unavailable("cpu", &dir));
    } else {
        tracing::warn!(cgroup = %dir.display(), "cgroup v2 cpu controller unavailable; cpu.weight not set");
    }
    if has("memory") {
        write(&dir, "memory.max", &memory_max(cgroup.memory_limit))?;
    } else if cgroup.memory_limit.is_some() {
        return Err(unavailable("memory", &dir));
    }
    Ok(())
}

fn unavailable(controller: &str, dir: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "cgroup v2 {controller} controller is not available for {}",
            dir.display()
        ),
    )
}

/// Enables the wanted controllers that `dir` offers for its children and
/// returns those now enabled there.
fn enable_v2_controllers(dir: &Path) -> io::Result<Vec<String>> {
    let available = read_trimmed(&dir.join("cgroup.controllers"))?;
    let available: HashSet<&str> = available.split_whitespace().collect();
    let control = dir.join("cgroup.subtree_control");
    let current = read_trimmed(&control)?;
    let mut enabled: Vec<String> = current.split_whitespace().map(str::to_string).collect();
    let missing: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| available.contains(c) && !enabled.iter().any(|e| e == c))
        .collect();
    if !missing.is_empty() {
        let request: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        write(dir, "cgroup.subtree_control", &request.join(" "))?;
        enabled.extend(missing.iter().map(|c| c.to_string()));
    }
    Ok(enabled)
}

/// Removes the pod cgroup in every hierarchy: its directory and anything
/// left below it, deepest first. Only empty cgroups can go, so EBUSY is
/// retried for a moment (a cgroup is freed shortly after its last task
/// exits); still-busy cgroups are reported. The shared parents (`<root>`,
/// `<root>/burstable`, ...) stay. A pod cgroup that does not exist is fine.
/// Blocks for up to about two seconds.
pub fn remove_pod_cgroup(path: &str, version: CgroupVersion) -> io::Result<()> {
    let deadline = Instant::now() + REMOVE_RETRY_FOR;
    let mut first_error = None;
    for dir in cgroup_dirs(path, version)? {
        if let Err(e) = remove_tree(&dir, deadline) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn remove_tree(dir: &Path, deadline: Instant) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(context(e, "listing", dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| context(e, "listing", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path(), deadline)?;
        }
    }
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy && Instant::now() < deadline => {
                thread::sleep(REMOVE_RETRY_STEP);
            }
            Err(e) => return Err(context(e, "removing", dir)),
        }
    }
}

fn join(base: &Path, parts: &[&str]) -> PathBuf {
    parts
        .iter()
        .fold(base.to_path_buf(), |dir, part| dir.join(part))
}

/// Reads a control file; a missing one reads as empty (a fresh cgroup's
/// files always exist, so this only matters for plain directories).
fn read_trimmed(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(context(e, "reading", path)),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|e| context(e, &format!("writing {value:?} to"), &path))
}

/// Says what was being done to which file, keeping the error's kind (EINVAL
/// is `InvalidInput`, EBUSY `ResourceBusy`) for callers that branch on it.
fn context(error: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{doing} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
25 22 0:23 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
28 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
29 25 0:27 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
30 25 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/misc rw,relatime - cgroup cgroup rw,misc
32 22 0:28 / /mnt/memory\\040copy rw,relatime - cgroup cgroup rw,memory
33 22 0:30 / /mnt/with\\040space rw,relatime - cgroup cgroup rw,name=other
34 22 0:31 / /proc rw - proc proc rw
";

    fn hierarchy(mountpoint: &str, controllers: &[&str], v2: bool) -> Hierarchy {
        Hierarchy {
            mountpoint: PathBuf::from(mountpoint),
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            v2,
        }
    }

    #[test]
    fn mountinfo_lists_each_hierarchy_once() {
        let found = parse_mountinfo(MOUNTINFO);
        assert_eq!(
            found,
            vec![
                hierarchy("/sys/fs/cgroup/unified", &[], true),
                hierarchy("/sys/fs/cgroup/systemd", &["name=systemd"], false),
                hierarchy("/sys/fs/cgroup/cpu,cpuacct", &["cpu", "cpuacct"], false),
                hierarchy("/sys/fs/cgroup/cpuset", &["cpuset"], false),
                hierarchy("/sys/fs/cgroup/memory", &["memory"], false),
                hierarchy("/sys/fs/cgroup/misc", &["misc"], false),
                hierarchy("/mnt/with space", &["name=other"], false),
            ]
        );
        let joined: Vec<_> = found
            .iter()
            .filter(|h| h.joined_by_runc())
            .map(|h| h.mountpoint.display().to_string())
            .collect();
        assert_eq!(
            joined,
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/memory",
            ]
        );
        // A v2 tree anywhere else is not one runc joins on a v1 host.
        assert!(!hierarchy("/sys/fs/cgroup", &[], true).joined_by_runc());
    }

    #[test]
    fn preferred_mount_wins_even_when_listed_later() {
        let text = "\
1 0 0:1 / /mnt/m rw - cgroup cgroup rw,memory
2 0 0:1 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        assert_eq!(
            parse_mountinfo(text),
            vec![hierarchy("/sys/fs/cgroup/memory", &["memory"], false)]
        );
    }

    #[test]
    fn cgroup_paths_are_checked() {
        assert_eq!(
            relative_components("/kubepods/burstable/podx").expect("ok"),
            ["kubepods", "burstable", "podx"]
        );
        assert_eq!(relative_components("//a//b/").expect("ok"), ["a", "b"]);
        for bad in ["", "kubepods/x", "/", "/a/../b", "/a/./b", "/.."] {
            let err = relative_components(bad).expect_err(bad);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(
            container_cgroup_path("/kubepods/podx", "abc"),
            "/kubepods/podx/abc"
        );
        assert_eq!(
            container_cgroup_path("/kubepods/podx/", "abc"),
            "/kubepods/podx/abc"
        );
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_string()
    }

    fn pod(path: &str, quota: Option<i64>, memory: Option<i64>) -> PodCgroup {
        PodCgroup {
            path: path.to_string(),
            cpu_shares: 256,
            cpu_quota: quota,
            cpu_period: quota.map(|_| 100_000),
            memory_limit: memory,
        }
    }

    #[test]
    fn v1_pod_cgroup_in_every_hierarchy_with_limits_and_cpusets() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mount = |name: &str| {
            let dir = tmp.path().join(name);
            fs::create_dir(&dir).expect("mkdir");
            dir.display().to_string()
        };
        let hierarchies = vec![
            hierarchy(&mount("cpu,cpuacct"), &["cpu", "cpuacct"], false),
            hierarchy(&mount("memory"), &["memory"], false),
            hierarchy(&mount("cpuset"), &["cpuset"], false),
            hierarchy(&mount("pids"), &["pids"], false),
        ];
        let cpuset = tmp.path().join("cpuset");
        fs::write(cpuset.join("cpuset.cpus"), "0-3\n").expect("write");
        fs::write(cpuset.join("cpuset.mems"), "0\n").expect("write");
        // A level that already has its own cpus keeps them.
        fs::create_dir(cpuset.join("kubepods")).expect("mkdir");
        fs::write(cpuset.join("kubepods/cpuset.cpus"), "1-2\n").expect("write");

        let path = "/kubepods/burstable/podu";
        ensure_v1(&hierarchies, &pod(path, Some(50_000), Some(128 << 20))).expect("ensure");
        let cpu = tmp.path().join("cpu,cpuacct/kubepods/burstable/podu");
        assert_eq!(read(&cpu.join("cpu.shares")), "256");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        let memory = tmp.path().join("memory/kubepods/burstable/podu");
        assert_eq!(read(&memory.join("memory.limit_in_bytes")), "134217728");
        assert!(tmp.path().join("pids/kubepods/burstable/podu").is_dir());
        assert_eq!(read(&cpuset.join("kubepods/cpuset.cpus")), "1-2");
        assert_eq!(read(&cpuset.join("kubepods/cpuset.mems")), "0");
        for level in ["kubepods/burstable", "kubepods/burstable/podu"] {
            assert_eq!(
                read(&cpuset.join(level).join("cpuset.cpus")),
                "1-2",
                "{level}"
            );
            assert_eq!(
                read(&cpuset.join(level).join("cpuset.mems")),
                "0",
                "{level}"
            );
        }

        // Again without limits: they are lifted, not left behind.
        ensure_v1(&hierarchies, &pod(path, None, None)).expect("update");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "-1");
        assert_eq!(read(&memory.join("memory.limit_in_bytes")), "-1");
    }

    #[test]
    fn v1_needs_the_controllers_it_limits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let only_memory = vec![hierarchy(
            &tmp.path().display().to_string(),
            &["memory"],
            false,
        )];
        let err = ensure_v1(&only_memory, &pod("/k/p", None, None)).expect_err("no cpu");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let only_cpu = vec![hierarchy(
            &tmp.path().display().to_string(),
            &["cpu"],
            false,
        )];
        let err = ensure_v1(&only_cpu, &pod("/k/p", None, Some(1))).expect_err("no memory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn v2_pod_cgroup_enables_controllers_and_writes_limits() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .expect("w");
        fs::write(root.join("cgroup.subtree_control"), "").expect("w");
        // The kernel fills these in for new cgroups; plain directories need them.
        for (level, enabled) in [("kubepods", "cpu memory pids"), ("kubepods/burstable", "")] {
            fs::create_dir_all(root.join(level)).expect("mkdir");
            fs::write(
                root.join(level).join("cgroup.controllers"),
                "cpu memory pids",
            )
            .expect("w");
            fs::write(root.join(level).join("cgroup.subtree_control"), enabled).expect("w");
        }
        let path = "/kubepods/burstable/podu";
        ensure_v2(root, &pod(path, Some(50_000), Some(128 << 20))).expect("ensure");
        assert_eq!(
            read(&root.join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(&root.join("kubepods/cgroup.subtree_control")),
            "cpu memory pids",
            "already enabled: not rewritten"
        );
        assert_eq!(
            read(&root.join("kubepods/burstable/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        let dir = root.join("kubepods/burstable/podu");
        assert_eq!(read(&dir.join("cpu.weight")), "10");
        assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(&dir.join("memory.max")), "134217728");

        ensure_v2(root, &pod(path, None, None)).expect("update");
        assert_eq!(read(&dir.join("cpu.max")), "max 100000");
        assert_eq!(read(&dir.join("memory.max")), "max");
    }

    #[test]
    fn v2_refuses_limits_without_their_controller() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        fs::write(root.join("cgroup.controllers"), "cpu pids").expect("w");
        let err = ensure_v2(root, &pod("/p", None, Some(1))).expect_err("memory");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        // Without a memory limit the missing controller does not matter.
        ensure_v2(root, &pod("/p", None, None)).expect("no limit");
        assert!(!root.join("p/memory.max").exists());
    }

    #[test]
    fn removal_goes_deepest_first_and_keeps_parents() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pod_dir = tmp.path().join("kubepods/burstable/podu");
        fs::create_dir_all(pod_dir.join("c1/leftover")).expect("mkdir");
        fs::create_dir_all(pod_dir.join("c2")).expect("mkdir");
        let deadline = Instant::now() + REMOVE_RETRY_FOR;
        remove_tree(&pod_dir, deadline).expect("remove");
        assert!(!pod_dir.exists());
        assert!(tmp.path().join("kubepods/burstable").is_dir());
        // Already gone is fine.
        remove_tree(&pod_dir, deadline).expect("again");

        // A directory that cannot go is reported with its path.
        fs::create_dir_all(&pod_dir).expect("mkdir");
        fs::write(pod_dir.join("file"), "x").expect("write");
        let err = remove_tree(&pod_dir, deadline).expect_err("not empty");
        assert!(err.to_string().contains("podu"), "{err}");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_mountinfo("/plain\\9"), "/plain\\9");
    }
}
