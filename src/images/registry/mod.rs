//! A thin client of the OCI distribution API, used to pull images into
//! containerd: manifests and indexes come back as the exact bytes served (so
//! their digest is the one the rest of the image refers to), blobs come back
//! as streams the caller writes into containerd's content store.
//!
//! HTTP and the `WWW-Authenticate` flow are [`transport`]'s, which bounds
//! every body and request a registry can stretch. This module adds what a node
//! agent needs on top: picking plain HTTP for local and configured
//! registries, credentials from a Docker config.json, errors sorted by what
//! the caller should do about them (retry, report, give up), and digest and
//! size checks. containerd verifies digests again on commit; checking here as
//! well means a corrupt download is reported as the registry's fault, with
//! the reference, rather than as a content store error.

use crate::images::credentials::Credentials;
use crate::images::digest::{is_sha256_digest, sha256_digest};
use crate::images::media_types::{
    self, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};
use crate::images::platform::{self, Platform};
use blob::VerifiedBlob;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use oci_client::Reference;
use reqwest::Method;
use std::fmt;
use std::sync::{Arc, Once};
use transport::{read_capped, within_deadline, Target, Transport, MAX_MANIFEST_BYTES};

mod blob;
mod transport;

/// The manifest media types asked for and accepted. Docker schema 1 is left
/// out on purpose: containerd 1.6 can only convert it, and no registry in use
/// still serves it by default.
const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST,
];

/// Hosts always spoken to over plain HTTP (any port): a registry on the node
/// itself has no certificate worth checking.
const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Why a registry operation failed, sorted by what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401/403, or the registry's token service refused: wrong or missing
    /// credentials. The message contains "unauthorized".
    #[error("{0}")]
    Unauthorized(String),
    /// The manifest, blob or repository is unknown; the message names the reference.
    #[error("{0}")]
    NotFound(String),
    /// Connection refused, DNS, TLS, timeouts, a transfer cut short, and also
    /// 5xx and 429 answers: all worth retrying later. The message names the host.
    #[error("{0}")]
    Unreachable(String),
    /// The registry answered, but with something unusable: digest or size
    /// mismatch, unexpected media type, bad JSON; or the reference or digest
    /// given was malformed.
    #[error("{0}")]
    Invalid(String),
}

impl RegistryError {
    /// Whether trying again later may succeed without anyone changing anything:
    /// true for [`RegistryError::Unreachable`] (which includes 5xx and 429).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unreachable(_))
    }
}

