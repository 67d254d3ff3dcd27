//! Helpers shared by the volume tests.

use super::*;
use crate::desired::DesiredPod;
use k8s_openapi::api::core::v1::Container;
use oci_spec::runtime::Mount;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The container ID the tests pin subPaths for.
pub(super) const TEST_ID: &str = "pk-test-c-app-1";

/// A pod from manifest text: `volumes` is the YAML list under
/// `spec.volumes` (indented by 2), `mounts` the one under the container's
/// `volumeMounts` (indented by 4).
pub(super) fn pod(volumes: &str, mounts: &str) -> DesiredPod {
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels: {{app: web, tier: \"front\\\"end\"}}\n  annotations: {{note: \"a\\nb\"}}\nspec:\n  volumes:\n{volumes}  containers:\n  - name: app\n    image: busybox:1\n    volumeMounts:\n{mounts}"
    );
    crate::manifest::parse::parse_manifest(text.as_bytes(), Path::new("/m/web.yaml"), "node1")
        .unwrap()
}

pub(super) fn container(pod: &DesiredPod) -> &Container {
    &pod.pod.spec.as_ref().unwrap().containers[0]
}

pub(super) fn host_path(name: &str, path: &Path, typ: &str) -> String {
    format!(
        "  - name: {name}\n    hostPath: {{path: \"{}\", type: \"{typ}\"}}\n",
        path.display()
    )
}

pub(super) fn prepare_one(volume: &str, root: &Path) -> Result<PreparedVolumes, VolumeError> {
    prepare(&pod(volume, "      []\n"), root)
}

pub(super) fn mounts(
    volumes: &str,
    mounts_yaml: &str,
    root: &Path,
    privileged: bool,
    env: &[(&str, &str)],
) -> Result<Vec<Mount>, VolumeError> {
    let p = pod(volumes, mounts_yaml);
    let prepared = prepare(&p, root).unwrap();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    container_mounts(
        &prepared,
        container(&p),
        TEST_ID,
        "spec.containers",
        privileged,
        &env,
    )
}

pub(super) fn options(mount: &Mount) -> Vec<String> {
    mount.options().clone().unwrap()
}

pub(super) fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

pub(super) fn some_block_device() -> Option<PathBuf> {
    fs::read_dir("/dev").ok()?.flatten().find_map(|e| {
        let is_block = e.file_type().ok()?.is_block_device();
        is_block.then(|| e.path())
    })
}

/// Releases the subPaths the tests pinned under a volume root when
/// dropped (declared after the tempdir, so it runs first).
pub(super) struct Unpin(pub PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        let released = release_sub_paths(&self.0, TEST_ID);
        // A second panic while a failed test unwinds would abort the run.
        if !std::thread::panicking() {
            released.unwrap();
        }
    }
}

/// Asserts that a mount's source is the pin of volumeMount `index` under
/// `root` and shows the very file or directory at `expected`.
pub(super) fn assert_pinned(mount: &Mount, root: &Path, index: usize, expected: &Path) {
    let source = mount.source().clone().unwrap();
    assert_eq!(
        source,
        root.join("volume-subpaths")
            .join(TEST_ID)
            .join(index.to_string())
    );
    let (a, b) = (
        fs::metadata(&source).unwrap(),
        fs::metadata(expected).unwrap(),
    );
    assert_eq!(
        (a.dev(), a.ino()),
        (b.dev(), b.ino()),
        "{}",
        expected.display()
    );
}
