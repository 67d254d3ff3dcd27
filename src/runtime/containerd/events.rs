//! containerd's event stream, turned into the few facts pod workers act on.
//!
//! Exits are learned from `/tasks/exit` events instead of polling task
//! status. When the stream breaks (containerd restarted), the subscriber
//! reconnects and reports [`RuntimeEvent::Resubscribed`], because exits may
//! have been missed in between and workers must look again.

use std::time::Duration;

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::SubscribeRequest;
use futures::StreamExt;
use prost::Message;
use tokio::sync::mpsc;

use super::client::Containerd;
use super::tasks::timestamp;

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

impl Containerd {
    /// Streams task events of podkeeper's namespace into `tx` until `tx` is
    /// closed, reconnecting with back-off when the stream breaks.
    pub async fn forward_events(&self, tx: mpsc::Sender<RuntimeEvent>) {
        let mut delay = Duration::from_millis(200);
        let mut first = true;
        loop {
            let namespace = self.namespace();
            let filters = ["/tasks/exit", "/tasks/oom"]
                .iter()
                .map(|topic| format!("namespace=={namespace:?},topic=={topic:?}"))
                .collect();
            let mut client = EventsClient::new(self.channel.clone());
            let subscribed = client
                .subscribe(tonic::Request::new(SubscribeRequest { filters }))
                .await;
            match subscribed {
                Ok(stream) => {
                    delay = Duration::from_millis(200);
                    if !first && tx.send(RuntimeEvent::Resubscribed).await.is_err() {
                        return;
                    }
                    let mut stream = stream.into_inner();
                    while let Some(envelope) = stream.next().await {
                        let Ok(envelope) = envelope else { break };
                        let Some(event) = envelope.event.as_ref().and_then(decode) else {
                            continue;
                        };
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    tracing::warn!("containerd event stream ended; reconnecting");
                }
                Err(status) => {
                    tracing::warn!(error = %status.message(), "cannot subscribe to containerd events; retrying in {delay:?}");
                }
            }
            first = false;
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
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
