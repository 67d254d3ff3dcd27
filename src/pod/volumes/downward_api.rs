//! downwardAPI volumes: the items' paths and modes, and the pod metadata
//! they hold, in the kubelet's format.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::DownwardAPIVolumeSource;

use crate::desired::DesiredPod;

use super::{DownwardFile, Plan, VolumeError, DOWNWARD_DEFAULT_MODE};

pub(super) fn plan_downward_api(
    pod: &DesiredPod,
    source: &DownwardAPIVolumeSource,
    at: &dyn Fn(&str) -> String,
) -> Result<Plan, VolumeError> {
    let default_mode = match source.default_mode {
        None => DOWNWARD_DEFAULT_MODE,
        Some(mode) => file_mode(mode)
            .ok_or_else(|| VolumeError::new(at("downwardAPI.defaultMode"), mode_message(mode)))?,
    };
    let mut files = Vec::new();
    let mut paths = HashSet::new();
    for (i, item) in source.items.iter().flatten().enumerate() {
        let item_at = |field: &str| at(&format!("downwardAPI.items[{i}].{field}"));
        let path =
            downward_item_path(&item.path).map_err(|m| VolumeError::new(item_at("path"), m))?;
        if !paths.insert(path.clone()) {
            return Err(VolumeError::new(
                item_at("path"),
                format!("{:?} is written by an earlier item too", item.path),
            ));
        }
        let mode = match item.mode {
            None => default_mode,
            Some(mode) => file_mode(mode)
                .ok_or_else(|| VolumeError::new(item_at("mode"), mode_message(mode)))?,
        };
        let content = match (&item.field_ref, &item.resource_field_ref) {
            (Some(_), Some(_)) => {
                return Err(VolumeError::new(
                    item_at("fieldRef"),
                    "an item sets fieldRef or resourceFieldRef, not both",
                ))
            }
            (Some(selector), None) => {
                if !matches!(
                    selector.api_version.as_deref(),
                    None | Some("") | Some("v1")
                ) {
                    return Err(VolumeError::new(
                        item_at("fieldRef.apiVersion"),
                        format!(
                            "{:?} is not supported; expected \"v1\"",
                            selector.api_version.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                metadata_field(pod, &selector.field_path)
                    .map_err(|m| VolumeError::new(item_at("fieldRef.fieldPath"), m))?
            }
            (None, Some(_)) => {
                return Err(VolumeError::new(
                    item_at("resourceFieldRef"),
                    "resourceFieldRef in downwardAPI volumes is not supported yet",
                ))
            }
            (None, None) => {
                return Err(VolumeError::new(
                    item_at("fieldRef"),
                    "an item needs fieldRef or resourceFieldRef",
                ))
            }
        };
        files.push(DownwardFile {
            path,
            content: content.into_bytes(),
            mode,
        });
    }
    Ok(Plan::DownwardApi { files })
}

/// A permission mode from the API (a decimal int32 that is usually written
/// in octal in YAML); only permission bits are allowed, as the API server
/// requires.
fn file_mode(mode: i32) -> Option<u32> {
    u32::try_from(mode).ok().filter(|m| *m <= 0o777)
}

fn mode_message(mode: i32) -> String {
    format!("{mode} is not a file mode: it must be between 0 and 0777 (octal), i.e. 0 and 511")
}

/// An item's path: relative, without `..` elements, not starting with `..`
/// (the kubelet reserves those names for its own bookkeeping).
fn downward_item_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("a path is required".into());
    }
    if path.starts_with('/') {
        return Err(format!("{path:?} must be relative"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    if path.starts_with("..") {
        return Err(format!("{path:?} must not start with '..'"));
    }
    let clean: PathBuf = Path::new(path)
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    if clean.as_os_str().is_empty() {
        return Err(format!("{path:?} names no file"));
    }
    Ok(clean)
}

/// The value of a downwardAPI `fieldRef` in a volume: only metadata, which
/// is all the API server allows there.
fn metadata_field(pod: &DesiredPod, field_path: &str) -> Result<String, String> {
    let meta = &pod.pod.metadata;
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    if let Some((map, key)) = subscript(field_path) {
        return match map {
            "metadata.labels" => Ok(labels.get(key).cloned().unwrap_or_default()),
            "metadata.annotations" => Ok(annotations.get(key).cloned().unwrap_or_default()),
            _ => Err(unsupported_field_path(field_path)),
        };
    }
    match field_path {
        "metadata.name" => Ok(pod.name().to_string()),
        "metadata.namespace" => Ok(pod.namespace().to_string()),
        "metadata.uid" => Ok(pod.uid().to_string()),
        "metadata.labels" => Ok(format_map(labels)),
        "metadata.annotations" => Ok(format_map(annotations)),
        _ => Err(unsupported_field_path(field_path)),
    }
}

fn unsupported_field_path(field_path: &str) -> String {
    format!(
        "{field_path:?} is not supported in downwardAPI volumes; supported: metadata.name, \
         metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, \
         metadata.labels['<key>'], metadata.annotations['<key>']"
    )
}

/// Splits `metadata.labels['key']` into the map's path and the key.
fn subscript(field_path: &str) -> Option<(&str, &str)> {
    let inner = field_path.strip_suffix("']")?;
    let (map, key) = inner.split_once("['")?;
    Some((map, key))
}

/// Labels or annotations as the kubelet writes them: `key="value"` lines
/// (value quoted like Go's `%q`), sorted by key, no trailing newline.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A string quoted as Go's `strconv.Quote` does, for the characters that
/// occur in practice: backslash escapes for quotes, backslashes and control
/// characters, `\u` escapes for invisible Unicode separators and format
/// characters; everything else as is.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !go_printable(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint` above ASCII: false for control
/// characters, non-ASCII spaces, line/paragraph separators, the common
/// format characters and private use.
fn go_printable(c: char) -> bool {
    !matches!(c,
        '\u{80}'..='\u{a0}'
        | '\u{ad}'
        | '\u{1680}'
        | '\u{2000}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{205f}'..='\u{2064}'
        | '\u{3000}'
        | '\u{e000}'..='\u{f8ff}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::volumes::test_support::*;
    use crate::pod::volumes::*;
    use std::fs;

    #[test]
    fn downward_api_files_hold_metadata_in_the_kubelet_format_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("v");
        let volume = "  - name: info\n    downwardAPI:\n      defaultMode: 0600\n      items:\n      - {path: name, fieldRef: {fieldPath: metadata.name}}\n      - {path: namespace, fieldRef: {fieldPath: metadata.namespace}}\n      - {path: uid, fieldRef: {fieldPath: metadata.uid, apiVersion: v1}}\n      - {path: labels, fieldRef: {fieldPath: metadata.labels}, mode: 0444}\n      - {path: meta/annotations, fieldRef: {fieldPath: metadata.annotations}}\n      - {path: app, fieldRef: {fieldPath: \"metadata.labels['app']\"}}\n      - {path: none, fieldRef: {fieldPath: \"metadata.labels['none']\"}}\n";
        let p = pod(volume, "      []\n");
        let prepared = prepare(&p, &root).unwrap();
        let info = prepared.get("info").unwrap();
        assert_eq!(info.path, root.join("downward-api/info"));
        assert!(info.read_only);
        assert_eq!(info.kind, VolumeKind::DownwardApi);
        let read = |name: &str| fs::read_to_string(info.path.join(name)).unwrap();
        assert_eq!(read("name"), "web-node1");
        assert_eq!(read("namespace"), "shop");
        assert_eq!(read("uid"), p.uid());
        assert_eq!(read("labels"), "app=\"web\"\ntier=\"front\\\"end\"");
        let uid = p.uid();
        assert_eq!(
            read("meta/annotations"),
            format!(
                "kubernetes.io/config.hash=\"{uid}\"\nkubernetes.io/config.source=\"file\"\nnote=\"a\\nb\""
            )
        );
        assert_eq!(read("app"), "web");
        assert_eq!(read("none"), "");
        assert_eq!(mode(&info.path.join("name")), 0o600);
        assert_eq!(mode(&info.path.join("labels")), 0o444);
        assert_eq!(mode(&info.path.join("meta/annotations")), 0o600);
        assert_eq!(mode(&info.path.join("meta")), 0o755);
        assert_eq!(mode(&info.path), 0o755);
        // Only the items: no temporary files left.
        let mut names: Vec<_> = fs::read_dir(&info.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["app", "labels", "meta", "name", "namespace", "none", "uid"]
        );
    }

    #[test]
    fn downward_api_default_mode_is_0644() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = "  - name: info\n    downwardAPI:\n      items:\n      - {path: name, fieldRef: {fieldPath: metadata.name}}\n";
        let prepared = prepare_one(volume, tmp.path()).unwrap();
        assert_eq!(
            mode(&prepared.get("info").unwrap().path.join("name")),
            0o644
        );
    }

    #[test]
    fn downward_api_refuses_bad_items() {
        let tmp = tempfile::tempdir().unwrap();
        let item = |item: &str| {
            format!("  - name: info\n    downwardAPI:\n      items:\n      - {item}\n")
        };
        let field = |f: &str| format!("{{path: x, fieldRef: {{fieldPath: {f}}}}}");
        let cases = [
            (
                item("{path: ../x, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "'..'",
            ),
            (
                item("{path: a/../../x, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "'..'",
            ),
            (
                item("{path: /etc/x, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "relative",
            ),
            (
                item("{path: ..data, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].path",
                "start with",
            ),
            (
                item(&field("spec.nodeName")),
                "items[0].fieldRef.fieldPath",
                "not supported in downwardAPI volumes",
            ),
            (
                item("{path: x, resourceFieldRef: {resource: limits.memory, containerName: app}}"),
                "items[0].resourceFieldRef",
                "resourceFieldRef in downwardAPI volumes is not supported yet",
            ),
            (item("{path: x}"), "items[0].fieldRef", "needs fieldRef"),
            (
                item("{path: x, mode: 01000, fieldRef: {fieldPath: metadata.name}}"),
                "items[0].mode",
                "0777",
            ),
            (
                item("{path: x, fieldRef: {fieldPath: metadata.name, apiVersion: v2}}"),
                "items[0].fieldRef.apiVersion",
                "v2",
            ),
            (
                "  - name: info\n    downwardAPI: {defaultMode: -1}\n".to_string(),
                "defaultMode",
                "0777",
            ),
        ];
        for (volume, field, message) in cases {
            let err = prepare_one(&volume, &tmp.path().join("v")).unwrap_err();
            assert_eq!(
                err.field,
                format!("spec.volumes[info].downwardAPI.{field}"),
                "{volume}"
            );
            assert!(err.message.contains(message), "{volume}: {err}");
            assert_eq!(err.reason(), "FailedMount");
        }
        assert!(!tmp.path().join("v").exists());
    }

    #[test]
    fn values_are_quoted_like_go() {
        assert_eq!(go_quote("plain"), "\"plain\"");
        assert_eq!(go_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(go_quote("l1\nl2\t\r"), "\"l1\\nl2\\t\\r\"");
        assert_eq!(go_quote("\u{1}\u{7f}"), "\"\\x01\\x7f\"");
        assert_eq!(go_quote("é日本"), "\"é日本\"");
        assert_eq!(go_quote("nb\u{a0}sp\u{200b}"), "\"nb\\u00a0sp\\u200b\"");
    }
}
