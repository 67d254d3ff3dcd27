//! client-go's `EventCorrelator` (`tools/record/events_cache.go`), so that
//! `podkeeper events` shows what a kubelet's events would show in a cluster.
//!
//! Each new event goes through three steps, in client-go's order:
//! 1. the aggregator: from the 10th distinct message of similar events (same
//!    object, type, reason and source) within 600 s of each other, further
//!    new messages fold into one `(combined from similar events): …` event;
//! 2. the observer: an event identical to one seen before (same object,
//!    field path, type, reason, message and source) takes the earlier one's
//!    name and first timestamp, with the count raised by one;
//! 3. the spam filter: a token bucket per object (burst 25, one more every
//!    300 s); an occurrence it rejects has still raised the count in step 2,
//!    but is not emitted, exactly as the kubelet skips the API write.
//!
//! Pure: the caller passes the time, so tests drive it with any clock.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

/// What a combined event's message starts with (client-go's
/// `EventAggregatorByReasonMessageFunc`).
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";

/// Entries of each cache (client-go's `maxLruCacheEntries`).
const CACHE_ENTRIES: usize = 4096;
/// Distinct messages of similar events before they are combined.
const AGGREGATE_MAX_EVENTS: usize = 10;
/// Similar events further apart than this start counting afresh.
const AGGREGATE_INTERVAL: SignedDuration = SignedDuration::from_secs(600);
/// Events an object may emit at once.
const SPAM_BURST: f64 = 25.0;
/// Tokens per second an object's bucket regains.
const SPAM_QPS: f64 = 1.0 / 300.0;

/// The outcome of one occurrence.
#[derive(Debug)]
pub struct Correlated {
    /// The event as it should now be stored: new, or an update of an
    /// earlier one with the same name.
    pub event: Event,
    /// False when the spam filter holds the update back.
    pub emit: bool,
}

/// The correlator's memory; see the module documentation.
pub struct Correlator {
    similar: Lru<String, Similar>,
    observed: Lru<String, Observation>,
    buckets: Lru<String, TokenBucket>,
}

/// Distinct messages of similar events, and when the last one came.
#[derive(Default)]
struct Similar {
    messages: HashSet<String>,
    last: Option<Timestamp>,
}

/// What the observer remembers of an event (client-go's `eventLog`).
#[derive(Default)]
struct Observation {
    count: i32,
    first: Option<Time>,
    name: Option<String>,
    /// When the event last happened, to forget it once it expired.
    last: Option<Timestamp>,
}

impl Observation {
    fn of(event: &Event) -> Self {
        Observation {
            count: event.count.unwrap_or(1),
            first: event.first_timestamp.clone(),
            name: event.metadata.name.clone(),
            last: event.last_timestamp.as_ref().map(|t| t.0),
        }
    }
}

impl Default for Correlator {
    fn default() -> Self {
        Correlator {
            similar: Lru::new(CACHE_ENTRIES),
            observed: Lru::new(CACHE_ENTRIES),
            buckets: Lru::new(CACHE_ENTRIES),
        }
    }
}

impl Correlator {
    /// Folds a freshly made event (count 1, first = last timestamp) that
    /// happened at `now`.
    pub fn correlate(&mut self, event: Event, now: Timestamp) -> Correlated {
        let (event, key) = self.aggregate(event, now);
        let event = self.observe(event, key);
        let emit = self.buckets.entry(spam_key(&event)).allow(now);
        Correlated { event, emit }
    }

