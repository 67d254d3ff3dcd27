//! What the plugins are told about a pod: the request checked before any
//! of it reaches a file name, an iptables comment or `CNI_ARGS`, and the
//! arguments built from it.

use serde_json::{Map, Value};

use super::{NetworkError, PodNetworkRequest, PortMapping};

/// The sandbox ID becomes part of file names and iptables comments: refuse
/// anything that could escape the cache directory or confuse the plugins.
pub(super) fn validate(request: &PodNetworkRequest<'_>) -> Result<(), NetworkError> {
    let id = request.sandbox_id;
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        || id.starts_with('.')
    {
        return Err(NetworkError::Request(format!(
            "sandbox ID {id:?} must be 1-128 characters of [A-Za-z0-9_.-], not starting with '.'"
        )));
    }
    if request.netns.as_os_str().is_empty() {
        return Err(NetworkError::Request(
            "the network namespace path is empty".into(),
        ));
    }
    // They go into CNI_ARGS, whose separators they must not contain.
    for (what, value) in [
        ("pod name", request.pod_name),
        ("pod namespace", request.pod_namespace),
        ("pod UID", request.pod_uid),
    ] {
        if value.contains([';', '=']) {
            return Err(NetworkError::Request(format!(
                "{what} {value:?} contains ';' or '='"
            )));
        }
    }
    Ok(())
}

/// `CNI_ARGS` as the kubelet's runtimes pass it; `IgnoreUnknown` keeps
/// plugins that know none of these keys from failing.
pub(super) fn cni_args(request: &PodNetworkRequest<'_>) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        request.pod_namespace, request.pod_name, request.sandbox_id, request.pod_uid
    )
}

/// The runtime values offered to plugins that declare the capability.
/// `portMappings` is offered even when empty, as containerd does.
pub(super) fn capability_args(mappings: &[PortMapping]) -> Map<String, Value> {
    let mut args = Map::new();
    let list = mappings
        .iter()
        .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
        .collect();
    args.insert("portMappings".to_string(), Value::Array(list));
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn request<'a>(id: &'a str, mappings: &'a [PortMapping]) -> PodNetworkRequest<'a> {
        PodNetworkRequest {
            sandbox_id: id,
            netns: Path::new("/run/x"),
            pod_name: "web-node1",
            pod_namespace: "default",
            pod_uid: "1234",
            port_mappings: mappings,
        }
    }

    #[test]
    fn cni_args_carry_the_pod_identity() {
        assert_eq!(
            cni_args(&request("pk-1234-pause", &[])),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-node1;\
             K8S_POD_INFRA_CONTAINER_ID=pk-1234-pause;K8S_POD_UID=1234"
        );
    }

    #[test]
    fn port_mappings_serialize_as_cni_wants_them() {
        let mappings = [
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            },
            PortMapping {
                host_port: 53,
                container_port: 5353,
                protocol: "udp".into(),
                host_ip: "127.0.0.1".into(),
            },
        ];
        assert_eq!(
            Value::Object(capability_args(&mappings)),
            serde_json::json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "127.0.0.1"},
            ]})
        );
        assert_eq!(
            Value::Object(capability_args(&[])),
            serde_json::json!({"portMappings": []})
        );
    }

    #[test]
    fn sandbox_ids_that_could_escape_a_path_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden", "a;b", "a b"] {
            assert!(validate(&request(bad, &[])).is_err(), "{bad:?}");
        }
        let mut injected = request("pk-1-pause", &[]);
        injected.pod_name = "web;K8S_POD_UID=x";
        assert!(validate(&injected).is_err());
        assert!(validate(&request("pk-0a1b2c3d-pause", &[])).is_ok());
    }
}
