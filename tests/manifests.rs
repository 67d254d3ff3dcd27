//! End-to-end: how the manifest directory is read. Edits in place and by
//! rename, editors' leftovers, formatting-only rewrites, half-written files,
//! duplicate pod names, the periodic re-list, and the CLI's short pod names.
//!
//! Needs root. Each test starts its own containerd and agent, the agent with
//! a one-second re-list so that "not on every re-list" is seen in seconds.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::agent::{running_containers, Agent, BUSYBOX, NODE};
use common::containerd::{e2e_enabled, PrivateContainerd};
use common::tasks::container_ids;

/// The agent's `--manifest-resync-seconds` in these tests.
const RESYNC: Duration = Duration::from_secs(1);

/// Long enough for at least two periodic re-lists.
const TWO_RESYNCS: Duration = Duration::from_millis(2500);

/// A one-container pod; `MARK` is replaced to make versions that differ.
/// A grace period of 1 s because `sleep` as PID 1 ignores SIGTERM.
const WEB: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: podkeeper.local/busybox:latest
    command: [sh, -c, 'echo MARK; exec sleep 3600']
";

/// [`WEB`] with `MARK` replaced by `mark`.
fn web(mark: &str) -> String {
    WEB.replace("MARK", mark)
}

/// Starts a containerd with busybox imported into `namespace`, and an agent
/// re-listing its manifest directory every [`RESYNC`].
fn setup(namespace: &str) -> (PrivateContainerd, Agent) {
    let containerd = PrivateContainerd::start().expect("starting containerd");
    containerd
        .import_busybox(namespace, BUSYBOX)
        .expect("importing busybox");
    let mut agent = Agent::start(&containerd, namespace).expect("starting the agent");
    let resync = RESYNC.as_secs().to_string();
    agent
        .restart_with_flags(&["--manifest-resync-seconds", &resync])
        .expect("restarting the agent with a short re-list");
    (containerd, agent)
}

/// What identifies one incarnation of a running pod.
#[derive(Debug, Clone, PartialEq)]
struct Incarnation {
    uid: String,
    /// containerStatuses[].containerID, without the `containerd://` scheme.
    container_ids: Vec<String>,
    restart_counts: Vec<i64>,
    /// The PID of each of the pod's containerd tasks (sandbox included).
    task_pids: BTreeMap<String, u32>,
}

/// (task ID → PID) of every task in `namespace`.
fn tasks(containerd: &PrivateContainerd, namespace: &str) -> BTreeMap<String, u32> {
    common::tasks::tasks(containerd, namespace)
        .into_iter()
        .map(|t| (t.id, t.pid))
        .collect()
}

/// Waits until pod `name` runs all its `count` containers and, if given,
/// has a UID other than `not_uid`; returns what it is then.
fn wait_running(
    containerd: &PrivateContainerd,
    agent: &Agent,
    name: &str,
    count: usize,
    not_uid: Option<&str>,
) -> Incarnation {
    let mut pod = serde_json::Value::Null;
    agent.wait_until(
        &format!("{name} running {count} containers"),
        Duration::from_secs(20),
        || {
            pod = agent.pod(name).unwrap_or_default();
            pod["metadata"]["uid"].as_str() != not_uid && running_containers(&pod).len() == count
        },
    );
    incarnation(containerd, agent, &pod)
}

fn incarnation(
    containerd: &PrivateContainerd,
    agent: &Agent,
    pod: &serde_json::Value,
) -> Incarnation {
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let container_ids: Vec<String> = statuses
        .iter()
        .map(|s| {
            let id = s["containerID"].as_str().unwrap_or_default();
            id.trim_start_matches("containerd://").to_string()
        })
        .collect();
    let task_pids = tasks(containerd, &agent.namespace)
        .into_iter()
        .filter(|(id, _)| uid_owns(&uid, id))
        .collect();
    Incarnation {
        uid,
        container_ids,
        restart_counts: statuses
            .iter()
            .map(|s| s["restartCount"].as_i64().unwrap_or(-1))
            .collect(),
        task_pids,
    }
}

