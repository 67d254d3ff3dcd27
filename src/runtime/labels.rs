//! Labels and IDs of the containerd objects podkeeper creates.
//!
//! Every container carries labels naming its pod and its role, so the agent
//! can always find (and clean up) its own objects in its namespace, even
//! after a crash, without any state of its own.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::desired::DesiredPod;

pub const POD_UID: &str = "io.podkeeper.pod.uid";
pub const POD_NAME: &str = "io.podkeeper.pod.name";
pub const POD_NAMESPACE: &str = "io.podkeeper.pod.namespace";
pub const CONTAINER_NAME: &str = "io.podkeeper.container.name";
/// `sandbox` for the pause container, `container` for the pod's own.
pub const KIND: &str = "io.podkeeper.kind";
/// A container run's restart count, so a restarted agent knows it even
/// without its checkpoint file.
pub const RESTART_COUNT: &str = "io.podkeeper.container.restart-count";

pub const KIND_SANDBOX: &str = "sandbox";
pub const KIND_CONTAINER: &str = "container";

/// Name of the sandbox in labels, as the kubelet names its infra container.
pub const SANDBOX_NAME: &str = "POD";

/// Labels for one of `pod`'s containers (`SANDBOX_NAME` for the sandbox).
pub fn for_container(pod: &DesiredPod, container: &str) -> HashMap<String, String> {
    let kind = if container == SANDBOX_NAME {
        KIND_SANDBOX
    } else {
        KIND_CONTAINER
    };
    HashMap::from([
        (POD_UID.to_string(), pod.uid().to_string()),
        (POD_NAME.to_string(), pod.name().to_string()),
        (POD_NAMESPACE.to_string(), pod.namespace().to_string()),
        (CONTAINER_NAME.to_string(), container.to_string()),
        (KIND.to_string(), kind.to_string()),
    ])
}

/// Labels for one run of a pod's container.
pub fn for_run(pod: &DesiredPod, container: &str, restart_count: u32) -> HashMap<String, String> {
    let mut labels = for_container(pod, container);
    labels.insert(RESTART_COUNT.into(), restart_count.to_string());
    labels
}

/// containerd filter selecting every object of one pod.
pub fn pod_filter(uid: &str) -> String {
    format!("labels.\"{POD_UID}\"=={uid:?}")
}

/// containerd filter selecting every object podkeeper made.
pub fn any_pod_filter() -> String {
    format!("labels.\"{POD_UID}\"")
}

/// The prefix of every container ID of a pod; the event stream is routed to
/// pod workers by it.
pub fn id_prefix(uid: &str) -> String {
    let short: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("pk-{short}")
}

/// The pod UID prefix of a container ID made by [`container_id`], if any.
pub fn prefix_of(container_id: &str) -> Option<&str> {
    let rest = container_id.strip_prefix("pk-")?;
    let end = rest.find('-').unwrap_or(rest.len());
    Some(&container_id[..3 + end])
}

/// ID of the sandbox container of a pod.
pub fn sandbox_id(uid: &str) -> String {
    format!("{}-pause", id_prefix(uid))
}

/// ID of one run (`attempt`) of a pod's container. containerd IDs are at
/// most 76 characters, so long container names are shortened with a hash to
/// stay unique.
pub fn container_id(uid: &str, container: &str, attempt: u32) -> String {
    let name = if container.len() <= 40 {
        container.to_string()
    } else {
        let digest = Sha256::digest(container.as_bytes());
        let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{hash}", &container[..31].trim_end_matches('-'))
    };
    format!("{}-c-{name}-{attempt}", id_prefix(uid))
}

/// The attempt number a [`container_id`] ends with.
pub fn attempt_of(container_id: &str) -> Option<u32> {
    container_id.rsplit('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn ids_are_valid_containerd_ids_and_unique() {
        let long = "a".repeat(63);
        let long2 = format!("{}b", "a".repeat(62));
        let ids = [
            sandbox_id(UID),
            container_id(UID, "pause", 0),
            container_id(UID, "app", 0),
            container_id(UID, "app", 1),
            container_id(UID, "app-0", 0),
            container_id(UID, &long, 0),
            container_id(UID, &long2, 0),
        ];
        for id in &ids {
            assert!(id.len() <= 76, "{id}");
            assert!(
                id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{id}"
            );
            assert_eq!(prefix_of(id), Some("pk-0123456789abcdef"));
        }
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn the_attempt_is_read_back_from_the_id() {
        assert_eq!(attempt_of(&container_id(UID, "app-7", 12)), Some(12));
        assert_eq!(attempt_of(&container_id(UID, &"x".repeat(60), 3)), Some(3));
        assert_eq!(attempt_of(&sandbox_id(UID)), None);
    }

    #[test]
    fn foreign_ids_have_no_prefix() {
        assert_eq!(prefix_of("nginx"), None);
    }

    #[test]
    fn filters_quote_the_label() {
        assert_eq!(
            pod_filter("abc"),
            "labels.\"io.podkeeper.pod.uid\"==\"abc\""
        );
    }
}
