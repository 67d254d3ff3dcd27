//! Tests of reading archives, on tars built in memory.

use crate::images::media_types::{
    MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_LAYER,
    MEDIA_TYPE_OCI_LAYER_ZSTD, MEDIA_TYPE_OCI_MANIFEST,
};
use sha2::{Digest as _, Sha256};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read, Write as _};
use std::rc::Rc;

use super::oci::*;
use super::tar_reader::*;
use super::*;
use crate::images::digest::sha256_digest;

/// A sink that keeps every blob by digest and refuses one whose content does not match
/// `expected`, as containerd's content store does. It reads whatever it is given: that
/// this is exactly `size` bytes is the reader's promise, which `read_contents` checks.
#[derive(Default)]
pub(super) struct TestSink {
    blobs: HashMap<String, Vec<u8>>,
    /// (expected, returned digest) in call order.
    puts: Vec<(Option<String>, String)>,
}

impl BlobSink for TestSink {
    fn put(
        &mut self,
        expected: Option<&str>,
        _: u64,
        data: &mut dyn Read,
    ) -> Result<String, String> {
        let mut bytes = Vec::new();
        data.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let digest = sha256_digest(&bytes);
        match expected {
            Some(expected) if expected != digest => {
                Err(format!("expected {expected}, got {digest}"))
            }
            _ => {
                self.puts
                    .push((expected.map(str::to_string), digest.clone()));
                self.blobs.insert(digest.clone(), bytes);
                Ok(digest)
            }
        }
    }
}

pub(super) enum E<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Dir(&'a str),
}

pub(super) fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match e {
            E::File(path, data) => {
                h.set_size(data.len() as u64);
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, path, *data).unwrap();
            }
            E::Symlink(path, target) | E::Hardlink(path, target) => {
                h.set_size(0);
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                b.append_link(&mut h, path, target).unwrap();
            }
            E::Dir(path) => {
                h.set_size(0);
                h.set_mode(0o755);
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, path, io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", hex(digest))
}

/// A small layer: a real tar holding one file.
fn layer(content: &str) -> Vec<u8> {
    tar_of(&[E::File("hello.txt", content.as_bytes())])
}

fn config_for(layers: &[&[u8]]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_digest(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": sha256_digest(bytes), "size": bytes.len()})
}

/// An OCI manifest and its config for `layers`: (manifest, config).
fn oci_manifest(layers: &[&[u8]]) -> (Vec<u8>, Vec<u8>) {
    let config = config_for(layers);
    let layers: Vec<_> = layers
        .iter()
        .map(|l| descriptor(MEDIA_TYPE_OCI_LAYER, l))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": descriptor(MEDIA_TYPE_OCI_CONFIG, &config),
        "layers": layers,
    }))
    .unwrap();
    (manifest, config)
}

fn index_of(entries: Vec<serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": entries,
    }))
    .unwrap()
}