/// Whether container `id` belongs to the pod `uid`.
fn uid_owns(uid: &str, id: &str) -> bool {
    podkeeper::runtime::labels::prefix_of(id)
        == Some(podkeeper::runtime::labels::id_prefix(uid).as_str())
}

/// The current pod `name`, re-read: what it is now.
fn now(containerd: &PrivateContainerd, agent: &Agent, name: &str) -> Incarnation {
    let pod = agent
        .pod(name)
        .unwrap_or_else(|| panic!("pod {name} is gone\nagent log:\n{}", agent.log()));
    incarnation(containerd, agent, &pod)
}

/// Asserts that `old`'s containers and tasks no longer exist.
fn assert_gone(containerd: &PrivateContainerd, agent: &Agent, old: &Incarnation) {
    agent.wait_until(
        "the old pod's containers removed",
        Duration::from_secs(10),
        || {
            let left = container_ids(containerd, &agent.namespace);
            let tasks = tasks(containerd, &agent.namespace);
            left.iter().all(|c| !uid_owns(&old.uid, c))
                && tasks.keys().all(|t| !uid_owns(&old.uid, t))
        },
    );
}

/// Writes `text` into the existing file, as `echo >` or an editor that
/// saves in place does (same inode: truncate, then write).
fn write_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("opening the manifest");
    file.write_all(text.as_bytes())
        .expect("writing the manifest");
}

