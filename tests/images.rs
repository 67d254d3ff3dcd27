//! End-to-end: images from a real registry on 127.0.0.1 and from archives
//! dropped into the images directory, into a private containerd.

mod common;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::agent::{running_containers, waiting_reason, Agent, NODE};
use common::archives;
use common::containerd::{e2e_enabled, PrivateContainerd};
use common::registry::TestRegistry;

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
    )
}

fn wait_running(agent: &Agent, name: &str, timeout: Duration) {
    let full = format!("{name}-{NODE}");
    agent.wait_until(&format!("{full} running"), timeout, || {
        agent
            .pod(&full)
            .is_some_and(|p| running_containers(&p).len() == 1)
    });
}

fn reason_of(agent: &Agent, name: &str) -> Option<String> {
    waiting_reason(&agent.pod(&format!("{name}-{NODE}"))?, "c")
}

#[test]
fn pods_pull_by_tag_by_digest_and_from_a_multi_platform_index() {
    if !e2e_enabled("pods_pull_by_tag_by_digest_and_from_a_multi_platform_index") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let busybox = archives::busybox_oci(containerd.dir(), "podkeeper.test/busybox:latest").unwrap();
    let digest = registry.push_oci_archive(&busybox, "bb:v1").unwrap();
    let multi = archives::multiarch_oci(containerd.dir(), "podkeeper.test/multi:v1").unwrap();
    registry.push_oci_archive(&multi, "multi:v1").unwrap();

    let agent = Agent::start(&containerd, "e2e-pull").unwrap();
    agent.write_manifest("tag.yaml", &pod("tag", &format!("{host}/bb:v1")));
    agent.write_manifest(
        "digest.yaml",
        &pod("digest", &format!("{host}/bb@{digest}")),
    );
    agent.write_manifest("multi.yaml", &pod("multi", &format!("{host}/multi:v1")));
    for name in ["tag", "digest", "multi"] {
        wait_running(&agent, name, Duration::from_secs(30));
    }
    let pod = agent.pod(&format!("digest-{NODE}")).unwrap();
    assert_eq!(
        pod["status"]["containerStatuses"][0]["imageID"],
        digest.as_str()
    );
    let images = containerd.ctr("e2e-pull", &["images", "ls", "-q"]).unwrap();
    for name in [
        format!("{host}/bb:v1"),
        format!("{host}/bb@{digest}"),
        format!("{host}/multi:v1"),
    ] {
        assert!(images.contains(&name), "{name} not in {images}");
    }
}

#[test]
fn ten_pods_needing_one_image_cause_one_pull() {
    if !e2e_enabled("ten_pods_needing_one_image_cause_one_pull") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let registry = TestRegistry::start().unwrap();
    let host = registry.host();
    let busybox = archives::busybox_oci(containerd.dir(), "podkeeper.test/busybox:latest").unwrap();
    registry.push_oci_archive(&busybox, "one:v1").unwrap();
    registry.push_oci_archive(&busybox, "ten:v1").unwrap();

    // What one pull costs, in a namespace of its own (content is per namespace).
    let single = Agent::start(&containerd, "e2e-one").unwrap();
    single.write_manifest("p.yaml", &pod("p", &format!("{host}/one:v1")));
    wait_running(&single, "p", Duration::from_secs(30));
    let one_pull = registry.pull_requests("one");
    assert!(
        one_pull >= 2,
        "a pull fetches a manifest and blobs: {one_pull}"
    );

    let agent = Agent::start(&containerd, "e2e-ten").unwrap();
    for i in 0..10 {
        agent.write_manifest(
            &format!("p{i}.yaml"),
            &pod(&format!("p{i}"), &format!("{host}/ten:v1")),
        );
    }
    for i in 0..10 {
        wait_running(&agent, &format!("p{i}"), Duration::from_secs(60));
    }
    let ten_pulls = registry.pull_requests("ten");
    eprintln!("registry GETs: one pod {one_pull}, ten pods {ten_pulls}");
    assert_eq!(ten_pulls, one_pull, "ten pods must share one pull");
}

