//! The discovery documents of the Kubernetes API subset served here, which
//! kubectl reads before anything else to map `pods`, `po`, `events`, `ev`
//! to paths. Only the legacy `v1` group exists; `/apis` is empty.

use serde_json::{json, Value};

/// `/api`.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// `/apis`: no groups. Always the legacy `APIGroupList`, whatever the
/// `Accept` header prefers: kubectl then falls back to legacy discovery.
pub fn api_groups() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
}

/// `/api/v1`: pods (read, list, watch), their logs, and events.
pub fn api_resources() -> Value {
    let read = ["get", "list", "watch"];
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
             "verbs": read, "shortNames": ["po"], "categories": ["all"]},
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
            {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
             "verbs": read, "shortNames": ["ev"]},
        ],
    })
}

/// `/version`: the Kubernetes API version whose objects are served (the
/// one k8s-openapi is built for), with podkeeper's own version attached
/// as build metadata so kubectl's skew check stays quiet.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0+podkeeper-{}", crate::VERSION),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}
