//! `RegistryClient` against a real registry (Debian's Distribution 2.8 on
//! 127.0.0.1, see `common::registry`), with images pushed by skopeo from the
//! busybox and multi-arch OCI archives. Needs docker-registry, skopeo and
//! htpasswd; a missing tool fails the test with the apt-get line to run.

mod common;

use common::agent::BUSYBOX;

use common::archives::{shared_busybox_oci, shared_multiarch_oci};
use common::registry::TestRegistry;
use futures::StreamExt as _;
use podkeeper::images::credentials::Credentials;
use podkeeper::images::media_types::{MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST};
use podkeeper::images::registry::{BlobRef, FetchedManifest, RegistryClient, RegistryError};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// Names of the fixture archives; pushes do not use them (skopeo takes the archive's only image).
const MULTIARCH: &str = "podkeeper.local/multiarch:latest";
const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn start_registry() -> TestRegistry {
    TestRegistry::start().unwrap_or_else(|e| panic!("starting the test registry: {e:#}"))
}

fn anonymous_client() -> RegistryClient {
    RegistryClient::new(Credentials::default(), Vec::new())
}

/// A client whose credentials come from `json` written as a config.json in `dir`.
fn client_with_config(dir: &Path, json: &str) -> RegistryClient {
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    RegistryClient::new(Credentials::load(&path).unwrap(), Vec::new())
}

/// Streams a whole blob; the first error ends it.
async fn fetch_blob_bytes(
    client: &RegistryClient,
    reference: &str,
    digest: &str,
    size: u64,
) -> Result<Vec<u8>, RegistryError> {
    let mut stream = client.fetch_blob(reference, digest, size).await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(bytes)
}

fn descriptor(value: &Value) -> BlobRef {
    BlobRef {
        media_type: value["mediaType"].as_str().unwrap().to_string(),
        digest: value["digest"].as_str().unwrap().to_string(),
        size: value["size"].as_u64().unwrap(),
    }
}

/// Config and layer descriptors of an image manifest.
fn blobs_of(manifest: &FetchedManifest) -> (BlobRef, Vec<BlobRef>) {
    let json: Value = serde_json::from_slice(&manifest.bytes).unwrap();
    let layers = json["layers"].as_array().unwrap();
    (
        descriptor(&json["config"]),
        layers.iter().map(descriptor).collect(),
    )
}

/// Fetches every blob of `manifest` and checks sha256 and size independently of the client.
async fn check_blobs(client: &RegistryClient, reference: &str, manifest: &FetchedManifest) {
    let (config, layers) = blobs_of(manifest);
    for blob in std::iter::once(&config).chain(&layers) {
        let bytes = fetch_blob_bytes(client, reference, &blob.digest, blob.size)
            .await
            .unwrap_or_else(|e| panic!("fetching {}: {e}", blob.digest));
        assert_eq!(bytes.len() as u64, blob.size, "{}", blob.digest);
        assert_eq!(sha256(&bytes), blob.digest);
    }
}

/// The digest index.json of an OCI archive points to.
fn archive_digest(archive: &Path) -> String {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("index.json") {
            let index: Value = serde_json::from_reader(&mut entry).unwrap();
            return index["manifests"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string();
        }
    }
    panic!("no index.json in {}", archive.display());
}

