//! OCI image layouts (`index.json`): classifying the kept JSON files, checking
//! manifests and indexes for completeness, and naming the images.

use crate::images::media_types::{self, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST};
use crate::images::platform;
use serde::Deserialize;
use std::collections::HashMap;

use super::{
    ArchiveError, ArchiveImage, BlobDescriptor, Contents, FileInfo, ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_OCI_REF_NAME, INDEX_JSON, MAX_INDEX_DEPTH,
};

// ---- OCI layout --------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    platform: Option<Platform>,
}

/// Read leniently (fields may be missing): only named in messages, never matched.
#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Just enough of a manifest or index to tell which it is when the descriptor has no media type.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Manifest,
    Index,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    if media_types::is_manifest(media_type) {
        Some(Kind::Manifest)
    } else if media_types::is_index(media_type) {
        Some(Kind::Index)
    } else {
        None
    }
}

pub(super) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("{what} is not valid: {e}"))
}

/// A stored blob for `d`, or a message naming what is missing or wrong.
fn present<'a>(
    contents: &'a Contents,
    d: &Descriptor,
    what: &str,
    parent: &str,
) -> Result<&'a FileInfo, String> {
    let info = contents.blob(&d.digest).ok_or_else(|| {
        format!(
            "{parent} references {what} {} which is not in the archive",
            d.digest
        )
    })?;
    if info.size != d.size {
        return Err(format!(
            "{parent} lists {what} {} with size {} but the archive holds {} bytes",
            d.digest, d.size, info.size
        ));
    }
    Ok(info)
}

/// Works out whether `d` is a manifest or an index, and its media type for the target.
fn classify(
    contents: &Contents,
    d: &Descriptor,
    info: &FileInfo,
    what: &str,
) -> Result<(Kind, String), String> {
    if let Some(media_type) = &d.media_type {
        return kind_of(media_type)
            .map(|kind| (kind, media_type.clone()))
            .ok_or_else(|| {
                format!(
                    "{what} {} has unsupported media type {media_type}",
                    d.digest
                )
            });
    }
    let bytes = contents.bytes(info, &format!("{what} {}", d.digest))?;
    let probe: Probe = parse(bytes, &format!("{what} {}", d.digest))?;
    if let Some(media_type) = probe.media_type {
        return kind_of(&media_type)
            .map(|kind| (kind, media_type.clone()))
            .ok_or_else(|| {
                format!(
                    "{what} {} has unsupported media type {media_type}",
                    d.digest
                )
            });
    }
    match (probe.manifests.is_some(), probe.config.is_some()) {
        (true, false) => Ok((Kind::Index, MEDIA_TYPE_OCI_INDEX.into())),
        (false, true) => Ok((Kind::Manifest, MEDIA_TYPE_OCI_MANIFEST.into())),
        _ => Err(format!(
            "{what} {} is neither a manifest nor an index",
            d.digest
        )),
    }
}

/// Checks that the config and every layer of a manifest are in the archive.
fn check_manifest(contents: &Contents, d: &Descriptor, info: &FileInfo) -> Result<(), String> {
    let what = format!("manifest {}", d.digest);
    let manifest: Manifest = parse(contents.bytes(info, &what)?, &what)?;
    present(contents, &manifest.config, "config", &what)?;
    for layer in &manifest.layers {
        let foreign = !layer.urls.is_empty()
            && layer
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("nondistributable") || m.contains("foreign"));
        match present(contents, layer, "layer", &what) {
            // Non-distributable layers are fetched from their URLs, never shipped in archives.
            Err(_) if foreign && contents.blob(&layer.digest).is_none() => {}
            other => {
                other?;
            }
        }
    }
    Ok(())
}

