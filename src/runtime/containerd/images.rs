//! Images in containerd: registering an image whose blobs were written
//! through an [`Ingest`] (labelling its content for containerd's garbage
//! collector and unpacking its layers into snapshots), and resolving an image
//! name to its config and root filesystem.

use std::collections::HashMap;

use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image,
    ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::Descriptor;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use sha2::{Digest, Sha256};

use super::client::{rpc, Containerd, RuntimeError};
use super::content::Ingest;
use crate::images::digest::hex;
use crate::images::media_types;
use crate::images::platform::{self, Platform};
use crate::runtime::pause::{self, Blob};
use crate::runtime::ImageConfig;

/// The snapshotter podkeeper unpacks into and runs containers from.
pub const SNAPSHOTTER: &str = "overlayfs";

/// An image ready to run a container from.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub name: String,
    /// Digest of the image's target (manifest or index), reported as Image ID.
    pub digest: String,
    pub config: ImageConfig,
    /// Chain ID of the top layer: the parent snapshot of a container's rootfs.
    pub chain_id: String,
    /// Bytes of the platform manifest's config and layers (compressed).
    pub size: u64,
}

/// An image record as listed.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub created: Option<jiff::Timestamp>,
}

/// The platform manifest of an image and what it was reached through.
struct PlatformManifest {
    manifest: ImageManifest,
    digest: String,
}

