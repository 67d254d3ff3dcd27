//! How long and how many events are kept, so the log's memory and file stay
//! bounded on a node that runs for months.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;

/// The limits; the config keys `event-ttl-seconds`, `event-max-per-pod`
/// and `event-max-total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// An event is forgotten this long after it last happened, as the API
    /// server's `--event-ttl` does.
    pub ttl: std::time::Duration,
    /// Events kept per involved object (a pod, a manifest file, the node):
    /// one crash-looping pod must not push every other pod's history out.
    pub max_per_object: usize,
    pub max_total: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            ttl: std::time::Duration::from_secs(3600),
            max_per_object: 100,
            max_total: 2048,
        }
    }
}

fn last_seen(event: &Event) -> Option<Timestamp> {
    event.last_timestamp.as_ref().map(|t| t.0)
}

impl Retention {
    /// The TTL as a span between timestamps.
    pub fn ttl_span(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::try_from(self.ttl).unwrap_or(jiff::SignedDuration::MAX)
    }

    /// Removes the expired events, then the least recently seen beyond the
    /// caps; returns how many were removed.
    pub fn prune(&self, events: &mut HashMap<String, Arc<Event>>, now: Timestamp) -> usize {
        let before = events.len();
        let ttl = self.ttl_span();
        events.retain(|_, e| last_seen(e).is_some_and(|t| now.duration_since(t) <= ttl));

        let mut by_object: HashMap<[&str; 4], Vec<(Option<Timestamp>, &str)>> = HashMap::new();
        for (name, event) in events.iter() {
            let o = &event.involved_object;
            let key = [&o.kind, &o.namespace, &o.name, &o.uid].map(|s| s.as_deref().unwrap_or(""));
            by_object
                .entry(key)
                .or_default()
                .push((last_seen(event), name.as_str()));
        }
        let mut surplus: Vec<String> = Vec::new();
        let mut kept: Vec<(Option<Timestamp>, &str)> = Vec::new();
        for mut list in by_object.into_values() {
            list.sort_unstable();
            let cut = list.len().saturating_sub(self.max_per_object);
            surplus.extend(list[..cut].iter().map(|(_, n)| n.to_string()));
            kept.extend_from_slice(&list[cut..]);
        }
        kept.sort_unstable();
        let cut = kept.len().saturating_sub(self.max_total);
        surplus.extend(kept[..cut].iter().map(|(_, n)| n.to_string()));
        for name in surplus {
            events.remove(&name);
        }
        before - events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn event(name: &str, pod: &str, second: i64) -> (String, Arc<Event>) {
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            },
            last_timestamp: Some(Time(Timestamp::from_second(second).unwrap())),
            ..Default::default()
        };
        (name.into(), Arc::new(event))
    }

    fn names(events: &HashMap<String, Arc<Event>>) -> Vec<String> {
        let mut names: Vec<_> = events.keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn expired_events_go() {
        let retention = Retention {
            ttl: std::time::Duration::from_secs(100),
            ..Retention::default()
        };
        let mut events: HashMap<_, _> = [
            event("old", "a", 0),
            event("edge", "a", 100),
            event("new", "b", 150),
        ]
        .into();
        assert_eq!(
            retention.prune(&mut events, Timestamp::from_second(200).unwrap()),
            1
        );
        assert_eq!(names(&events), ["edge", "new"]);
    }

    #[test]
    fn the_oldest_go_beyond_the_caps_per_object_then_in_total() {
        let retention = Retention {
            max_per_object: 2,
            max_total: 3,
            ..Retention::default()
        };
        let mut events: HashMap<_, _> = [
            event("a1", "a", 10),
            event("a2", "a", 20),
            event("a3", "a", 30),
            event("b1", "b", 5),
            event("b2", "b", 25),
        ]
        .into();
        let removed = retention.prune(&mut events, Timestamp::from_second(40).unwrap());
        assert_eq!(removed, 2);
        // a1 is a's surplus; then b1 is the oldest of the four left.
        assert_eq!(names(&events), ["a2", "a3", "b2"]);
    }
}
