//! Lifecycle events as Kubernetes `core/v1` Events.
//!
//! Any component records through a cloneable [`Recorder`] that never blocks:
//! occurrences go through a bounded queue, and when it is full they are
//! counted as dropped (and the drop is logged) rather than stalling a pod
//! worker. One task folds them into the [`EventLog`] as client-go's
//! `EventCorrelator` does (`correlator.rs`): identical events become one
//! event with a count and first/last timestamps, many similar ones are
//! combined, and a chatty object is rate-limited. The same task is the only
//! writer of the journal under the state directory (`journal.rs`), so
//! `describe` still shows history after a restart or a reboot, and it prunes
//! events by age and number ([`Retention`]).

mod correlator;
mod journal;
mod retention;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

pub use correlator::COMBINED_PREFIX;
use correlator::{Correlated, Correlator};
use journal::Journal;
pub use journal::JournalError;
pub use retention::Retention;

use crate::desired::DesiredPod;
use crate::host::blocking;

/// The component name events are reported from.
pub const COMPONENT: &str = "podkeeper";

/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "events.jsonl";

/// Occurrences waiting to be folded in; beyond this they are dropped and counted.
const QUEUE_CAPACITY: usize = 1024;

/// Occurrences folded before the journal is written.
const BATCH: usize = 256;

/// How often expired events are pruned when nothing else happens.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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

/// The recorded events, readable by any number of API handlers.
pub struct EventLog {
    host: String,
    /// By event name.
    events: RwLock<HashMap<String, Arc<Event>>>,
    updates: broadcast::Sender<Arc<Event>>,
    dropped: Arc<AtomicU64>,
}

/// Which events a query or a watch wants; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub namespace: Option<String>,
    /// The involved object's full name (`web-node1`, not `web`).
    pub name: Option<String>,
    pub uid: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        let object = &event.involved_object;
        let is = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        is(&self.namespace, &object.namespace)
            && is(&self.name, &object.name)
            && is(&self.uid, &object.uid)
    }
}

