//! Pure parsing of one static pod manifest: bytes → validated, defaulted Pod.
//!
//! Follows the kubelet's file source (`pkg/kubelet/config/common.go`): the
//! pod is renamed `<name>-<node>`, its namespace defaults to `default`, and
//! its UID is a hash of the decoded object plus node name and file path, so
//! formatting-only edits keep the UID while any semantic change makes a new
//! pod. Unlike the kubelet, a file with several YAML documents is refused
//! instead of silently running only the first.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, Toleration};
use sha2::{Digest, Sha256};

use super::decode::decode_document;
use crate::desired::DesiredPod;

/// The kubelet's limit on a manifest's size (`maxConfigLength`).
pub const MAX_MANIFEST_BYTES: u64 = 10 * 1024 * 1024;

/// Grace period when the manifest gives none (Kubernetes' default).
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

/// What is wrong with a manifest, naming the field where one is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ManifestError {
    pub field: Option<String>,
    pub message: String,
    /// The Warning event's reason: `FailedParse` when the file is not a
    /// Pod object, `FailedValidation` when it is one but a value is refused
    /// as the API server's validation would refuse it (the kubelet's reason
    /// for a static pod it will not run).
    pub reason: &'static str,
}

impl ManifestError {
    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestError {
            field: Some(field.into()),
            message: message.into(),
            reason: "FailedParse",
        }
    }
    fn whole(message: impl Into<String>) -> Self {
        ManifestError {
            field: None,
            message: message.into(),
            reason: "FailedParse",
        }
    }
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestError {
            reason: "FailedValidation",
            ..ManifestError::at(field, message)
        }
    }
}

/// Parses, validates and defaults one manifest read from `path`.
pub fn parse_manifest(
    bytes: &[u8],
    path: &Path,
    node_name: &str,
) -> Result<DesiredPod, ManifestError> {
    let value = decode_document(bytes).map_err(|e| ManifestError::whole(e.to_string()))?;
    check_type(&value)?;
    let pod: Pod = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        ManifestError::at(field, e.into_inner().to_string())
    })?;
    validate(&pod)?;
    Ok(DesiredPod {
        pod: apply_static_defaults(pod, path, node_name),
        source: path.to_path_buf(),
    })
}

fn check_type(value: &serde_json::Value) -> Result<(), ManifestError> {
    if !value.is_object() {
        return Err(ManifestError::whole("expected a Pod object"));
    }
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
    match field("apiVersion") {
        "v1" => {}
        "" => return Err(ManifestError::at("apiVersion", "missing; expected \"v1\"")),
        other => {
            return Err(ManifestError::at(
                "apiVersion",
                format!("{other:?} is not supported; expected \"v1\""),
            ))
        }
    }
    match field("kind") {
        "Pod" => Ok(()),
        "" => Err(ManifestError::at("kind", "missing; expected \"Pod\"")),
        other => Err(ManifestError::at(
            "kind",
            format!("{other:?} is not a Pod; podkeeper runs static Pods only"),
        )),
    }
}

fn validate(pod: &Pod) -> Result<(), ManifestError> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    if name.is_empty() {
        return Err(ManifestError::invalid(
            "metadata.name",
            "a pod needs a name",
        ));
    }
    check_dns_subdomain("metadata.name", name)?;
    if let Some(ns) = pod.metadata.namespace.as_deref() {
        check_dns_label("metadata.namespace", ns)?;
    }
    if let Some(uid) = pod.metadata.uid.as_deref().filter(|uid| !uid.is_empty()) {
        check_uid(uid)?;
    }
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| ManifestError::at("spec", "missing"))?;
    if spec.containers.is_empty() {
        return Err(ManifestError::invalid(
            "spec.containers",
            "a pod needs at least one container",
        ));
    }
    let mut names = HashSet::new();
    let init = spec.init_containers.iter().flatten();
    let all = init
        .map(|c| ("spec.initContainers", c))
        .chain(spec.containers.iter().map(|c| ("spec.containers", c)));
    for (list, container) in all {
        validate_container(list, container, &mut names)?;
    }
    let mut volumes = HashSet::new();
    for (index, volume) in spec.volumes.iter().flatten().enumerate() {
        check_dns_label(&format!("spec.volumes[{index}].name"), &volume.name)?;
        if !volumes.insert(volume.name.as_str()) {
            return Err(ManifestError::invalid(
                format!("spec.volumes[{}].name", volume.name),
                "duplicate volume name in this pod",
            ));
        }
    }
    if let Some(grace) = spec.termination_grace_period_seconds {
        if grace < 0 {
            return Err(ManifestError::invalid(
                "spec.terminationGracePeriodSeconds",
                "must not be negative",
            ));
        }
    }
    Ok(())
}