/// `podkeeper ARGS`: stdout, panicking with stderr when it fails.
fn cli_ok(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "podkeeper {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The lines of `podkeeper events` that carry `reason` and mention `text`.
fn event_lines(agent: &Agent, reason: &str, text: &str) -> Vec<String> {
    cli_ok(agent, &["events"])
        .lines()
        .filter(|l| l.contains(reason) && l.contains(text))
        .map(String::from)
        .collect()
}

/// How many times the agent logged that it ignores `path`.
fn times_ignored(agent: &Agent, path: &Path) -> usize {
    let field = format!("file={}", path.display());
    agent
        .log()
        .lines()
        .filter(|l| l.contains("ignoring") && l.trim_end().ends_with(&field))
        .count()
}

#[test]
fn edits_in_place_and_by_rename_replace_the_pod_and_leftovers_are_ignored() {
    let test = "edits_in_place_and_by_rename_replace_the_pod_and_leftovers_are_ignored";
    if !e2e_enabled(test) {
        return;
    }
    let (containerd, agent) = setup("e2e-edit");
    let name = format!("web-{NODE}");
    let path = agent.manifests.join("web.yaml");
    agent.write_manifest("web.yaml", &web("v1"));
    let v1 = wait_running(&containerd, &agent, &name, 1, None);
    assert_eq!(v1.task_pids.len(), 2, "sandbox and app: {v1:?}");

    let edited = Instant::now();
    write_in_place(&path, &web("v2"));
    let v2 = wait_running(&containerd, &agent, &name, 1, Some(&v1.uid));
    eprintln!("in-place edit → new pod running: {:?}", edited.elapsed());
    assert_gone(&containerd, &agent, &v1);
    assert!(v2
        .container_ids
        .iter()
        .all(|c| !v1.container_ids.contains(c)));

    let edited = Instant::now();
    agent.write_manifest("web.yaml", &web("v3"));
    let v3 = wait_running(&containerd, &agent, &name, 1, Some(&v2.uid));
    eprintln!("edit by rename → new pod running: {:?}", edited.elapsed());
    assert_gone(&containerd, &agent, &v2);

    // What editors and people leave beside a manifest: none is read, even
    // the one holding the same pod, nor a subdirectory's manifests.
    let intruder = web("intruder").replace("name: web", "name: intruder");
    let leftovers = [
        ("web.yaml~", web("v2")),
        ("web.yaml.bak", intruder.clone()),
        (".web.yaml.swp", intruder.clone()),
        ("web.yaml.backup", intruder.clone()),
        ("web.yaml.orig", intruder.clone()),
        ("#web.yaml#", intruder.clone()),
    ];
    for (file, text) in &leftovers {
        std::fs::write(agent.manifests.join(file), text).unwrap();
    }
    std::fs::create_dir(agent.manifests.join("old.yaml")).unwrap();
    std::fs::write(agent.manifests.join("old.yaml/web.yaml"), &intruder).unwrap();
    std::thread::sleep(TWO_RESYNCS);
    // And inotify-triggered passes: touching the leftovers again.
    for (file, text) in &leftovers {
        std::fs::write(agent.manifests.join(file), text).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(TWO_RESYNCS);

    let items = agent.pods()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<_> = items.iter().map(|p| &p["metadata"]["name"]).collect();
    assert_eq!(names, [&name], "exactly the expected pod runs");
    assert_eq!(
        now(&containerd, &agent, &name),
        v3,
        "and it was not restarted"
    );
    let entries = leftovers.iter().map(|(file, _)| *file).chain(["old.yaml"]);
    let warnings = event_lines(&agent, "Warning", "");
    for file in entries {
        let path = agent.manifests.join(file).display().to_string();
        assert!(
            warnings.iter().all(|w| !w.contains(&path)),
            "{file} was read: {warnings:?}"
        );
        let times = times_ignored(&agent, &agent.manifests.join(file));
        assert_eq!(
            times,
            1,
            "{file} should be logged as ignored once\nagent log:\n{}",
            agent.log()
        );
    }
}

#[test]
fn formatting_only_rewrites_keep_the_pod_and_its_containers() {
    if !e2e_enabled("formatting_only_rewrites_keep_the_pod_and_its_containers") {
        return;
    }
    let (containerd, agent) = setup("e2e-format");
    let name = format!("web-{NODE}");
    let path = agent.manifests.join("web.yaml");
    agent.write_manifest("web.yaml", &web("v1"));
    let first = wait_running(&containerd, &agent, &name, 1, None);
    let seen =
        agent.pod(&name).unwrap()["metadata"]["annotations"]["kubernetes.io/config.seen"].clone();
    assert!(seen.is_string(), "{seen}");

    let reformatted = "# The web pod, reformatted: keys reordered, comments,
# other indentation and quoting, flow and block styles swapped.
kind: Pod
spec:
    containers:
        -   command:
                - sh
                - \"-c\"
                - \"echo v1; exec sleep 3600\"
            image: \"podkeeper.local/busybox:latest\"   # same image
            name: app
    terminationGracePeriodSeconds: 1
metadata:
    labels:
        app: web
    name: web
apiVersion: v1
";
    let json = r#"{"apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "web", "labels": {"app": "web"}},
  "spec": {"terminationGracePeriodSeconds": 1, "containers": [
    {"name": "app", "image": "podkeeper.local/busybox:latest",
     "command": ["sh", "-c", "echo v1; exec sleep 3600"]}]}}
"#;
    let rewrites: [(&str, &dyn Fn()); 4] = [
        ("identical content, in place", &|| {
            write_in_place(&path, &web("v1"))
        }),
        ("identical content, by rename", &|| {
            agent.write_manifest("web.yaml", &web("v1"))
        }),
        ("reformatted YAML, in place", &|| {
            write_in_place(&path, reformatted)
        }),
        ("the same pod as JSON, by rename", &|| {
            agent.write_manifest("web.yaml", json)
        }),
    ];
    for (what, rewrite) in rewrites {
        rewrite();
        std::thread::sleep(TWO_RESYNCS);
        let pod = agent.pod(&name).unwrap();
        assert_eq!(
            incarnation(&containerd, &agent, &pod),
            first,
            "{what} restarted the pod"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["kubernetes.io/config.seen"], seen,
            "{what}: the pod was not seen anew"
        );
    }
    assert!(first.restart_counts.iter().all(|c| *c == 0), "{first:?}");
    assert!(
        event_lines(&agent, "Warning", "web.yaml").is_empty(),
        "no warning about a valid file"
    );
}

#[test]
fn a_truncated_manifest_keeps_the_last_good_pod_running() {
    if !e2e_enabled("a_truncated_manifest_keeps_the_last_good_pod_running") {
        return;
    }
    let (containerd, agent) = setup("e2e-truncate");
    let name = format!("web-{NODE}");
    let path = agent.manifests.join("web.yaml");
    let good = web("v1");
    agent.write_manifest("web.yaml", &good);
    let first = wait_running(&containerd, &agent, &name, 1, None);

    // Cut inside the quoted command: a half-written file, not a shorter pod.
    let cut = good.find("exec sleep").unwrap();
    assert!(
        podkeeper::manifest::parse::parse_manifest(&good.as_bytes()[..cut], &path, NODE).is_err(),
        "the test needs a cut that does not parse"
    );
    let truncated = Instant::now();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(cut as u64))
        .expect("truncating the manifest");
    let file = path.display().to_string();
    agent.wait_until(
        "a FailedParse warning naming the file",
        Duration::from_secs(5),
        || !event_lines(&agent, "FailedParse", &file).is_empty(),
    );
    eprintln!("truncated → warning: {:?}", truncated.elapsed());
    let warning = event_lines(&agent, "FailedParse", &file).join("\n");
    assert!(warning.starts_with("Warning"), "{warning}");
    assert!(warning.contains("invalid YAML"), "{warning}");
    assert!(warning.contains(&name), "names the pod kept: {warning}");

    std::thread::sleep(TWO_RESYNCS);
    assert_eq!(
        now(&containerd, &agent, &name),
        first,
        "broken file restarted the pod"
    );
    let warning = event_lines(&agent, "FailedParse", &file).join("\n");
    assert!(
        !warning.contains("(x"),
        "reported again on a re-list: {warning}"
    );

    write_in_place(&path, &good);
    std::thread::sleep(TWO_RESYNCS);
    let after = now(&containerd, &agent, &name);
    assert_eq!(after, first, "restoring the content restarted the pod");
    assert_eq!(after.restart_counts, [0]);
}