/// A manifest or index exactly as served.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The body as served; its sha256 is `digest`.
    pub bytes: Vec<u8>,
    /// One of the four manifest and index types of [`media_types`], from the body's `mediaType`
    /// (or inferred from its shape when an OCI body leaves it out).
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`, computed here.
    pub digest: String,
}

impl FetchedManifest {
    /// True for an OCI index or Docker manifest list (pick a platform with
    /// [`RegistryClient::select_platform`]).
    pub fn is_index(&self) -> bool {
        media_types::is_index(&self.media_type)
    }
}

/// A content descriptor: what to fetch next and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// A registry client shared by all pulls of the agent. Cloning is cheap and
/// clones share connections and the token cache.
#[derive(Clone)]
pub struct RegistryClient {
    credentials: Credentials,
    /// Normalized (lower-case) host[:port] entries spoken to over HTTP.
    insecure: Vec<String>,
    transport: Arc<Transport>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("credentials", &self.credentials)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// `insecure`: registry hosts (host[:port], matched exactly) spoken to over plain HTTP;
    /// localhost, 127.0.0.1 and ::1 (any port) always are. Everything else is HTTPS, verified
    /// against the system's trust store.
    pub fn new(credentials: Credentials, insecure: Vec<String>) -> RegistryClient {
        install_crypto_provider();
        RegistryClient {
            credentials,
            insecure: insecure
                .iter()
                .map(|host| host.trim().to_ascii_lowercase())
                .collect(),
            transport: Arc::new(Transport::new()),
        }
    }

    /// Manifest or index for a normalized reference (`docker.io/library/busybox:1.36`,
    /// `127.0.0.1:5000/app@sha256:…`), raw bytes exactly as served (so the digest is right).
    /// Accepts OCI and Docker manifest and index/list media types. When the reference has a
    /// digest, the bytes' sha256 must match it (and it is what the registry is asked for).
    pub async fn fetch_manifest(&self, reference: &str) -> Result<FetchedManifest, RegistryError> {
        let reference = parse_reference(reference)?;
        if let Some(digest) = reference.digest() {
            check_digest(digest, &reference)?;
        }
        self.fetch_manifest_of(&reference).await
    }

    /// The manifest `digest` of the repository of `reference` (for an index's child).
    pub async fn fetch_manifest_digest(
        &self,
        reference: &str,
        digest: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let reference = parse_reference(reference)?;
        check_digest(digest, &reference)?;
        self.fetch_manifest_of(&reference.clone_with_digest(digest.to_string()))
            .await
    }

    /// The digest `reference` currently resolves to, from a HEAD request (falling back to GET
    /// when the registry sends no `Docker-Content-Digest`). Cheaper than fetching, and Docker
    /// Hub does not count HEAD against its pull rate limit: meant for "is there a newer image"
    /// checks. The digest is the registry's claim; verify it with a fetch before use.
    pub async fn resolve_digest(&self, reference: &str) -> Result<String, RegistryError> {
        let reference = parse_reference(reference)?;
        let attempt = self.attempt(&reference, format!("manifest {reference}"));
        let target = self.target(&reference);
        let url = target.url(&format!("manifests/{}", tag_or_digest(&reference)));
        let accept = ACCEPTED_MANIFEST_TYPES.join(", ");
        let digest = within_deadline(
            async {
                let response = self
                    .transport
                    .send(Method::HEAD, &url, &accept, &target, &attempt)
                    .await?;
                if let Some(digest) = announced_digest(&response) {
                    return Ok(digest);
                }
                let response = self
                    .transport
                    .send(Method::GET, &url, &accept, &target, &attempt)
                    .await?;
                let body = read_capped(response, MAX_MANIFEST_BYTES, "manifest", &attempt).await?;
                Ok(sha256_digest(&body))
            },
            "manifest request",
            &attempt,
        )
        .await?;
        check_digest(&digest, &reference)?;
        Ok(digest)
    }

    /// Streams blob `digest` (expected `size`) of the repository of `reference`. The stream
    /// yields an error if the bytes do not hash to `digest` or the length differs from `size`
    /// (checked at the end; a body longer than `size` fails as soon as it exceeds it, and a
    /// `Content-Length` other than `size` fails before any byte is read). The stream ends after
    /// its first error, and fails as unreachable when no byte arrives for a minute.
    pub async fn fetch_blob(
        &self,
        reference: &str,
        digest: &str,
        size: u64,
    ) -> Result<BoxStream<'static, Result<Bytes, RegistryError>>, RegistryError> {
        let reference = parse_reference(reference)?;
        check_digest(digest, &reference)?;
        let attempt = self.attempt(
            &reference,
            format!(
                "blob {digest} of {}/{}",
                reference.registry(),
                reference.repository()
            ),
        );
        let target = self.target(&reference);
        let url = target.url(&format!("blobs/{digest}"));
        // The deadline covers the answer's headers; the body is bounded by
        // the transport's read timeout instead, since layers can be large.
        let response = within_deadline(
            self.transport
                .send(Method::GET, &url, "*/*", &target, &attempt),
            "blob request",
            &attempt,
        )
        .await?;
        if let Some(length) = response.content_length() {
            if length != size {
                return Err(RegistryError::Invalid(format!(
                    "{}: registry {} announces {length} bytes, expected {size}",
                    attempt.what, attempt.host
                )));
            }
        }
        let stream = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed();
        Ok(Box::pin(VerifiedBlob::new(
            stream,
            digest,
            size,
            attempt.what,
            attempt.host,
        )))
    }

    /// Pick the manifest for linux/<this arch> (and variant for arm) out of an OCI index or
    /// Docker list: the first of [`platform::candidates`], which matches platforms the way
    /// containerd 1.6 does (an arm64 entry without variant counts as v8, an arm entry without
    /// variant as v7, and an armv7 node also takes v6 then v5 entries; entries that are not
    /// image manifests, such as nested indexes, are skipped, and one without a platform is
    /// taken only when none names this one). No matching entry is
    /// [`RegistryError::NotFound`], listing the platforms on offer.
    pub fn select_platform(index_bytes: &[u8]) -> Result<BlobRef, RegistryError> {
        let (architecture, variant) = platform::host();
        select_platform_for(index_bytes, architecture, variant)
    }

    async fn fetch_manifest_of(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let attempt = self.attempt(reference, format!("manifest {reference}"));
        let what = &attempt.what;
        let target = self.target(reference);
        let url = target.url(&format!("manifests/{}", tag_or_digest(reference)));
        let accept = ACCEPTED_MANIFEST_TYPES.join(", ");
        let (bytes, announced) = within_deadline(
            async {
                let response = self
                    .transport
                    .send(Method::GET, &url, &accept, &target, &attempt)
                    .await?;
                let announced = announced_digest(&response);
                let body = read_capped(response, MAX_MANIFEST_BYTES, "manifest", &attempt).await?;
                Ok((body, announced))
            },
            "manifest request",
            &attempt,
        )
        .await?;
        // The digest handed on is computed here, so that it cannot be
        // anything but the bytes' own.
        let digest = sha256_digest(&bytes);
        // A registry whose storage changed under it serves other bytes than
        // the digest it announces; only a well-formed announcement is compared.
        if let Some(announced) = announced.filter(|a| is_sha256_digest(a)) {
            if announced != digest {
                return Err(RegistryError::Invalid(format!(
                    "{what}: content has digest {digest}, but registry {} announces {announced}",
                    attempt.host
                )));
            }
        }
        if let Some(expected) = reference.digest() {
            if expected != digest {
                return Err(RegistryError::Invalid(format!(
                    "{what}: content has digest {digest}, not the {expected} asked for"
                )));
            }
        }
        let media_type = manifest_media_type(&bytes)
            .map_err(|e| RegistryError::Invalid(format!("{what}: {e}")))?;
        Ok(FetchedManifest {
            bytes,
            media_type: media_type.to_string(),
            digest,
        })
    }

    fn target<'a>(&'a self, reference: &'a Reference) -> Target<'a> {
        let scheme = if is_insecure(reference.registry(), &self.insecure) {
            "http"
        } else {
            "https"
        };
        Target {
            scheme,
            host: reference.resolve_registry(),
            repository: reference.repository(),
            credentials: self.credentials.for_registry(reference.registry()),
        }
    }

    fn attempt(&self, reference: &Reference, what: String) -> Attempt {
        Attempt {
            what,
            host: reference.registry().to_string(),
            with_credentials: self
                .credentials
                .for_registry(reference.registry())
                .is_some(),
        }
    }
}

/// The `Docker-Content-Digest` header of a manifest response.
fn announced_digest(response: &reqwest::Response) -> Option<String> {
    let value = response.headers().get("docker-content-digest")?;
    value.to_str().ok().map(str::to_string)
}

/// The tag or digest part of a manifest URL: the digest when there is one.
fn tag_or_digest(reference: &Reference) -> &str {
    reference.digest().or(reference.tag()).unwrap_or("latest")
}

/// reqwest is built without a rustls crypto provider of its own (the crate
/// picks `ring` for the whole process) and panics when building a client if
/// none is installed. Installing fails harmlessly when another part of the
/// agent got there first.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Whether `host` (as in a reference: `name`, `name:port`, `[v6]:port`) is
/// spoken to over plain HTTP.
fn is_insecure(host: &str, insecure: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host.as_str(),
        }
    };
    LOOPBACK_HOSTS.contains(&name) || insecure.contains(&host)
}

fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    Reference::try_from(reference)
        .map_err(|e| RegistryError::Invalid(format!("invalid image reference {reference:?}: {e}")))
}

/// Only sha256 digests are handled (they are what every registry and
/// containerd produce); anything else would be put into a URL unchecked.
fn check_digest(digest: &str, reference: &Reference) -> Result<(), RegistryError> {
    if is_sha256_digest(digest) {
        Ok(())
    } else {
        Err(RegistryError::Invalid(format!(
            "{reference}: {digest:?} is not a sha256 digest (sha256:<64 lower-case hex>)"
        )))
    }
}

/// The fields of a manifest or index body needed to tell what it is.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestShape {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Media type of a manifest body: its `mediaType`, or for OCI bodies that
/// leave it out (it is optional there), inferred from `manifests`/`config`.
fn manifest_media_type(bytes: &[u8]) -> Result<&'static str, String> {
    let shape: ManifestShape =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON manifest: {e}"))?;
    match shape.schema_version {
        Some(2) => {}
        Some(1) => return Err("Docker schema 1 manifests are not supported".into()),
        other => return Err(format!("unsupported schemaVersion {other:?}")),
    }
    let media_type = match shape.media_type.as_deref() {
        Some(declared) => ACCEPTED_MANIFEST_TYPES
            .iter()
            .copied()
            .find(|t| *t == declared)
            .ok_or_else(|| format!("unexpected media type {declared:?}"))?,
        None if shape.manifests.is_some() => MEDIA_TYPE_OCI_INDEX,
        None if shape.config.is_some() => MEDIA_TYPE_OCI_MANIFEST,
        None => return Err("neither an image manifest nor an index".into()),
    };
    let is_index = media_types::is_index(media_type);
    if is_index && shape.manifests.is_none() {
        return Err(format!("{media_type} without \"manifests\""));
    }
    if !is_index && shape.config.is_none() {
        return Err(format!("{media_type} without \"config\""));
    }
    Ok(media_type)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<IndexEntry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

fn select_platform_for(
    index_bytes: &[u8],
    architecture: &str,
    variant: Option<&str>,
) -> Result<BlobRef, RegistryError> {
    let index: Index = serde_json::from_slice(index_bytes)
        .map_err(|e| RegistryError::Invalid(format!("not an image index: {e}")))?;
    if let Some(media_type) = index.media_type.as_deref() {
        if !media_types::is_index(media_type) {
            return Err(RegistryError::Invalid(format!(
                "expected an image index or manifest list, got {media_type}"
            )));
        }
    }
    let candidates = platform::candidates(
        index
            .manifests
            .iter()
            .map(|e| (e.media_type.as_str(), e.platform.as_ref())),
        architecture,
        variant,
    );
    let Some(entry) = candidates.first().map(|&i| &index.manifests[i]) else {
        let on_offer: Vec<String> = index
            .manifests
            .iter()
            .filter(|e| media_types::is_manifest(&e.media_type))
            .filter_map(|e| e.platform.as_ref())
            .map(Platform::to_string)
            .collect();
        return Err(RegistryError::NotFound(format!(
            "no manifest for {} in the image index (it has: {})",
            platform::name("linux", architecture, variant),
            if on_offer.is_empty() {
                "no platform-specific manifests".to_string()
            } else {
                on_offer.join(", ")
            }
        )));
    };
    if !is_sha256_digest(&entry.digest) {
        return Err(RegistryError::Invalid(format!(
            "image index entry for {} has digest {:?}, not a sha256 digest",
            platform::name("linux", architecture, variant),
            entry.digest
        )));
    }
    Ok(BlobRef {
        media_type: entry.media_type.clone(),
        digest: entry.digest.clone(),
        size: entry.size,
    })
}

/// What was being fetched, for error messages.
struct Attempt {
    /// The thing fetched, with its reference ("manifest r.example/app:v1").
    what: String,
    /// The registry as in the reference.
    host: String,
    /// Whether credentials were sent, so a 401 can say which problem it is.
    with_credentials: bool,
}

impl Attempt {
    fn unauthorized(&self, detail: &str) -> RegistryError {
        let (what, host) = (&self.what, &self.host);
        let hint = if self.with_credentials {
            format!("the credentials for {host} were refused")
        } else {
            format!("no credentials are configured for {host}")
        };
        RegistryError::Unauthorized(format!("{what}: unauthorized: {detail} ({hint})"))
    }
}

/// An error and its sources on one line; reqwest's own message is only
/// "error sending request", the reason (refused, TLS, DNS) is in the sources.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests;