fn annotated(mut d: serde_json::Value, annotations: &[(&str, &str)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    d["annotations"] = map.into();
    d
}

struct Oci {
    tar: Vec<u8>,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

/// A one-image OCI layout; `prefix` is put before every path (e.g. "./"),
/// and `index_first` puts index.json before the blobs.
fn oci_archive(annotations: &[(&str, &str)], prefix: &str, index_first: bool) -> Oci {
    let layer = layer("hello");
    let (manifest, config) = oci_manifest(&[&layer]);
    let index = index_of(vec![annotated(
        descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest),
        annotations,
    )]);
    let p = |s: &str| format!("{prefix}{s}");
    let (lp, cp, mp) = (
        p(&blob_path(&sha256_digest(&layer))),
        p(&blob_path(&sha256_digest(&config))),
        p(&blob_path(&sha256_digest(&manifest))),
    );
    let (layout, index_path, blobs_dir, sha_dir) = (
        p("oci-layout"),
        p("index.json"),
        p("blobs/"),
        p("blobs/sha256/"),
    );
    let mut entries = vec![E::File(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)];
    if index_first {
        entries.push(E::File(&index_path, &index));
    }
    entries.extend([
        E::Dir(&blobs_dir),
        E::Dir(&sha_dir),
        E::File(&lp, &layer),
        E::File(&cp, &config),
        E::File(&mp, &manifest),
    ]);
    if !index_first {
        entries.push(E::File(&index_path, &index));
    }
    let tar = tar_of(&entries);
    Oci {
        tar,
        manifest,
        config,
        layer,
    }
}

const NAME: &str = "example.com/app:1.0";

fn check_oci_result(oci: &Oci, images: &[ArchiveImage], sink: &TestSink) {
    assert_eq!(
        images,
        [ArchiveImage {
            names: vec![NAME.into()],
            target: BlobDescriptor {
                media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
                digest: sha256_digest(&oci.manifest),
                size: oci.manifest.len() as u64,
            },
        }]
    );
    for blob in [&oci.manifest, &oci.config, &oci.layer] {
        let digest = sha256_digest(blob);
        assert_eq!(sink.blobs.get(&digest), Some(blob));
        // Named blobs are passed with their expected digest.
        assert!(sink
            .puts
            .iter()
            .any(|(e, d)| e.as_ref() == Some(&digest) && *d == digest));
    }
    assert_eq!(
        sink.puts.len(),
        3,
        "only blobs go to the sink: {:?}",
        sink.puts
    );
}

#[test]
fn oci_layout_plain_gzip_and_zstd() {
    let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "", false);
    for input in [oci.tar.clone(), gzip(&oci.tar), zstd(&oci.tar)] {
        let mut sink = TestSink::default();
        let images = read_archive(input.as_slice(), &mut sink).unwrap();
        check_oci_result(&oci, &images, &sink);
    }
}

#[test]
fn oci_layout_with_dot_slash_paths_and_index_first() {
    let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "./", true);
    let mut sink = TestSink::default();
    let images = read_archive(oci.tar.as_slice(), &mut sink).unwrap();
    check_oci_result(&oci, &images, &sink);
}

#[test]
fn names_from_annotations() {
    type Annotations<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Annotations, &[&str])] = &[
        (&[(ANNOTATION_OCI_REF_NAME, NAME)], &[NAME]),
        (&[(ANNOTATION_OCI_REF_NAME, "latest")], &[]),
        (&[(ANNOTATION_OCI_REF_NAME, "1.0")], &[]),
        (
            &[(ANNOTATION_OCI_REF_NAME, "busybox:1.36")],
            &["busybox:1.36"],
        ),
        (
            &[
                (ANNOTATION_OCI_REF_NAME, "latest"),
                (ANNOTATION_CONTAINERD_NAME, NAME),
            ],
            &[NAME],
        ),
        (&[("com.example.unknown", "x")], &[]),
        (&[], &[]),
    ];
    for (annotations, names) in cases {
        let oci = oci_archive(annotations, "", false);
        let images = read_archive(oci.tar.as_slice(), &mut TestSink::default()).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].names, *names, "annotations {annotations:?}");
    }
}

#[test]
fn same_manifest_under_two_tags_is_one_image_with_two_names() {
    let layer = layer("x");
    let (manifest, config) = oci_manifest(&[&layer]);
    let d = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
    let index = index_of(vec![
        annotated(d.clone(), &[(ANNOTATION_CONTAINERD_NAME, "a.io/x:1")]),
        annotated(d, &[(ANNOTATION_CONTAINERD_NAME, "a.io/x:2")]),
    ]);
    let tar = tar_of(&[
        E::File(&blob_path(&sha256_digest(&layer)), &layer),
        E::File(&blob_path(&sha256_digest(&config)), &config),
        E::File(&blob_path(&sha256_digest(&manifest)), &manifest),
        E::File("index.json", &index),
    ]);
    let images = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].names, ["a.io/x:1", "a.io/x:2"]);
}

