//! containerd's event stream, turned into the few facts pod workers act on.
//!
//! Exits are learned from `/tasks/exit` events instead of polling task
//! status. When the stream breaks (containerd stopped or restarted), the
//! subscriber reports the lost [`Link`], subscribes again with back-off, and
//! once it is back reports [`RuntimeEvent::Resubscribed`], because exits may
//! have been missed in between and workers must look again.

use std::time::Duration;

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::{PublishRequest, SubscribeRequest};
use containerd_client::types::Envelope;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::client::Containerd;
use super::tasks::timestamp;

/// First wait before subscribing again; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Kept short: while the stream is down, exits go unnoticed, and a failed
/// attempt is only a refused connect on a local socket.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Topic of the marker events that confirm a subscription (see
/// [`Containerd::subscribe`]); other subscribers may ignore them.
const MARKER_TOPIC: &str = "/podkeeper/subscribed";
/// Type URL of the marker's (empty) payload.
const MARKER_TYPE: &str = "podkeeper.Subscribed";
/// How often the marker is published while the subscription is pending.
const MARKER_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A task's init process exited.
    TaskExit {
        container_id: String,
        /// PID of the exited process, to tell runs with the same ID apart.
        pid: u32,
        exit_status: u32,
        exited_at: Option<jiff::Timestamp>,
    },
    /// The kernel's OOM killer hit a process of this container.
    TaskOom { container_id: String },
    /// The stream was re-established; events may have been lost.
    Resubscribed,
}

impl RuntimeEvent {
    pub fn container_id(&self) -> Option<&str> {
        match self {
            RuntimeEvent::TaskExit { container_id, .. }
            | RuntimeEvent::TaskOom { container_id } => Some(container_id),
            RuntimeEvent::Resubscribed => None,
        }
    }
}

/// Changes of the event stream's health, for the agent to report (pods do
/// not care: they get [`RuntimeEvent::Resubscribed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// The stream broke or could not be opened: containerd is unreachable.
    /// Reported once per outage, not per retry.
    Lost { error: String },
    /// The stream is open again after a [`Link::Lost`].
    Restored { after: Duration },
}

impl Containerd {
    /// Streams task events of podkeeper's namespace into `tx` until `tx` is
    /// closed, subscribing again with back-off when the stream breaks;
    /// `on_link` hears when it is lost and when it is back.
    pub async fn forward_events(
        &self,
        tx: mpsc::Sender<RuntimeEvent>,
        mut on_link: impl FnMut(Link) + Send,
    ) {
        let mut delay = FIRST_RETRY_DELAY;
        // When the stream was lost, if it is.
        let mut lost: Option<Instant> = None;
        let mut first = true;
        loop {
            let error = match self.subscribe().await {
                Ok(mut stream) => {
                    delay = FIRST_RETRY_DELAY;
                    if let Some(since) = lost.take() {
                        let after = since.elapsed();
                        info!("containerd is back after {after:.1?}: event stream restored; re-checking tasks");
                        on_link(Link::Restored { after });
                    }
                    if !first && tx.send(RuntimeEvent::Resubscribed).await.is_err() {
                        return;
                    }
                    loop {
                        match stream.next().await {
                            Some(Ok(envelope)) => {
                                let Some(event) = envelope.event.as_ref().and_then(decode) else {
                                    continue;
                                };
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(status)) => break status.message().to_string(),
                            None => break "the event stream ended".to_string(),
                        }
                    }
                }
                Err(status) => status.message().to_string(),
            };
            // A subscription that never worked counts as a restart too: the
            // workers must look at their tasks once it does.
            first = false;
            if lost.is_none() {
                warn!(error = %error, "lost containerd (event stream); pod exits go unnoticed until it is back; reconnecting");
                lost = Some(Instant::now());
                on_link(Link::Lost { error });
            } else {
                debug!(error = %error, "containerd still unreachable; retrying in {delay:?}");
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }

    /// Subscribes, and returns once the subscription is in place. containerd
    /// answers a subscription (sends its response headers) only with the
    /// first event, which on a quiet node may be hours away; so the
    /// subscriber publishes a marker event to itself until the answer comes.
    /// From then on no exit can be missed, which is what makes re-checking
    /// the tasks after [`RuntimeEvent::Resubscribed`] sound.
    async fn subscribe(&self) -> Result<tonic::Streaming<Envelope>, tonic::Status> {
        let namespace = self.namespace();
        let filters = ["/tasks/exit", "/tasks/oom", MARKER_TOPIC]
            .iter()
            .map(|topic| format!("namespace=={namespace:?},topic=={topic:?}"))
            .collect();
        let mut client = EventsClient::new(self.channel.clone());
        let request = SubscribeRequest { filters };
        let subscribed = client.subscribe(self.request(request, None));
        let markers = async {
            // The first marker may arrive before the subscription does;
            // repeat until one is seen.
            let mut publisher = EventsClient::new(self.channel.clone());
            let mut every = tokio::time::interval(MARKER_INTERVAL);
            loop {
                every.tick().await;
                let marker = PublishRequest {
                    topic: MARKER_TOPIC.into(),
                    event: Some(prost_types::Any {
                        type_url: MARKER_TYPE.into(),
                        value: Vec::new(),
                    }),
                };
                match publisher.publish(self.request(marker, None)).await {
                    Ok(_) => {}
                    Err(status) if status.code() == tonic::Code::Unavailable => return status,
                    Err(status) => {
                        warn!(error = %status.message(), "containerd refuses podkeeper's marker event; the event stream is only known to work at its first event");
                        return std::future::pending().await;
                    }
                }
            }
        };
        tokio::select! {
            subscribed = subscribed => Ok(subscribed?.into_inner()),
            status = markers => Err(status),
        }
    }
}

fn decode(any: &prost_types::Any) -> Option<RuntimeEvent> {
    let kind = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    match kind {
        "containerd.events.TaskExit" => {
            let exit = TaskExit::decode(&any.value[..]).ok()?;
            // Exits of exec'd processes carry their own ID; only init counts.
            if !exit.id.is_empty() && exit.id != exit.container_id {
                return None;
            }
            Some(RuntimeEvent::TaskExit {
                container_id: exit.container_id,
                pid: exit.pid,
                exit_status: exit.exit_status,
                exited_at: exit.exited_at.and_then(timestamp),
            })
        }
        "containerd.events.TaskOOM" => {
            let oom = TaskOom::decode(&any.value[..]).ok()?;
            Some(RuntimeEvent::TaskOom {
                container_id: oom.container_id,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_exit_events_are_decoded() {
        let exit = TaskExit {
            container_id: "pk-a-c-app-0".into(),
            id: "pk-a-c-app-0".into(),
            pid: 10,
            exit_status: 3,
            exited_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
        };
        let any = prost_types::Any {
            type_url: "containerd.events.TaskExit".into(),
            value: exit.encode_to_vec(),
        };
        assert_eq!(
            decode(&any),
            Some(RuntimeEvent::TaskExit {
                container_id: "pk-a-c-app-0".into(),
                pid: 10,
                exit_status: 3,
                exited_at: jiff::Timestamp::from_second(100).ok(),
            })
        );
    }

    #[test]
    fn exec_exits_and_other_events_are_ignored() {
        let exit = TaskExit {
            container_id: "c".into(),
            id: "exec-1".into(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: "containerd.events.TaskExit".into(),
            value: exit.encode_to_vec(),
        };
        assert_eq!(decode(&any), None);
        let other = prost_types::Any {
            type_url: "containerd.events.TaskCreate".into(),
            value: vec![],
        };
        assert_eq!(decode(&other), None);
    }
}