impl EventLog {
    /// Reads the journal in `state_dir` (pruning what expired meanwhile) and
    /// starts the task that folds occurrences into the log.
    pub fn start(
        host: String,
        state_dir: &Path,
        retention: Retention,
    ) -> Result<(Recorder, Arc<EventLog>), JournalError> {
        let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
        let log = Arc::new(EventLog::new(host));
        let mut folder = Folder::open(
            log.clone(),
            &state_dir.join(JOURNAL_FILE),
            retention,
            jiff::Timestamp::now(),
        )?;
        tokio::spawn(async move {
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    received = rx.recv_many(&mut batch, BATCH) => {
                        if received == 0 {
                            break;
                        }
                        for occurrence in batch.drain(..) {
                            folder.fold(occurrence);
                        }
                    }
                    _ = prune.tick() => folder.prune(jiff::Timestamp::now()),
                }
                folder.finish_batch(jiff::Timestamp::now());
                if folder.rewrite_due() {
                    // Two fsyncs (file and directory): a blocking thread's work.
                    let rewritten = blocking::unblock(move || {
                        folder.rewrite_if_due();
                        Ok(folder)
                    });
                    // Only a runtime shutting down fails it (a panic is resumed).
                    let Ok(rewritten) = rewritten.await else {
                        break;
                    };
                    folder = rewritten;
                }
            }
        });
        let recorder = Recorder {
            tx,
            dropped: log.dropped.clone(),
        };
        Ok((recorder, log))
    }

    fn new(host: String) -> Self {
        EventLog {
            host,
            events: RwLock::new(HashMap::new()),
            updates: broadcast::channel(QUEUE_CAPACITY).0,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// All events, oldest last-seen first.
    pub fn list(&self) -> Vec<Arc<Event>> {
        self.list_for(&EventFilter::default())
    }

    /// The events `filter` matches, oldest last-seen first.
    pub fn list_for(&self, filter: &EventFilter) -> Vec<Arc<Event>> {
        let events = self.events.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = events
            .values()
            .filter(|e| filter.matches(e))
            .cloned()
            .collect();
        list.sort_by(|a, b| {
            let key = |e: &Event| {
                (
                    e.last_timestamp.as_ref().map(|t| t.0),
                    e.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        list
    }

    /// New and updated events from now on (those the spam filter holds
    /// back are not sent).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.updates.subscribe()
    }

    /// Occurrences lost since start because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The full name of an object with events in `namespace`, given its full
    /// name or a pod's short name (without `-<node>`), so the events of a pod
    /// whose manifest is gone can still be asked for as `podkeeper get` names
    /// pods.
    pub fn resolve_name(&self, namespace: &str, name: &str) -> Option<String> {
        let events = self.events.read().unwrap_or_else(|e| e.into_inner());
        let has_events = |candidate: &String| {
            events.values().any(|e| {
                let o = &e.involved_object;
                o.namespace.as_deref() == Some(namespace) && o.name.as_ref() == Some(candidate)
            })
        };
        [name.to_string(), format!("{name}-{}", self.host)]
            .into_iter()
            .find(has_events)
    }
}

/// The folding task's state: the correlator, the journal and what changed
/// since the journal was last written.
struct Folder {
    log: Arc<EventLog>,
    correlator: Correlator,
    journal: Journal,
    retention: Retention,
    /// Names of events changed since the last write.
    changed: HashSet<String>,
    /// Whether a new event may have pushed an object over its cap.
    added: bool,
    /// Drops already reported in the log.
    reported_drops: u64,
}

impl Folder {
    /// Loads the journal at `path` into `log`, and remembers its events so
    /// new occurrences keep counting on them.
    fn open(
        log: Arc<EventLog>,
        path: &Path,
        retention: Retention,
        now: jiff::Timestamp,
    ) -> Result<Folder, JournalError> {
        let (journal, stored) = Journal::open(path)?;
        let mut folder = Folder {
            correlator: Correlator::default(),
            journal,
            retention,
            changed: HashSet::new(),
            added: false,
            reported_drops: 0,
            log,
        };
        {
            let mut events = folder.log.events.write().unwrap_or_else(|e| e.into_inner());
            *events = stored.into_iter().map(|(n, e)| (n, Arc::new(e))).collect();
        }
        folder.prune(now);
        // Oldest first, so the newest of two events with one key wins.
        for event in folder.log.list() {
            folder.correlator.remember(&event);
        }
        folder.rewrite_if_due();
        Ok(folder)
    }

    fn fold(&mut self, occurrence: Occurrence) {
        let event = new_event(&occurrence, &self.log.host);
        let Correlated { event, emit } = self.correlator.correlate(event, occurrence.at);
        let object = describe_object(&event.involved_object);
        if !emit {
            debug!(
                object,
                reason = occurrence.reason,
                count = event.count,
                "event held back by the spam filter"
            );
            return;
        }
        macro_rules! log_line {
            ($level:ident) => {
                tracing::$level!(
                    reason = event.reason.as_deref().unwrap_or_default(),
                    object,
                    field_path = event
                        .involved_object
                        .field_path
                        .as_deref()
                        .unwrap_or_default(),
                    count = event.count.unwrap_or(1),
                    "event: {}",
                    event.message.as_deref().unwrap_or_default()
                )
            };
        }
        match occurrence.event_type {
            EventType::Normal => log_line!(info),
            EventType::Warning => log_line!(warn),
        }
        let Some(name) = event.metadata.name.clone() else {
            return;
        };
        let event = Arc::new(event);
        let mut events = self.log.events.write().unwrap_or_else(|e| e.into_inner());
        self.added |= events.insert(name.clone(), event.clone()).is_none();
        drop(events);
        self.changed.insert(name);
        // No subscribers is fine: nobody is watching.
        let _ = self.log.updates.send(event);
    }

    /// Drops expired events and those beyond the caps.
    fn prune(&mut self, now: jiff::Timestamp) {
        let mut events = self.log.events.write().unwrap_or_else(|e| e.into_inner());
        let removed = self.retention.prune(&mut events, now);
        self.correlator.forget_idle(now, self.retention.ttl_span());
        if removed > 0 {
            debug!(removed, kept = events.len(), "pruned events");
        }
        self.added = false;
    }

    /// After a batch: enforces the caps, writes what changed to the journal
    /// and reports drops. The append is one small write into the page cache
    /// (no fsync: a SIGKILL cannot lose it, and a power cut at worst tears
    /// the tail, which the next start drops), cheap enough for this task.
    fn finish_batch(&mut self, now: jiff::Timestamp) {
        if self.added {
            self.prune(now);
        }
        let changed: Vec<Arc<Event>> = {
            let events = self.log.events.read().unwrap_or_else(|e| e.into_inner());
            let mut changed: Vec<_> = self
                .changed
                .drain()
                .filter_map(|name| events.get(&name).cloned())
                .collect();
            changed.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
            changed
        };
        if let Err(e) = self.journal.append(&changed) {
            warn!(error = %e, "cannot write events to the journal; they are kept in memory");
        }
        let dropped = self.log.dropped();
        if dropped > self.reported_drops {
            warn!(
                dropped = dropped - self.reported_drops,
                total = dropped,
                "events were dropped because the event queue was full"
            );
            self.reported_drops = dropped;
        }
    }

    /// Whether the journal should be rewritten with only the live events
    /// (see [`Folder::rewrite_if_due`]).
    fn rewrite_due(&self) -> bool {
        let live = self
            .log
            .events
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        self.journal.wants_rewrite(live)
    }

    /// Rewrites the journal when it is due. Blocking (fsyncs).
    fn rewrite_if_due(&mut self) {
        if self.rewrite_due() {
            if let Err(e) = self.journal.rewrite(self.log.list().iter()) {
                warn!(error = %e, "cannot rewrite the event journal");
            }
        }
    }
}

/// `Pod default/web-node1`, for log lines.
fn describe_object(object: &ObjectReference) -> String {
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    format!(
        "{} {}/{}",
        text(&object.kind),
        text(&object.namespace),
        text(&object.name)
    )
}

/// client-go's event name: the object's name and the time in hex nanoseconds.
fn event_name(object: &ObjectReference, at: jiff::Timestamp) -> String {
    format!(
        "{}.{:x}",
        object.name.as_deref().unwrap_or_default(),
        at.as_nanosecond()
    )
}

/// `at` as the API stores event timestamps: whole seconds (a `metav1.Time`
/// serializes without fractions), so what the journal gives back after a
/// restart equals what was shown before.
fn api_time(at: jiff::Timestamp) -> Time {
    Time(jiff::Timestamp::from_second(at.as_second()).unwrap_or(at))
}

/// client-go's `makeEvent`, with the recorder's source.
fn new_event(occurrence: &Occurrence, host: &str) -> Event {
    let object = &occurrence.object;
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let involved_object = ObjectReference {
        api_version: (object.kind == "Pod").then(|| "v1".to_string()),
        kind: Some(object.kind.clone()),
        namespace: Some(object.namespace.clone()),
        name: Some(object.name.clone()),
        uid: optional(&object.uid),
        field_path: optional(&object.field_path),
        ..Default::default()
    };
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(&involved_object, occurrence.at)),
            namespace: Some(object.namespace.clone()),
            ..Default::default()
        },
        involved_object,
        reason: Some(occurrence.reason.clone()),
        message: Some(occurrence.message.clone()),
        type_: Some(occurrence.event_type.as_str().into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: Some(host.into()),
        }),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(host.into()),
        first_timestamp: Some(api_time(occurrence.at)),
        last_timestamp: Some(api_time(occurrence.at)),
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
mod tests;