/// A multi-arch image as skopeo copies it with one platform's content:
/// the nested index and the amd64 manifest are there, arm64's is not.
#[test]
fn nested_index_needs_one_complete_child() {
    let layer = layer("amd64");
    let (manifest, config) = oci_manifest(&[&layer]);
    let (other_manifest, other_config) = oci_manifest(&[b"arm64 layer, not shipped"]);
    let mut amd64 = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
    amd64["platform"] = serde_json::json!({"architecture": "amd64", "os": "linux"});
    let mut arm64 = descriptor(MEDIA_TYPE_OCI_MANIFEST, &other_manifest);
    arm64["platform"] =
        serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"});
    let nested = index_of(vec![arm64, amd64]);
    let index = index_of(vec![annotated(
        descriptor(MEDIA_TYPE_OCI_INDEX, &nested),
        &[(ANNOTATION_OCI_REF_NAME, NAME)],
    )]);
    let entry = |b: &Vec<u8>| (blob_path(&sha256_digest(b)), b.clone());
    let build = |blobs: &[&Vec<u8>]| {
        let files: Vec<(String, Vec<u8>)> = blobs.iter().map(|b| entry(b)).collect();
        let mut entries: Vec<E> = files.iter().map(|(p, b)| E::File(p, b)).collect();
        entries.push(E::File("index.json", &index));
        tar_of(&entries)
    };

    // Only amd64 is complete.
    let tar = build(&[&nested, &manifest, &config, &layer]);
    let images = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap();
    assert_eq!(
        images,
        [ArchiveImage {
            names: vec![NAME.into()],
            target: BlobDescriptor {
                media_type: MEDIA_TYPE_OCI_INDEX.into(),
                digest: sha256_digest(&nested),
                size: nested.len() as u64,
            },
        }]
    );

    // arm64's manifest and config are there but not its layer (as Docker keeps them): still fine.
    let tar = build(&[
        &nested,
        &manifest,
        &config,
        &layer,
        &other_manifest,
        &other_config,
    ]);
    assert!(read_archive(tar.as_slice(), &mut TestSink::default()).is_ok());

    // amd64's layer is missing too: no child is complete.
    let tar = build(&[&nested, &manifest, &config, &other_manifest, &other_config]);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
    assert!(msg.contains(&sha256_digest(&nested)), "{msg}");
    assert!(
        msg.contains(&format!("layer {}", sha256_digest(&layer))),
        "{msg}"
    );
    assert!(msg.contains("linux/arm64/v8"), "{msg}");

    // The nested index itself is missing.
    let tar = build(&[&manifest, &config, &layer]);
    let msg = read_archive(tar.as_slice(), &mut TestSink::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "index.json references manifest {} which is not in the archive",
            sha256_digest(&nested)
        )
    );
}

#[test]
fn missing_layer_is_named() {
    let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "", false);
    let layer_path = blob_path(&sha256_digest(&oci.layer));
    // Rebuild the archive without the layer.
    let mut archive = tar::Archive::new(oci.tar.as_slice());
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path != layer_path && entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            kept.push((path, data));
        }
    }
    let entries: Vec<E> = kept.iter().map(|(p, d)| E::File(p, d)).collect();
    let tar = tar_of(&entries);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "manifest {} references layer {} which is not in the archive",
            sha256_digest(&oci.manifest),
            sha256_digest(&oci.layer)
        )
    );
}

#[test]
fn size_mismatch_in_index_is_invalid() {
    let layer = layer("x");
    let (manifest, config) = oci_manifest(&[&layer]);
    let mut d = descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest);
    d["size"] = (manifest.len() + 1).into();
    let index = index_of(vec![d]);
    let tar = tar_of(&[
        E::File(&blob_path(&sha256_digest(&layer)), &layer),
        E::File(&blob_path(&sha256_digest(&config)), &config),
        E::File(&blob_path(&sha256_digest(&manifest)), &manifest),
        E::File("index.json", &index),
    ]);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("with size"), "{err}");
}

