//! End-to-end: a container cannot use another container's `subPath` to
//! reach the host. A sidecar keeps swapping `<volume>/sub` between a
//! directory and a symlink to a host directory while the pod's other
//! containers start (for the first seconds of the pod's life), each mounting subPaths below `sub`. The host
//! directory never gets a directory made or a mode changed by the agent,
//! no container ever sees its content, and the pins the agent mounted are
//! gone with the pod.
//!
//! Needs root. The test starts its own containerd and agent and removes
//! everything when done.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::agent::{start_with_busybox, Agent, NODE};
use common::containerd::e2e_enabled;

/// Containers racing the swapper, each with two subPath mounts.
const MOUNTERS: usize = 8;
/// How long the swapper races the mounters. Bounded so that a mounter
/// which keeps losing the race starts after its back-off once the swapping
/// is over (a swapper that never stops makes the test a lottery against
/// back-off delays that grow to minutes).
const SWAP_SECONDS: u32 = 20;
/// What the host directory holds; a container that shows it got the host.
const HOST_MARKER: &str = "host-data-not-for-pods";

/// The pod: the swapper as a native sidecar (started before the others),
/// then the mounters. `sub/x` exists in the host directory (a redirected
/// mount would show it), `sub/new/deeper` does not (a redirected walk
/// would create it there).
fn manifest(host: &Path) -> String {
    let mut text = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: race
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: vol
    emptyDir: {{}}
  initContainers:
  - name: swapper
    image: podkeeper.local/busybox:latest
    restartPolicy: Always
    command:
    - sh
    - -c
    - |
      cd /vol
      exec 2>/dev/null
      i=0
      end=$(( $(date +%s) + {SWAP_SECONDS} ))
      while [ $(date +%s) -lt $end ]; do
        mkdir -p sub
        mv sub old-$i
        ln -s {host} sub
        rm -f sub
        i=$((i+1))
      done
      mkdir -p sub
      exec sleep 3600
    volumeMounts:
    - {{name: vol, mountPath: /vol}}
  containers:
",
        host = host.display()
    );
    for n in 0..MOUNTERS {
        text.push_str(&format!(
            "  - name: mounter-{n}
    image: podkeeper.local/busybox:latest
    command:
    - sh
    - -c
    - |
      if cat /x/marker 2>/dev/null; then echo LEAKED; fi
      if [ -e /deeper/marker ]; then echo LEAKED; fi
      echo mounted
      sleep 3600
    volumeMounts:
    - {{name: vol, mountPath: /x, subPath: sub/x}}
    - {{name: vol, mountPath: /deeper, subPath: sub/new/deeper}}
"
        ));
    }
    text
}

/// The agent's subPath pins: mount points under the state directory's
/// `volume-subpaths` directories.
fn pins(dir: &Path) -> Vec<String> {
    let dir = fs::canonicalize(dir).expect("state dir");
    fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(&dir) && point.contains("/volume-subpaths/"))
        .map(String::from)
        .collect()
}

fn logs(agent: &Agent, pod: &str, container: &str) -> String {
    let out = agent.cli(&["logs", pod, "-c", container]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_symlink_swapped_in_during_sub_path_setup_never_reaches_the_host() {
    if !e2e_enabled("a_symlink_swapped_in_during_sub_path_setup_never_reaches_the_host") {
        return;
    }
    let (containerd, agent) = start_with_busybox("e2e-security-subpath");
    let host = containerd.dir().join("host-target");
    fs::create_dir_all(host.join("x")).expect("creating the host directory");
    fs::write(host.join("x/marker"), HOST_MARKER).expect("writing the marker");
    fs::set_permissions(&host, fs::Permissions::from_mode(0o700)).expect("chmod");
    fs::set_permissions(host.join("x"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let modes = |dir: &Path| fs::metadata(dir).expect("stat").mode() & 0o7777;

    agent.write_manifest("race.yaml", &manifest(&host));
    let pod = format!("race-{NODE}");
    // Mounters whose subPath met the symlink fail to start and are retried;
    // every one ends up running on the volume once the swapping stops.
    agent.wait_running(&pod, MOUNTERS, Duration::from_secs(180));

    let entries: Vec<String> = fs::read_dir(&host)
        .expect("listing the host directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        ["x"],
        "the agent made something in the host directory"
    );
    assert_eq!(fs::read_dir(host.join("x")).expect("x").count(), 1);
    assert_eq!((modes(&host), modes(&host.join("x"))), (0o700, 0o700));
    for n in 0..MOUNTERS {
        let out = logs(&agent, &pod, &format!("mounter-{n}"));
        assert!(out.contains("mounted"), "mounter-{n} printed {out:?}");
        assert!(
            !out.contains("LEAKED") && !out.contains(HOST_MARKER),
            "mounter-{n} saw the host directory: {out:?}"
        );
    }
    assert!(
        pins(&agent.state).len() >= MOUNTERS * 2,
        "the running containers' subPaths are pinned under the state directory"
    );

    // Removing the pod releases every pin. Watched on the filesystem: the
    // agent is busy removing the thousands of directories the swapper left.
    let uid = agent.pod(&pod).expect("the pod")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_string();
    agent.remove_manifest("race.yaml");
    agent.wait_until(
        "the pod's directory is gone",
        Duration::from_secs(120),
        || !agent.state.join("pods").join(&uid).exists(),
    );
    assert_eq!(pins(&agent.state), Vec::<String>::new());
    assert_eq!(
        fs::read_to_string(host.join("x/marker")).expect("the marker stays"),
        HOST_MARKER
    );
}
