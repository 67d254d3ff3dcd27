//! The node benchmark's peers: the raw containerd floor and podman.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use podkeeper::runtime::containerd::images::ResolvedImage;
use podkeeper::runtime::containerd::tasks::NewContainer;
use podkeeper::runtime::containerd::Containerd;

use crate::common::agent::BUSYBOX;
use crate::NAMESPACE;

/// The raw floor: the same tasks (pause, then `containers` busybox
/// sleepers joining its namespaces) created and started one after the
/// other straight over containerd's API, no network, no podkeeper logic.
pub struct RawFloor {
    runtime: Containerd,
    pause: ResolvedImage,
    busybox: ResolvedImage,
}

impl RawFloor {
    pub async fn new(socket: &Path) -> anyhow::Result<RawFloor> {
        let runtime = Containerd::connect(socket, NAMESPACE).await?;
        let pause = runtime
            .resolve_image(&podkeeper::runtime::pause::image_name())
            .await?;
        let busybox = runtime.resolve_image(BUSYBOX).await?;
        Ok(RawFloor {
            runtime,
            pause,
            busybox,
        })
    }

    /// One pod's tasks; returns their IDs. `shared_shim` puts them in one
    /// shim, as podkeeper and containerd's CRI plugin do; otherwise each
    /// task gets its own, as `ctr run` does.
    pub async fn run(
        &self,
        run: usize,
        containers: usize,
        shared_shim: bool,
    ) -> anyhow::Result<Vec<String>> {
        let sandbox = format!("raw-{run}-{shared_shim}-pause");
        let group = shared_shim.then_some(sandbox.as_str());
        let pid = self
            .start(&sandbox, &self.pause, vec!["/pause".into()], None, group)
            .await?;
        let mut ids = vec![sandbox.clone()];
        for i in 0..containers {
            let id = format!("raw-{run}-{shared_shim}-c{i}");
            self.start(
                &id,
                &self.busybox,
                vec!["sleep".into(), "36000".into()],
                Some(pid),
                group,
            )
            .await?;
            ids.push(id);
        }
        Ok(ids)
    }

    async fn start(
        &self,
        id: &str,
        image: &ResolvedImage,
        args: Vec<String>,
        join: Option<u32>,
        shim_group: Option<&str>,
    ) -> anyhow::Result<u32> {
        use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
        let mut spec = Spec::default();
        if let Some(group) = shim_group {
            spec.set_annotations(Some(HashMap::from([(
                podkeeper::runtime::spec::SHIM_GROUP_ANNOTATION.to_string(),
                group.to_string(),
            )])));
        }
        if let Some(process) = spec.process_mut() {
            process.set_args(Some(args));
            process.set_rlimits(None);
        }
        if let (Some(pid), Some(linux)) = (join, spec.linux_mut()) {
            let namespaces = linux.namespaces().clone().unwrap_or_default();
            let joined = namespaces
                .into_iter()
                .map(|mut ns| {
                    let name = match ns.typ() {
                        LinuxNamespaceType::Network => Some("net"),
                        LinuxNamespaceType::Ipc => Some("ipc"),
                        LinuxNamespaceType::Uts => Some("uts"),
                        _ => None,
                    };
                    if let Some(name) = name {
                        ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{name}"))));
                    }
                    ns
                })
                .collect::<Vec<LinuxNamespace>>();
            linux.set_namespaces(Some(joined));
        }
        self.runtime
            .create_container(NewContainer {
                id,
                image: &image.name,
                chain_id: &image.chain_id,
                spec: &spec,
                labels: HashMap::new(),
                log_target: None,
            })
            .await?;
        Ok(self.runtime.start_task(id).await?)
    }

    pub async fn remove(&self, ids: &[String]) {
        for id in ids.iter().rev() {
            let _ = self.runtime.remove_container(id).await;
        }
    }
}

/// `podman` with its own storage in a temporary directory, so the node's
/// podman (if any) is untouched, and the ulimits this host allows.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> anyhow::Result<Podman> {
        let dir = tempfile::tempdir()?;
        // Debian's default asks for nofile limits above these hosts' hard
        // limits; runc then refuses every container.
        std::fs::write(
            dir.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n",
        )?;
        let podman = Podman { dir };
        let archive = crate::common::archives::shared_busybox_oci(BUSYBOX)?;
        podman.run(&["load", "-i", &archive.display().to_string()])?;
        Ok(podman)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = self.command(args).output().context("running podman")?;
        if !output.status.success() {
            bail!(
                "podman {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    pub fn play(&self, file: &Path) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.run(&["kube", "play", &file.display().to_string()])?;
        Ok(started.elapsed())
    }

    pub fn down(&self, file: &Path) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.run(&["kube", "down", &file.display().to_string()])?;
        Ok(started.elapsed())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["pod", "rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["system", "reset", "--force"]);
    }
}