#[test]
fn blob_whose_content_does_not_match_its_name_is_refused() {
    let wrong = format!("blobs/sha256/{}", "ab".repeat(32));
    let tar = tar_of(&[
        E::File(&wrong, b"not what the name says"),
        E::File("index.json", b"{}"),
    ]);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    match err {
        ArchiveError::Sink { digest, .. } => {
            assert_eq!(digest, format!("sha256:{}", "ab".repeat(32)))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_index_json_is_invalid() {
    let tar = tar_of(&[E::File("index.json", b"{\"manifests\": 3}")]);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("index.json is not valid"),
        "{err}"
    );
}

// ---- docker save --------------------------------------------------------------------------

fn docker_manifest_json(entries: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&entries).unwrap()
}

/// Parses a synthesized manifest from the sink.
fn synthesized(sink: &TestSink, image: &ArchiveImage) -> serde_json::Value {
    assert_eq!(image.target.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
    let bytes = &sink.blobs[&image.target.digest];
    assert_eq!(bytes.len() as u64, image.target.size);
    assert!(sink
        .puts
        .iter()
        .any(|(e, d)| e.as_deref() == Some(d) && *d == image.target.digest));
    serde_json::from_slice(bytes).unwrap()
}

/// Two images sharing their base layer; the second's copy of it is a link,
/// placed before or after the real file (docker writes `<id>/layer.tar` in
/// directory order, so a link can sort first).
fn docker_legacy(link: fn(&'static str, &'static str) -> E<'static>, link_first: bool) {
    let base: &'static [u8] = Box::leak(layer("base").into_boxed_slice());
    let top: &'static [u8] = Box::leak(layer("top").into_boxed_slice());
    let config_a: &'static [u8] = Box::leak(config_for(&[base]).into_boxed_slice());
    let config_b: &'static [u8] = Box::leak(config_for(&[base, top]).into_boxed_slice());
    let config_a_path: &'static str =
        Box::leak(format!("{}.json", hex(&sha256_digest(config_a))).into_boxed_str());
    let config_b_path: &'static str =
        Box::leak(format!("{}.json", hex(&sha256_digest(config_b))).into_boxed_str());
    let manifest = docker_manifest_json(serde_json::json!([
        {"Config": config_a_path, "RepoTags": ["a.io/base:1"], "Layers": ["bbbb/layer.tar"]},
        {"Config": config_b_path, "RepoTags": ["a.io/app:1", "a.io/app:latest"],
         "Layers": ["aaaa/layer.tar", "cccc/layer.tar"]},
    ]));
    // aaaa/layer.tar is the duplicate of bbbb/layer.tar.
    let mut link_entry = Some(link("aaaa/layer.tar", "../bbbb/layer.tar"));
    let mut entries = vec![
        E::Dir("aaaa/"),
        E::File("aaaa/VERSION", b"1.0"),
        E::File("aaaa/json", b"{\"id\":\"aaaa\"}"),
    ];
    if link_first {
        entries.extend(link_entry.take());
    }
    entries.extend([
        E::Dir("bbbb/"),
        E::File("bbbb/VERSION", b"1.0"),
        E::File("bbbb/json", b"{\"id\":\"bbbb\"}"),
        E::File("bbbb/layer.tar", base),
        E::Dir("cccc/"),
        E::File("cccc/layer.tar", top),
        E::File(config_a_path, config_a),
        E::File(config_b_path, config_b),
        E::File("manifest.json", &manifest),
        E::File("repositories", b"{}"),
    ]);
    entries.extend(link_entry.take());
    let tar = tar_of(&entries);

    let mut sink = TestSink::default();
    let images = read_archive(tar.as_slice(), &mut sink).unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].names, ["a.io/base:1"]);
    assert_eq!(images[1].names, ["a.io/app:1", "a.io/app:latest"]);
    let m = synthesized(&sink, &images[1]);
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(m["config"]["mediaType"], MEDIA_TYPE_DOCKER_CONFIG);
    assert_eq!(m["config"]["digest"], sha256_digest(config_b));
    assert_eq!(m["config"]["size"], config_b.len());
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (l, bytes) in layers.iter().zip([base, top]) {
        assert_eq!(l["mediaType"], MEDIA_TYPE_DOCKER_LAYER);
        assert_eq!(l["digest"], sha256_digest(bytes));
        assert_eq!(l["size"], bytes.len());
    }
    let m = synthesized(&sink, &images[0]);
    assert_eq!(m["layers"][0]["digest"], sha256_digest(base));
    // Legacy paths carry no digest: blobs are put with expected = None; the `<id>/json`,
    // VERSION and repositories files are not blobs.
    let legacy: Vec<_> = sink.puts.iter().filter(|(e, _)| e.is_none()).collect();
    assert_eq!(legacy.len(), 4, "{:?}", sink.puts);
}

