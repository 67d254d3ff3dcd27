use super::*;

fn at(second: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_700_000_000 + second).unwrap()
}

fn occurrence(object: ObjectRef, message: &str, second: i64) -> Occurrence {
    Occurrence {
        object,
        event_type: EventType::Warning,
        reason: "FailedParse".into(),
        message: message.into(),
        at: at(second),
    }
}

fn manifest() -> ObjectRef {
    ObjectRef::manifest_file(Path::new("/m/a.yaml"))
}

fn pod_object(name: &str, uid: &str) -> ObjectRef {
    ObjectRef {
        kind: "Pod".into(),
        namespace: "default".into(),
        name: name.into(),
        uid: uid.into(),
        field_path: String::new(),
    }
}

/// A log and its folding task's state over the journal in `dir`, as the
/// agent would open them at time `now`.
fn open(dir: &Path, now: i64) -> (Arc<EventLog>, Folder) {
    let log = Arc::new(EventLog::new("node1".into()));
    let folder = Folder::open(
        log.clone(),
        &dir.join(JOURNAL_FILE),
        Retention::default(),
        at(now),
    )
    .unwrap();
    (log, folder)
}

fn seconds(t: &Option<Time>) -> i64 {
    t.as_ref().unwrap().0.as_second() - 1_700_000_000
}

#[test]
fn identical_events_merge_with_count_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut folder) = open(dir.path(), 0);
    folder.fold(occurrence(manifest(), "bad", 100));
    folder.fold(occurrence(manifest(), "bad", 160));
    folder.fold(occurrence(manifest(), "other", 170));
    let events = log.list();
    assert_eq!(events.len(), 2);
    let merged = &events[0];
    assert_eq!(merged.count, Some(2));
    assert_eq!(seconds(&merged.first_timestamp), 100);
    assert_eq!(seconds(&merged.last_timestamp), 160);
    assert_eq!(
        merged.source.as_ref().unwrap().host.as_deref(),
        Some("node1")
    );
    assert_eq!(merged.reporting_instance.as_deref(), Some("node1"));
    assert_eq!(merged.reporting_component.as_deref(), Some("podkeeper"));
    assert_eq!(merged.type_.as_deref(), Some("Warning"));
    assert_eq!(
        merged.metadata.name.as_deref(),
        Some(format!("/m/a.yaml.{:x}", at(100).as_nanosecond()).as_str())
    );
}

#[test]
fn a_restart_keeps_every_event_and_keeps_counting_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let web = pod_object("web-node1", "u1");
    let before = {
        let (log, mut folder) = open(dir.path(), 0);
        for second in [10, 20, 30] {
            folder.fold(occurrence(web.clone(), "crash", second));
        }
        folder.fold(occurrence(manifest(), "bad", 40));
        folder.finish_batch(at(40));
        log.list()
        // Dropped without any shutdown, as by SIGKILL.
    };
    let (log, mut folder) = open(dir.path(), 100);
    let after = log.list();
    assert_eq!(after, before);
    folder.fold(occurrence(web.clone(), "crash", 110));
    let events = log.list_for(&EventFilter {
        uid: Some("u1".into()),
        ..Default::default()
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.name, before[0].metadata.name);
    assert_eq!(events[0].count, Some(4));
    assert_eq!(seconds(&events[0].first_timestamp), 10);
    assert_eq!(seconds(&events[0].last_timestamp), 110);
}

#[test]
fn expired_events_are_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_, mut folder) = open(dir.path(), 0);
        folder.fold(occurrence(manifest(), "old", 0));
        folder.fold(occurrence(manifest(), "new", 3000));
        folder.finish_batch(at(3000));
    }
    let (log, _) = open(dir.path(), 3601);
    let messages: Vec<_> = log
        .list()
        .iter()
        .map(|e| e.message.clone().unwrap())
        .collect();
    assert_eq!(messages, ["new"]);
}

#[test]
fn held_back_occurrences_are_counted_but_not_sent_to_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut folder) = open(dir.path(), 0);
    let mut updates = log.subscribe();
    for second in 0..30 {
        folder.fold(occurrence(manifest(), "bad", second));
    }
    let mut sent = 0;
    while updates.try_recv().is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 25);
    assert_eq!(log.list()[0].count, Some(25));
    // The next one let through carries every occurrence in its count.
    folder.fold(occurrence(manifest(), "bad", 310));
    assert_eq!(log.list()[0].count, Some(31));
}

#[test]
fn queries_filter_by_namespace_name_and_uid_and_resolve_short_names() {
    let dir = tempfile::tempdir().unwrap();
    let (log, mut folder) = open(dir.path(), 0);
    folder.fold(occurrence(pod_object("web-node1", "u1"), "a", 1));
    folder.fold(occurrence(pod_object("web-node1", "u2"), "b", 2));
    folder.fold(occurrence(pod_object("db-node1", "u3"), "c", 3));
    let messages = |filter: EventFilter| -> Vec<String> {
        log.list_for(&filter)
            .iter()
            .map(|e| e.message.clone().unwrap())
            .collect()
    };
    let web = EventFilter {
        namespace: Some("default".into()),
        name: Some("web-node1".into()),
        uid: None,
    };
    assert_eq!(messages(web.clone()), ["a", "b"]);
    assert_eq!(
        messages(EventFilter {
            uid: Some("u2".into()),
            ..web
        }),
        ["b"]
    );
    assert_eq!(
        messages(EventFilter {
            namespace: Some("other".into()),
            ..Default::default()
        }),
        Vec::<String>::new()
    );
    assert_eq!(log.list().len(), 3);
    assert_eq!(
        log.resolve_name("default", "web").as_deref(),
        Some("web-node1")
    );
    assert_eq!(
        log.resolve_name("default", "db-node1").as_deref(),
        Some("db-node1")
    );
    assert_eq!(log.resolve_name("kube-system", "web"), None);
}

#[test]
fn a_full_queue_counts_drops_instead_of_blocking() {
    let (recorder, _rx) = test_recorder();
    for _ in 0..QUEUE_CAPACITY + 3 {
        recorder.record(manifest(), EventType::Normal, "R", "m");
    }
    assert_eq!(recorder.dropped(), 3);
}

#[test]
fn container_events_carry_the_field_path() {
    let pod = crate::manifest::parse::parse_manifest(
        b"apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: app, image: x}]}\n",
        Path::new("/m/w.yaml"),
        "n",
    )
    .unwrap();
    let object = ObjectRef::container(&pod, "app", false);
    assert_eq!(object.field_path, "spec.containers{app}");
    assert_eq!(object.name, "w-n");
    let init = ObjectRef::container(&pod, "app", true);
    assert_eq!(init.field_path, "spec.initContainers{app}");
    let event = new_event(&occurrence(init, "m", 0), "n");
    assert_eq!(event.involved_object.api_version.as_deref(), Some("v1"));
    assert_eq!(
        event.involved_object.field_path.as_deref(),
        Some("spec.initContainers{app}")
    );
    let sandbox = new_event(&occurrence(ObjectRef::pod(&pod), "m", 0), "n");
    assert_eq!(sandbox.involved_object.field_path, None);
}
