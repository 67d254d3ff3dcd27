use super::transport::{self, classify, Challenge};
use super::*;

fn entry(
    media_type: &str,
    digest_char: char,
    platform: Option<(&str, &str, Option<&str>)>,
) -> String {
    let platform = match platform {
        Some((os, arch, Some(variant))) => {
            format!(r#","platform":{{"os":"{os}","architecture":"{arch}","variant":"{variant}"}}"#)
        }
        Some((os, arch, None)) => {
            format!(r#","platform":{{"os":"{os}","architecture":"{arch}"}}"#)
        }
        None => String::new(),
    };
    format!(
        r#"{{"mediaType":"{media_type}","digest":"sha256:{}","size":123{platform}}}"#,
        digest_char.to_string().repeat(64)
    )
}

fn index(media_type: &str, entries: &[String]) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes()
}

/// An OCI index of OCI manifests for linux, one per (digest character, architecture,
/// variant).
fn linux_index(entries: &[(char, &str, Option<&str>)]) -> Vec<u8> {
    let entries: Vec<String> = entries
        .iter()
        .map(|&(c, arch, variant)| {
            entry(MEDIA_TYPE_OCI_MANIFEST, c, Some(("linux", arch, variant)))
        })
        .collect();
    index(MEDIA_TYPE_OCI_INDEX, &entries)
}

/// The digest `select_platform_for` picks from `index` for ARCHITECTURE/VARIANT.
fn chosen_digest(index: &[u8], architecture: &str, variant: Option<&str>) -> String {
    select_platform_for(index, architecture, variant)
        .unwrap()
        .digest
}

fn digest_of(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

#[test]
fn selects_linux_amd64_from_oci_index() {
    let bytes = index(
        MEDIA_TYPE_OCI_INDEX,
        &[
            entry(MEDIA_TYPE_OCI_MANIFEST, 'a', Some(("linux", "arm64", None))),
            entry(
                MEDIA_TYPE_OCI_MANIFEST,
                'b',
                Some(("windows", "amd64", None)),
            ),
            entry(MEDIA_TYPE_OCI_MANIFEST, 'c', Some(("linux", "amd64", None))),
            entry(MEDIA_TYPE_OCI_MANIFEST, 'd', Some(("linux", "amd64", None))),
        ],
    );
    let chosen = select_platform_for(&bytes, "amd64", None).unwrap();
    assert_eq!(
        chosen,
        BlobRef {
            media_type: MEDIA_TYPE_OCI_MANIFEST.into(),
            digest: digest_of('c'),
            size: 123
        }
    );
    assert_eq!(chosen_digest(&bytes, "arm64", Some("v8")), digest_of('a'));
}

#[test]
fn selects_from_docker_manifest_list() {
    let bytes = index(
        MEDIA_TYPE_DOCKER_MANIFEST_LIST,
        &[
            entry(
                MEDIA_TYPE_DOCKER_MANIFEST,
                'a',
                Some(("linux", "arm", Some("v6"))),
            ),
            entry(
                MEDIA_TYPE_DOCKER_MANIFEST,
                'b',
                Some(("linux", "amd64", None)),
            ),
        ],
    );
    let chosen = select_platform_for(&bytes, "amd64", None).unwrap();
    assert_eq!(chosen.digest, digest_of('b'));
    assert_eq!(chosen.media_type, MEDIA_TYPE_DOCKER_MANIFEST);
}

#[test]
fn arm_variants_follow_containerd() {
    let bytes = linux_index(&[
        ('a', "arm", Some("v5")),
        ('b', "arm", Some("v6")),
        ('c', "arm64", Some("v8")),
    ]);
    // armv7 has no exact entry: falls back to v6 before v5.
    assert_eq!(chosen_digest(&bytes, "arm", Some("v7")), digest_of('b'));
    assert_eq!(chosen_digest(&bytes, "arm", Some("v5")), digest_of('a'));
    // arm64 v8 and arm64 without variant are the same platform.
    assert_eq!(chosen_digest(&bytes, "arm64", None), digest_of('c'));
    // An arm entry without variant means v7, which a v6 node cannot run.
    let v7_only = linux_index(&[('d', "arm", None)]);
    assert_eq!(chosen_digest(&v7_only, "arm", Some("v7")), digest_of('d'));
    assert!(matches!(
        select_platform_for(&v7_only, "arm", Some("v6")),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn amd64_variants_are_exact_but_v1_is_plain() {
    let bytes = linux_index(&[('a', "amd64", Some("v3")), ('b', "amd64", Some("v1"))]);
    assert_eq!(chosen_digest(&bytes, "amd64", None), digest_of('b'));
}

#[test]
fn entries_without_platform_or_not_manifests_are_skipped() {
    let bytes = index(
        MEDIA_TYPE_OCI_INDEX,
        &[
            entry(MEDIA_TYPE_OCI_MANIFEST, 'a', None),
            entry(MEDIA_TYPE_OCI_INDEX, 'b', Some(("linux", "amd64", None))),
            entry(
                "application/vnd.in-toto+json",
                'c',
                Some(("linux", "amd64", None)),
            ),
            entry(MEDIA_TYPE_OCI_MANIFEST, 'd', Some(("linux", "amd64", None))),
        ],
    );
    assert_eq!(chosen_digest(&bytes, "amd64", None), digest_of('d'));
}

#[test]
fn no_match_is_not_found_listing_platforms() {
    let bytes = linux_index(&[('a', "arm64", None), ('b', "arm", Some("v7"))]);
    let err = select_platform_for(&bytes, "amd64", None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err:?}");
    assert!(msg.contains("linux/amd64"), "{msg}");
    assert!(
        msg.contains("linux/arm64") && msg.contains("linux/arm/v7"),
        "{msg}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn select_platform_rejects_non_indexes_and_bad_json() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
    assert!(matches!(
        RegistryClient::select_platform(manifest),
        Err(RegistryError::Invalid(_))
    ));
    assert!(matches!(
        RegistryClient::select_platform(b"not json"),
        Err(RegistryError::Invalid(_))
    ));
    let bad_digest = br#"{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"md5:abc","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
    assert!(matches!(
        select_platform_for(bad_digest, "amd64", None),
        Err(RegistryError::Invalid(_))
    ));
    let negative = br#"{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":-1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
    assert!(matches!(
        select_platform_for(negative, "amd64", None),
        Err(RegistryError::Invalid(_))
    ));
}

#[test]
fn select_platform_uses_the_build_platform() {
    let (arch, variant) = platform::host();
    let bytes = linux_index(&[('a', "s390x-not-this", None), ('b', arch, variant)]);
    assert_eq!(
        RegistryClient::select_platform(&bytes).unwrap().digest,
        digest_of('b')
    );
}

#[test]
fn media_types_are_read_or_inferred() {
    let cases: &[(&str, Result<&str, ()>)] = &[
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            Ok(MEDIA_TYPE_OCI_INDEX),
        ),
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#,
            Ok(MEDIA_TYPE_DOCKER_MANIFEST_LIST),
        ),
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#,
            Ok(MEDIA_TYPE_DOCKER_MANIFEST),
        ),
        (
            r#"{"schemaVersion":2,"config":{},"layers":[]}"#,
            Ok(MEDIA_TYPE_OCI_MANIFEST),
        ),
        (
            r#"{"schemaVersion":2,"manifests":[]}"#,
            Ok(MEDIA_TYPE_OCI_INDEX),
        ),
        (r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#, Err(())),
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.config.v1+json","config":{}}"#,
            Err(()),
        ),
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
            Err(()),
        ),
        (r#"{"schemaVersion":2}"#, Err(())),
        ("[]", Err(())),
        ("not json", Err(())),
    ];
    for (body, expected) in cases {
        let got = manifest_media_type(body.as_bytes()).map_err(|_| ());
        assert_eq!(got, *expected, "{body}");
    }
}

#[test]
fn plain_http_for_loopback_and_listed_hosts() {
    let insecure = vec!["registry.lan:5000".to_string(), "plain.lan".to_string()];
    for host in [
        "localhost",
        "localhost:5000",
        "127.0.0.1:5000",
        "127.0.0.1",
        "[::1]:5000",
        "LOCALHOST:1",
        "registry.lan:5000",
        "plain.lan",
    ] {
        assert!(is_insecure(host, &insecure), "{host}");
    }
    for host in [
        "docker.io",
        "registry.lan",
        "registry.lan:5001",
        "plain.lan:5000",
        "127.0.0.2:5000",
        "localhost.example.com",
    ] {
        assert!(!is_insecure(host, &insecure), "{host}");
    }
}

#[test]
fn normalized_references_parse_as_expected() {
    let r = parse_reference("docker.io/library/busybox:1.36").unwrap();
    assert_eq!(r.registry(), "docker.io");
    // oci-client talks to Docker Hub as index.docker.io.
    assert_eq!(r.resolve_registry(), "index.docker.io");
    assert_eq!(r.repository(), "library/busybox");
    assert_eq!(r.tag(), Some("1.36"));

    let digest = digest_of('e');
    let r = parse_reference(&format!("127.0.0.1:5000/a/app@{digest}")).unwrap();
    assert_eq!(r.resolve_registry(), "127.0.0.1:5000");
    assert_eq!(r.repository(), "a/app");
    assert_eq!(r.digest(), Some(digest.as_str()));
    assert_eq!(r.tag(), None);

    let r = parse_reference(&format!("localhost:5000/app:v1@{digest}")).unwrap();
    assert_eq!((r.tag(), r.digest()), (Some("v1"), Some(digest.as_str())));

    assert!(matches!(
        parse_reference("127.0.0.1:5000/app@sha256:abc"),
        Err(RegistryError::Invalid(_))
    ));

    // oci-spec's reference grammar has no IPv6 literals (Docker's has
    // them since 2023): such references are refused, not misread.
    assert!(matches!(
        parse_reference("[::1]:5000/app:v1"),
        Err(RegistryError::Invalid(_))
    ));
}

#[test]
fn digests_must_be_sha256() {
    assert!(is_sha256_digest(&digest_of('0')));
    assert!(!is_sha256_digest(&digest_of('A')));
    assert!(!is_sha256_digest("sha256:abc"));
    assert!(!is_sha256_digest(&format!("sha512:{}", "a".repeat(128))));
    assert!(!is_sha256_digest(&format!(
        "sha256:{}/../x",
        "a".repeat(60)
    )));
}

#[test]
fn errors_are_classified() {
    let attempt = Attempt {
        what: "manifest r.example/app:v1".into(),
        host: "r.example".into(),
        with_credentials: false,
    };
    let unauthorized = classify(401, b"", "https://r.example/v2/app/manifests/v1", &attempt);
    assert!(matches!(unauthorized, RegistryError::Unauthorized(_)));
    assert!(unauthorized.to_string().contains("unauthorized"));
    assert!(unauthorized
        .to_string()
        .contains("no credentials are configured"));
    let refused = classify(
        401,
        b"",
        "u",
        &Attempt {
            what: attempt.what.clone(),
            host: attempt.host.clone(),
            with_credentials: true,
        },
    );
    assert!(refused
        .to_string()
        .contains("credentials for r.example were refused"));
    assert!(!unauthorized.is_retryable());

    let envelope = |status: u16, code: &str| {
        let body = format!(r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#);
        classify(status, body.as_bytes(), "u", &attempt)
    };
    assert!(
        matches!(envelope(404, "MANIFEST_UNKNOWN"), RegistryError::NotFound(m) if m.contains("r.example/app:v1"))
    );
    assert!(matches!(
        envelope(404, "NAME_UNKNOWN"),
        RegistryError::NotFound(_)
    ));
    assert!(matches!(
        envelope(404, "BLOB_UNKNOWN"),
        RegistryError::NotFound(_)
    ));
    assert!(
        matches!(envelope(403, "DENIED"), RegistryError::Unauthorized(m) if m.contains("unauthorized"))
    );
    assert!(envelope(429, "TOOMANYREQUESTS").is_retryable());
    assert!(matches!(
        envelope(400, "MANIFEST_INVALID"),
        RegistryError::Invalid(_)
    ));
    assert!(envelope(503, "UNAVAILABLE").is_retryable());

    let server = |code: u16| classify(code, b"m", "u", &attempt);
    assert!(server(503).is_retryable());
    assert!(server(500).is_retryable());
    assert!(server(429).is_retryable());
    assert!(matches!(server(403), RegistryError::Unauthorized(m) if m.contains("unauthorized")));
    assert!(matches!(server(404), RegistryError::NotFound(_)));
    assert!(matches!(server(400), RegistryError::Invalid(_)));
}

#[test]
fn challenges_are_parsed() {
    assert_eq!(
        Challenge::parse("Basic realm=\"Registry\""),
        Some(Challenge::Basic)
    );
    assert_eq!(
        Challenge::parse(
            "Bearer realm=\"https://auth.example/token\",service=\"registry.example\",scope=\"repository:a/b:pull,push\""
        ),
        Some(Challenge::Bearer {
            realm: "https://auth.example/token".into(),
            service: Some("registry.example".into()),
            scope: Some("repository:a/b:pull,push".into()),
        })
    );
    assert_eq!(
        Challenge::parse("bearer realm=http://127.0.0.1:1/t"),
        Some(Challenge::Bearer {
            realm: "http://127.0.0.1:1/t".into(),
            service: None,
            scope: None,
        })
    );
    assert_eq!(
        Challenge::parse("Bearer realm=\"file:///etc/passwd\""),
        None
    );
    assert_eq!(Challenge::parse("Bearer service=\"x\""), None);
    assert_eq!(Challenge::parse("Negotiate abc"), None);
}

const HELLO_WORLD: &[u8] = b"hello world";

/// What a [`VerifiedBlob`] expecting the bytes of [`HELLO_WORLD`] from registry `host`
/// yields when the transfer brings `chunks`.
async fn verify_hello_world(
    host: &str,
    chunks: Vec<std::io::Result<&'static [u8]>>,
) -> Vec<Result<Bytes, RegistryError>> {
    let transfer =
        futures::stream::iter(chunks.into_iter().map(|c| c.map(Bytes::from_static))).boxed();
    VerifiedBlob::new(
        transfer,
        &sha256_digest(HELLO_WORLD),
        HELLO_WORLD.len() as u64,
        "blob".into(),
        host.into(),
    )
    .collect()
    .await
}

#[tokio::test]
async fn verified_blob_passes_good_content() {
    let items = verify_hello_world("h", vec![Ok(b"hello "), Ok(b"world")]).await;
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i.is_ok()));
}

#[tokio::test]
async fn verified_blob_catches_digest_and_size_errors() {
    let digest = sha256_digest(HELLO_WORLD);
    // Same length, other bytes.
    let items = verify_hello_world("h", vec![Ok(b"hello there")]).await;
    assert!(matches!(items.last(), Some(Err(RegistryError::Invalid(m))) if m.contains(&digest)));

    // Too short.
    let items = verify_hello_world("h", vec![Ok(b"hello")]).await;
    assert!(
        matches!(items.last(), Some(Err(RegistryError::Invalid(m))) if m.contains("got 5 bytes"))
    );

    // Too long: fails at the chunk that exceeds, then ends.
    let items = verify_hello_world("h", vec![Ok(b"hello world"), Ok(b"!"), Ok(b"more")]).await;
    assert_eq!(items.len(), 2);
    assert!(matches!(items[1], Err(RegistryError::Invalid(_))));
}

#[tokio::test]
async fn verified_blob_transport_errors_are_retryable() {
    let items = verify_hello_world(
        "r.example",
        vec![
            Ok(b"hello"),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
            Ok(b" world"),
        ],
    )
    .await;
    assert_eq!(items.len(), 2);
    let err = items[1].as_ref().unwrap_err();
    assert!(err.is_retryable());
    assert!(err.to_string().contains("r.example"), "{err}");
}

/// A request that never completes (a registry trickling its answer) ends at
/// the deadline as unreachable, naming the registry.
#[tokio::test(start_paused = true)]
async fn requests_end_at_their_deadline() {
    let attempt = Attempt {
        what: "manifest r.example/app:v1".into(),
        host: "r.example".into(),
        with_credentials: false,
    };
    let never = futures::future::pending::<Result<(), RegistryError>>();
    let err = transport::within_deadline(never, "manifest request", &attempt)
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        "manifest r.example/app:v1: registry r.example did not complete the manifest request within 60s"
    );
}
