//! Pods as the HTTP API serves them, each serialized once per change.
//!
//! Lists are the hot path (`/pods`, `kubectl get pods`, every watch poll),
//! and a pod's JSON only changes when the manifest source replaces its
//! desired object or its worker stores a new status, both swapped whole
//! behind `Arc`s. So each pod's JSON is kept with the two `Arc`s it was
//! made from and made again only when either pointer changes; a list is
//! then a concatenation.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use crate::api::{pods, ApiState};
use crate::desired::DesiredPod;

/// One pod, ready to serve.
pub struct CachedPod {
    pub desired: Arc<DesiredPod>,
    /// The pod object with its status.
    pub pod: Pod,
    /// `pod` as JSON, with `metadata.resourceVersion` set to `version`.
    pub json: String,
    /// Changes whenever anything in the pod does (a hash: podkeeper keeps
    /// no revision counter).
    pub version: String,
}

impl CachedPod {
    fn new(desired: Arc<DesiredPod>, status: Option<&PodStatus>) -> CachedPod {
        let mut pod = pods::with_status(&desired, status);
        let version = content_version(&serde_json::to_string(&pod).unwrap_or_default());
        pod.metadata.resource_version = Some(version.clone());
        let json = serde_json::to_string(&pod).unwrap_or_default();
        CachedPod {
            desired,
            pod,
            json,
            version,
        }
    }
}

/// A hash of `text`, as a resource version.
pub fn content_version(text: &str) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    (hasher.finish() >> 1).to_string()
}

type Entry = (Arc<DesiredPod>, Option<Arc<PodStatus>>, Arc<CachedPod>);

#[derive(Default)]
pub struct PodCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl PodCache {
    /// Every desired pod with its current status, sorted by namespace and
    /// name, serialized anew only where something changed.
    pub fn pods(&self, state: &ApiState) -> Vec<Arc<CachedPod>> {
        let snapshot = state.desired.snapshot();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<Arc<CachedPod>> = snapshot
            .pods
            .iter()
            .map(|(uid, desired)| {
                let status = state.status.get(uid);
                let fresh = entries.get(uid).filter(|(d, s, _)| {
                    Arc::ptr_eq(d, desired)
                        && match (s, &status) {
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            (None, None) => true,
                            _ => false,
                        }
                });
                match fresh {
                    Some((_, _, cached)) => cached.clone(),
                    None => {
                        let cached = Arc::new(CachedPod::new(desired.clone(), status.as_deref()));
                        entries.insert(uid.clone(), (desired.clone(), status, cached.clone()));
                        cached
                    }
                }
            })
            .collect();
        entries.retain(|uid, _| snapshot.pods.contains_key(uid));
        drop(entries);
        list.sort_by(|a, b| {
            (a.desired.namespace(), a.desired.name())
                .cmp(&(b.desired.namespace(), b.desired.name()))
        });
        list
    }
}
