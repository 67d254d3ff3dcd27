//! `watch=true` on pods and events: a stream of `WatchEvent` JSON lines
//! (`{"type":"ADDED","object":...}`), as `kubectl get -w` reads it.
//!
//! Pods have no change feed (workers overwrite their status in the
//! store), so a pod watch compares snapshots every [`POLL`]; events come
//! from the event log's broadcast. Each watch is its own task writing into
//! a bounded channel: a client that stops reading stalls only its watch.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use tokio::sync::{broadcast, mpsc};

use super::handlers::{event_selected, select_pods};
use super::response::{self, Body};
use super::route::{ListOptions, Scope};
use super::table;
use crate::api::ApiState;

/// How often a pod watch looks for changes.
const POLL: Duration = Duration::from_millis(500);

/// How long a watch lasts without `timeoutSeconds` (or with 0); clients
/// watch again.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The longest watch a client may ask for: the API server caps a watch
/// at its min-request-timeout (30 min) randomised up to twice that, so
/// clients already expect to watch again within the hour.
const MAX_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Chunks waiting for a slow client.
const BACKLOG: usize = 64;

const CONTENT_TYPE: &str = "application/json";

/// Whether a watch starts with the existing objects as `ADDED`: yes
/// without a resource version or with `0`, as the API server does; with
/// one taken from a list, the client has them already.
fn sends_existing(options: &ListOptions) -> bool {
    matches!(options.resource_version.as_str(), "" | "0")
}

fn timeout(options: &ListOptions) -> Duration {
    match options.timeout_seconds {
        None | Some(0) => DEFAULT_TIMEOUT,
        Some(seconds) => Duration::from_secs(seconds).min(MAX_TIMEOUT),
    }
}

/// One `WatchEvent` line around `object`'s JSON text.
fn line(kind: &str, object: &str) -> Bytes {
    Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n"))
}

pub fn pods(
    state: ApiState,
    scope: Scope,
    options: ListOptions,
    wants_table: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        let snapshot = || -> BTreeMap<String, (String, String)> {
            let now = jiff::Timestamp::now();
            select_pods(&state, &scope, &options)
                .into_iter()
                .map(|cached| {
                    let object = if wants_table {
                        let row = table::pod_row(&cached.pod, cached.json.clone(), now);
                        table::table(table::POD_COLUMNS, &[row], &cached.version)
                    } else {
                        cached.json.clone()
                    };
                    (
                        cached.desired.uid().to_string(),
                        (cached.version.clone(), object),
                    )
                })
                .collect()
        };
        let mut known = if sends_existing(&options) {
            BTreeMap::new()
        } else {
            snapshot()
        };
        let deadline = tokio::time::sleep(timeout(&options));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut deadline => return,
                () = tx.closed() => return,
            }
            let current = snapshot();
            let mut lines = Vec::new();
            for (uid, (version, object)) in &current {
                match known.get(uid) {
                    None => lines.push(line("ADDED", object)),
                    Some((old, _)) if old != version => lines.push(line("MODIFIED", object)),
                    Some(_) => {}
                }
            }
            for (uid, (_, object)) in &known {
                if !current.contains_key(uid) {
                    lines.push(line("DELETED", object));
                }
            }
            for chunk in lines {
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
            known = current;
        }
    });
    response::stream(CONTENT_TYPE, rx)
}

pub fn events(
    state: ApiState,
    scope: Scope,
    options: ListOptions,
    wants_table: bool,
) -> Response<Body> {
    // Subscribe before listing so nothing falls between the two.
    let mut updates = state.events.subscribe();
    let existing = if sends_existing(&options) {
        state.events.list()
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        let encode = |kind: &str, event: &k8s_openapi::api::core::v1::Event| {
            let object = serde_json::to_string(event).unwrap_or_default();
            let object = if wants_table {
                let row = table::event_row(event, object, jiff::Timestamp::now());
                table::table(table::EVENT_COLUMNS, &[row], "")
            } else {
                object
            };
            line(kind, &object)
        };
        for event in existing
            .iter()
            .filter(|e| event_selected(e, &scope, &options))
        {
            if tx.send(encode("ADDED", event)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout(&options));
        tokio::pin!(deadline);
        loop {
            let update = tokio::select! {
                update = updates.recv() => update,
                () = &mut deadline => return,
                () = tx.closed() => return,
            };
            match update {
                Ok(event) if event_selected(&event, &scope, &options) => {
                    // A repeat of a known event bumps its count.
                    let kind = if event.count.unwrap_or(1) > 1 {
                        "MODIFIED"
                    } else {
                        "ADDED"
                    };
                    if tx.send(encode(kind, &event)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let message = format!("{n} events were missed; watch again");
                    let status = response::status_object(StatusCode::GONE, "Expired", &message);
                    let _ = tx.send(line("ERROR", &status.to_string())).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    response::stream(CONTENT_TYPE, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_for(seconds: Option<u64>) -> Duration {
        timeout(&ListOptions {
            timeout_seconds: seconds,
            ..ListOptions::default()
        })
    }

    #[test]
    fn timeout_seconds_is_capped_and_zero_is_the_default() {
        assert_eq!(timeout_for(Some(u64::MAX)), MAX_TIMEOUT);
        assert_eq!(timeout_for(Some(3601)), MAX_TIMEOUT);
        assert_eq!(timeout_for(Some(3600)), MAX_TIMEOUT);
        assert_eq!(timeout_for(Some(5)), Duration::from_secs(5));
        assert_eq!(timeout_for(Some(0)), DEFAULT_TIMEOUT);
        assert_eq!(timeout_for(None), DEFAULT_TIMEOUT);
    }
}
