//! Latest status of each pod, keyed by pod UID.
//!
//! Each pod's worker is the only writer of its entry; the API and the CLI
//! read snapshots. Entries are whole `PodStatus` values behind an `Arc`, so
//! readers never see a half-updated pod and never hold the lock while they
//! serialize.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::PodStatus;

#[derive(Default)]
pub struct StatusStore {
    pods: RwLock<HashMap<String, Arc<PodStatus>>>,
}

impl StatusStore {
    pub fn set(&self, uid: &str, status: PodStatus) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        pods.insert(uid.to_string(), Arc::new(status));
    }

    pub fn remove(&self, uid: &str) {
        let mut pods = self.pods.write().unwrap_or_else(|e| e.into_inner());
        pods.remove(uid);
    }

    pub fn get(&self, uid: &str) -> Option<Arc<PodStatus>> {
        let pods = self.pods.read().unwrap_or_else(|e| e.into_inner());
        pods.get(uid).cloned()
    }
}
