//! postStart and preStop handlers (the kubelet's `lifecycle.handlerRunner`):
//! exec, httpGet and sleep. The worker records the event
//! ([`Hook::event_reason`], [`Hook::event_message`] — the kubelet keeps the
//! details out of events, since hook output may hold secrets) and uses the
//! detailed message [`run_hook`] returns for the container's status and
//! logs.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::handler::{self, go_quote, HttpError};
use super::ProbeTarget;
use crate::pod::runtime::PodRuntime;

/// Stands in for "no limit": postStart hooks may run as long as they like.
const UNLIMITED: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Which lifecycle hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    PostStart,
    PreStop,
}

impl Hook {
    /// This hook's handler in `container`, if it has one.
    pub fn handler_of(self, container: &Container) -> Option<&LifecycleHandler> {
        let lifecycle = container.lifecycle.as_ref()?;
        match self {
            Hook::PostStart => lifecycle.post_start.as_ref(),
            Hook::PreStop => lifecycle.pre_stop.as_ref(),
        }
    }

    /// The reason of the Warning event when the hook fails.
    pub fn event_reason(self) -> &'static str {
        match self {
            Hook::PostStart => "FailedPostStartHook",
            Hook::PreStop => "FailedPreStopHook",
        }
    }

    /// The message of that event: fixed, as the kubelet's.
    pub fn event_message(self) -> &'static str {
        match self {
            Hook::PostStart => "PostStartHook failed",
            Hook::PreStop => "PreStopHook failed",
        }
    }
}

/// `container`'s preStop handler as kept in its labels for a stop without
/// its spec: a named httpGet port is resolved now, since the container's
/// ports are not kept (an unknown name stays and fails when the hook runs,
/// as it would have with the spec).
pub fn kept_pre_stop(container: &Container) -> Option<LifecycleHandler> {
    let mut handler = Hook::PreStop.handler_of(container)?.clone();
    if let Some(action) = &mut handler.http_get {
        if let Ok(port) = handler::resolve_port(&action.port, container) {
            action.port = IntOrString::Int(port.into());
        }
    }
    Some(handler)
}

/// Runs a lifecycle handler for `target`'s container, for at most `limit`
/// (`None` for postStart, which the kubelet does not limit; the remaining
/// grace period for preStop). Returns the kubelet's failure message.
pub async fn run_hook<R: PodRuntime>(
    runtime: &R,
    handler: &LifecycleHandler,
    target: &ProbeTarget,
    limit: Option<Duration>,
) -> Result<(), String> {
    let container = &target.container;
    let limit_or_unlimited = limit.unwrap_or(UNLIMITED);
    let who = format!(
        "for Container {} in Pod {}",
        go_quote(&container.name),
        go_quote(&target.pod_name())
    );
    if let Some(exec) = &handler.exec {
        let command = exec.command.clone().unwrap_or_default();
        let (error, output) = match runtime
            .exec(&target.container_id, &command, limit_or_unlimited)
            .await
        {
            Ok(out) if out.timed_out => (
                format!("command {} timed out", go_quote(&command.join(" "))),
                out.output,
            ),
            Ok(out) if out.exit_code == 0 => return Ok(()),
            Ok(out) => (
                format!(
                    "command '{}' exited with {}: {}",
                    command.join(" "),
                    out.exit_code,
                    out.output
                ),
                out.output,
            ),
            Err(e) => (e.to_string(), String::new()),
        };
        return Err(format!(
            "Exec lifecycle hook ([{}]) {who} failed - error: {error}, message: {}",
            command.join(" "),
            go_quote(&output)
        ));
    }
    if let Some(action) = &handler.http_get {
        // The kubelet does not judge the status code of hook requests.
        return match handler::http_get(
            action,
            container,
            target.default_host(),
            limit_or_unlimited,
            handler::HOOK_USER_AGENT,
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(HttpError::Setup(error) | HttpError::Request(error)) => Err(format!(
                "HTTP lifecycle hook ({}) {who} failed - error: {error}",
                action.path.as_deref().unwrap_or_default()
            )),
        };
    }
    if let Some(sleep) = &handler.sleep {
        let wanted = Duration::from_secs(sleep.seconds.max(0) as u64);
        return match limit.filter(|l| *l < wanted) {
            None => {
                tokio::time::sleep(wanted).await;
                Ok(())
            }
            Some(limit) => {
                tokio::time::sleep(limit).await;
                Err(format!(
                    "Sleep lifecycle hook ({}) {who} failed - error: container terminated before sleep hook finished",
                    sleep.seconds
                ))
            }
        };
    }
    Err("Cannot run handler: invalid handler: no exec, httpGet or sleep action".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_pre_stop_names_its_port_by_number() {
        let yaml = "name: app\nports: [{name: http, containerPort: 8080}]\nlifecycle:\n  preStop: {httpGet: {path: /quit, port: http}}\n  postStart: {exec: {command: [post]}}\n";
        let mut container: Container = serde_yaml::from_str(yaml).unwrap();
        let kept = kept_pre_stop(&container).unwrap();
        let action = kept.http_get.unwrap();
        assert_eq!(action.port, IntOrString::Int(8080));
        assert_eq!(action.path.as_deref(), Some("/quit"));
        container.ports = None;
        let kept = kept_pre_stop(&container).unwrap();
        assert_eq!(
            kept.http_get.unwrap().port,
            IntOrString::String("http".into())
        );
        container.lifecycle.as_mut().unwrap().pre_stop = None;
        assert_eq!(kept_pre_stop(&container), None);
    }
}