#[test]
fn docker_legacy_symlinked_layer_after_target() {
    docker_legacy(E::Symlink, false);
}

#[test]
fn docker_legacy_symlinked_layer_before_target() {
    docker_legacy(E::Symlink, true);
}

#[test]
fn docker_legacy_hardlinked_layer() {
    // Hardlink targets are relative to the archive root; the "../" variant
    // is only meaningful for symlinks, so use the plain path both times.
    fn hardlink(path: &'static str, target: &'static str) -> E<'static> {
        E::Hardlink(path, target.trim_start_matches("../"))
    }
    docker_legacy(hardlink, false);
    docker_legacy(hardlink, true);
}

/// skopeo's docker-archive: layers at `<diffid>.tar` at the root, the
/// `<id>/layer.tar` symlinks only for old readers, manifest.json naming the root files.
#[test]
fn docker_compressed_layers_get_compressed_media_types() {
    let plain = layer("plain");
    let gz = gzip(&layer("gzip"));
    let zst = zstd(&layer("zstd"));
    let diff_ids = [
        sha256_digest(&plain),
        sha256_digest(&layer("gzip")),
        sha256_digest(&layer("zstd")),
    ];
    let config = serde_json::to_vec(&serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_path = format!("{}.json", hex(&sha256_digest(&config)));
    let manifest = docker_manifest_json(serde_json::json!([
        {"Config": config_path, "RepoTags": null, "Layers": ["1.tar", "2.tar", "3.tar"]},
    ]));
    let tar = tar_of(&[
        E::File("1.tar", &plain),
        E::File("2.tar", &gz),
        E::File("3.tar", &zst),
        E::Symlink("x/layer.tar", "../1.tar"),
        E::File(&config_path, &config),
        E::File("manifest.json", &manifest),
    ]);
    let mut sink = TestSink::default();
    let images = read_archive(gzip(&tar).as_slice(), &mut sink).unwrap();
    assert_eq!(images.len(), 1);
    assert!(images[0].names.is_empty());
    let m = synthesized(&sink, &images[0]);
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            MEDIA_TYPE_DOCKER_LAYER,
            MEDIA_TYPE_DOCKER_LAYER_GZIP,
            MEDIA_TYPE_OCI_LAYER_ZSTD
        ]
    );
    assert_eq!(m["layers"][1]["digest"], sha256_digest(&gz));
}

#[test]
fn docker_layer_not_matching_diff_id_is_invalid() {
    let real = layer("real");
    let config = config_for(&[&layer("something else")]);
    let config_path = format!("{}.json", hex(&sha256_digest(&config)));
    let manifest = docker_manifest_json(serde_json::json!([
        {"Config": config_path, "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]},
    ]));
    let tar = tar_of(&[
        E::File("l/layer.tar", &real),
        E::File(&config_path, &config),
        E::File("manifest.json", &manifest),
    ]);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("l/layer.tar"), "{err}");
    assert!(err.to_string().contains("diff ID"), "{err}");
}

