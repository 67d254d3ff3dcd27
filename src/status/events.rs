//! Lifecycle events as Kubernetes `core/v1` Events.
//!
//! Any component records through a cloneable [`Recorder`] that never blocks:
//! occurrences go through a bounded queue, and when it is full they are
//! counted as dropped rather than stalling a pod worker. One task folds them
//! into the [`EventLog`]: identical events (same object, field path, type,
//! reason and message) become one event with a count and first/last
//! timestamps, as `kubectl describe` shows them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::{broadcast, mpsc};

use crate::desired::DesiredPod;

/// The component name events are reported from.
pub const COMPONENT: &str = "podkeeper";

/// Occurrences waiting to be folded in; beyond this they are dropped and counted.
const QUEUE_CAPACITY: usize = 1024;

/// Events kept in memory; the oldest are forgotten beyond this.
const LOG_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// `spec.containers{name}` for a container, empty for the pod itself.
    pub field_path: String,
}

impl ObjectRef {
    pub fn pod(pod: &DesiredPod) -> Self {
        ObjectRef {
            kind: "Pod".into(),
            namespace: pod.namespace().into(),
            name: pod.name().into(),
            uid: pod.uid().into(),
            field_path: String::new(),
        }
    }

    /// A container of `pod`; `init` selects `spec.initContainers`.
    pub fn container(pod: &DesiredPod, container: &str, init: bool) -> Self {
        let list = if init { "initContainers" } else { "containers" };
        ObjectRef {
            field_path: format!("spec.{list}{{{container}}}"),
            ..ObjectRef::pod(pod)
        }
    }

    /// A manifest file that could not be turned into a pod, so no pod can be
    /// named.
    pub fn manifest_file(path: &Path) -> Self {
        Self::file("ManifestFile", path)
    }

    /// An image archive in the images directory.
    pub fn image_archive(path: &Path) -> Self {
        Self::file("ImageArchive", path)
    }

    fn file(kind: &str, path: &Path) -> Self {
        ObjectRef {
            kind: kind.into(),
            namespace: "default".into(),
            name: path.display().to_string(),
            uid: String::new(),
            field_path: String::new(),
        }
    }
}

/// One thing that happened, before it is folded into the log.
#[derive(Debug, Clone)]
pub struct Occurrence {
    pub object: ObjectRef,
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
    pub at: jiff::Timestamp,
}

/// Cheap to clone; hand one to every component that reports events.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Occurrence>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// Records an event without waiting; if the queue is full the event is
    /// counted in [`Recorder::dropped`] instead.
    pub fn record(
        &self,
        object: ObjectRef,
        event_type: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let occurrence = Occurrence {
            object,
            event_type,
            reason: reason.into(),
            message: message.into(),
            at: jiff::Timestamp::now(),
        };
        if self.tx.try_send(occurrence).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events lost because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Identity of an event for merging repeats: everything but the timestamps.
type EventKey = (ObjectRef, EventType, String, String);

/// The recorded events, readable by any number of API handlers.
pub struct EventLog {
    host: String,
    events: RwLock<HashMap<EventKey, Arc<Event>>>,
    updates: broadcast::Sender<Arc<Event>>,
}

impl EventLog {
    /// Starts the task that folds occurrences into a new log.
    pub fn start(host: String) -> (Recorder, Arc<EventLog>) {
        let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
        let log = Arc::new(EventLog {
            host,
            events: RwLock::new(HashMap::new()),
            updates: broadcast::channel(QUEUE_CAPACITY).0,
        });
        let writer = log.clone();
        tokio::spawn(async move {
            while let Some(occurrence) = rx.recv().await {
                writer.fold(occurrence);
            }
        });
        let recorder = Recorder {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (recorder, log)
    }

    fn fold(&self, occurrence: Occurrence) {
        tracing::debug!(object = %occurrence.object.name, reason = %occurrence.reason, "event: {}", occurrence.message);
        let key = (
            occurrence.object.clone(),
            occurrence.event_type,
            occurrence.reason.clone(),
            occurrence.message.clone(),
        );
        let mut events = self.events.write().unwrap_or_else(|e| e.into_inner());
        let event = match events.get(&key) {
            Some(previous) => {
                let mut event = (**previous).clone();
                event.count = Some(event.count.unwrap_or(1) + 1);
                event.last_timestamp = Some(Time(occurrence.at));
                event
            }
            None => new_event(&occurrence, &self.host),
        };
        let event = Arc::new(event);
        events.insert(key, event.clone());
        if events.len() > LOG_CAPACITY + LOG_CAPACITY / 8 {
            forget_oldest(&mut events, LOG_CAPACITY);
        }
        drop(events);
        // No subscribers is fine: nobody is watching.
        let _ = self.updates.send(event);
    }

    /// All events, oldest last-seen first.
    pub fn list(&self) -> Vec<Arc<Event>> {
        let events = self.events.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = events.values().cloned().collect();
        list.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
        list
    }

    /// New and updated events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.updates.subscribe()
    }
}

fn forget_oldest(events: &mut HashMap<EventKey, Arc<Event>>, keep: usize) {
    let mut stamps: Vec<_> = events
        .values()
        .map(|e| e.last_timestamp.as_ref().map(|t| t.0))
        .collect();
    stamps.sort();
    let cutoff = stamps[stamps.len() - keep];
    events.retain(|_, e| e.last_timestamp.as_ref().map(|t| t.0) >= cutoff);
}

fn new_event(occurrence: &Occurrence, host: &str) -> Event {
    let object = &occurrence.object;
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                object.name,
                occurrence.at.as_nanosecond()
            )),
            namespace: Some(object.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: (object.kind == "Pod").then(|| "v1".to_string()),
            kind: Some(object.kind.clone()),
            namespace: Some(object.namespace.clone()),
            name: Some(object.name.clone()),
            uid: optional(&object.uid),
            field_path: optional(&object.field_path),
            ..Default::default()
        },
        reason: Some(occurrence.reason.clone()),
        message: Some(occurrence.message.clone()),
        type_: Some(occurrence.event_type.as_str().into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(host.into()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(host.into()),
        first_timestamp: Some(Time(occurrence.at)),
        last_timestamp: Some(Time(occurrence.at)),
        count: Some(1),
        ..Default::default()
    }
}