#[test]
fn the_first_file_wins_a_duplicate_pod_name() {
    if !e2e_enabled("the_first_file_wins_a_duplicate_pod_name") {
        return;
    }
    let (containerd, agent) = setup("e2e-duplicate");
    let name = format!("web-{NODE}");
    let (a, b) = (web("from-a"), web("from-b"));
    let uid_of = |file: &str, text: &str| {
        let path = agent.manifests.join(file);
        podkeeper::manifest::parse::parse_manifest(text.as_bytes(), &path, NODE)
            .unwrap()
            .uid()
            .to_string()
    };
    agent.write_manifest("a.yaml", &a);
    agent.write_manifest("b.yaml", &b);
    let winner = wait_running(&containerd, &agent, &name, 1, None);
    assert_eq!(winner.uid, uid_of("a.yaml", &a), "a.yaml's pod runs");

    let later = agent.manifests.join("b.yaml").display().to_string();
    agent.wait_until(
        "a FailedValidation warning naming b.yaml",
        Duration::from_secs(5),
        || !event_lines(&agent, "FailedValidation", &later).is_empty(),
    );
    let warning = event_lines(&agent, "FailedValidation", &later).join("\n");
    assert!(warning.starts_with("Warning"), "{warning}");
    assert!(warning.contains("duplicate pod name"), "{warning}");
    let of_pod = cli_ok(&agent, &["events", "web"]);
    assert!(of_pod.contains("FailedValidation"), "{of_pod}");

    std::thread::sleep(TWO_RESYNCS);
    assert_eq!(
        now(&containerd, &agent, &name),
        winner,
        "the first file's pod keeps running"
    );
    let warning = event_lines(&agent, "FailedValidation", &later).join("\n");
    assert!(
        !warning.contains("(x"),
        "reported again on a re-list: {warning}"
    );
    let wide = cli_ok(&agent, &["get", "pods", "-o", "wide"]);
    assert!(
        wide.contains("a.yaml") && !wide.contains("b.yaml"),
        "{wide}"
    );

    // Without the first file the second one's pod takes over.
    agent.remove_manifest("a.yaml");
    let second = wait_running(&containerd, &agent, &name, 1, Some(&winner.uid));
    assert_eq!(second.uid, uid_of("b.yaml", &b));
    assert_gone(&containerd, &agent, &winner);
}