#[test]
fn docker_missing_layer_and_dangling_link_are_named() {
    let base = layer("base");
    let config = config_for(&[&base, &base]);
    let config_path = format!("{}.json", hex(&sha256_digest(&config)));
    let manifest = docker_manifest_json(serde_json::json!([
        {"Config": config_path, "RepoTags": ["x:1"], "Layers": ["a/layer.tar", "b/layer.tar"]},
    ]));
    for link in ["../c/layer.tar", "b/layer.tar"] {
        let tar = tar_of(&[
            E::File("a/layer.tar", &base),
            E::Symlink("b/layer.tar", link),
            E::File(&config_path, &config),
            E::File("manifest.json", &manifest),
        ]);
        let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest.json image x:1 references layer b/layer.tar which is not in the archive",
            "link to {link}"
        );
    }
}

/// Docker 25+: an OCI layout with a manifest.json pointing into blobs/; index.json wins.
#[test]
fn docker_25_archive_uses_index_json() {
    let layer = layer("d25");
    let (manifest, config) = oci_manifest(&[&layer]);
    let index = index_of(vec![annotated(
        descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest),
        &[
            (ANNOTATION_CONTAINERD_NAME, "docker.io/library/app:latest"),
            (ANNOTATION_OCI_REF_NAME, "latest"),
        ],
    )]);
    let docker = docker_manifest_json(serde_json::json!([{
        "Config": blob_path(&sha256_digest(&config)),
        "RepoTags": ["app:latest"],
        "Layers": [blob_path(&sha256_digest(&layer))],
    }]));
    let tar = tar_of(&[
        E::Dir("blobs/"),
        E::Dir("blobs/sha256/"),
        E::File(&blob_path(&sha256_digest(&layer)), &layer),
        E::File(&blob_path(&sha256_digest(&config)), &config),
        E::File(&blob_path(&sha256_digest(&manifest)), &manifest),
        E::File("index.json", &index),
        E::File("manifest.json", &docker),
        E::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        E::File("repositories", br#"{"app":{"latest":"x"}}"#),
    ]);
    let mut sink = TestSink::default();
    let images = read_archive(tar.as_slice(), &mut sink).unwrap();
    assert_eq!(
        images,
        [ArchiveImage {
            names: vec!["docker.io/library/app:latest".into()],
            target: BlobDescriptor {
                media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
                digest: sha256_digest(&manifest),
                size: manifest.len() as u64,
            },
        }]
    );
    // Nothing was synthesized.
    assert_eq!(sink.puts.len(), 3);
}

/// Docker 25+ `docker save <image id>`: no tag, so index.json lists nothing and
/// the image is only in manifest.json, whose paths point into blobs/.
#[test]
fn docker_25_untagged_image_falls_back_to_manifest_json() {
    let layer = layer("untagged");
    let config = config_for(&[&layer]);
    let docker = docker_manifest_json(serde_json::json!([{
        "Config": blob_path(&sha256_digest(&config)),
        "RepoTags": null,
        "Layers": [blob_path(&sha256_digest(&layer))],
    }]));
    let tar = tar_of(&[
        E::File(&blob_path(&sha256_digest(&layer)), &layer),
        E::File(&blob_path(&sha256_digest(&config)), &config),
        E::File("index.json", &index_of(vec![])),
        E::File("manifest.json", &docker),
    ]);
    let mut sink = TestSink::default();
    let images = read_archive(tar.as_slice(), &mut sink).unwrap();
    assert_eq!(images.len(), 1);
    assert!(images[0].names.is_empty());
    let m = synthesized(&sink, &images[0]);
    assert_eq!(m["config"]["digest"], sha256_digest(&config));
    assert_eq!(m["layers"][0]["digest"], sha256_digest(&layer));

    // Without manifest.json, an empty index.json is an error.
    let tar = tar_of(&[E::File("index.json", &index_of(vec![]))]);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    assert_eq!(err.to_string(), "index.json lists no images");
}

// ---- damaged and foreign input ------------------------------------------------------------

