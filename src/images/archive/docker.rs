//! `docker save` archives (`manifest.json`): legacy layers and configs turned
//! into OCI-style images with a synthesized manifest.

use crate::images::media_types::{
    MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_LAYER_ZSTD,
};
use serde::{Deserialize, Serialize};

use super::oci::{add_image, parse};
use super::tar_reader::Compression;
use super::{
    ArchiveError, ArchiveImage, BlobDescriptor, BlobSink, Contents, FileInfo, DOCKER_MANIFEST_JSON,
};
use crate::images::digest::{is_sha256_digest, sha256_digest};

// ---- docker save (legacy) ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct DockerConfig {
    rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SchemaDescriptor<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Schema2Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: SchemaDescriptor<'a>,
    layers: Vec<SchemaDescriptor<'a>>,
}

pub(super) fn docker_images(
    contents: &Contents,
    sink: &mut dyn BlobSink,
) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let info = contents.files.get(DOCKER_MANIFEST_JSON).ok_or_else(|| {
        ArchiveError::NotAnArchive(format!("no {DOCKER_MANIFEST_JSON} in the archive"))
    })?;
    let bytes = contents
        .bytes(info, DOCKER_MANIFEST_JSON)
        .map_err(ArchiveError::Invalid)?;
    let entries: Vec<DockerEntry> =
        parse(bytes, DOCKER_MANIFEST_JSON).map_err(ArchiveError::Invalid)?;
    if entries.is_empty() {
        return Err(ArchiveError::Invalid(format!(
            "{DOCKER_MANIFEST_JSON} lists no images"
        )));
    }
    let mut images = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let names = entry.repo_tags.clone().unwrap_or_default();
        let what = match names.first() {
            Some(name) => format!("{DOCKER_MANIFEST_JSON} image {name}"),
            None => format!("{DOCKER_MANIFEST_JSON} entry {i}"),
        };
        let manifest = docker_manifest(contents, entry, &what).map_err(ArchiveError::Invalid)?;
        let digest = sha256_digest(&manifest);
        let size = manifest.len() as u64;
        let stored = sink
            .put(Some(&digest), size, &mut manifest.as_slice())
            .map_err(|message| ArchiveError::Sink {
                digest: digest.clone(),
                message,
            })?;
        if stored != digest {
            return Err(ArchiveError::Sink {
                digest,
                message: format!("the sink returned {stored} for the synthesized manifest"),
            });
        }
        let target = BlobDescriptor {
            media_type: MEDIA_TYPE_DOCKER_MANIFEST.into(),
            digest,
            size,
        };
        add_image(&mut images, names, target);
    }
    Ok(images)
}

/// The stored blob at `path` (after links), or a message naming what is missing.
fn docker_blob<'a>(
    contents: &'a Contents,
    path: &str,
    what: &str,
    parent: &str,
) -> Result<(&'a FileInfo, &'a str), String> {
    let missing = || format!("{parent} references {what} {path} which is not in the archive");
    let (_, info) = contents.resolve(path).ok_or_else(missing)?;
    let digest = info.digest.as_deref().ok_or_else(missing)?;
    Ok((info, digest))
}

/// Builds the schema2 manifest of one `manifest.json` entry, checking that
/// the config and layers are there and agree with each other.
fn docker_manifest(
    contents: &Contents,
    entry: &DockerEntry,
    what: &str,
) -> Result<Vec<u8>, String> {
    let (config_info, config_digest) = docker_blob(contents, &entry.config, "config", what)?;
    // Legacy archives carry no digests of their own except in names: the
    // config is `<sha256 of config>.json`, and the config lists the layers' diff IDs.
    let config_name = entry.config.rsplit('/').next().unwrap_or_default();
    if let Some(hex) = config_name.strip_suffix(".json") {
        let named = format!("sha256:{hex}");
        if is_sha256_digest(&named) && named != config_digest {
            return Err(format!(
                "digest mismatch: {what}: config {} holds content with digest {config_digest}",
                entry.config
            ));
        }
    }
    let diff_ids = match &config_info.cached {
        Some(bytes) => {
            let config: DockerConfig = parse(bytes, &format!("{what}: config {}", entry.config))?;
            Some(config.rootfs.map(|r| r.diff_ids).unwrap_or_default())
        }
        None => None,
    };
    if let Some(diff_ids) = &diff_ids {
        if diff_ids.len() != entry.layers.len() {
            return Err(format!(
                "{what} lists {} layers but its config {} lists {} diff IDs",
                entry.layers.len(),
                entry.config,
                diff_ids.len()
            ));
        }
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, path) in entry.layers.iter().enumerate() {
        let (info, digest) = docker_blob(contents, path, "layer", what)?;
        let media_type = match info.compression {
            Compression::Plain => MEDIA_TYPE_DOCKER_LAYER,
            Compression::Gzip => MEDIA_TYPE_DOCKER_LAYER_GZIP,
            Compression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        };
        if let (Some(diff_ids), Compression::Plain) = (&diff_ids, info.compression) {
            // An uncompressed layer's digest is its diff ID; compressed ones are checked on unpack.
            if diff_ids[i] != digest {
                return Err(format!(
                    "digest mismatch: {what}: layer {path} has digest {digest} but the config lists diff ID {}",
                    diff_ids[i]
                ));
            }
        }
        layers.push(SchemaDescriptor {
            media_type,
            size: info.size,
            digest,
        });
    }
    let manifest = Schema2Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_DOCKER_MANIFEST,
        config: SchemaDescriptor {
            media_type: MEDIA_TYPE_DOCKER_CONFIG,
            size: config_info.size,
            digest: config_digest,
        },
        layers,
    };
    serde_json::to_vec(&manifest).map_err(|e| format!("{what}: encoding the manifest: {e}"))
}