#[test]
fn registry_credentials_are_used_and_a_wrong_password_backs_off_as_unauthorized() {
    if !e2e_enabled("registry_credentials_are_used_and_a_wrong_password_backs_off_as_unauthorized")
    {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let registry = TestRegistry::start_with_htpasswd("alice", "s3cret").unwrap();
    let host = registry.host();
    let busybox = archives::busybox_oci(containerd.dir(), "podkeeper.test/busybox:latest").unwrap();
    registry.push_oci_archive(&busybox, "private:v1").unwrap();
    let image = format!("{host}/private:v1");

    let good = Agent::start_with(&containerd, "e2e-auth-good", |a| {
        std::fs::write(&a.registry_config, registry.docker_config_json()).unwrap();
    })
    .unwrap();
    good.write_manifest("p.yaml", &pod("p", &image));
    wait_running(&good, "p", Duration::from_secs(30));

    let bad = Agent::start_with(&containerd, "e2e-auth-bad", |a| {
        let wrong = registry
            .docker_config_json()
            .replace(&base64_of("alice:s3cret"), &base64_of("alice:wrong"));
        std::fs::write(&a.registry_config, wrong).unwrap();
    })
    .unwrap();
    bad.write_manifest("p.yaml", &pod("p", &image));
    bad.wait_until("ErrImagePull", Duration::from_secs(30), || {
        reason_of(&bad, "p").as_deref() == Some("ErrImagePull")
    });
    let message = bad.pod(&format!("p-{NODE}")).unwrap()["status"]["containerStatuses"][0]["state"]
        ["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(message.contains("unauthorized"), "{message}");
    bad.wait_until("ImagePullBackOff", Duration::from_secs(15), || {
        reason_of(&bad, "p").as_deref() == Some("ImagePullBackOff")
    });
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn a_pod_backs_off_while_the_registry_is_down_and_starts_when_it_returns() {
    if !e2e_enabled("a_pod_backs_off_while_the_registry_is_down_and_starts_when_it_returns") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let mut registry = TestRegistry::start().unwrap();
    let busybox = archives::busybox_oci(containerd.dir(), "podkeeper.test/busybox:latest").unwrap();
    registry.push_oci_archive(&busybox, "flaky:v1").unwrap();
    let image = format!("{}/flaky:v1", registry.host());
    registry.stop();

    let agent = Agent::start(&containerd, "e2e-down").unwrap();
    agent.write_manifest("p.yaml", &pod("p", &image));
    agent.wait_until("ImagePullBackOff", Duration::from_secs(30), || {
        reason_of(&agent, "p").as_deref() == Some("ImagePullBackOff")
    });
    registry.restart().unwrap();
    // The first retry comes 10 s after the failed pull.
    wait_running(&agent, "p", Duration::from_secs(45));
}

/// A TCP proxy to `upstream` that holds its first connection without
/// passing anything on (a registry that stalls) and forwards the others;
/// the receiver hears when the first one arrived.
fn stalling_proxy(upstream: String) -> (String, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (arrived, first) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = None;
        for client in listener.incoming().flatten() {
            if held.is_none() {
                held = Some(client);
                let _ = arrived.send(());
                continue;
            }
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (Ok(client_end), Ok(server_end)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            pipe(client, server_end);
            pipe(server, client_end);
        }
    });
    (address, first)
}

/// Copies `from` into `to` on a thread of its own until `from` ends.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[test]
fn an_interrupted_pull_leaves_nothing_behind_and_the_next_one_succeeds() {
    if !e2e_enabled("an_interrupted_pull_leaves_nothing_behind_and_the_next_one_succeeds") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let registry = TestRegistry::start().unwrap();
    let busybox = archives::busybox_oci(containerd.dir(), "podkeeper.test/busybox:latest").unwrap();
    registry.push_oci_archive(&busybox, "stall:v1").unwrap();
    let (proxy, first_connection) = stalling_proxy(registry.host());
    let image = format!("{proxy}/stall:v1");
    let agent = Agent::start(&containerd, "e2e-interrupt").unwrap();

    let mut interrupted = Command::new(env!("CARGO_BIN_EXE_podkeeper"))
        .args(["image", "pull", &image, "--state-dir"])
        .arg(&agent.state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    first_connection
        .recv_timeout(Duration::from_secs(30))
        .expect("the pull reaches the registry");
    interrupted.kill().unwrap();
    interrupted.wait().unwrap();

    let next = agent.cli(&["image", "pull", &image]);
    assert!(
        next.status.success(),
        "{}\nagent log:\n{}",
        String::from_utf8_lossy(&next.stderr),
        agent.log()
    );
    let images = containerd
        .ctr("e2e-interrupt", &["images", "ls", "-q"])
        .unwrap();
    assert!(images.contains(&image), "{image} not in {images}");
}

#[test]
fn archives_in_the_images_dir_are_imported_once_and_broken_ones_reported() {
    if !e2e_enabled("archives_in_the_images_dir_are_imported_once_and_broken_ones_reported") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let work = containerd.dir().join("archives");
    std::fs::create_dir_all(&work).unwrap();
    let oci = archives::busybox_oci(&work, "oci.podkeeper.test/bb:v1").unwrap();
    let docker =
        archives::gzip(&archives::busybox_docker(&work, "docker.podkeeper.test/bb:v2").unwrap())
            .unwrap();

    let mut agent = Agent::start(&containerd, "e2e-import").unwrap();
    agent.write_manifest("oci.yaml", &pod("oci", "oci.podkeeper.test/bb:v1"));
    agent.write_manifest("docker.yaml", &pod("docker", "docker.podkeeper.test/bb:v2"));
    let never = pod("never", "docker.podkeeper.test/bb:v2").replace("IfNotPresent", "Never");
    agent.write_manifest("never.yaml", &never);
    agent.wait_until(
        "both pods waiting for their images",
        Duration::from_secs(30),
        || reason_of(&agent, "oci").is_some() && reason_of(&agent, "docker").is_some(),
    );
    agent.wait_until("ErrImageNeverPull", Duration::from_secs(10), || {
        reason_of(&agent, "never").as_deref() == Some("ErrImageNeverPull")
    });

    let copy_in = |source: &Path, name: &str| {
        std::fs::copy(source, agent.images.join(name)).unwrap();
    };
    copy_in(&oci, "busybox-oci.tar");
    copy_in(&docker, "busybox-docker.tar.gz");
    // Pods start well before their 10 s back-off ends: the import wakes them.
    wait_running(&agent, "oci", Duration::from_secs(8));
    wait_running(&agent, "docker", Duration::from_secs(8));
    wait_running(&agent, "never", Duration::from_secs(8));

    let bytes = std::fs::read(&oci).unwrap();
    std::fs::write(agent.images.join("broken.tar"), &bytes[..bytes.len() / 3]).unwrap();
    agent.wait_until(
        "the broken archive reported",
        Duration::from_secs(15),
        || {
            agent
                .log()
                .lines()
                .any(|l| l.contains("broken.tar") && l.contains("cannot import image archive"))
        },
    );
    assert!(agent.is_running());
    wait_running(&agent, "oci", Duration::from_secs(1));

    let before_restart = agent.log().len();
    agent.restart().unwrap();
    agent.wait_until(
        "both archives skipped after the restart",
        Duration::from_secs(15),
        || {
            let log = agent.log()[before_restart..].to_string();
            ["busybox-oci.tar", "busybox-docker.tar.gz"]
                .iter()
                .all(|name| {
                    log.lines()
                        .any(|l| l.contains(name) && l.contains("already imported"))
                })
        },
    );
    let log = agent.log()[before_restart..].to_string();
    assert!(
        !log.contains("imported image archive"),
        "an archive was imported again:\n{log}"
    );
}

#[test]
fn removed_images_are_garbage_collected_and_images_in_use_never_are() {
    if !e2e_enabled("removed_images_are_garbage_collected_and_images_in_use_never_are") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let namespace = "e2e-gc";
    let agent = Agent::start(&containerd, namespace).unwrap();
    let busybox = archives::busybox_oci(containerd.dir(), "used.podkeeper.test/bb:v1").unwrap();
    let data = containerd.dir().join("data.tar");
    common::synthetic::data_image_archive(&data, "unused.podkeeper.test/data:v1", 1 << 20, 7)
        .unwrap();
    for archive in [&busybox, &data] {
        let out = agent.cli(&["image", "import", archive.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    agent.write_manifest("p.yaml", &pod("p", "used.podkeeper.test/bb:v1"));
    wait_running(&agent, "p", Duration::from_secs(30));

    let content = || containerd.ctr(namespace, &["content", "ls", "-q"]).unwrap();
    let snapshots = || containerd.ctr(namespace, &["snapshots", "ls"]).unwrap();
    let blobs_before = content();
    let committed_before = snapshots()
        .lines()
        .filter(|l| l.contains("Committed"))
        .count();
    assert_eq!(
        committed_before,
        3,
        "pause, busybox and data layers: {}",
        snapshots()
    );

    let refused = agent.cli(&["image", "rm", "used.podkeeper.test/bb:v1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("used by pod(s) default/p-node1"));

    let removed = agent.cli(&["image", "rm", "unused.podkeeper.test/data:v1"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let blobs_after = content();
    assert_eq!(
        blobs_before.lines().count() - blobs_after.lines().count(),
        3,
        "the data image's manifest, config and layer are collected"
    );
    for blob in blobs_after.lines() {
        assert!(blobs_before.contains(blob));
    }
    let committed_after = snapshots()
        .lines()
        .filter(|l| l.contains("Committed"))
        .count();
    assert_eq!(
        committed_after,
        2,
        "only the data layer's snapshot is collected: {}",
        snapshots()
    );
    wait_running(&agent, "p", Duration::from_secs(1));
}

/// The target digest of image `name` in `namespace`, from `ctr images ls`.
fn image_digest(containerd: &PrivateContainerd, namespace: &str, name: &str) -> Option<String> {
    let listing = containerd.ctr(namespace, &["images", "ls"]).unwrap();
    listing.lines().find_map(|line| {
        let mut columns = line.split_whitespace();
        (columns.next() == Some(name))
            .then(|| columns.nth(1).map(str::to_string))
            .flatten()
    })
}

#[test]
fn an_archive_cannot_replace_the_built_in_pause_image() {
    if !e2e_enabled("an_archive_cannot_replace_the_built_in_pause_image") {
        return;
    }
    let containerd = PrivateContainerd::start().unwrap();
    let namespace = "e2e-pause-pin";
    let pause = podkeeper::runtime::pause::image_name();
    let built = podkeeper::runtime::pause::image_blobs()
        .unwrap()
        .manifest
        .digest;
    containerd
        .import_busybox(namespace, common::agent::BUSYBOX)
        .unwrap();
    // Another containerd client left busybox under the pause image's name.
    containerd.import_busybox(namespace, &pause).unwrap();
    assert_ne!(
        image_digest(&containerd, namespace, &pause),
        Some(built.clone())
    );

    let mut agent = Agent::start(&containerd, namespace).unwrap();
    assert_eq!(
        image_digest(&containerd, namespace, &pause),
        Some(built.clone()),
        "the agent runs sandboxes from the image it built, not from what the name pointed at"
    );

    let work = containerd.dir().join("archives");
    std::fs::create_dir_all(&work).unwrap();
    let archive = archives::busybox_oci(&work, &pause).unwrap();
    std::fs::copy(&archive, agent.images.join("pause.tar")).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    agent.wait_until("the archive refused", Duration::from_secs(30), || {
        agent.log().lines().any(|l| {
            l.contains("pause.tar")
                && l.contains("cannot import image archive")
                && l.contains(&format!("image name {pause} is reserved"))
        })
    });
    assert_eq!(
        image_digest(&containerd, namespace, &pause),
        Some(built),
        "an archive tagged with the pause image's name replaced it"
    );

    agent.write_manifest("p.yaml", &pod("p", common::agent::BUSYBOX));
    wait_running(&agent, "p", Duration::from_secs(30));
    assert!(agent.is_running());
}