#[test]
fn truncated_archives_are_io_errors() {
    let oci = oci_archive(&[(ANNOTATION_CONTAINERD_NAME, NAME)], "", false);
    // The tar ends with two zero blocks: cutting into the second loses nothing.
    let complete = oci.tar.len() - 512;
    for cut in (512..complete)
        .step_by(97)
        .chain([1024, 1536, complete - 512])
    {
        let err = read_archive(&oci.tar[..cut], &mut TestSink::default()).unwrap_err();
        match &err {
            ArchiveError::Io(e) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}: {e}");
                assert!(e.to_string().starts_with(TRUNCATED), "cut {cut}: {e}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    for (name, compressed) in [("gzip", gzip(&oci.tar)), ("zstd", zstd(&oci.tar))] {
        // Past the magic, every cut fails, except cuts into the compressed zero padding
        // after the tar's end-of-archive block: nothing of the tar is lost there.
        let mut last_failure = 0;
        for cut in 4..compressed.len() {
            match read_archive(&compressed[..cut], &mut TestSink::default()) {
                Err(ArchiveError::Io(e)) => {
                    assert_eq!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof,
                        "{name} cut {cut}: {e}"
                    );
                    last_failure = cut;
                }
                Ok(images) => assert_eq!(images[0].target.digest, sha256_digest(&oci.manifest)),
                other => panic!("{name} cut at {cut}: {other:?}"),
            }
        }
        eprintln!(
            "{name}: {} bytes, last failing cut {last_failure}",
            compressed.len()
        );
        assert!(
            last_failure + 32 > compressed.len(),
            "{name}: {last_failure}"
        );
    }
    // Short plain input that is no whole tar header.
    assert!(matches!(
        read_archive(&oci.tar[..100], &mut TestSink::default()),
        Err(ArchiveError::NotAnArchive(_))
    ));
}

