//! The desired pods: what the manifest directory says should run.
//!
//! One writer (the manifest source) replaces the whole set at once; readers
//! (the pod workers' registry and the API) get a cheap, consistent snapshot
//! through a `watch` channel and are woken on every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

/// A pod that should run, as parsed, validated and defaulted from one file.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPod {
    /// The Kubernetes object with static-pod defaults applied (name
    /// `<name>-<node>`, namespace, UID, nodeName, config annotations).
    pub pod: Pod,
    /// Manifest file the pod came from; named in every error about it.
    pub source: PathBuf,
}

impl DesiredPod {
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }
    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// All desired pods keyed by UID.
pub type DesiredSet = BTreeMap<String, Arc<DesiredPod>>;

/// Snapshot of the desired set plus whether the source has completed its
/// first full read (until then an empty set means "not known yet", not
/// "remove everything").
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub pods: DesiredSet,
    pub synced: bool,
}

/// The single writer of the desired set.
pub struct DesiredWriter {
    tx: watch::Sender<DesiredState>,
}

/// A reader of the desired set; clone freely.
#[derive(Clone)]
pub struct DesiredReader {
    rx: watch::Receiver<DesiredState>,
}

/// Creates an empty, not yet synced desired set.
pub fn channel() -> (DesiredWriter, DesiredReader) {
    let (tx, rx) = watch::channel(DesiredState::default());
    (DesiredWriter { tx }, DesiredReader { rx })
}

impl DesiredWriter {
    /// Replaces the set after a full read of the source. Readers are only
    /// woken when something actually changed.
    pub fn replace(&self, pods: DesiredSet) {
        self.tx.send_if_modified(|state| {
            let changed = !state.synced || state.pods != pods;
            state.pods = pods;
            state.synced = true;
            changed
        });
    }
}

impl DesiredReader {
    pub fn snapshot(&self) -> DesiredState {
        self.rx.borrow().clone()
    }

    /// Waits for the next change; `None` once the writer is gone.
    pub async fn changed(&mut self) -> Option<DesiredState> {
        self.rx.changed().await.ok()?;
        Some(self.rx.borrow_and_update().clone())
    }
}
