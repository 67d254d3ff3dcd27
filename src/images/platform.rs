//! Which manifests of an image index (a multi-platform image) this node can
//! run, best first. Pulling (the registry client picks the one manifest to
//! download) and resolving a stored image (containerd's content store may
//! hold only some of an index's manifests) go by the same rules, those of
//! containerd 1.6's default platform matcher.

use std::fmt;

use super::media_types;

/// The platform of an index entry, as written in the index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl From<&oci_spec::image::Platform> for Platform {
    fn from(platform: &oci_spec::image::Platform) -> Self {
        Platform {
            architecture: platform.architecture().to_string(),
            os: platform.os().to_string(),
            variant: platform.variant().clone(),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            name(&self.os, &self.architecture, self.variant.as_deref())
        )
    }
}

/// `os/architecture[/variant]`, as platforms are written on command lines and
/// in messages.
pub fn name(os: &str, architecture: &str, variant: Option<&str>) -> String {
    match variant.filter(|v| !v.is_empty()) {
        Some(variant) => format!("{os}/{architecture}/{variant}"),
        None => format!("{os}/{architecture}"),
    }
}

/// GOARCH (and arm variant) of the running agent, the names image platforms
/// use; the OS is always linux.
pub fn host() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => (
            "arm",
            Some(if cfg!(target_feature = "v7") {
                "v7"
            } else if cfg!(target_feature = "v6") {
                "v6"
            } else {
                "v5"
            }),
        ),
        "x86" => ("386", None),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        other => (other, None),
    }
}

/// An entry's variant as containerd normalizes it: arm64 means v8 and arm
/// means v7 when none is given; amd64 v1 is plain amd64.
fn normalized_variant<'a>(architecture: &str, variant: Option<&'a str>) -> Option<&'a str> {
    match (architecture, variant.filter(|v| !v.is_empty())) {
        ("arm64", None) => Some("v8"),
        ("arm", None) => Some("v7"),
        ("amd64", Some("v1")) => None,
        (_, variant) => variant,
    }
}

/// The entries of an index that a linux/ARCHITECTURE/VARIANT node can run, as
/// positions in `entries` (each entry's media type and platform, in index
/// order), best first:
///
/// - only image manifests count (not nested indexes, attestations or other
///   artifacts);
/// - first the linux/ARCHITECTURE entries of the node's own variant, then for
///   arm those of the older variants it also runs (an armv7 node takes v6,
///   then v5), each group in index order; variants are compared as containerd
///   normalizes them (an arm64 entry without variant is v8, an arm one v7);
/// - last the entries without a platform, which containerd takes to fit any.
pub fn candidates<'a>(
    entries: impl IntoIterator<Item = (&'a str, Option<&'a Platform>)>,
    architecture: &str,
    variant: Option<&str>,
) -> Vec<usize> {
    let manifests: Vec<(usize, Option<&Platform>)> = entries
        .into_iter()
        .enumerate()
        .filter(|(_, (media_type, _))| media_types::is_manifest(media_type))
        .map(|(i, (_, platform))| (i, platform))
        .collect();
    let wanted = normalized_variant(architecture, variant);
    // Variants in order of preference: the node's own first, then for arm
    // the older ones it can also run.
    let mut preference: Vec<Option<&str>> = vec![wanted];
    if architecture == "arm" {
        let older = ["v8", "v7", "v6", "v5"];
        if let Some(pos) = older.iter().position(|v| Some(*v) == wanted) {
            preference.extend(older[pos + 1..].iter().map(|v| Some(*v)));
        }
    }
    let runs = |p: &Platform, variant: Option<&str>| {
        p.os == "linux"
            && p.architecture == architecture
            && normalized_variant(&p.architecture, p.variant.as_deref()) == variant
    };
    let mut order = Vec::new();
    for variant in preference {
        order.extend(
            manifests
                .iter()
                .filter(|(_, platform)| platform.is_some_and(|p| runs(p, variant)))
                .map(|&(i, _)| i),
        );
    }
    order.extend(
        manifests
            .iter()
            .filter(|(_, platform)| platform.is_none())
            .map(|&(i, _)| i),
    );
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::media_types::{MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX};

    fn linux(architecture: &str, variant: Option<&str>) -> Option<Platform> {
        Some(Platform {
            architecture: architecture.into(),
            os: "linux".into(),
            variant: variant.map(String::from),
        })
    }

    #[test]
    fn candidates_come_best_first_and_unplatformed_last() {
        let entries = [
            (MEDIA_TYPE_DOCKER_MANIFEST, None),
            (MEDIA_TYPE_DOCKER_MANIFEST, linux("arm", Some("v5"))),
            (MEDIA_TYPE_DOCKER_MANIFEST, linux("arm", Some("v7"))),
            (MEDIA_TYPE_OCI_INDEX, linux("arm", Some("v7"))),
            (MEDIA_TYPE_DOCKER_MANIFEST, linux("arm64", None)),
            (MEDIA_TYPE_DOCKER_MANIFEST, linux("arm", Some("v6"))),
            (MEDIA_TYPE_DOCKER_MANIFEST, linux("arm", None)),
        ];
        let of = |architecture, variant| {
            candidates(
                entries.iter().map(|(t, p)| (*t, p.as_ref())),
                architecture,
                variant,
            )
        };
        // v7 (an arm entry without variant is v7 too), then v6, then v5, then no platform.
        assert_eq!(of("arm", Some("v7")), [2, 6, 5, 1, 0]);
        assert_eq!(of("arm", Some("v5")), [1, 0]);
        assert_eq!(of("arm64", Some("v8")), [4, 0]);
        assert_eq!(of("amd64", None), [0]);
    }

    #[test]
    fn platforms_are_named_like_containerd_does() {
        assert_eq!(
            linux("arm", Some("v7")).unwrap().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(linux("amd64", Some("")).unwrap().to_string(), "linux/amd64");
        assert_eq!(name("linux", "arm64", None), "linux/arm64");
    }
}
