//! Checks the end-to-end test harness itself: a private containerd starts,
//! the generated busybox image imports and runs, and dropping the harness
//! leaves no daemon, shim, mount or temp dir behind.
mod common;

use common::containerd::{e2e_enabled, PrivateContainerd};
use std::path::Path;
use std::time::Instant;

const IMAGE: &str = "podkeeper.local/busybox:latest";
const NS: &str = "harness-test";

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter(|l| l.contains(&dir))
        .map(String::from)
        .collect()
}

#[test]
fn private_containerd_runs_busybox() {
    if !e2e_enabled("private_containerd_runs_busybox") {
        return;
    }

    let t = Instant::now();
    let containerd = PrivateContainerd::start().expect("start private containerd");
    eprintln!("containerd ready in {:?}", t.elapsed());
    let dir = containerd.dir().to_path_buf();
    let socket = containerd.socket().to_path_buf();
    assert!(socket.starts_with(&dir), "{socket:?} not in {dir:?}");
    assert!(
        socket.as_os_str().len() < 100,
        "socket path too long: {socket:?}"
    );

    let t = Instant::now();
    containerd
        .import_busybox(NS, IMAGE)
        .expect("import busybox image");
    eprintln!("busybox archive built + imported in {:?}", t.elapsed());

    let t = Instant::now();
    let out = containerd
        .ctr(
            NS,
            &["run", "--rm", IMAGE, "t1", "/bin/sh", "-c", "echo ok"],
        )
        .expect("ctr run");
    eprintln!("ctr run --rm took {:?}", t.elapsed());
    assert!(out.contains("ok"), "unexpected output: {out:?}");

    // Something for Drop to clean up: a running task (with its shim and
    // rootfs mount) and a container without a task.
    containerd
        .ctr(
            NS,
            &["run", "-d", "--null-io", IMAGE, "t2", "/bin/sleep", "1000"],
        )
        .expect("ctr run -d");
    containerd
        .ctr(NS, &["containers", "create", IMAGE, "t3"])
        .expect("ctr containers create");
    let tasks = containerd.ctr(NS, &["tasks", "ls"]).expect("tasks ls");
    assert!(tasks.contains("t2") && tasks.contains("RUNNING"), "{tasks}");
    assert!(!mounts_under(&dir).is_empty(), "expected t2's rootfs mount");

    let t = Instant::now();
    drop(containerd);
    eprintln!("drop took {:?}", t.elapsed());

    assert!(!dir.exists(), "{dir:?} still exists after drop");
    let socket = socket.to_string_lossy().into_owned();
    let left = processes_mentioning(&socket);
    assert!(left.is_empty(), "processes still using {socket}: {left:#?}");
    let left = processes_mentioning(&dir.to_string_lossy());
    assert!(
        left.is_empty(),
        "processes still mentioning {dir:?}: {left:#?}"
    );
    let left = mounts_under(&dir);
    assert!(left.is_empty(), "mounts left under {dir:?}: {left:#?}");
}