/// Paths in an uncompressed layer tar.
fn tar_paths(layer: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(layer);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fetches_by_tag_and_digest_and_streams_blobs() {
    let registry = start_registry();
    let archive = shared_busybox_oci(BUSYBOX).unwrap();
    let pushed = registry.push_oci_archive(&archive, "busybox:1.36").unwrap();
    // --preserve-digests: the registry holds exactly the archive's manifest.
    assert_eq!(pushed, archive_digest(&archive));
    let host = registry.host();
    let client = anonymous_client();
    let by_tag_ref = format!("{host}/busybox:1.36");

    let by_tag = client.fetch_manifest(&by_tag_ref).await.unwrap();
    assert_eq!(by_tag.digest, pushed);
    assert_eq!(sha256(&by_tag.bytes), pushed);
    assert_eq!(by_tag.media_type, MEDIA_TYPE_OCI_MANIFEST);
    assert!(!by_tag.is_index());

    let by_digest = client
        .fetch_manifest(&format!("{host}/busybox@{pushed}"))
        .await
        .unwrap();
    assert_eq!(by_digest.bytes, by_tag.bytes);
    assert_eq!(by_digest.digest, pushed);

    let tag_and_digest = client
        .fetch_manifest(&format!("{host}/busybox:1.36@{pushed}"))
        .await
        .unwrap();
    assert_eq!(tag_and_digest.digest, pushed);

    let child = client
        .fetch_manifest_digest(&by_tag_ref, &pushed)
        .await
        .unwrap();
    assert_eq!(child.bytes, by_tag.bytes);

    // HEAD only: not counted as a pull below.
    assert_eq!(client.resolve_digest(&by_tag_ref).await.unwrap(), pushed);

    let (config, layers) = blobs_of(&by_tag);
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].media_type, OCI_LAYER_TAR);
    check_blobs(&client, &by_tag_ref, &by_tag).await;
    let layer = fetch_blob_bytes(&client, &by_tag_ref, &layers[0].digest, layers[0].size)
        .await
        .unwrap();
    assert!(tar_paths(&layer).iter().any(|p| p == "bin/busybox"));
    let config_json: Value = serde_json::from_slice(
        &fetch_blob_bytes(&client, &by_tag_ref, &config.digest, config.size)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(config_json["rootfs"]["diff_ids"][0], layers[0].digest);

    // 4 manifest GETs (tag, digest, tag@digest, fetch_manifest_digest) and
    // 4 blob GETs (config and layer by check_blobs, then each once more).
    assert_eq!(registry.pull_requests("busybox"), 8);
    assert_eq!(registry.pull_requests("other"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn multiarch_index_selects_this_platform() {
    let registry = start_registry();
    let archive = shared_multiarch_oci(MULTIARCH).unwrap();
    let pushed = registry
        .push_oci_archive(&archive, "team/multi:v1")
        .unwrap();
    assert_eq!(pushed, archive_digest(&archive));
    let reference = format!("{}/team/multi:v1", registry.host());
    let client = anonymous_client();

    let index = client.fetch_manifest(&reference).await.unwrap();
    assert_eq!(index.digest, pushed);
    assert_eq!(index.media_type, MEDIA_TYPE_OCI_INDEX);
    assert!(index.is_index());
    let entries: Vec<Value> = serde_json::from_slice::<Value>(&index.bytes).unwrap()["manifests"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(entries.len(), 2, "both platforms were pushed");

    let chosen = RegistryClient::select_platform(&index.bytes).unwrap();
    assert_eq!(chosen.media_type, MEDIA_TYPE_OCI_MANIFEST);
    let chosen_entry = entries
        .iter()
        .find(|e| e["digest"] == chosen.digest.as_str())
        .unwrap();
    let expected_arch = match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    };
    if let Some(arch) = expected_arch {
        assert_eq!(chosen_entry["platform"]["architecture"], arch);
    }

    let host_manifest = client
        .fetch_manifest_digest(&reference, &chosen.digest)
        .await
        .unwrap();
    assert_eq!(host_manifest.digest, chosen.digest);
    assert_eq!(host_manifest.bytes.len() as u64, chosen.size);
    assert_eq!(host_manifest.media_type, chosen.media_type);
    check_blobs(&client, &reference, &host_manifest).await;
    let (config, layers) = blobs_of(&host_manifest);
    let config_json: Value = serde_json::from_slice(
        &fetch_blob_bytes(&client, &reference, &config.digest, config.size)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config_json["architecture"],
        chosen_entry["platform"]["architecture"]
    );
    let layer = fetch_blob_bytes(&client, &reference, &layers[0].digest, layers[0].size)
        .await
        .unwrap();
    assert!(tar_paths(&layer).iter().any(|p| p == "bin/busybox"));

    // The other platform's image is there too, with its one-file layer.
    let other = descriptor(
        entries
            .iter()
            .find(|e| e["digest"] != chosen.digest.as_str())
            .unwrap(),
    );
    let other_manifest = client
        .fetch_manifest_digest(&reference, &other.digest)
        .await
        .unwrap();
    let (_, other_layers) = blobs_of(&other_manifest);
    let other_layer = fetch_blob_bytes(
        &client,
        &reference,
        &other_layers[0].digest,
        other_layers[0].size,
    )
    .await
    .unwrap();
    assert_eq!(tar_paths(&other_layer), vec!["hello.txt".to_string()]);
    assert!(String::from_utf8_lossy(&other_layer).contains("podkeeper multi-arch fixture"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_layers_from_a_compressing_push_verify() {
    let registry = start_registry();
    let archive = shared_busybox_oci(BUSYBOX).unwrap();
    let pushed = registry
        .push_oci_archive_compressed(&archive, "gz:v1")
        .unwrap();
    let reference = format!("{}/gz:v1", registry.host());
    let client = anonymous_client();
    let manifest = client.fetch_manifest(&reference).await.unwrap();
    assert_eq!(manifest.digest, pushed);
    let (_, layers) = blobs_of(&manifest);
    assert_eq!(layers[0].media_type, OCI_LAYER_TAR_GZIP);
    check_blobs(&client, &reference, &manifest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_not_matching_its_digest_is_invalid() {
    let registry = start_registry();
    let archive = shared_busybox_oci(BUSYBOX).unwrap();
    let pushed = registry.push_oci_archive(&archive, "busybox:v1").unwrap();
    let host = registry.host();
    let reference = format!("{host}/busybox:v1");
    let client = anonymous_client();
    let manifest = client.fetch_manifest(&reference).await.unwrap();
    let (config, layers) = blobs_of(&manifest);

    // Malformed digests never reach the registry.
    for bad in [
        format!("{host}/busybox@sha256:abc"),
        format!("{host}/busybox@md5:0123"),
    ] {
        let err = client.fetch_manifest(&bad).await.unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(_)), "{bad}: {err:?}");
    }
    let err = client
        .fetch_manifest_digest(&reference, &pushed.to_uppercase())
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err:?}");

    // Wrong expected size: the registry's Content-Length disagrees.
    for size in [config.size - 1, config.size + 1] {
        let err = fetch_blob_bytes(&client, &reference, &config.digest, size)
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Invalid(_)), "{size}: {err:?}");
    }

    // Registry storage corrupted behind its back: Distribution serves the
    // stored bytes under the digest asked for, without re-hashing them.
    let manifest_file = registry.blob_path(&pushed);
    let mut stored = std::fs::read(&manifest_file).unwrap();
    stored.push(b'\n');
    std::fs::write(&manifest_file, &stored).unwrap();
    for reference in [format!("{host}/busybox@{pushed}"), reference.clone()] {
        let err = client.fetch_manifest(&reference).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::Invalid(_)),
            "{reference}: {err:?}"
        );
        assert!(!err.is_retryable());
    }

    let layer_file = registry.blob_path(&layers[0].digest);
    let mut stored = std::fs::read(&layer_file).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 0xff;
    std::fs::write(&layer_file, &stored).unwrap();
    let mut stream = client
        .fetch_blob(&reference, &layers[0].digest, layers[0].size)
        .await
        .unwrap();
    let mut received = 0u64;
    let mut last = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(chunk) => received += chunk.len() as u64,
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        received, layers[0].size,
        "all bytes arrive before the check"
    );
    let err = last.expect("the stream must end with an error");
    assert!(matches!(err, RegistryError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains(&layers[0].digest), "{err}");
    assert!(stream.next().await.is_none(), "nothing after the error");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_tags_repositories_and_blobs_are_not_found() {
    let registry = start_registry();
    let archive = shared_busybox_oci(BUSYBOX).unwrap();
    let pushed = registry.push_oci_archive(&archive, "busybox:v1").unwrap();
    let host = registry.host();
    let client = anonymous_client();
    let absent = format!("sha256:{}", "0".repeat(64));

    let cases = [
        format!("{host}/busybox:nope"),
        format!("{host}/nosuchrepo:v1"),
        // A well-formed digest the repository does not have (the registry
        // cannot serve it, so this is NotFound rather than Invalid).
        format!("{host}/busybox@{absent}"),
        // A manifest of another repository is not in this one.
        format!("{host}/elsewhere@{pushed}"),
    ];
    for reference in &cases {
        let err = client.fetch_manifest(reference).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::NotFound(_)),
            "{reference}: {err:?}"
        );
        assert!(err.to_string().contains(reference.as_str()), "{err}");
        assert!(!err.is_retryable());
    }
    let err = fetch_blob_bytes(&client, &format!("{host}/busybox:v1"), &absent, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains(&absent), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_with_right_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start_with_htpasswd("alice", "s3cret:pw")
        .unwrap_or_else(|e| panic!("starting the test registry: {e:#}"));
    let archive = shared_busybox_oci(BUSYBOX).unwrap();
    let pushed = registry
        .push_oci_archive(&archive, "private/busybox:v1")
        .unwrap();
    let reference = format!("{}/private/busybox:v1", registry.host());

    let client = client_with_config(tmp.path(), &registry.docker_config_json());
    let manifest = client.fetch_manifest(&reference).await.unwrap();
    assert_eq!(manifest.digest, pushed);
    check_blobs(&client, &reference, &manifest).await;

    // The username/password form under a URL key works the same.
    let url_key = format!(
        r#"{{"auths":{{"http://{}/v2/":{{"username":"alice","password":"s3cret:pw"}}}}}}"#,
        registry.host()
    );
    let client = client_with_config(tmp.path(), &url_key);
    assert_eq!(
        client.fetch_manifest(&reference).await.unwrap().digest,
        pushed
    );

    // Without credentials the registry refuses.
    let anonymous = anonymous_client();
    let err = anonymous.fetch_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("unauthorized"), "{err}");
    let (config, _) = blobs_of(&manifest);
    let err = fetch_blob_bytes(&anonymous, &reference, &config.digest, config.size)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn htpasswd_registry_with_wrong_password_is_unauthorized() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start_with_htpasswd("alice", "right")
        .unwrap_or_else(|e| panic!("starting the test registry: {e:#}"));
    let archive = shared_busybox_oci(BUSYBOX).unwrap();
    registry.push_oci_archive(&archive, "busybox:v1").unwrap();
    let reference = format!("{}/busybox:v1", registry.host());
    let config = format!(
        r#"{{"auths":{{"{}":{{"username":"alice","password":"wrong"}}}}}}"#,
        registry.host()
    );
    let client = client_with_config(tmp.path(), &config);
    let err = client.fetch_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert!(err.to_string().contains(&registry.host()), "{err}");
    assert!(!err.is_retryable());
    let err = fetch_blob_bytes(
        &client,
        &reference,
        &format!("sha256:{}", "1".repeat(64)),
        1,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_registry_is_unreachable_and_retryable() {
    let mut registry = start_registry();
    let archive = shared_busybox_oci(BUSYBOX).unwrap();
    let pushed = registry.push_oci_archive(&archive, "busybox:v1").unwrap();
    let reference = format!("{}/busybox:v1", registry.host());
    let client = anonymous_client();
    let manifest = client.fetch_manifest(&reference).await.unwrap();
    let (config, _) = blobs_of(&manifest);

    registry.stop();
    let err = client.fetch_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&registry.host()), "{err}");
    let err = fetch_blob_bytes(&client, &reference, &config.digest, config.size)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unreachable(_)), "{err:?}");
    assert!(err.is_retryable());

    // Same port, same storage: the same client recovers.
    registry.restart().unwrap();
    assert_eq!(
        client.fetch_manifest(&reference).await.unwrap().digest,
        pushed
    );
    check_blobs(&client, &reference, &manifest).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_client_serves_concurrent_pulls() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start_with_htpasswd("bob", "pw")
        .unwrap_or_else(|e| panic!("starting the test registry: {e:#}"));
    let busybox = shared_busybox_oci(BUSYBOX).unwrap();
    let multi = shared_multiarch_oci(MULTIARCH).unwrap();
    registry.push_oci_archive(&busybox, "one:v1").unwrap();
    registry.push_oci_archive(&multi, "two:v1").unwrap();
    let client = client_with_config(tmp.path(), &registry.docker_config_json());

    const TASKS: usize = 8;
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let client = client.clone();
        let reference = format!(
            "{}/{}:v1",
            registry.host(),
            if i % 2 == 0 { "one" } else { "two" }
        );
        tasks.push(tokio::spawn(async move {
            let mut manifest = client.fetch_manifest(&reference).await?;
            if manifest.is_index() {
                let chosen = RegistryClient::select_platform(&manifest.bytes)?;
                manifest = client
                    .fetch_manifest_digest(&reference, &chosen.digest)
                    .await?;
            }
            let (config, layers) = blobs_of(&manifest);
            for blob in std::iter::once(config).chain(layers) {
                let bytes = fetch_blob_bytes(&client, &reference, &blob.digest, blob.size).await?;
                assert_eq!(sha256(&bytes), blob.digest);
            }
            Ok::<_, RegistryError>(())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // one: manifest + config + layer; two: index + manifest + config + layer.
    assert_eq!(registry.pull_requests("one"), TASKS / 2 * 3);
    assert_eq!(registry.pull_requests("two"), TASKS / 2 * 4);
}
