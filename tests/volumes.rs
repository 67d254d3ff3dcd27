//! End-to-end checks of pod volumes that need root: a memory-backed emptyDir
//! is a tmpfs of its sizeLimit that `cleanup` unmounts, `cleanup` unmounts
//! rather than deletes through whatever is mounted under the volume root,
//! and the mounts `container_mounts` builds work in a real runc container.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use common::containerd::{e2e_enabled, PrivateContainerd};
use podkeeper::desired::DesiredPod;
use podkeeper::manifest::parse::parse_manifest;
use podkeeper::pod::volumes::{cleanup, container_mounts, prepare};

const IMAGE: &str = "podkeeper.local/busybox:latest";
const NS: &str = "e2e-volumes";

fn pod(yaml: &str) -> DesiredPod {
    parse_manifest(yaml.as_bytes(), Path::new("/m/web.yaml"), "node1").expect("manifest")
}

/// `cleanup` of the volume root `root`, its parent trusted as the agent
/// trusts its state directory.
fn cleanup_at(root: &Path) -> std::io::Result<()> {
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a root name");
    let parent = podkeeper::host::SafePath::base(root.parent().expect("a parent"));
    cleanup(&parent.join(&[name]).expect("a plain name"))
}

/// Runs `cleanup` on drop, so a failing assertion leaves no tmpfs behind.
struct CleanupGuard(PathBuf);

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if let Err(e) = cleanup_at(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

/// Mount points (field 5 of /proc/self/mountinfo) at or below `dir`; test
/// paths have no characters that mountinfo escapes.
fn mount_points_under(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(&dir))
        .map(String::from)
        .collect()
}

fn statfs(path: &Path) -> libc::statfs {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: all-zero is a valid statfs for the kernel to fill.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `buf` is valid and writable.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
    assert_eq!(
        rc,
        0,
        "statfs {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    buf
}

#[test]
fn memory_empty_dir_is_a_tmpfs_of_its_size_limit_and_cleanup_unmounts_it() {
    if !e2e_enabled("memory_empty_dir_is_a_tmpfs_of_its_size_limit_and_cleanup_unmounts_it") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("pods/uid/volumes");
    let _guard = CleanupGuard(root.clone());
    let p = pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  volumes:\n  - name: cache\n    emptyDir: {medium: Memory, sizeLimit: 1Mi}\n  containers:\n  - {name: app, image: busybox}\n",
    );
    let prepared = prepare(&p, &root).expect("prepare");
    let cache = prepared.get("cache").expect("cache volume").path.clone();

    let fs_info = statfs(&cache);
    assert_eq!(fs_info.f_type, libc::TMPFS_MAGIC, "not a tmpfs");
    assert_eq!(
        fs_info.f_blocks * fs_info.f_bsize as u64,
        1 << 20,
        "tmpfs size is not 1 MiB"
    );

    let mut file = fs::File::create(cache.join("big")).expect("create");
    let err = file
        .write_all(&vec![0u8; 2 << 20])
        .expect_err("2 MiB fit into a 1 MiB tmpfs");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(file);

    // A second prepare mounts nothing more.
    prepare(&p, &root).expect("second prepare");
    assert_eq!(
        mount_points_under(&root).len(),
        1,
        "{:?}",
        mount_points_under(&root)
    );

    cleanup_at(&root).expect("cleanup");
    assert!(
        mount_points_under(tmp.path()).is_empty(),
        "{:?}",
        mount_points_under(tmp.path())
    );
    assert!(!root.exists());
}

