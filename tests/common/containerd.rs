//! A private containerd daemon for end-to-end tests.
//!
//! [`PrivateContainerd::start`] runs the host's containerd binary as root with
//! its own root, state, gRPC/ttrpc sockets, `opt` dir and TMPDIR, all inside a
//! short temp dir (`/tmp/pkc.XXXXXX`), so it never touches the system
//! containerd (`/run/containerd/containerd.sock`, `/var/lib/containerd`).
//! Dropping it kills and removes every task and container it holds, stops the
//! daemon, kills stray shims, unmounts everything under the temp dir and
//! removes the dir. A test may stop the daemon and start it again in between
//! ([`PrivateContainerd::stop`], [`PrivateContainerd::start_again`]); the
//! shims keep running meanwhile, and a daemon still stopped at drop is
//! started again to clean up.
//!
//! Host-global paths that containerd 1.6 and its runc shim still use, and that
//! no daemon setting moves (all are keyed by namespace/id or a hash of the
//! socket path, so they do not clash with a system containerd):
//! - `/run/containerd/s/<sha256>`: shim sockets (removed when the shim exits);
//! - `/run/containerd/runc/<namespace>/<id>`: runc state, unless the client
//!   passes runc options with another root (`ctr run --runc-root`); the
//!   per-namespace dir is left behind, empty;
//! - `/run/containerd/fifo/`: stdio FIFOs made by `ctr run` (removed by ctr);
//! - cgroups `/<namespace>/<id>` (removed when the task is deleted).

use super::archives;
use super::process::{find_tool, kill_and_wait, run_checked, run_with_timeout, SYSTEM_PATH};
use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// How long `start` waits for `ctr version` to succeed.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for one `ctr` command issued by a test.
const CTR_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound for one `ctr` command issued while cleaning up.
const CLEANUP_CTR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// What to install when a tool is missing.
const INSTALL_HINT: &str = "apt-get install -y containerd runc busybox-static";
/// Plugins that are not wanted or would reach outside the temp dir. CRI would
/// also bind streaming ports and use /etc/cni; the extra snapshotters only
/// slow startup and log errors on ext4.
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
];

/// A private containerd started for one test: own --root/--state/socket/config in a temp dir.
pub struct PrivateContainerd {
    /// Canonical path of the temp dir; everything below belongs to this instance.
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    containerd: PathBuf,
    ctr: PathBuf,
    /// The daemon; behind a lock so that a test can stop and start it again
    /// (`&self`) while an agent borrows this instance.
    child: Mutex<Option<Child>>,
    /// Set once `ctr version` succeeded; only then does Drop restart a dead daemon.
    was_ready: bool,
}

impl PrivateContainerd {
    /// Starts /usr/bin/containerd (or `containerd` on PATH) as root with a generated config.toml
    /// (version = 2; root, state, grpc.address, ttrpc.address all inside the temp dir;
    /// disabled_plugins = ["io.containerd.grpc.v1.cri"] and any other plugin that would touch
    /// host-global paths (e.g. set the `io.containerd.internal.v1.opt` plugin path inside the temp
    /// dir); snapshotter overlayfs works). Waits (up to 20 s) until `ctr --address SOCK version`
    /// succeeds. Returns Err with containerd's log tail on failure. The temp dir should live under
    /// /tmp or /var/tmp and its path should be SHORT (unix socket paths are limited to 108 bytes;
    /// shims put sockets elsewhere but keep it short anyway).
    pub fn start() -> Result<Self> {
        let containerd = find_tool("containerd", "/usr/bin/containerd", INSTALL_HINT)?;
        let ctr = find_tool("ctr", "/usr/bin/ctr", INSTALL_HINT)?;

        let tmp = ["/tmp", "/var/tmp"]
            .iter()
            .find_map(|base| {
                tempfile::Builder::new()
                    .prefix("pkc.")
                    .rand_bytes(6)
                    .tempdir_in(base)
                    .ok()
            })
            .context("cannot create a temp dir under /tmp or /var/tmp")?;
        // From here on our Drop (not TempDir's) owns the dir: it must unmount
        // before removing anything.
        let raw_dir = tmp.keep();
        let dir = fs::canonicalize(&raw_dir).unwrap_or(raw_dir);

        // Constructed before anything can fail, so an error below still
        // cleans up through Drop.
        let mut me = PrivateContainerd {
            socket: dir.join("c.sock"),
            log: dir.join("containerd.log"),
            dir,
            containerd,
            ctr,
            child: Mutex::new(None),
            was_ready: false,
        };
        me.spawn()?;
        me.wait_ready()?;
        me.was_ready = true;
        Ok(me)
    }

