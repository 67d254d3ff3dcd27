//! Image references normalized the way Docker and Kubernetes read them:
//! `busybox` means `docker.io/library/busybox:latest`.

/// The fully qualified form of `reference`, or why it is not a reference.
pub fn normalize(reference: &str) -> Result<String, String> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Err("empty image reference".into());
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_ascii_uppercase())
    {
        return Err(format!("invalid image reference {reference:?}"));
    }
    if let Some(digest) = digest {
        let valid = digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            return Err(format!("invalid digest in image reference {reference:?}"));
        }
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[last_slash..].find(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    };
    if repository.is_empty() || tag == Some("") {
        return Err(format!("invalid image reference {reference:?}"));
    }
    let first = repository.split('/').next().unwrap_or("");
    let has_domain = repository.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    let full_repository = if has_domain {
        repository.to_string()
    } else if repository.contains('/') {
        format!("docker.io/{repository}")
    } else {
        format!("docker.io/library/{repository}")
    };
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => format!("{full_repository}:{tag}@{digest}"),
        (None, Some(digest)) => format!("{full_repository}@{digest}"),
        (Some(tag), None) => format!("{full_repository}:{tag}"),
        (None, None) => format!("{full_repository}:latest"),
    })
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn docker_hub_short_names_are_expanded() {
        assert_eq!(
            normalize("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize("busybox:1.36").unwrap(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            normalize("bitnami/redis").unwrap(),
            "docker.io/bitnami/redis:latest"
        );
    }

    #[test]
    fn registries_are_kept() {
        assert_eq!(
            normalize("podkeeper.local/busybox:latest").unwrap(),
            "podkeeper.local/busybox:latest"
        );
        assert_eq!(
            normalize("localhost:5000/app").unwrap(),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalize("localhost/app:v1").unwrap(), "localhost/app:v1");
        assert_eq!(
            normalize("127.0.0.1:5000/a/b:v2").unwrap(),
            "127.0.0.1:5000/a/b:v2"
        );
    }

    #[test]
    fn digests_are_kept() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            normalize(&format!("busybox@{digest}")).unwrap(),
            format!("docker.io/library/busybox@{digest}")
        );
        assert!(normalize("busybox@sha256:abc").is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in ["", "  ", "Busybox", "busybox:", "a b"] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }
}