#[test]
fn cleanup_unmounts_instead_of_deleting_through_a_bind_mount() {
    if !e2e_enabled("cleanup_unmounts_instead_of_deleting_through_a_bind_mount") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = tmp.path().join("host");
    fs::create_dir(&host).expect("mkdir");
    fs::write(host.join("keep"), "precious").expect("write");
    let root = tmp.path().join("volumes");
    let _guard = CleanupGuard(root.clone());
    let p = pod(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  volumes:\n  - name: cache\n    emptyDir: {}\n  containers:\n  - {name: app, image: busybox}\n",
    );
    let prepared = prepare(&p, &root).expect("prepare");
    let target = prepared.get("cache").expect("cache").path.join("mnt");
    fs::create_dir(&target).expect("mkdir target");
    let src = std::ffi::CString::new(host.as_os_str().as_encoded_bytes()).expect("path");
    let dst = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid NUL-terminated paths; a bind mount takes no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "bind mount: {}", std::io::Error::last_os_error());
    assert!(target.join("keep").exists());

    cleanup_at(&root).expect("cleanup");
    assert!(!root.exists());
    assert!(mount_points_under(tmp.path()).is_empty());
    assert_eq!(
        fs::read_to_string(host.join("keep")).expect("kept"),
        "precious"
    );
}

#[test]
fn container_mounts_work_in_runc() {
    if !e2e_enabled("container_mounts_work_in_runc") {
        return;
    }
    let containerd = PrivateContainerd::start().expect("start containerd");
    containerd
        .import_busybox(NS, IMAGE)
        .expect("import busybox");
    let base = containerd.dir().join("vol");
    let host = base.join("host");
    fs::create_dir_all(host.join("conf")).expect("mkdir");
    fs::write(host.join("conf/app.conf"), "hello from the node\n").expect("write");
    let root = base.join("pods/uid/volumes");
    let _guard = CleanupGuard(root.clone());

    let p = pod(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  volumes:
  - name: host
    hostPath: {{path: {host}, type: Directory}}
  - name: scratch
    emptyDir: {{}}
  - name: info
    downwardAPI: {{items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]}}
  containers:
  - name: app
    image: {IMAGE}
    volumeMounts:
    - {{name: host, mountPath: /host, readOnly: true}}
    - {{name: host, mountPath: /etc/app.conf, subPath: conf/app.conf}}
    - {{name: scratch, mountPath: /scratch}}
    - {{name: scratch, mountPath: /logs, subPathExpr: '$(SUB)'}}
    - {{name: info, mountPath: /info}}
",
        host = host.display()
    ));
    let prepared = prepare(&p, &root).expect("prepare");
    let container = &p.pod.spec.as_ref().expect("spec").containers[0];
    let env = HashMap::from([("SUB".to_string(), "logs".to_string())]);
    let id = "pk-e2e-c-app-0";
    let mounts =
        container_mounts(&prepared, container, id, "spec.containers", false, &env).expect("mounts");

    // `ctr run --mount` with exactly the source, destination and options
    // container_mounts returned.
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    for m in &mounts {
        args.push("--mount".into());
        args.push(format!(
            "type={},src={},dst={},options={}",
            m.typ().as_deref().expect("type"),
            m.source().as_ref().expect("source").display(),
            m.destination().display(),
            m.options().as_ref().expect("options").join(":")
        ));
    }
    let script = "cat /etc/app.conf
if touch /host/x 2>/dev/null; then echo host-writable; else echo host-read-only; fi
if touch /info/x 2>/dev/null; then echo info-writable; else echo info-read-only; fi
echo \"name=$(cat /info/name)\"
echo written > /scratch/from-container && echo scratch-ok
echo line > /logs/app.log && echo logs-ok";
    args.extend([IMAGE, "vol-test", "/bin/sh", "-c", script].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = containerd.ctr(NS, &args).expect("ctr run");

    for expected in [
        "hello from the node",
        "host-read-only",
        "info-read-only",
        "name=web-node1",
        "scratch-ok",
        "logs-ok",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from {out:?}");
    }
    let scratch = &prepared.get("scratch").expect("scratch").path;
    assert_eq!(
        fs::read_to_string(scratch.join("from-container")).expect("read"),
        "written\n"
    );
    assert_eq!(
        fs::read_to_string(scratch.join("logs/app.log")).expect("read"),
        "line\n"
    );
    assert!(!host.join("x").exists());

    cleanup_at(&root).expect("cleanup");
    assert!(!root.exists());
    assert_eq!(
        fs::read_to_string(host.join("conf/app.conf")).expect("host file kept"),
        "hello from the node\n"
    );
}
