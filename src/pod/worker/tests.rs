use super::*;
use crate::pod::fake::FakeRuntime;
use crate::pod::plan::PULL_ERROR_VISIBLE;
use crate::status::events::{test_recorder, Occurrence};

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  terminationGracePeriodSeconds: 3\n  containers:\n  - {name: a, image: present:1}\n  - {name: b, image: missing:1}\n";

struct Harness {
    fake: Arc<FakeRuntime>,
    exits: mpsc::UnboundedSender<RuntimeEvent>,
    status: Arc<StatusStore>,
    events: mpsc::Receiver<Occurrence>,
    uid: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _logs: tempfile::TempDir,
}

fn start(images: &[&str]) -> Harness {
    start_pod(POD, images)
}

fn start_pod(manifest: &str, images: &[&str]) -> Harness {
    let pod = crate::manifest::parse::parse_manifest(
        manifest.as_bytes(),
        std::path::Path::new("/m/web.yaml"),
        "n",
    )
    .unwrap();
    let fake = Arc::new(FakeRuntime::new(images));
    let status = Arc::new(StatusStore::default());
    let (recorder, events) = test_recorder();
    let logs = tempfile::tempdir().unwrap();
    let ctx = Arc::new(WorkerContext {
        runtime: fake.clone(),
        status: status.clone(),
        recorder,
        pod_log_dir: logs.path().into(),
    });
    let (exits, events_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let uid = pod.uid().to_string();
    let worker = Worker::new(ctx, Arc::new(pod), events_rx, stop_rx);
    let task = tokio::spawn(worker.run());
    Harness {
        fake,
        exits,
        status,
        events,
        uid,
        stop: Some(stop_tx),
        task,
        _logs: logs,
    }
}

impl Harness {
    /// Tells the worker that container `name`'s current run exited.
    fn exit(&self, name: &str, attempt: u32, status: u32) {
        let event = RuntimeEvent::TaskExit {
            container_id: labels::container_id(&self.uid, name, attempt),
            pid: 0,
            exit_status: status,
            exited_at: None,
        };
        self.exits.send(event).unwrap();
    }

    fn init_states(&self) -> Vec<String> {
        self.words(|s| s.init_container_statuses.clone())
    }

    /// The state word of each container: Running, or the waiting/terminated reason.
    fn states(&self) -> Vec<String> {
        self.words(|s| s.container_statuses.clone())
    }

    fn words(
        &self,
        pick: impl Fn(
            &k8s_openapi::api::core::v1::PodStatus,
        ) -> Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>,
    ) -> Vec<String> {
        let Some(status) = self.status.get(&self.uid) else {
            return vec![];
        };
        pick(&status)
            .unwrap_or_default()
            .into_iter()
            .map(|c| state_word(c.state.unwrap_or_default()))
            .collect()
    }

    async fn wait_for(&self, want: &[&str]) {
        for _ in 0..10_000 {
            if self.states() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("states stayed {:?}, wanted {want:?}", self.states());
    }

    fn reasons(&mut self) -> Vec<String> {
        let mut reasons = Vec::new();
        while let Ok(o) = self.events.try_recv() {
            reasons.push(format!("{} {}", o.object.field_path, o.reason));
        }
        reasons
    }
}

fn state_word(s: k8s_openapi::api::core::v1::ContainerState) -> String {
    if s.running.is_some() {
        "Running".to_string()
    } else if let Some(w) = s.waiting {
        w.reason.unwrap_or_default()
    } else {
        s.terminated.and_then(|t| t.reason).unwrap_or_default()
    }
}

const WITH_INIT: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  initContainers:\n  - {name: setup, image: x:1}\n  - {name: side, image: x:1, restartPolicy: Always}\n  - {name: last, image: x:1}\n  containers:\n  - {name: app, image: x:1}\n";

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn init_containers_run_in_order_and_the_sidecar_keeps_running() {
    let h = start_pod(WITH_INIT, &["x:1"]);
    settle().await;
    assert_eq!(
        h.init_states(),
        ["Running", "PodInitializing", "PodInitializing"]
    );
    assert_eq!(h.states(), ["PodInitializing"]);
    h.exit("setup", 0, 0);
    settle().await;
    // The sidecar started, then the last init container right after it.
    assert_eq!(h.init_states(), ["Completed", "Running", "Running"]);
    h.exit("last", 0, 0);
    settle().await;
    assert_eq!(h.init_states(), ["Completed", "Running", "Completed"]);
    assert_eq!(h.states(), ["Running"]);
    let status = h.status.get(&h.uid).unwrap();
    let initialized = status
        .conditions
        .clone()
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Initialized")
        .unwrap();
    assert_eq!(initialized.status, "True");
    let runs: Vec<String> = h
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("run ") && c.contains("-c-"))
        .collect();
    let order: Vec<&str> = runs
        .iter()
        .map(|c| c.split("-c-").nth(1).unwrap())
        .collect();
    assert_eq!(order, ["setup-0", "side-0", "last-0", "app-0"]);
}

#[tokio::test(start_paused = true)]
async fn an_oom_event_after_the_exit_still_marks_the_container_oom_killed() {
    let manifest = POD.replace("spec:\n", "spec:\n  restartPolicy: Never\n");
    let h = start_pod(&manifest, &["present:1", "missing:1"]);
    h.wait_for(&["Running", "Running"]).await;
    h.exit("a", 0, 137);
    settle().await;
    assert_eq!(h.states(), ["Error", "Running"]);
    let event = RuntimeEvent::TaskOom {
        container_id: labels::container_id(&h.uid, "a", 0),
    };
    h.exits.send(event).unwrap();
    settle().await;
    assert_eq!(h.states(), ["OOMKilled", "Running"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_init_container_is_retried_with_back_off() {
    let h = start_pod(WITH_INIT, &["x:1"]);
    settle().await;
    h.exit("setup", 0, 1);
    settle().await;
    assert_eq!(h.init_states()[0], "Error");
    assert_eq!(h.states(), ["PodInitializing"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.init_states()[0], "Running");
    let status = h.status.get(&h.uid).unwrap();
    assert_eq!(
        status.init_container_statuses.clone().unwrap()[0].restart_count,
        1
    );
    assert_eq!(status.phase.as_deref(), Some("Pending"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_init_container_fails_the_pod_under_restart_policy_never() {
    let manifest = WITH_INIT.replace("spec:\n", "spec:\n  restartPolicy: Never\n");
    let h = start_pod(&manifest, &["x:1"]);
    settle().await;
    h.exit("setup", 0, 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let status = h.status.get(&h.uid).unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert_eq!(h.init_states()[0], "Error");
    assert_eq!(h.states(), ["PodInitializing"]);
}

#[tokio::test(start_paused = true)]
async fn a_container_waiting_for_its_image_does_not_hold_back_the_others() {
    let mut h = start(&["present:1"]);
    h.wait_for(&["Running", "ErrImagePull"]).await;
    let reasons = h.reasons();
    for expected in [
        "spec.containers{a} Pulling",
        "spec.containers{a} Pulled",
        "spec.containers{a} Created",
        "spec.containers{a} Started",
        "spec.containers{b} Pulling",
        "spec.containers{b} Failed",
    ] {
        assert!(
            reasons.iter().any(|r| r == expected),
            "{expected} missing from {reasons:?}"
        );
    }
    let started = Instant::now();
    h.wait_for(&["Running", "ImagePullBackOff"]).await;
    assert!(started.elapsed() <= PULL_ERROR_VISIBLE + Duration::from_millis(50));
    assert!(h
        .reasons()
        .contains(&"spec.containers{b} BackOff".to_string()));
}

#[tokio::test(start_paused = true)]
async fn an_arriving_image_starts_the_waiting_container_without_waiting_out_the_back_off() {
    let h = start(&["present:1"]);
    h.wait_for(&["Running", "ErrImagePull"]).await;
    let arrived = Instant::now();
    h.fake.add_image("missing:1");
    h.wait_for(&["Running", "Running"]).await;
    assert!(
        arrived.elapsed() < Duration::from_secs(1),
        "{:?}",
        arrived.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn failed_pulls_back_off_10s_then_20s() {
    let h = start(&["present:1"]);
    h.wait_for(&["Running", "ErrImagePull"]).await;
    let pulls = |h: &Harness| {
        h.fake
            .calls()
            .iter()
            .filter(|c| *c == "pull missing:1")
            .count()
    };
    assert_eq!(pulls(&h), 1);
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert_eq!(pulls(&h), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pulls(&h), 2);
    tokio::time::sleep(Duration::from_millis(19_700)).await;
    assert_eq!(pulls(&h), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pulls(&h), 3);
}

#[tokio::test(start_paused = true)]
async fn stopping_stops_containers_then_the_sandbox_and_removes_everything() {
    let mut h = start(&["present:1", "missing:1"]);
    h.wait_for(&["Running", "Running"]).await;
    assert_eq!(h.fake.live_containers().len(), 3);
    let _ = h.stop.take().unwrap().send(());
    (&mut h.task).await.unwrap();
    let calls = h.fake.calls();
    let position = |needle: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} in {calls:?}"))
    };
    let sandbox_stop = position(&format!("stop {}", labels::sandbox_id(&h.uid)));
    let app_stop = calls
        .iter()
        .position(|c| c.starts_with("stop") && c.contains("-c-"))
        .unwrap();
    assert!(app_stop < sandbox_stop, "{calls:?}");
    let last_removal = calls
        .iter()
        .rposition(|c| c == &format!("remove-pod {}", h.uid))
        .unwrap();
    assert!(last_removal > sandbox_stop, "{calls:?}");
    assert!(h.fake.live_containers().is_empty());
    assert!(h.status.get(&h.uid).is_none());
    assert!(
        h.reasons()
            .iter()
            .filter(|r| r.ends_with("Killing"))
            .count()
            == 2
    );
}