#[test]
fn the_cli_accepts_the_short_pod_name() {
    if !e2e_enabled("the_cli_accepts_the_short_pod_name") {
        return;
    }
    let (containerd, agent) = setup("e2e-short");
    let name = format!("web-{NODE}");
    agent.write_manifest("web.yaml", &web("hello-from-web"));
    // A second pod whose events must not show up under web's.
    let other = web("hello-from-other")
        .replace("name: web", "name: other")
        .replace("name: app", "name: sidecar");
    agent.write_manifest("other.yaml", &other);
    wait_running(&containerd, &agent, &name, 1, None);
    wait_running(&containerd, &agent, &format!("other-{NODE}"), 1, None);

    for pod in ["web", name.as_str()] {
        let described = cli_ok(&agent, &["describe", "pod", pod]);
        // kubectl's layout: the column width depends on the other keys.
        assert_eq!(
            described
                .lines()
                .next()
                .map(|l| l.split_whitespace().collect()),
            Some(vec!["Name:", name.as_str()]),
            "{described}"
        );
        assert!(described.contains("Started"), "{described}");
        assert!(!described.contains("sidecar"), "{described}");

        agent.wait_until("the log written", Duration::from_secs(5), || {
            cli_ok(&agent, &["logs", pod]).contains("hello-from-web")
        });

        let events = cli_ok(&agent, &["events", pod]);
        assert!(
            events.contains("Started") && events.contains("app"),
            "{events}"
        );
        assert!(!events.contains("sidecar"), "{events}");

        let listed = cli_ok(&agent, &["get", "pods", pod]);
        assert!(
            listed.contains(&name) && listed.contains("Running"),
            "{listed}"
        );
        assert!(!listed.contains("other"), "{listed}");
        let json: serde_json::Value =
            serde_json::from_str(&cli_ok(&agent, &["get", "pods", pod, "-o", "json"])).unwrap();
        assert_eq!(json["metadata"]["name"], name.as_str());

        let in_namespace = cli_ok(&agent, &["describe", "pod", pod, "-n", "default"]);
        assert!(in_namespace.contains(&name), "{in_namespace}");
    }
    let missing = agent.cli(&["describe", "pod", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn the_directory_is_re_listed_periodically_and_only_then_when_idle() {
    if !e2e_enabled("the_directory_is_re_listed_periodically_and_only_then_when_idle") {
        return;
    }
    use notify::Watcher;
    let (_containerd, agent) = setup("e2e-relist");
    // Not a valid pod: this is about reading the file, not running it.
    agent.write_manifest("idle.yaml", "apiVersion: v1\nkind: Pod\n");
    std::thread::sleep(Duration::from_secs(1));

    // Count the agent's opens of the file while nothing changes.
    let (tx, rx) = std::sync::mpsc::channel();
    let target = agent.manifests.join("idle.yaml");
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let open = matches!(
                event.kind,
                notify::EventKind::Access(notify::event::AccessKind::Open(_))
            );
            if open && event.paths.contains(&target) {
                let _ = tx.send(());
            }
        }
    })
    .unwrap();
    watcher
        .watch(&agent.manifests, notify::RecursiveMode::NonRecursive)
        .unwrap();
    let window = Duration::from_secs(4);
    std::thread::sleep(window);
    drop(watcher);
    let reads = rx.try_iter().count();
    let expected = (window.as_secs() / RESYNC.as_secs()) as usize;
    eprintln!("reads of an unchanged file in {window:?}: {reads} (re-list every {RESYNC:?})");
    assert!(
        reads + 1 >= expected && reads <= expected + 1,
        "{reads} reads in {window:?}: the periodic re-list should read it about {expected} times"
    );
}