    /// The containerd gRPC socket (`<dir>/c.sock`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temp dir; tests may create subdirs in it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `ctr --address SOCK -n NAMESPACE <args>` and returns stdout; Err includes stderr.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Result<String> {
        self.ctr_with_timeout(namespace, args, CTR_TIMEOUT)
    }

    /// Imports the busybox archive of examples/build-busybox-image.sh (built once per
    /// test process, see [`archives::shared_busybox_oci`]) into NAMESPACE as `reference`.
    pub fn import_busybox(&self, namespace: &str, reference: &str) -> Result<()> {
        let archive = archives::shared_busybox_oci(reference)?;
        let archive_str = archive
            .to_str()
            .context("busybox archive path is not UTF-8")?;
        let out = self
            .ctr(namespace, &["images", "import", archive_str])
            .with_context(|| format!("importing {} as {reference}", archive.display()))?;
        // ctr exits 0 even when it imported nothing, so check.
        let images = self.ctr(namespace, &["images", "ls", "-q"])?;
        if !images.lines().any(|l| l.trim() == reference) {
            bail!(
                "ctr images import of {} did not create {reference} in namespace {namespace}; \
                 import printed: {out:?}; images now: {images:?}",
                archive.display()
            );
        }
        Ok(())
    }

    /// Stops the daemon as a service manager would (SIGTERM; SIGKILL after
    /// 10 s). The shims and their containers keep running, as they do in
    /// production; [`PrivateContainerd::start_again`] brings the daemon back.
    pub fn stop(&self) -> Result<()> {
        if !self.daemon_alive() {
            bail!("containerd at {} is not running", self.socket.display());
        }
        self.stop_daemon();
        Ok(())
    }

    /// Starts the daemon again after [`PrivateContainerd::stop`], with the
    /// same root, state, socket and config, and waits until it answers. It
    /// reconnects to the shims that kept running.
    pub fn start_again(&self) -> Result<()> {
        if self.daemon_alive() {
            bail!("containerd at {} is already running", self.socket.display());
        }
        self.spawn()?;
        self.wait_ready()
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn spawn(&self) -> Result<()> {
        let tmpdir = self.dir.join("tmp");
        fs::create_dir_all(&tmpdir)?;
        let config = self.dir.join("config.toml");
        fs::write(&config, self.config_toml())
            .with_context(|| format!("writing {}", config.display()))?;

        // Append: a restart (see Drop) keeps the earlier log.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let log_err = log.try_clone()?;
        // containerd looks up runc and the shims on PATH.
        let path = match std::env::var("PATH") {
            Ok(p) if !p.is_empty() => format!("{p}:{SYSTEM_PATH}"),
            _ => SYSTEM_PATH.to_string(),
        };
        let child = Command::new(&self.containerd)
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            // Temporary mounts (image unpack) go to $XDG_RUNTIME_DIR or
            // $TMPDIR: keep them inside our dir.
            .env("TMPDIR", &tmpdir)
            .env_remove("XDG_RUNTIME_DIR")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("spawning {}", self.containerd.display()))?;
        *self.child() = Some(child);
        Ok(())
    }

    fn config_toml(&self) -> String {
        let p = |name: &str| toml_str(&self.dir.join(name));
        let disabled = DISABLED_PLUGINS
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut c = String::new();
        let _ = writeln!(c, "version = 2");
        let _ = writeln!(c, "root = {}", p("root"));
        let _ = writeln!(c, "state = {}", p("state"));
        let _ = writeln!(c, "disabled_plugins = [{disabled}]");
        let _ = writeln!(c, "\n[grpc]\n  address = {}", toml_str(&self.socket));
        let _ = writeln!(c, "\n[ttrpc]\n  address = {}", p("c.sock.ttrpc"));
        // No debug/metrics listeners.
        let _ = writeln!(c, "\n[debug]\n  address = \"\"\n  level = \"info\"");
        let _ = writeln!(c, "\n[metrics]\n  address = \"\"");
        let _ = writeln!(c, "\n[plugins]");
        let _ = writeln!(
            c,
            "  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = {}",
            p("opt")
        );
        // Legacy v1 runtime (unused, but keep its runc root out of /run).
        let _ = writeln!(
            c,
            "  [plugins.\"io.containerd.runtime.v1.linux\"]\n    runtime_root = {}",
            p("runc-v1")
        );
        c
    }

    fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        let mut last_err = String::from("socket not created yet");
        loop {
            if let Some(child) = self.child().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "containerd exited during startup ({status}); log tail:\n{}",
                        self.log_tail()
                    );
                }
            }
            // `ctr` waits 10 s when the socket is missing: probe it first.
            if UnixStream::connect(&self.socket).is_ok() {
                match self.ctr_with_timeout("default", &["version"], Duration::from_secs(10)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = format!("{e:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd at {} not ready after {:?} (last error: {last_err}); log tail:\n{}",
                    self.socket.display(),
                    START_TIMEOUT,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn ctr_command(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--connect-timeout")
            .arg("5s")
            .arg("-n")
            .arg(namespace)
            .args(args)
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .env_remove("CONTAINERD_SNAPSHOTTER");
        cmd
    }

    fn ctr_with_timeout(
        &self,
        namespace: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String> {
        let out = run_checked(&mut self.ctr_command(namespace, args), timeout)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn daemon_alive(&self) -> bool {
        self.child()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills and deletes every task, then deletes every container (and its
    /// snapshot), in every namespace.
    fn remove_all_containers(&self) {
        let list = |ns: &str, args: &[&str]| -> Vec<String> {
            match self.ctr_with_timeout(ns, args, CLEANUP_CTR_TIMEOUT) {
                Ok(out) => out
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect(),
                Err(e) => {
                    warn(format_args!("cleanup: {e:#}"));
                    Vec::new()
                }
            }
        };
        for ns in list("default", &["namespaces", "ls", "-q"]) {
            for task in list(&ns, &["tasks", "ls", "-q"]) {
                // Fails harmlessly for tasks that are already stopped.
                let _ = self.ctr_with_timeout(
                    &ns,
                    &["tasks", "kill", "-s", "SIGKILL", "-a", &task],
                    CLEANUP_CTR_TIMEOUT,
                );
                if let Err(e) = self.ctr_with_timeout(
                    &ns,
                    &["tasks", "delete", "-f", &task],
                    CLEANUP_CTR_TIMEOUT,
                ) {
                    warn(format_args!("cleanup: {e:#}"));
                }
            }
            for container in list(&ns, &["containers", "ls", "-q"]) {
                if let Err(e) = self.ctr_with_timeout(
                    &ns,
                    &["containers", "delete", &container],
                    CLEANUP_CTR_TIMEOUT,
                ) {
                    warn(format_args!("cleanup: {e:#}"));
                }
            }
        }
    }

    /// Reaps the daemon if it has exited; returns whether it had.
    fn reap_if_exited(&self) -> bool {
        let mut child = self.child();
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) => {
                *child = None;
                true
            }
            _ => false,
        }
    }

    /// SIGTERM, then SIGKILL after STOP_TIMEOUT; always reaps the child.
    fn stop_daemon(&self) {
        if self.reap_if_exited() {
            return;
        }
        let Some(mut child) = self.child().take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
        warn(format_args!(
            "containerd {} ignored SIGTERM for {STOP_TIMEOUT:?}; sending SIGKILL",
            child.id()
        ));
        kill_and_wait(&mut child);
    }

    /// SIGKILLs shims (and their direct children, the container inits) whose
    /// command line mentions our dir (`-address <dir>/c.sock`, bundle paths).
    fn kill_leftover_shims(&self) {
        let needle = self.dir.to_string_lossy().into_owned();
        for pid in processes_matching(|argv| {
            let is_shim = argv.first().is_some_and(|a0| {
                Path::new(a0)
                    .file_name()
                    .and_then(OsStr::to_str)
                    .is_some_and(|n| n.starts_with("containerd-shim"))
            });
            is_shim && argv.iter().any(|a| a.contains(&needle))
        }) {
            for child in children_of(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(child, libc::SIGKILL);
                }
            }
            warn(format_args!("cleanup: killing leftover shim {pid}"));
            // SAFETY: as above.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }

    /// Last resort when tasks could not be deleted through containerd: for
    /// every bundle still in our state dir, `runc delete --force` the
    /// container (its runc state and cgroups live outside our dir) if its
    /// runc state names our dir, and remove its shim socket.
    fn delete_leftover_runc_state(&self) {
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task");
        let Ok(namespaces) = fs::read_dir(&tasks) else {
            return;
        };
        let needle = self.dir.to_string_lossy().into_owned();
        let runc =
            find_tool("runc", "/usr/sbin/runc", INSTALL_HINT).unwrap_or_else(|_| "runc".into());
        for ns in namespaces.flatten() {
            let Ok(bundles) = fs::read_dir(ns.path()) else {
                continue;
            };
            for bundle in bundles.flatten() {
                let id = bundle.file_name();
                let opts =
                    fs::read_to_string(bundle.path().join("options.json")).unwrap_or_default();
                let root = json_string_field(&opts, "root")
                    .unwrap_or_else(|| "/run/containerd/runc".to_string());
                let runc_root = Path::new(&root).join(ns.file_name());
                let state = fs::read_to_string(runc_root.join(&id).join("state.json"));
                if state.is_ok_and(|s| s.contains(&needle)) {
                    warn(format_args!(
                        "cleanup: runc delete --force {} in {}",
                        id.to_string_lossy(),
                        runc_root.display()
                    ));
                    let mut cmd = Command::new(&runc);
                    cmd.arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force"])
                        .arg(&id);
                    let _ = run_with_timeout(&mut cmd, CLEANUP_CTR_TIMEOUT);
                }
                if let Ok(addr) = fs::read_to_string(bundle.path().join("address")) {
                    let sock = addr.trim().trim_start_matches("unix://");
                    if sock.starts_with("/run/containerd/s/") {
                        let _ = fs::remove_file(sock);
                    }
                }
            }
        }
    }

    /// Lazily unmounts every mount point at or below our dir, deepest first,
    /// until none is left (or we give up). Returns the mount points left.
    fn unmount_all(&self) -> Vec<PathBuf> {
        let mut left = mounts_under(&self.dir);
        for _ in 0..10 {
            if left.is_empty() {
                break;
            }
            left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for mp in &left {
                let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()) else {
                    continue;
                };
                // SAFETY: c is a valid NUL-terminated path; umount2 only reads it.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
            left = mounts_under(&self.dir);
        }
        left
    }
}

impl Drop for PrivateContainerd {
    // Best-effort, never panics: for every namespace (`ctr namespaces ls -q`): kill (SIGKILL) and
    // delete all tasks, delete all containers (and their snapshots); then SIGTERM containerd and
    // wait (SIGKILL after 10 s); kill any leftover `containerd-shim-runc-v2` processes whose
    // command line names this instance's socket or namespace dir (read /proc/*/cmdline);
    // unmount (lazy, MNT_DETACH, i.e. `umount -l`, deepest first, from /proc/self/mountinfo)
    // every mount point under the temp dir; then remove the temp dir.
    fn drop(&mut self) {
        // If the daemon died (crashed, or a test killed it), start it again:
        // it reconnects to the running shims, and deleting tasks through it
        // also removes their runc state, cgroups and shim sockets, which live
        // outside our dir and would otherwise make the next run of the same
        // namespace/id fail with "container with given ID already exists".
        if self.was_ready && !self.daemon_alive() {
            warn(format_args!(
                "cleanup: containerd at {} had exited; restarting it to clean up",
                self.socket.display()
            ));
            let _ = self.reap_if_exited();
            if let Err(e) = self.spawn().and_then(|()| self.wait_ready()) {
                warn(format_args!("cleanup: restart failed: {e:#}"));
            }
        }
        if self.daemon_alive() {
            self.remove_all_containers();
        }
        self.stop_daemon();
        self.kill_leftover_shims();
        self.delete_leftover_runc_state();
        let left = self.unmount_all();
        if !left.is_empty() {
            // Removing the tree now could delete through a mount: leak instead.
            warn(format_args!(
                "cleanup: not removing {}: still mounted: {left:?}",
                self.dir.display()
            ));
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            warn(format_args!(
                "cleanup: removing {}: {e}",
                self.dir.display()
            ));
        }
    }
}

/// End-to-end tests need root. Returns true if the test should run. When not root:
/// if env PODKEEPER_E2E_REQUIRED=1 it panics with a clear message (CI sets this so a skip fails
/// the run); otherwise it prints a loud "SKIPPED: <test> needs root" line to stderr and returns false.
pub fn e2e_enabled(test_name: &str) -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("PODKEEPER_E2E_REQUIRED").as_deref() == Ok("1") {
        panic!(
            "{test_name} needs root (it runs a private containerd), but PODKEEPER_E2E_REQUIRED=1 \
             forbids skipping it: run the tests as root"
        );
    }
    // Straight to fd 2, not eprintln!: libtest captures the macros, and a
    // skip should be visible without --nocapture.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test_name} needs root (end-to-end test against a private containerd; \
         set PODKEEPER_E2E_REQUIRED=1 to make this a failure)"
    );
    false
}

/// The value of `"key":"..."` in compact JSON (escapes are not decoded).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let rest = &json[start..];
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// A TOML basic string for a path.
fn toml_str(p: &Path) -> String {
    let s = p.to_string_lossy();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes a warning to stderr (uncaptured, so it shows even for passing
/// tests) without ever panicking.
fn warn(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "PrivateContainerd: {msg}");
}

/// Every pid in /proc.
fn all_pids() -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .collect()
}

/// Pids of processes whose argv satisfies `pred`.
fn processes_matching(pred: impl Fn(&[String]) -> bool) -> Vec<libc::pid_t> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            !argv.is_empty() && pred(&argv)
        })
        .collect()
}

/// Pids whose parent is `parent` (from /proc/*/stat).
fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid ...": comm may contain spaces and ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|ppid| ppid.parse::<libc::pid_t>().ok())
                == Some(parent)
        })
        .collect()
}

/// Mount points (from /proc/self/mountinfo) equal to or below `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

/// Decodes the octal escapes (`\040` etc.) that mountinfo uses for
/// space, tab, newline and backslash.
fn unescape_mountinfo(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}