impl Containerd {
    /// Makes sure the built-in pause image is present and unpacked, writing
    /// it into containerd if it is not. Returns the resolved image.
    ///
    /// The image is pinned by the digest built here, not trusted by name:
    /// anything else under the name (put there by another containerd client,
    /// or an import before imports refused the name) is replaced.
    pub async fn ensure_pause_image(&self) -> Result<ResolvedImage, RuntimeError> {
        let name = pause::image_name();
        let blobs = pause::image_blobs().map_err(|source| RuntimeError::Io {
            image: name.clone(),
            source,
        })?;
        match self.resolve_image(&name).await {
            Ok(image) if image.digest == blobs.manifest.digest => return Ok(image),
            Ok(image) => tracing::warn!(
                image = %name,
                found = %image.digest,
                built = %blobs.manifest.digest,
                "the built-in pause image's name points at other content; it is replaced"
            ),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let ingest = self.begin_ingest("pause").await?;
        let result = async {
            for blob in [&blobs.layer, &blobs.config, &blobs.manifest] {
                ingest
                    .put_bytes(Some(&blob.digest), blob.data.clone())
                    .await?;
            }
            self.register_image(&ingest, &name, descriptor(&blobs.manifest))
                .await
        }
        .await;
        ingest.finish().await;
        result?;
        tracing::info!(image = %name, digest = %blobs.manifest.digest, "built-in pause image created");
        let image = self.resolve_image(&name).await?;
        if image.digest != blobs.manifest.digest {
            return Err(RuntimeError::Image {
                image: name,
                reason: format!(
                    "resolves to {} right after being written as {}",
                    image.digest, blobs.manifest.digest
                ),
            });
        }
        Ok(image)
    }

    /// Makes `name` point at `target`, whose blobs are in the content
    /// store: labels the content so the garbage collector keeps what the
    /// image uses, unpacks this platform's layers, then creates or updates
    /// the image record. Call it under the ingest that wrote the blobs.
    pub async fn register_image(
        &self,
        ingest: &Ingest,
        name: &str,
        target: Descriptor,
    ) -> Result<(), RuntimeError> {
        let platform = self.platform_manifest(name, &target).await?;
        if platform.digest != target.digest {
            self.label_blob(
                &target.digest,
                HashMap::from([(
                    "containerd.io/gc.ref.content.m.0".to_string(),
                    platform.digest.clone(),
                )]),
            )
            .await?;
        }
        let manifest = &platform.manifest;
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            manifest.config().digest().to_string(),
        )]);
        for (i, layer) in manifest.layers().iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest().to_string(),
            );
        }
        self.label_blob(&platform.digest, manifest_labels).await?;
        let config = self.image_configuration(name, manifest).await?;
        let chain_id = self.unpack(ingest, name, manifest, &config).await?;
        self.label_blob(
            manifest.config().digest().as_ref(),
            HashMap::from([(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                chain_id,
            )]),
        )
        .await?;
        for (layer, diff_id) in manifest.layers().iter().zip(config.rootfs().diff_ids()) {
            self.label_blob(
                layer.digest().as_ref(),
                HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]),
            )
            .await?;
        }
        self.put_image_record(ingest, name, target).await
    }

    async fn put_image_record(
        &self,
        ingest: &Ingest,
        name: &str,
        target: Descriptor,
    ) -> Result<(), RuntimeError> {
        let mut images = ImagesClient::new(self.channel.clone());
        let image = Image {
            name: name.to_string(),
            target: Some(target),
            ..Default::default()
        };
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match images
            .create(self.request(create, Some(ingest.lease())))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                };
                images
                    .update(self.request(update, Some(ingest.lease())))
                    .await
                    .map_err(rpc("update image", name))?;
                Ok(())
            }
            Err(status) => Err(rpc("create image", name)(status)),
        }
    }

    /// Applies the manifest's layers in order into snapshots named by their
    /// chain IDs, skipping those already unpacked; returns the top chain ID.
    async fn unpack(
        &self,
        ingest: &Ingest,
        name: &str,
        manifest: &ImageManifest,
        config: &ImageConfiguration,
    ) -> Result<String, RuntimeError> {
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(RuntimeError::Image {
                image: name.into(),
                reason: "layer count differs from the config's diff IDs".into(),
            });
        }
        let chain = chain_ids(diff_ids);
        let Some(top) = chain.last().cloned() else {
            return Err(RuntimeError::Image {
                image: name.into(),
                reason: "image has no layers".into(),
            });
        };
        if self.snapshot_exists(&top).await? {
            return Ok(top);
        }
        let lease = Some(ingest.lease());
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        for (i, layer) in manifest.layers().iter().enumerate() {
            if self.snapshot_exists(&chain[i]).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let key = format!(
                "extract-{} {}",
                jiff::Timestamp::now().as_nanosecond(),
                chain[i]
            );
            let prepare = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            };
            let mounts = snapshots
                .prepare(self.request(prepare, lease))
                .await
                .map_err(rpc("prepare snapshot", &key))?
                .into_inner()
                .mounts;
            let apply = ApplyRequest {
                diff: Some(Descriptor {
                    media_type: layer.media_type().to_string(),
                    digest: layer.digest().to_string(),
                    size: layer.size() as i64,
                    annotations: HashMap::new(),
                }),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            };
            let applied = diff.apply(self.request(apply, lease)).await;
            let applied_digest = match applied {
                Ok(reply) => reply
                    .into_inner()
                    .applied
                    .map(|d| d.digest)
                    .unwrap_or_default(),
                Err(status) => {
                    self.remove_snapshot(&key, lease).await;
                    return Err(rpc("apply layer", layer.digest().to_string())(status));
                }
            };
            if applied_digest != diff_ids[i] {
                self.remove_snapshot(&key, lease).await;
                return Err(RuntimeError::Image {
                    image: name.into(),
                    reason: format!(
                        "layer {} unpacked to {applied_digest}, expected diff ID {}",
                        layer.digest(),
                        diff_ids[i]
                    ),
                });
            }
            let commit = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain[i].clone(),
                key,
                labels: HashMap::new(),
            };
            match snapshots.commit(self.request(commit, lease)).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::AlreadyExists => {}
                Err(status) => return Err(rpc("commit snapshot", &chain[i])(status)),
            }
        }
        Ok(top)
    }

    async fn remove_snapshot(&self, key: &str, lease: Option<&str>) {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let remove = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        let _ = snapshots.remove(self.request(remove, lease)).await;
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let stat = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        match snapshots.stat(self.request(stat, None)).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(rpc("stat snapshot", key)(status)),
        }
    }

    /// The target descriptor of image `name`.
    pub async fn image_target(&self, name: &str) -> Result<Descriptor, RuntimeError> {
        let mut images = ImagesClient::new(self.channel.clone());
        images
            .get(self.request(GetImageRequest { name: name.into() }, None))
            .await
            .map_err(rpc("get image", name))?
            .into_inner()
            .image
            .and_then(|i| i.target)
            .ok_or_else(|| RuntimeError::Image {
                image: name.into(),
                reason: "image record has no target".into(),
            })
    }

    /// Looks `name` up in containerd and reads its config. The image must be
    /// present; its layers are unpacked if they are not yet (an image
    /// imported by another tool with `--no-unpack`, say).
    pub async fn resolve_image(&self, name: &str) -> Result<ResolvedImage, RuntimeError> {
        let target = self.image_target(name).await?;
        let platform = self.platform_manifest(name, &target).await?;
        let manifest = &platform.manifest;
        let config = self.image_configuration(name, manifest).await?;
        let chain = chain_ids(config.rootfs().diff_ids());
        let top = chain.last().cloned().unwrap_or_default();
        let chain_id = if !top.is_empty() && self.snapshot_exists(&top).await? {
            top
        } else {
            let ingest = self.begin_ingest("unpack").await?;
            let unpacked = self.unpack(&ingest, name, manifest, &config).await;
            ingest.finish().await;
            unpacked?
        };
        let process = config.config().clone().unwrap_or_default();
        let size =
            manifest.config().size() + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
        Ok(ResolvedImage {
            name: name.into(),
            digest: target.digest,
            config: ImageConfig {
                entrypoint: process.entrypoint().clone().unwrap_or_default(),
                cmd: process.cmd().clone().unwrap_or_default(),
                env: process.env().clone().unwrap_or_default(),
                working_dir: process.working_dir().clone().unwrap_or_default(),
                user: process.user().clone().unwrap_or_default(),
                stop_signal: process.stop_signal().clone().unwrap_or_default(),
            },
            chain_id,
            size,
        })
    }

    async fn image_configuration(
        &self,
        name: &str,
        manifest: &ImageManifest,
    ) -> Result<ImageConfiguration, RuntimeError> {
        let bytes = self.read_blob(manifest.config().digest().as_ref()).await?;
        ImageConfiguration::from_reader(&bytes[..]).map_err(|e| RuntimeError::Image {
            image: name.into(),
            reason: format!("unreadable image config: {e}"),
        })
    }

    /// The manifest for this host's platform, following an index if needed.
    async fn platform_manifest(
        &self,
        name: &str,
        target: &Descriptor,
    ) -> Result<PlatformManifest, RuntimeError> {
        let bad = |reason: String| RuntimeError::Image {
            image: name.into(),
            reason,
        };
        let bytes = self.read_blob(&target.digest).await?;
        if !media_types::is_index(&target.media_type) {
            let manifest = ImageManifest::from_reader(&bytes[..])
                .map_err(|e| bad(format!("unreadable manifest: {e}")))?;
            return Ok(PlatformManifest {
                manifest,
                digest: target.digest.clone(),
            });
        }
        let index = ImageIndex::from_reader(&bytes[..])
            .map_err(|e| bad(format!("unreadable index: {e}")))?;
        // Candidates whose manifest is not in the content store are skipped:
        // an import or pull of a multi-platform image stores only some.
        let (architecture, variant) = platform::host();
        let described: Vec<(String, Option<Platform>)> = index
            .manifests()
            .iter()
            .map(|m| {
                (
                    m.media_type().to_string(),
                    m.platform().as_ref().map(Platform::from),
                )
            })
            .collect();
        let candidates = platform::candidates(
            described.iter().map(|(t, p)| (t.as_str(), p.as_ref())),
            architecture,
            variant,
        );
        for i in candidates {
            let digest = index.manifests()[i].digest().to_string();
            if self.content_info(&digest).await?.is_none() {
                continue;
            }
            let bytes = self.read_blob(&digest).await?;
            let manifest = ImageManifest::from_reader(&bytes[..])
                .map_err(|e| bad(format!("unreadable manifest {digest}: {e}")))?;
            return Ok(PlatformManifest { manifest, digest });
        }
        Err(bad(format!(
            "no manifest for {} is present",
            platform::name("linux", architecture, variant)
        )))
    }

    /// Every image in podkeeper's namespace.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>, RuntimeError> {
        let mut images = ImagesClient::new(self.channel.clone());
        let list = images
            .list(self.request(ListImagesRequest { filters: vec![] }, None))
            .await
            .map_err(rpc("list images", ""))?
            .into_inner()
            .images;
        let mut records = Vec::with_capacity(list.len());
        for image in list {
            let target = image.target.unwrap_or_default();
            let size = match self.platform_manifest(&image.name, &target).await {
                Ok(p) => {
                    p.manifest.config().size()
                        + p.manifest.layers().iter().map(|l| l.size()).sum::<u64>()
                }
                Err(_) => 0,
            };
            records.push(ImageRecord {
                name: image.name,
                digest: target.digest,
                size,
                created: image.created_at.and_then(super::tasks::timestamp),
            });
        }
        Ok(records)
    }

    /// Deletes an image record and waits for containerd's garbage
    /// collection, which removes the content and snapshots nothing else
    /// references.
    pub async fn delete_image(&self, name: &str) -> Result<(), RuntimeError> {
        let mut images = ImagesClient::new(self.channel.clone());
        let request = DeleteImageRequest {
            name: name.into(),
            sync: true,
            target: None,
        };
        images
            .delete(self.request(request, None))
            .await
            .map_err(rpc("delete image", name))?;
        Ok(())
    }
}

fn descriptor(blob: &Blob) -> Descriptor {
    Descriptor {
        media_type: blob.media_type.into(),
        digest: blob.digest.clone(),
        size: blob.data.len() as i64,
        annotations: HashMap::new(),
    }
}

/// OCI chain IDs: the first is the first diff ID, each next one
/// `sha256(previous + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(previous) => {
                format!(
                    "sha256:{}",
                    hex(&Sha256::digest(format!("{previous} {diff_id}")))
                )
            }
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::chain_ids;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b]);
        assert_eq!(chain[0], a);
        // sha256("sha256:aaa… sha256:bbb…"), computed independently with sha256sum.
        assert_eq!(
            chain[1],
            "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c"
        );
    }
}