fn validate_container<'a>(
    list: &str,
    container: &'a Container,
    names: &mut HashSet<&'a str>,
) -> Result<(), ManifestError> {
    let at = |field: &str| format!("{list}[{}].{field}", container.name);
    check_dns_label(&format!("{list}[].name"), &container.name)?;
    if !names.insert(container.name.as_str()) {
        return Err(ManifestError::invalid(
            at("name"),
            "duplicate container name in this pod",
        ));
    }
    if container.image.as_deref().unwrap_or("").trim().is_empty() {
        return Err(ManifestError::invalid(
            at("image"),
            "a container needs an image",
        ));
    }
    Ok(())
}

/// A given UID names the pod's directories, cgroup and containers, so only
/// the two forms a real UID takes are accepted: the RFC 4122 form the API
/// server generates (`kubectl get pod -o yaml` shows it) and the 32 hex
/// digits of the kubelet's static-pod hash. Hex digits of either case are
/// kept as given, as the API server compares UIDs as exact strings.
fn check_uid(uid: &str) -> Result<(), ManifestError> {
    let hex =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    let rfc_4122 = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| hex(group, len));
    if rfc_4122 || hex(uid, 32) {
        return Ok(());
    }
    // Enough to recognise the value without echoing a huge one whole.
    let shown: String = uid.chars().take(100).collect();
    let cut = if shown.len() < uid.len() { "..." } else { "" };
    Err(ManifestError::invalid(
        "metadata.uid",
        format!(
            "{shown:?}{cut} is not a UID: expected the RFC 4122 form \
             (3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d) or 32 hex digits, or no uid at all"
        ),
    ))
}
fn check_dns_label(field: &str, value: &str) -> Result<(), ManifestError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ManifestError::invalid(
            field,
            format!(
                "{value:?} must be a DNS label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

fn check_dns_subdomain(field: &str, value: &str) -> Result<(), ManifestError> {
    if value.len() > 253 {
        return Err(ManifestError::invalid(field, "longer than 253 characters"));
    }
    value
        .split('.')
        .try_for_each(|label| check_dns_label(field, label))
        .map_err(|_| {
            ManifestError::invalid(
                field,
                format!(
                    "{value:?} must be a DNS subdomain: lowercase letters, digits, '-' and '.'"
                ),
            )
        })
}

/// The kubelet's static-pod defaults, plus the v1 defaults podkeeper relies on.
fn apply_static_defaults(mut pod: Pod, path: &Path, node_name: &str) -> Pod {
    if pod.metadata.uid.as_deref().unwrap_or("").is_empty() {
        pod.metadata.uid = Some(static_pod_uid(&pod, path, node_name));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.take().unwrap_or_default();
    pod.metadata.name = Some(format!("{name}-{node_name}"));
    if pod.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        pod.metadata.namespace = Some("default".into());
    }
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert("kubernetes.io/config.hash".into(), uid);
    annotations.insert("kubernetes.io/config.source".into(), "file".into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node_name.to_string());
        spec.restart_policy.get_or_insert_with(|| "Always".into());
        spec.termination_grace_period_seconds
            .get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
        spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        let static_toleration = Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        if !tolerations.contains(&static_toleration) {
            tolerations.push(static_toleration);
        }
        let init = spec.init_containers.iter_mut().flatten();
        for container in init.chain(spec.containers.iter_mut()) {
            default_container(container);
        }
    }
    pod
}

fn default_container(container: &mut Container) {
    let image = container.image.clone().unwrap_or_default();
    container
        .image_pull_policy
        .get_or_insert_with(|| default_pull_policy(&image).into());
    container
        .termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    container
        .termination_message_policy
        .get_or_insert_with(|| "File".into());
    for port in container.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// A hash of the decoded object, the node and the file, as the kubelet's
/// static-pod UID: 32 hex digits, stable across formatting-only edits.
fn static_pod_uid(pod: &Pod, path: &Path, node_name: &str) -> String {
    let mut hasher = Sha256::new();
    // Serializing the typed object gives a canonical form: struct fields in
    // declaration order and maps sorted, whatever the file's layout was.
    hasher.update(serde_json::to_vec(pod).unwrap_or_default());
    hasher.update(format!("host:{node_name}"));
    hasher.update(format!("file:{}", path.display()));
    let digest = hasher.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  containers:\n  - name: app\n    image: busybox:1.36\n    command: [sleep, '3600']\n";

    fn parse(text: &str) -> Result<DesiredPod, ManifestError> {
        parse_manifest(text.as_bytes(), Path::new("/m/web.yaml"), "node1")
    }

    #[test]
    fn a_valid_pod_gets_static_defaults() {
        let pod = parse(WEB).unwrap();
        assert_eq!(pod.name(), "web-node1");
        assert_eq!(pod.namespace(), "default");
        assert_eq!(pod.uid().len(), 32);
        let spec = pod.pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        let annotations = pod.pod.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["kubernetes.io/config.hash"], pod.uid());
        assert_eq!(annotations["kubernetes.io/config.source"], "file");
    }

    #[test]
    fn json_manifests_parse_like_yaml() {
        let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","labels":{"app":"web"}},
            "spec":{"containers":[{"name":"app","image":"busybox:1.36","command":["sleep","3600"]}]}}"#;
        assert_eq!(parse(json).unwrap().uid(), parse(WEB).unwrap().uid());
    }

    #[test]
    fn formatting_only_edits_keep_the_uid() {
        let reformatted = "# a comment\nkind: Pod\napiVersion: v1\nspec:\n  containers:\n    - image: \"busybox:1.36\"\n      name: app\n      command:\n        - sleep\n        - \"3600\"\nmetadata:\n  labels: {app: web}\n  name: web\n";
        assert_eq!(parse(reformatted).unwrap().uid(), parse(WEB).unwrap().uid());
    }

    #[test]
    fn semantic_edits_node_and_path_change_the_uid() {
        let base = parse(WEB).unwrap().uid().to_string();
        let edited = WEB.replace("3600", "3601");
        assert_ne!(parse(&edited).unwrap().uid(), base);
        let other_node = parse_manifest(WEB.as_bytes(), Path::new("/m/web.yaml"), "node2").unwrap();
        assert_ne!(other_node.uid(), base);
        let other_path =
            parse_manifest(WEB.as_bytes(), Path::new("/m/web2.yaml"), "node1").unwrap();
        assert_ne!(other_path.uid(), base);
    }

    fn with_uid(uid: &str) -> Result<DesiredPod, ManifestError> {
        let line = format!("  uid: {}\n", serde_json::to_string(uid).unwrap());
        parse(&WEB.replace("  name: web\n", &format!("  name: web\n{line}")))
    }

    #[test]
    fn an_explicit_uid_is_kept() {
        for uid in [
            "3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d",
            "0123456789abcdef0123456789abcdef",
            // The API server compares UIDs as exact strings: the case stays.
            "3F2B1C9E-5D4A-4E7B-9C1D-2A6F8E0B4C7D",
            "0123456789ABCDEF0123456789abcdef",
        ] {
            let pod = with_uid(uid).unwrap();
            assert_eq!(pod.uid(), uid);
            let annotations = pod.pod.metadata.annotations.as_ref().unwrap();
            assert_eq!(annotations["kubernetes.io/config.hash"], uid);
        }
        assert_eq!(with_uid("").unwrap().uid().len(), 32, "empty is no uid");
    }

    #[test]
    fn a_uid_that_is_not_a_uid_is_a_validation_error() {
        let too_long = format!("{}0", "0123456789abcdef".repeat(2));
        let refused = [
            "/",
            "/tmp/x",
            "../..",
            "..",
            ".",
            "a/b",
            "1234",
            "3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d\0",
            "3f2b1c9e\0-5d4a-4e7b-9c1d-2a6f8e0b4c7",
            "3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d0",
            "3f2b1c9e-5d4a-4e7b-9c1d2a6f8e0b4c7d",
            "3f2b1c9e5d4a-4e7b-9c1d-2a6f-8e0b4c7d",
            "3g2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d",
            " 3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d",
            "0123456789abcdef0123456789abcde/",
            &too_long,
        ];
        for uid in refused {
            let err = with_uid(uid).unwrap_err();
            assert_eq!(err.field.as_deref(), Some("metadata.uid"), "{uid:?}: {err}");
            assert_eq!(err.reason, "FailedValidation", "{uid:?}");
        }
        let huge = with_uid(&"/".repeat(10_000)).unwrap_err();
        assert!(huge.message.len() < 400, "{huge}");
    }

    #[test]
    fn parse_and_validation_errors_have_their_reasons() {
        let err = parse(&WEB.replace("kind: Pod", "kind: Service")).unwrap_err();
        assert_eq!(err.reason, "FailedParse");
        let err = parse(&WEB.replace("name: web", "name: Web_1")).unwrap_err();
        assert_eq!(err.reason, "FailedValidation");
    }

    #[test]
    fn volume_names_are_dns_labels_and_unique() {
        let volumes = |names: &str| {
            let list: String = names
                .split(',')
                .map(|n| format!("  - name: {n:?}\n    emptyDir: {{}}\n"))
                .collect();
            parse(&WEB.replace(
                "  containers:\n",
                &format!("  volumes:\n{list}  containers:\n"),
            ))
        };
        volumes("cache,data-1").unwrap();
        for (names, field) in [
            ("../x", "spec.volumes[0].name"),
            ("ok,a/b", "spec.volumes[1].name"),
            ("..", "spec.volumes[0].name"),
            ("Cache", "spec.volumes[0].name"),
            ("a,a", "spec.volumes[a].name"),
        ] {
            let err = volumes(names).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{names}: {err}");
            assert_eq!(err.reason, "FailedValidation");
        }
    }

    #[test]
    fn wrong_kind_is_named() {
        let err = parse(&WEB.replace("kind: Pod", "kind: Service")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("kind"));
        assert!(err.message.contains("Service"), "{err}");
    }

    #[test]
    fn missing_api_version_is_named() {
        let err = parse(&WEB.replace("apiVersion: v1\n", "")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("apiVersion"));
    }

    #[test]
    fn broken_yaml_is_reported() {
        let err = parse("apiVersion: v1\nkind: Pod\nmetadata: [\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{err}");
    }

    #[test]
    fn a_half_written_file_is_an_error_not_an_empty_pod() {
        let half = &WEB[..WEB.find("spec:").unwrap()];
        let err = parse(half).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec"));
        assert!(parse("").is_err());
    }

    #[test]
    fn no_containers_is_refused() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers: []\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.containers"));
    }

    #[test]
    fn missing_image_names_the_container() {
        let err = parse(&WEB.replace("    image: busybox:1.36\n", "")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.containers[app].image"));
    }

    #[test]
    fn duplicate_container_names_are_refused() {
        let text = format!("{WEB}  - name: app\n    image: busybox\n");
        let err = parse(&text).unwrap_err();
        assert!(err.message.contains("duplicate"), "{err}");
    }

    #[test]
    fn a_wrongly_typed_field_is_named_by_path() {
        let err = parse(&WEB.replace("command: [sleep, '3600']", "command: 7")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.containers[0].command"));
    }

    #[test]
    fn several_documents_are_refused() {
        let err = parse(&format!("{WEB}---\n{WEB}")).unwrap_err();
        assert!(err.message.contains("2 YAML documents"), "{err}");
    }

    #[test]
    fn bad_names_are_refused() {
        let err = parse(&WEB.replace("name: web", "name: Web_1")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("metadata.name"));
        let err = parse(&WEB.replace("name: app", "name: App")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.containers[].name"));
    }

    #[test]
    fn yaml_1_1_octal_file_modes_are_octal() {
        let text = WEB.replace(
            "  containers:\n",
            "  volumes:\n  - name: d\n    downwardAPI:\n      defaultMode: 0644\n      items: [{path: x, mode: 0400, fieldRef: {fieldPath: metadata.name}}]\n  containers:\n",
        );
        let pod = parse(&text).unwrap();
        let volume = &pod.pod.spec.unwrap().volumes.unwrap()[0];
        let api = volume.downward_api.as_ref().unwrap();
        assert_eq!(api.default_mode, Some(0o644));
        assert_eq!(api.items.as_ref().unwrap()[0].mode, Some(0o400));
    }

    #[test]
    fn pull_policy_defaults_follow_the_tag() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("busybox@sha256:abcd"), "IfNotPresent");
    }
}