    /// Remembers an event stored before a restart, so later occurrences
    /// count on it instead of starting a new one.
    pub fn remember(&mut self, event: &Event) {
        let combined = event
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with(COMBINED_PREFIX));
        let key = if combined {
            aggregate_key(event)
        } else {
            event_key(event)
        };
        *self.observed.entry(key) = Observation::of(event);
    }

    /// Forgets what can no longer change an outcome, so memory follows the
    /// recent events instead of filling the caches over months: records of
    /// similar events past the 600 s window, buckets that have refilled,
    /// and observations of events that last happened more than `ttl` ago
    /// (pruned from the log by then: a new occurrence starts a new event).
    pub fn forget_idle(&mut self, now: Timestamp, ttl: SignedDuration) {
        let within =
            |last: Option<Timestamp>, span| last.is_some_and(|l| now.duration_since(l) <= span);
        self.similar.retain(|s| within(s.last, AGGREGATE_INTERVAL));
        self.observed.retain(|o| within(o.last, ttl));
        self.buckets.retain(|b| b.used_at(now) > 0.0);
    }

    /// Step 1; returns the event to observe and the key to observe it by.
    fn aggregate(&mut self, event: Event, now: Timestamp) -> (Event, String) {
        let message = event.message.clone().unwrap_or_default();
        let aggregate = aggregate_key(&event);
        let similar = self.similar.entry(aggregate.clone());
        if similar
            .last
            .is_none_or(|last| now.duration_since(last) > AGGREGATE_INTERVAL)
        {
            *similar = Similar::default();
        }
        similar.messages.insert(message.clone());
        similar.last = Some(now);
        if similar.messages.len() < AGGREGATE_MAX_EVENTS {
            let key = event_key(&event);
            return (event, key);
        }
        // client-go pops an arbitrary message to stay below the limit;
        // popping the one just added is deterministic and keeps the first
        // nine messages counting as themselves.
        similar.messages.remove(&message);
        let combined = Event {
            metadata: ObjectMeta {
                name: Some(super::event_name(&event.involved_object, now)),
                namespace: event.metadata.namespace.clone(),
                ..Default::default()
            },
            message: Some(format!("{COMBINED_PREFIX}{message}")),
            count: Some(1),
            first_timestamp: Some(super::api_time(now)),
            last_timestamp: Some(super::api_time(now)),
            ..event
        };
        (combined, aggregate)
    }

    /// Step 2 (client-go's `eventObserve`).
    fn observe(&mut self, mut event: Event, key: String) -> Event {
        let seen = self.observed.entry(key);
        if seen.count > 0 {
            event.metadata.name = seen.name.clone();
            event.first_timestamp = seen.first.clone();
            event.count = Some(seen.count + 1);
        }
        *seen = Observation::of(&event);
        event
    }
}

/// The spam filter's per-object bucket (golang.org/x/time/rate, as
/// client-go's `TokenBucketPassiveRateLimiter`): starts full, refills
/// continuously.
#[derive(Default)]
struct TokenBucket {
    /// Tokens taken out below a full bucket, as of `at`.
    used: f64,
    at: Option<Timestamp>,
}

impl TokenBucket {
    /// Tokens taken out below a full bucket, as of `now`.
    fn used_at(&self, now: Timestamp) -> f64 {
        let Some(at) = self.at else {
            return 0.0;
        };
        // Occurrences may arrive slightly out of order: time never runs
        // backwards for the bucket.
        let elapsed = now.duration_since(at).as_secs_f64().max(0.0);
        (self.used - elapsed * SPAM_QPS).max(0.0)
    }

    fn allow(&mut self, now: Timestamp) -> bool {
        self.used = self.used_at(now);
        self.at = Some(self.at.map_or(now, |at| at.max(now)));
        if SPAM_BURST - self.used >= 1.0 {
            self.used += 1.0;
            true
        } else {
            false
        }
    }
}

fn text(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or_default()
}

/// The fields every key starts with: the source and the involved object
/// without its field path.
fn source_and_object(event: &Event) -> [&str; 7] {
    let source = event.source.as_ref();
    let object = &event.involved_object;
    [
        source.map(|s| text(&s.component)).unwrap_or_default(),
        source.map(|s| text(&s.host)).unwrap_or_default(),
        text(&object.kind),
        text(&object.namespace),
        text(&object.name),
        text(&object.uid),
        text(&object.api_version),
    ]
}