/// A recorder whose occurrences land on a channel the test reads.
#[cfg(test)]
pub fn test_recorder() -> (Recorder, mpsc::Receiver<Occurrence>) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let recorder = Recorder {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    (recorder, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrence(message: &str, at: i64) -> Occurrence {
        Occurrence {
            object: ObjectRef::manifest_file(Path::new("/m/a.yaml")),
            event_type: EventType::Warning,
            reason: "FailedParse".into(),
            message: message.into(),
            at: jiff::Timestamp::from_second(at).unwrap(),
        }
    }

    fn log() -> EventLog {
        EventLog {
            host: "node1".into(),
            events: RwLock::new(HashMap::new()),
            updates: broadcast::channel(8).0,
        }
    }

    #[test]
    fn identical_events_merge_with_count_and_timestamps() {
        let log = log();
        log.fold(occurrence("bad", 100));
        log.fold(occurrence("bad", 160));
        log.fold(occurrence("other", 170));
        let events = log.list();
        assert_eq!(events.len(), 2);
        let merged = &events[0];
        assert_eq!(merged.count, Some(2));
        assert_eq!(merged.first_timestamp.as_ref().unwrap().0.as_second(), 100);
        assert_eq!(merged.last_timestamp.as_ref().unwrap().0.as_second(), 160);
        assert_eq!(
            merged.source.as_ref().unwrap().host.as_deref(),
            Some("node1")
        );
        assert_eq!(merged.type_.as_deref(), Some("Warning"));
    }

    #[test]
    fn the_oldest_events_are_forgotten_beyond_capacity() {
        let log = log();
        for i in 0..(LOG_CAPACITY + LOG_CAPACITY / 8 + 1) {
            log.fold(occurrence(&format!("m{i}"), i as i64));
        }
        let events = log.list();
        assert_eq!(events.len(), LOG_CAPACITY);
        assert_eq!(
            events.last().unwrap().message.as_deref(),
            Some(format!("m{}", LOG_CAPACITY + LOG_CAPACITY / 8).as_str())
        );
    }

    #[test]
    fn a_full_queue_counts_drops_instead_of_blocking() {
        let (recorder, _rx) = test_recorder();
        for _ in 0..QUEUE_CAPACITY + 3 {
            recorder.record(
                ObjectRef::manifest_file(Path::new("/x")),
                EventType::Normal,
                "R",
                "m",
            );
        }
        assert_eq!(recorder.dropped(), 3);
    }

    #[test]
    fn container_events_carry_the_field_path() {
        let pod = crate::manifest::parse::parse_manifest(
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: app, image: x}]}\n",
            Path::new("/m/w.yaml"),
            "n",
        )
        .unwrap();
        let object = ObjectRef::container(&pod, "app", false);
        assert_eq!(object.field_path, "spec.containers{app}");
        assert_eq!(object.name, "w-n");
    }
}
