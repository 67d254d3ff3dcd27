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
    state_dir: std::path::PathBuf,
    _logs: Option<tempfile::TempDir>,
}

fn start(images: &[&str]) -> Harness {
    start_pod(POD, images)
}

fn start_pod(manifest: &str, images: &[&str]) -> Harness {
    let logs = tempfile::tempdir().unwrap();
    let state = logs.path().join("state");
    let mut h = start_pod_on(manifest, Arc::new(FakeRuntime::new(images)), state);
    h._logs = Some(logs);
    h
}

fn start_pod_on(manifest: &str, fake: Arc<FakeRuntime>, state_dir: std::path::PathBuf) -> Harness {
    let pod = crate::manifest::parse::parse_manifest(
        manifest.as_bytes(),
        std::path::Path::new("/m/web.yaml"),
        "n",
    )
    .unwrap();
    let status = Arc::new(StatusStore::default());
    let (recorder, events) = test_recorder();
    let ctx = Arc::new(WorkerContext {
        runtime: fake.clone(),
        status: status.clone(),
        recorder,
        pod_log_dir: state_dir.join("logs"),
        state_dir: state_dir.clone(),
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
        state_dir,
        _logs: None,
    }
}

impl Harness {
    fn state_dir(&self) -> std::path::PathBuf {
        self.state_dir.clone()
    }

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

/// A container's `lastState.terminated`.
fn last_terminated(
    c: &k8s_openapi::api::core::v1::ContainerStatus,
) -> &k8s_openapi::api::core::v1::ContainerStateTerminated {
    let last = c.last_state.as_ref().expect("a last state");
    last.terminated.as_ref().expect("a terminated last state")
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
    assert_eq!(
        h.init_states()[0],
        "Running",
        "the first restart is at once"
    );
    h.exit("setup", 1, 1);
    settle().await;
    assert_eq!(h.init_states()[0], "CrashLoopBackOff");
    assert_eq!(h.states(), ["PodInitializing"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.init_states()[0], "Running");
    let status = h.status.get(&h.uid).unwrap();
    assert_eq!(
        status.init_container_statuses.clone().unwrap()[0].restart_count,
        2
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

#[tokio::test(start_paused = true)]
async fn a_pod_whose_container_cannot_be_removed_keeps_its_directories() {
    let mut h = start(&["present:1", "missing:1"]);
    h.wait_for(&["Running", "Running"]).await;
    let logs = h.state_dir().join("logs");
    let pod_logs: Vec<_> = std::fs::read_dir(&logs).unwrap().flatten().collect();
    assert_eq!(pod_logs.len(), 1, "the pod's log directory");
    let pod_logs = pod_logs[0].path();
    let checkpoint = Checkpoint::path(&h.state_dir(), &h.uid).unwrap();
    assert!(checkpoint.exists());
    h.fake.make_unremovable("a");

    let _ = h.stop.take().unwrap().send(());
    (&mut h.task).await.unwrap();
    let calls = h.fake.calls();
    let stopping = calls.iter().position(|c| c.starts_with("stop ")).unwrap();
    assert!(
        !calls[stopping..].contains(&format!("release {}", h.uid)),
        "released with a container left: {calls:?}"
    );
    assert!(pod_logs.join("a/0.log").exists(), "the log directory went");
    assert!(checkpoint.exists(), "the checkpoint went");
}

const CRASHING: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: app, image: x:1}\n";

/// Waits until attempt `attempt` of container `name` was run.
async fn wait_run(h: &Harness, name: &str, attempt: u32) {
    let id = labels::container_id(&h.uid, name, attempt);
    while !h.fake.calls().contains(&format!("run {id}")) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// When each run of container `name` was started, by the paused clock.
async fn run_times(h: &Harness, name: &str, runs: u32) -> Vec<u64> {
    let t0 = Instant::now();
    let mut times = Vec::new();
    for attempt in 0..runs {
        wait_run(h, name, attempt).await;
        times.push(t0.elapsed().as_secs());
        h.exit(name, attempt, 1);
        settle().await;
    }
    times
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_restarts_at_once_then_after_10_20_40_seconds() {
    let mut h = start_pod(CRASHING, &["x:1"]);
    let times = run_times(&h, "app", 5).await;
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [0, 10, 20, 40]);
    let status = h.status.get(&h.uid).unwrap();
    let app = &status.container_statuses.clone().unwrap()[0];
    assert_eq!(app.restart_count, 4);
    let waiting = app.state.as_ref().unwrap().waiting.as_ref().unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    assert_eq!(
        waiting.message.as_deref(),
        Some(
            format!(
                "back-off 1m20s restarting failed container=app pod=web-n_default({})",
                h.uid
            )
            .as_str()
        )
    );
    let last = last_terminated(app);
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    assert_eq!(
        last.container_id.as_deref(),
        Some(format!("containerd://{}", labels::container_id(&h.uid, "app", 4)).as_str())
    );
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let backoffs = h
        .reasons()
        .iter()
        .filter(|r| *r == "spec.containers{app} BackOff")
        .count();
    assert_eq!(backoffs, 4, "one BackOff per wait");
    // Of the ended runs, only the last one's container is kept.
    let ids = h.fake.live_containers();
    assert_eq!(
        ids,
        [
            labels::container_id(&h.uid, "app", 4),
            labels::sandbox_id(&h.uid)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn on_failure_restarts_only_failed_runs() {
    let manifest = CRASHING.replace("spec:\n", "spec:\n  restartPolicy: OnFailure\n");
    let h = start_pod(&manifest, &["x:1"]);
    h.wait_for(&["Running"]).await;
    h.exit("app", 0, 2);
    h.wait_for(&["Running"]).await;
    h.exit("app", 1, 0);
    settle().await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(h.states(), ["Completed"]);
    let status = h.status.get(&h.uid).unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
}

#[tokio::test(start_paused = true)]
async fn a_task_that_fails_to_start_is_a_start_error_run() {
    let h = start_pod(CRASHING, &["x:1"]);
    h.fake
        .fail_next_run("app", "exec: \"nope\": executable file not found in $PATH");
    settle().await;
    assert_eq!(h.states(), ["Running"], "restarted at once");
    let status = h.status.get(&h.uid).unwrap();
    let app = &status.container_statuses.clone().unwrap()[0];
    let last = last_terminated(app);
    assert_eq!(last.reason.as_deref(), Some("StartError"));
    assert_eq!(last.exit_code, 128);
    assert!(last
        .message
        .as_deref()
        .unwrap()
        .contains("executable file not found"));
    assert_eq!(app.restart_count, 1);
}

/// A second worker for the same pod over the same fake and state dir, as
/// after an agent restart.
fn restart_worker(h: &Harness) -> (Harness, Arc<FakeRuntime>) {
    let mut next = start_pod_on(CRASHING, h.fake.clone(), h.state_dir());
    next.uid = h.uid.clone();
    let fake = h.fake.clone();
    (next, fake)
}

#[tokio::test(start_paused = true)]
async fn a_new_worker_adopts_running_containers_and_keeps_restart_counts() {
    let h = start_pod(CRASHING, &["x:1"]);
    h.wait_for(&["Running"]).await;
    h.exit("app", 0, 1);
    wait_run(&h, "app", 1).await;
    settle().await;
    let running = labels::container_id(&h.uid, "app", 1);
    let pid = h.fake.pid_of(&running);
    h.task.abort();
    let runs_before = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("run "))
        .count();

    let (next, fake) = restart_worker(&h);
    next.wait_for(&["Running"]).await;
    settle().await;

    let runs_after = fake
        .calls()
        .iter()
        .filter(|c| c.starts_with("run "))
        .count();
    assert_eq!(runs_after, runs_before, "nothing was started again");
    assert_eq!(fake.pid_of(&running), pid);
    assert!(fake.calls().contains(&format!("adopt {}", h.uid)));
    let status = next.status.get(&next.uid).unwrap();
    assert_eq!(
        status.container_statuses.clone().unwrap()[0].restart_count,
        1
    );
    // It keeps following the adopted run: its exit leads to a restart
    // with the grown back-off.
    next.exit("app", 1, 1);
    settle().await;
    assert_eq!(next.states(), ["CrashLoopBackOff"]);
}

#[tokio::test(start_paused = true)]
async fn a_container_that_exited_while_no_worker_watched_is_restarted() {
    let h = start_pod(CRASHING, &["x:1"]);
    h.wait_for(&["Running"]).await;
    h.task.abort();
    h.fake.exit_task(&labels::container_id(&h.uid, "app", 0), 3);
    let (next, fake) = restart_worker(&h);
    next.wait_for(&["Running"]).await;
    assert!(fake.calls().contains(&format!(
        "delete-task {}",
        labels::container_id(&h.uid, "app", 0)
    )));
    let status = next.status.get(&next.uid).unwrap();
    let app = &status.container_statuses.clone().unwrap()[0];
    assert_eq!(app.restart_count, 1);
    let last = last_terminated(app);
    assert_eq!(last.exit_code, 3);
}

#[tokio::test(start_paused = true)]
async fn a_dead_sandbox_is_replaced_and_its_containers_restarted() {
    let mut h = start_pod(CRASHING, &["x:1"]);
    h.wait_for(&["Running"]).await;
    let sandbox = labels::sandbox_id(&h.uid);
    let pid = h.fake.pid_of(&sandbox).unwrap();
    h.exits
        .send(RuntimeEvent::TaskExit {
            container_id: sandbox.clone(),
            pid,
            exit_status: 137,
            exited_at: None,
        })
        .unwrap();
    h.wait_for(&["Running"]).await;
    settle().await;
    assert_ne!(h.fake.pid_of(&sandbox), Some(pid), "a new sandbox");
    assert!(h.reasons().contains(&" SandboxChanged".to_string()));
    let status = h.status.get(&h.uid).unwrap();
    assert_eq!(
        status.container_statuses.clone().unwrap()[0].restart_count,
        1
    );
}

fn exec_result(
    exit_code: i32,
    output: &str,
) -> Result<crate::runtime::containerd::exec::ExecOutput, String> {
    Ok(crate::runtime::containerd::exec::ExecOutput {
        exit_code,
        output: output.into(),
        timed_out: false,
    })
}

const PROBED: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: app\n    image: x:1\n    livenessProbe: {exec: {command: [alive]}, periodSeconds: 1}\n    readinessProbe: {exec: {command: [ready]}, periodSeconds: 1}\n";

fn ready_flags(h: &Harness) -> (bool, String) {
    let status = h.status.get(&h.uid).unwrap();
    let ready = status.container_statuses.clone().unwrap()[0].ready;
    let condition = status
        .conditions
        .clone()
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .status;
    (ready, condition)
}

#[tokio::test(start_paused = true)]
async fn readiness_drives_ready_and_liveness_failures_restart_the_container() {
    let mut h = start_pod(PROBED, &["x:1"]);
    h.fake.script_exec("alive", vec![exec_result(0, "")]);
    h.fake
        .script_exec("ready", vec![exec_result(1, "not yet"), exec_result(0, "")]);
    h.wait_for(&["Running"]).await;
    assert_eq!(
        ready_flags(&h),
        (false, "False".into()),
        "unready until a probe succeeds"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ready_flags(&h), (true, "True".into()));
    assert!(h
        .reasons()
        .contains(&"spec.containers{app} Unhealthy".to_string()));

    h.fake.script_exec("alive", vec![exec_result(1, "dead")]);
    let app0 = labels::container_id(&h.uid, "app", 0);
    for _ in 0..100 {
        if h.fake.calls().contains(&format!("stop {app0}")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        h.fake.calls().contains(&format!("stop {app0}")),
        "killed after 3 failures"
    );
    let events = h.reasons();
    assert!(
        events.contains(&"spec.containers{app} Killing".to_string()),
        "{events:?}"
    );
    h.exit("app", 0, 137);
    wait_run(&h, "app", 1).await;
    settle().await;
    assert_eq!(h.states(), ["Running"]);
    let status = h.status.get(&h.uid).unwrap();
    assert_eq!(
        status.container_statuses.clone().unwrap()[0].restart_count,
        1
    );
}

const HOOKED: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: app\n    image: x:1\n    lifecycle:\n      postStart: {exec: {command: [post]}}\n      preStop: {exec: {command: [pre]}}\n";

#[tokio::test(start_paused = true)]
async fn pre_stop_runs_before_the_stop_signal() {
    let mut h = start_pod(HOOKED, &["x:1"]);
    h.fake.script_exec("post", vec![exec_result(0, "")]);
    h.fake.script_exec("pre", vec![exec_result(0, "")]);
    h.wait_for(&["Running"]).await;
    let _ = h.stop.take().unwrap().send(());
    (&mut h.task).await.unwrap();
    let calls = h.fake.calls();
    let app0 = labels::container_id(&h.uid, "app", 0);
    let position = |needle: &str| calls.iter().position(|c| c == needle);
    let pre = position(&format!("exec {app0} pre")).expect("preStop ran");
    let stop = position(&format!("stop {app0}")).expect("stopped");
    assert!(pre < stop, "{calls:?}");
    assert!(position(&format!("exec {app0} post")).unwrap() < pre);
}

#[tokio::test(start_paused = true)]
async fn a_failed_post_start_hook_kills_the_container() {
    let mut h = start_pod(HOOKED, &["x:1"]);
    h.fake.script_exec("post", vec![exec_result(2, "boom")]);
    h.fake.script_exec("pre", vec![exec_result(0, "")]);
    settle().await;
    let app0 = labels::container_id(&h.uid, "app", 0);
    assert!(h.fake.calls().contains(&format!("stop {app0}")));
    let events = h.reasons();
    assert!(
        events.contains(&"spec.containers{app} FailedPostStartHook".to_string()),
        "{events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn event_messages_are_the_kubelets_byte_for_byte() {
    let mut h = start_pod(CRASHING, &["x:1"]);
    wait_run(&h, "app", 0).await;
    h.exit("app", 0, 1);
    wait_run(&h, "app", 1).await;
    h.exit("app", 1, 1);
    settle().await;
    let _ = h.stop.take().unwrap().send(());
    (&mut h.task).await.unwrap();
    let pod = format!("web-n_default({})", h.uid);
    let mut messages = Vec::new();
    while let Ok(o) = h.events.try_recv() {
        messages.push((o.reason, o.message));
    }
    for (reason, message) in [
        ("Pulled", "Successfully pulled image \"x:1\" in 1.000ms (1.000ms including waiting). Image size: 1 bytes.".to_string()),
        ("Created", "Created container: app".into()),
        ("Started", "Started container app".into()),
        ("BackOff", format!("Back-off restarting failed container app in pod {pod}")),
    ] {
        assert!(
            messages.contains(&(reason.to_string(), message.clone())),
            "{reason}: {message:?} not in {messages:?}"
        );
    }
}

/// The size of what `f` returns, here the future a pod worker's task holds.
fn size_of_output<A, F>(_f: fn(A) -> F) -> usize {
    std::mem::size_of::<F>()
}

#[test]
fn a_pod_worker_task_holds_only_what_waiting_needs() {
    let size = size_of_output(Worker::<FakeRuntime>::run);
    assert!(size <= 4096, "a pod worker's future is {size} bytes");
}