/// client-go's `getEventKey`: identical events share it. The parts are
/// concatenated without a separator, as client-go does.
fn event_key(event: &Event) -> String {
    let [component, host, kind, namespace, name, uid, api_version] = source_and_object(event);
    [
        component,
        host,
        kind,
        namespace,
        name,
        text(&event.involved_object.field_path),
        uid,
        api_version,
        text(&event.type_),
        text(&event.reason),
        text(&event.message),
    ]
    .concat()
}

/// client-go's `EventAggregatorByReasonFunc` key: similar events share it.
fn aggregate_key(event: &Event) -> String {
    let mut parts = source_and_object(event).to_vec();
    parts.extend([
        text(&event.type_),
        text(&event.reason),
        text(&event.reporting_component),
        text(&event.reporting_instance),
    ]);
    parts.concat()
}

/// client-go's `getSpamKey`: one bucket per source and object.
fn spam_key(event: &Event) -> String {
    source_and_object(event).concat()
}

/// A map that forgets its least recently used entries beyond a capacity,
/// like the LRU caches of client-go's correlator, so the correlator's memory
/// stays bounded however many objects come and go.
struct Lru<K, V> {
    entries: HashMap<K, (V, u64)>,
    tick: u64,
    capacity: usize,
}

impl<K: Hash + Eq, V: Default> Lru<K, V> {
    fn new(capacity: usize) -> Self {
        Lru {
            entries: HashMap::new(),
            tick: 0,
            capacity,
        }
    }