#[test]
fn foreign_input_is_not_an_archive() {
    let mut random = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.push(x as u8);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("text", b"this is not an image archive\n".to_vec()),
        ("random", random.clone()),
        ("gzip of random", gzip(&random)),
        ("zstd of text", zstd(b"hello")),
        ("gzip of nothing", gzip(b"")),
        ("empty tar", tar_of(&[])),
        ("tar without index", tar_of(&[E::File("hello.txt", b"hi")])),
    ];
    for (name, input) in cases {
        match read_archive(input.as_slice(), &mut TestSink::default()) {
            Err(ArchiveError::NotAnArchive(_)) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn sink_error_is_reported_with_digest() {
    struct Refusing;
    impl BlobSink for Refusing {
        fn put(&mut self, _: Option<&str>, _: u64, _: &mut dyn Read) -> Result<String, String> {
            Err("disk full".into())
        }
    }
    let oci = oci_archive(&[], "", false);
    let err = read_archive(oci.tar.as_slice(), &mut Refusing).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("storing blob {}: disk full", sha256_digest(&oci.layer))
    );
}

#[test]
fn link_loops_do_not_hang() {
    let manifest = docker_manifest_json(serde_json::json!([
        {"Config": "c.json", "RepoTags": [], "Layers": []},
    ]));
    let tar = tar_of(&[
        E::Symlink("c.json", "d.json"),
        E::Symlink("d.json", "c.json"),
        E::File("manifest.json", &manifest),
    ]);
    let err = read_archive(tar.as_slice(), &mut TestSink::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("config c.json which is not in the archive"),
        "{err}"
    );
}

// ---- memory -------------------------------------------------------------------------------

/// Counts what has been read from the archive file.
struct Counting<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

/// Hashes what it is given in 64 KiB reads, noting how much of the archive
/// had been read when the big blob's first bytes arrived.
struct StreamingSink {
    consumed: Rc<Cell<u64>>,
    consumed_at_first_read: Vec<(u64, u64)>,
}

impl BlobSink for StreamingSink {
    fn put(&mut self, _: Option<&str>, size: u64, data: &mut dyn Read) -> Result<String, String> {
        let mut buf = vec![0u8; 64 << 10];
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        loop {
            let n = data.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            if total == 0 {
                self.consumed_at_first_read
                    .push((size, self.consumed.get()));
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        assert_eq!(total, size);
        let hash = hasher.finalize();
        Ok(format!(
            "sha256:{}",
            hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ))
    }
}

/// A 50 MiB layer reaches the sink while most of it is still unread, and
/// nothing but the small JSON files is kept in memory.
#[test]
fn big_layer_is_streamed_not_buffered() {
    const BIG: u64 = 50 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tar");
    let (config, manifest, layer_digest) = {
        let mut hasher = Sha256::new();
        io::copy(&mut io::repeat(0).take(BIG), &mut hasher).unwrap();
        let layer_digest = format!("sha256:{:x}", hasher.finalize());
        let config = serde_json::to_vec(&serde_json::json!({
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": descriptor(MEDIA_TYPE_OCI_CONFIG, &config),
            "layers": [{"mediaType": MEDIA_TYPE_OCI_LAYER,
                        "digest": layer_digest, "size": BIG}],
        }))
        .unwrap();
        (config, manifest, layer_digest)
    };
    let index = index_of(vec![descriptor(MEDIA_TYPE_OCI_MANIFEST, &manifest)]);
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut b = tar::Builder::new(io::BufWriter::new(file));
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(BIG);
        b.append_data(&mut h, blob_path(&layer_digest), io::repeat(0).take(BIG))
            .unwrap();
        for (p, bytes) in [
            (blob_path(&sha256_digest(&config)), &config),
            (blob_path(&sha256_digest(&manifest)), &manifest),
            ("index.json".to_string(), &index),
        ] {
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, p, bytes.as_slice()).unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
    }
    let gz_path = dir.path().join("big.tar.gz");
    {
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz_path).unwrap(),
            flate2::Compression::fast(),
        );
        io::copy(&mut std::fs::File::open(&path).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap();
    }

    for p in [&path, &gz_path] {
        let consumed = Rc::new(Cell::new(0));
        let input = Counting {
            inner: std::fs::File::open(p).unwrap(),
            consumed: Rc::clone(&consumed),
        };
        let mut sink = StreamingSink {
            consumed: Rc::clone(&consumed),
            consumed_at_first_read: Vec::new(),
        };
        let contents = read_contents(input, &mut sink).unwrap();
        let (size, consumed_then) = sink.consumed_at_first_read[0];
        assert_eq!(size, BIG);
        assert!(
            consumed_then < 1 << 20,
            "{p:?}: {consumed_then} bytes of the archive read before the layer reached the sink"
        );
        assert!(
            contents.cached_bytes < 4096,
            "{p:?}: {} bytes kept in memory",
            contents.cached_bytes
        );
        assert!(contents.files[blob_path(&layer_digest).as_str()]
            .cached
            .is_none());
        let images = oci_images(&contents).unwrap();
        assert_eq!(images[0].target.digest, sha256_digest(&manifest));
    }
}

#[test]
fn cache_stops_at_its_total_limit() {
    // 70 JSON-looking 1 MiB blobs: the first 64 are kept, the rest only streamed.
    let blob = {
        let mut v = vec![b' '; 1 << 20];
        v[0] = b'{';
        v
    };
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..70u8 {
        let mut blob = blob.clone();
        blob[1] = i;
        let mut h = tar::Header::new_gnu();
        h.set_size(blob.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("f{i}.json"), blob.as_slice())
            .unwrap();
    }
    let tar = b.into_inner().unwrap();
    let contents = read_contents(tar.as_slice(), &mut TestSink::default()).unwrap();
    assert_eq!(contents.cached_bytes, MAX_CACHED_TOTAL);
    assert!(contents.cache_full);
}

#[test]
fn paths_are_normalized() {
    assert_eq!(normalize_path("./blobs//sha256/./x"), "blobs/sha256/x");
    assert_eq!(normalize_path("/a/b/../c"), "a/c");
}