/// Checks a nested index: children for other platforms may be missing, or
/// present without their layers (Docker keeps every platform's manifest and
/// config but only one platform's layers), but at least one must be complete.
fn check_index(
    contents: &Contents,
    d: &Descriptor,
    info: &FileInfo,
    depth: usize,
) -> Result<(), String> {
    let what = format!("index {}", d.digest);
    if depth > MAX_INDEX_DEPTH {
        return Err(format!(
            "{what} nests indexes more than {MAX_INDEX_DEPTH} deep"
        ));
    }
    let index: Index = parse(contents.bytes(info, &what)?, &what)?;
    let mut problems = Vec::new();
    let mut complete = 0;
    for child in &index.manifests {
        let checked = present(contents, child, "manifest", &what).and_then(|child_info| {
            match classify(contents, child, child_info, "manifest")?.0 {
                Kind::Manifest => check_manifest(contents, child, child_info),
                Kind::Index => check_index(contents, child, child_info, depth + 1),
            }
        });
        match checked {
            Ok(()) => complete += 1,
            Err(problem) => problems.push(match &child.platform {
                Some(p) => format!(
                    "{} ({problem})",
                    platform::name(&p.os, &p.architecture, p.variant.as_deref())
                ),
                None => problem,
            }),
        }
    }
    if complete > 0 {
        return Ok(());
    }
    if problems.is_empty() {
        return Err(format!("{what} lists no manifests"));
    }
    const SHOWN: usize = 4;
    let more = problems.len().saturating_sub(SHOWN);
    problems.truncate(SHOWN);
    let mut message = format!(
        "{what} has no manifest whose blobs are all in the archive: {}",
        problems.join("; ")
    );
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Err(message)
}

/// containerd's rule (`ctr import`): a ref name is a full reference when it
/// contains any of `/`, `:`, `@`; otherwise it is only a tag such as `latest`.
fn is_full_reference(name: &str) -> bool {
    name.contains(['/', ':', '@'])
}

pub(super) fn oci_images(contents: &Contents) -> Result<Vec<ArchiveImage>, ArchiveError> {
    let info = contents
        .files
        .get(INDEX_JSON)
        .ok_or_else(|| ArchiveError::NotAnArchive(format!("no {INDEX_JSON} in the archive")))?;
    let bytes = contents
        .bytes(info, INDEX_JSON)
        .map_err(ArchiveError::Invalid)?;
    let index: Index = parse(bytes, INDEX_JSON).map_err(ArchiveError::Invalid)?;
    let mut images = Vec::new();
    for d in &index.manifests {
        let target = oci_target(contents, d).map_err(ArchiveError::Invalid)?;
        let names = match d.annotations.get(ANNOTATION_CONTAINERD_NAME) {
            Some(name) => vec![name.clone()],
            None => d
                .annotations
                .get(ANNOTATION_OCI_REF_NAME)
                .filter(|name| is_full_reference(name))
                .map(|name| vec![name.clone()])
                .unwrap_or_default(),
        };
        add_image(&mut images, names, target);
    }
    Ok(images)
}

/// Checks one `index.json` entry and returns the descriptor to register.
fn oci_target(contents: &Contents, d: &Descriptor) -> Result<BlobDescriptor, String> {
    let info = present(contents, d, "manifest", INDEX_JSON)?;
    let (kind, media_type) = classify(contents, d, info, "manifest")?;
    match kind {
        Kind::Manifest => check_manifest(contents, d, info)?,
        Kind::Index => check_index(contents, d, info, 0)?,
    }
    Ok(BlobDescriptor {
        media_type,
        digest: d.digest.clone(),
        size: d.size,
    })
}

/// Adds an image, merging it with an earlier one of the same target (Docker
/// writes one index entry per tag of the same manifest).
pub(super) fn add_image(
    images: &mut Vec<ArchiveImage>,
    names: Vec<String>,
    target: BlobDescriptor,
) {
    match images.iter_mut().find(|image| image.target == target) {
        Some(image) => {
            for name in names {
                if !image.names.contains(&name) {
                    image.names.push(name);
                }
            }
        }
        None => images.push(ArchiveImage { names, target }),
    }
}