    /// The entry of `key` (a default one if absent), marked as just used.
    fn entry(&mut self, key: K) -> &mut V {
        self.tick += 1;
        // Evicting an eighth at a time keeps the sorting rare.
        if self.entries.len() >= self.capacity + self.capacity / 8
            && !self.entries.contains_key(&key)
        {
            let mut ticks: Vec<u64> = self.entries.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cutoff = ticks[ticks.len() - self.capacity];
            self.entries.retain(|_, (_, t)| *t >= cutoff);
        }
        let slot = self.entries.entry(key).or_default();
        slot.1 = self.tick;
        &mut slot.0
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.entries.retain(|_, (v, _)| keep(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::events::{EventType, ObjectRef, Occurrence};

    const HOST: &str = "node1";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn object(name: &str, field_path: &str) -> ObjectRef {
        ObjectRef {
            kind: "Pod".into(),
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            field_path: field_path.into(),
        }
    }

    fn occurrence(object: ObjectRef, reason: &str, message: &str, second: i64) -> Occurrence {
        Occurrence {
            object,
            event_type: EventType::Warning,
            reason: reason.into(),
            message: message.into(),
            at: at(second),
        }
    }

    fn correlate(c: &mut Correlator, o: &Occurrence) -> Correlated {
        c.correlate(super::super::new_event(o, HOST), o.at)
    }

    fn seconds(t: &Option<Time>) -> i64 {
        t.as_ref().unwrap().0.as_second() - 1_700_000_000
    }

    #[test]
    fn identical_events_count_on_the_first_one() {
        let mut c = Correlator::default();
        let web = object("web-node1", "spec.containers{web}");
        let first = correlate(&mut c, &occurrence(web.clone(), "BackOff", "m", 0));
        let second = correlate(&mut c, &occurrence(web.clone(), "BackOff", "m", 30));
        assert!(first.emit && second.emit);
        assert_eq!(second.event.metadata.name, first.event.metadata.name);
        assert_eq!(second.event.count, Some(2));
        assert_eq!(seconds(&second.event.first_timestamp), 0);
        assert_eq!(seconds(&second.event.last_timestamp), 30);
        // Another field path is another event.
        let init = object("web-node1", "spec.initContainers{init}");
        let other = correlate(&mut c, &occurrence(init, "BackOff", "m", 31));
        assert_ne!(other.event.metadata.name, first.event.metadata.name);
        assert_eq!(other.event.count, Some(1));
    }

    #[test]
    fn the_tenth_distinct_message_within_ten_minutes_is_combined() {
        let mut c = Correlator::default();
        let pod = object("web-node1", "");
        let mut names = HashSet::new();
        for i in 0..9 {
            let out = correlate(
                &mut c,
                &occurrence(pod.clone(), "Failed", &format!("m{i}"), i),
            );
            assert_eq!(out.event.message.as_deref(), Some(format!("m{i}").as_str()));
            names.insert(out.event.metadata.name.unwrap());
        }
        assert_eq!(names.len(), 9);
        let tenth = correlate(&mut c, &occurrence(pod.clone(), "Failed", "m9", 9));
        assert_eq!(
            tenth.event.message.as_deref(),
            Some("(combined from similar events): m9")
        );
        assert_eq!(tenth.event.count, Some(1));
        let eleventh = correlate(&mut c, &occurrence(pod.clone(), "Failed", "m10", 10));
        assert_eq!(
            eleventh.event.message.as_deref(),
            Some("(combined from similar events): m10")
        );
        assert_eq!(eleventh.event.metadata.name, tenth.event.metadata.name);
        assert_eq!(eleventh.event.count, Some(2));
        assert_eq!(seconds(&eleventh.event.first_timestamp), 9);
        assert_eq!(seconds(&eleventh.event.last_timestamp), 10);
        // One of the first nine messages again still counts as itself.
        let again = correlate(&mut c, &occurrence(pod.clone(), "Failed", "m3", 11));
        assert_eq!(again.event.message.as_deref(), Some("m3"));
        assert_eq!(again.event.count, Some(2));
        // Another reason is not similar.
        let other = correlate(&mut c, &occurrence(pod, "Unhealthy", "x", 12));
        assert_eq!(other.event.message.as_deref(), Some("x"));
    }

    #[test]
    fn similar_events_more_than_600_s_apart_start_counting_afresh() {
        let mut c = Correlator::default();
        let pod = object("web-node1", "");
        // Nine distinct messages, each within 600 s of the previous one:
        // the window slides with the last similar event, as in client-go.
        for i in 0..9 {
            correlate(
                &mut c,
                &occurrence(pod.clone(), "Failed", &format!("m{i}"), i * 500),
            );
        }
        // 601 s after the ninth: the record is reset, so this is the first.
        let fresh = correlate(
            &mut c,
            &occurrence(pod.clone(), "Failed", "n0", 8 * 500 + 601),
        );
        assert_eq!(fresh.event.message.as_deref(), Some("n0"));
        // Exactly 600 s later is still within the window.
        let mut last = 8 * 500 + 601;
        for i in 1..9 {
            last += 600;
            let out = correlate(
                &mut c,
                &occurrence(pod.clone(), "Failed", &format!("n{i}"), last),
            );
            assert_eq!(out.event.message.as_deref(), Some(format!("n{i}").as_str()));
        }
        let combined = correlate(&mut c, &occurrence(pod, "Failed", "n9", last + 600));
        assert_eq!(
            combined.event.message.as_deref(),
            Some("(combined from similar events): n9")
        );
    }

    #[test]
    fn the_spam_filter_allows_25_then_one_per_300_s_and_still_counts() {
        let mut c = Correlator::default();
        let web = object("web-node1", "spec.containers{web}");
        for i in 0..25 {
            let out = correlate(&mut c, &occurrence(web.clone(), "BackOff", "m", i));
            assert!(out.emit, "occurrence {i}");
        }
        let held = correlate(&mut c, &occurrence(web.clone(), "BackOff", "m", 25));
        assert!(!held.emit);
        assert_eq!(held.event.count, Some(26));
        // Other reasons of the same object share the bucket.
        let other = correlate(&mut c, &occurrence(web.clone(), "Unhealthy", "u", 26));
        assert!(!other.emit);
        // Another object has its own bucket.
        let db = object("db-node1", "");
        assert!(correlate(&mut c, &occurrence(db, "BackOff", "m", 27)).emit);
        // One token is back 300 s after the burst started.
        assert!(!correlate(&mut c, &occurrence(web.clone(), "BackOff", "m", 298)).emit);
        let released = correlate(&mut c, &occurrence(web.clone(), "BackOff", "m", 301));
        assert!(released.emit);
        assert_eq!(
            released.event.count,
            Some(28),
            "held-back occurrences counted"
        );
        assert!(!correlate(&mut c, &occurrence(web, "BackOff", "m", 302)).emit);
    }

    #[test]
    fn remembered_events_keep_counting_and_so_do_combined_ones() {
        let mut first = Correlator::default();
        let pod = object("web-node1", "");
        let plain = correlate(&mut first, &occurrence(pod.clone(), "Failed", "boom", 0)).event;
        for i in 0..10 {
            correlate(
                &mut first,
                &occurrence(pod.clone(), "Other", &format!("m{i}"), i),
            );
        }
        let combined = correlate(&mut first, &occurrence(pod.clone(), "Other", "m10", 10)).event;
        assert_eq!(combined.count, Some(2));

        let mut restarted = Correlator::default();
        restarted.remember(&plain);
        restarted.remember(&combined);
        let again = correlate(
            &mut restarted,
            &occurrence(pod.clone(), "Failed", "boom", 50),
        );
        assert_eq!(again.event.metadata.name, plain.metadata.name);
        assert_eq!(again.event.count, Some(2));
        assert_eq!(seconds(&again.event.first_timestamp), 0);
        for i in 0..9 {
            correlate(
                &mut restarted,
                &occurrence(pod.clone(), "Other", &format!("k{i}"), 60),
            );
        }
        let more = correlate(&mut restarted, &occurrence(pod, "Other", "k9", 61)).event;
        assert_eq!(more.metadata.name, combined.metadata.name);
        assert_eq!(more.count, Some(3));
    }

    #[test]
    fn idle_state_is_forgotten_and_then_starts_afresh() {
        let mut c = Correlator::default();
        let web = object("web-node1", "");
        for i in 0..26 {
            correlate(&mut c, &occurrence(web.clone(), "BackOff", "m", i));
        }
        let ttl = SignedDuration::from_secs(3600);
        c.forget_idle(at(1000), ttl);
        assert_eq!(c.similar.entries.len(), 0, "past the 600 s window");
        assert_eq!(c.observed.entries.len(), 1);
        assert_eq!(c.buckets.entries.len(), 1, "not refilled yet");
        // 25 tokens take 7500 s to come back.
        c.forget_idle(at(26 + 3600), ttl);
        assert_eq!(c.observed.entries.len(), 0);
        assert_eq!(c.buckets.entries.len(), 1);
        c.forget_idle(at(7500), ttl);
        assert_eq!(c.buckets.entries.len(), 0);
        let fresh = correlate(&mut c, &occurrence(web, "BackOff", "m", 7600));
        assert!(fresh.emit);
        assert_eq!(fresh.event.count, Some(1));
    }

    #[test]
    fn keys_concatenate_like_client_go() {
        let o = occurrence(object("w", "spec.containers{c}"), "R", "msg", 0);
        let event = super::super::new_event(&o, HOST);
        assert_eq!(
            event_key(&event),
            "podkeepernode1Poddefaultwspec.containers{c}uid-wv1WarningRmsg"
        );
        assert_eq!(spam_key(&event), "podkeepernode1Poddefaultwuid-wv1");
        assert_eq!(
            aggregate_key(&event),
            "podkeepernode1Poddefaultwuid-wv1WarningRpodkeepernode1"
        );
    }

    #[test]
    fn the_caches_forget_the_least_recently_used() {
        let mut lru: Lru<u32, u32> = Lru::new(8);
        for k in 0..9 {
            *lru.entry(k) = k;
        }
        *lru.entry(0) += 100; // used again: kept
        *lru.entry(9) = 9; // a tenth key past 8 + 8/8: the least recently used goes
        assert!(lru.entries.len() <= 9);
        assert!(lru.entries.contains_key(&0));
        assert_eq!(lru.entries[&0].0, 100);
        assert!(!lru.entries.contains_key(&1));
    }
}
