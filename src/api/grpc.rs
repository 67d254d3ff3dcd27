//! podkeeper's own gRPC API (`proto/podkeeper/v1/agent.proto`), served on a
//! unix socket in the state directory that only root can open.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;

use futures::Stream;
use k8s_openapi::api::core::v1::Event;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use super::{pods, ApiState};
use crate::images::service::ImageService;
use crate::proto;
use crate::proto::agent_server::{Agent, AgentServer};
use crate::status::events::EventFilter;

/// Binds the socket (replacing a stale one), restricts it to root and
/// serves until the task is dropped.
pub async fn serve(socket: &Path, state: ApiState) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    tonic::transport::Server::builder()
        .add_service(AgentServer::new(AgentService { state }))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .map_err(std::io::Error::other)
}

struct AgentService {
    state: ApiState,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn list_pods(
        &self,
        request: Request<proto::ListPodsRequest>,
    ) -> Result<Response<proto::ListPodsResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let pods = pods::list(&self.state)
            .into_iter()
            .filter(|(d, _)| namespace.is_empty() || d.namespace() == namespace)
            .map(|(d, pod)| pods::summary(&d, &pod, &self.state.pod_log_dir))
            .collect();
        Ok(Response::new(proto::ListPodsResponse { pods }))
    }

    async fn get_pod(
        &self,
        request: Request<proto::GetPodRequest>,
    ) -> Result<Response<proto::PodSummary>, Status> {
        let request = request.into_inner();
        let (desired, pod) = pods::find(&self.state, &request.namespace, &request.name)
            .ok_or_else(|| Status::not_found(format!("pod {:?} not found", request.name)))?;
        Ok(Response::new(pods::summary(
            &desired,
            &pod,
            &self.state.pod_log_dir,
        )))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let filter = self.event_filter(&request)?;
        // Subscribe before listing so nothing falls between the two.
        let mut updates = request.follow.then(|| self.state.events.subscribe());
        let existing = if request.include_existing {
            self.state.events.list_for(&filter)
        } else {
            Vec::new()
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for event in &existing {
                if tx.send(Ok(to_proto(event))).await.is_err() {
                    return;
                }
            }
            let Some(updates) = updates.as_mut() else {
                return;
            };
            loop {
                match updates.recv().await {
                    Ok(event) if filter.matches(&event) => {
                        if tx.send(Ok(to_proto(&event))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let status =
                            Status::data_loss(format!("{n} events were missed; watch again"));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_images(
        &self,
        _request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let records = self
            .state
            .images
            .runtime()
            .list_images()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let users = self.image_users();
        let images = records
            .into_iter()
            .map(|r| proto::ImageSummary {
                used_by: users.get(&r.name).cloned().unwrap_or_default(),
                name: r.name,
                digest: r.digest,
                size: r.size,
                created: r.created.map(|t| t.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    async fn pull_image(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<proto::ImageSummary>, Status> {
        let reference = request.into_inner().reference;
        let name = ImageService::normalize(&reference)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let images = &self.state.images;
        images
            .pull(&name)
            .await
            .map_err(|e| Status::unavailable(format!("pulling {name}: {e}")))?;
        let resolved = images
            .runtime()
            .resolve_image(&name)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::ImageSummary {
            used_by: self.image_users().remove(&name).unwrap_or_default(),
            name,
            digest: resolved.digest,
            size: resolved.size,
            created: String::new(),
        }))
    }

    async fn import_images(
        &self,
        request: Request<proto::ImportImagesRequest>,
    ) -> Result<Response<proto::ImportImagesResponse>, Status> {
        let mut names = Vec::new();
        for path in request.into_inner().paths {
            let path = std::path::PathBuf::from(path);
            if !path.is_absolute() {
                return Err(Status::invalid_argument(format!(
                    "{}: give an absolute path",
                    path.display()
                )));
            }
            let imported = self
                .state
                .images
                .import_archive(&path)
                .await
                .map_err(|e| Status::invalid_argument(format!("{}: {e}", path.display())))?;
            names.extend(imported);
        }
        Ok(Response::new(proto::ImportImagesResponse { names }))
    }

    async fn remove_image(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let reference = request.into_inner().reference;
        let name = ImageService::normalize(&reference)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(pods) = self.image_users().get(&name) {
            return Err(Status::failed_precondition(format!(
                "image {name} is used by pod(s) {}; remove or change their manifests first",
                pods.join(", ")
            )));
        }
        match self.state.images.delete(&name).await {
            Ok(()) => Ok(Response::new(proto::RemoveImageResponse {})),
            Err(e) if e.is_not_found() => Err(Status::not_found(format!("no image {name}"))),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

impl AgentService {
    /// The events a watch asks for. A pod is named as for `GetPod` (short
    /// names work); one whose manifest is gone is found by its events, which
    /// outlive it.
    fn event_filter(&self, request: &proto::WatchEventsRequest) -> Result<EventFilter, Status> {
        let namespace = (!request.namespace.is_empty()).then(|| request.namespace.clone());
        let uid = (!request.pod_uid.is_empty()).then(|| request.pod_uid.clone());
        if request.pod_name.is_empty() {
            return Ok(EventFilter {
                namespace,
                name: None,
                uid,
            });
        }
        let namespace = namespace.unwrap_or_else(|| "default".into());
        let name = match pods::find(&self.state, &namespace, &request.pod_name) {
            Some((desired, _)) => desired.name().to_string(),
            None => self
                .state
                .events
                .resolve_name(&namespace, &request.pod_name)
                .ok_or_else(|| {
                    Status::not_found(format!("pod {:?} not found", request.pod_name))
                })?,
        };
        Ok(EventFilter {
            namespace: Some(namespace),
            name: Some(name),
            uid,
        })
    }

    /// Pods (`namespace/name`) by the normalized images their containers use.
    fn image_users(&self) -> HashMap<String, Vec<String>> {
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        users.insert(
            self.state.sandbox_image.clone(),
            vec!["every pod (sandbox image)".into()],
        );
        for pod in self.state.desired.snapshot().pods.values() {
            let spec = pod.pod.spec.clone().unwrap_or_default();
            let containers = spec
                .init_containers
                .unwrap_or_default()
                .into_iter()
                .chain(spec.containers);
            for container in containers {
                let Some(Ok(name)) = container.image.as_deref().map(ImageService::normalize) else {
                    continue;
                };
                let user = format!("{}/{}", pod.namespace(), pod.name());
                let list = users.entry(name).or_default();
                if !list.contains(&user) {
                    list.push(user);
                }
            }
        }
        users
    }
}

fn to_proto(event: &Event) -> proto::Event {
    let object = &event.involved_object;
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
    };
    let source = event.source.clone().unwrap_or_default();
    proto::Event {
        namespace: text(&object.namespace),
        involved_kind: text(&object.kind),
        involved_name: text(&object.name),
        involved_uid: text(&object.uid),
        field_path: text(&object.field_path),
        r#type: text(&event.type_),
        reason: text(&event.reason),
        message: text(&event.message),
        count: event.count.unwrap_or(1),
        first_timestamp: time(&event.first_timestamp),
        last_timestamp: time(&event.last_timestamp),
        source_component: text(&source.component),
        source_host: text(&source.host),
        name: text(&event.metadata.name),
        // An Event is plain data: serializing it cannot fail.
        event_json: serde_json::to_string(event).unwrap_or_default(),
    }
}
