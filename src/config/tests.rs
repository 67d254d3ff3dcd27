use super::*;

fn file(yaml: &str) -> FileSettings {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn defaults_apply_when_nothing_is_given() {
    let s = Settings::merge(
        RunFlags {
            node_name: Some("Node1".into()),
            ..Default::default()
        },
        FileSettings::default(),
    )
    .unwrap();
    assert_eq!(s.manifest_dir, PathBuf::from("/etc/podkeeper/manifests"));
    assert_eq!(
        s.containerd_address,
        PathBuf::from("/run/containerd/containerd.sock")
    );
    assert_eq!(s.containerd_namespace, "podkeeper");
    assert_eq!(s.api.http_listen.unwrap().to_string(), "127.0.0.1:10255");
    assert_eq!(s.api.api_listen.unwrap().to_string(), "127.0.0.1:10250");
    assert!(s.api.tls.is_none() && s.api.token_auth_file.is_none());
    assert!(!s.api.metrics_unauthenticated);
    assert_eq!(s.state_dir, PathBuf::from("/var/lib/podkeeper"));
    assert_eq!(s.pod_log_dir, PathBuf::from("/var/log/pods"));
    assert_eq!(s.images_dir, PathBuf::from("/var/lib/podkeeper/images"));
    assert_eq!(s.node_name, "node1");
    assert_eq!(s.sandbox_image, None);
    assert_eq!(s.manifest_resync.as_secs(), 20);
}

#[test]
fn flags_win_over_the_file_and_the_file_over_defaults() {
    let f = file("manifest-dir: /srv/pods\nstate-dir: /srv/state\nnode-name: fromfile\n");
    let flags = RunFlags {
        manifest_dir: Some("/flag/pods".into()),
        ..Default::default()
    };
    let s = Settings::merge(flags, f).unwrap();
    assert_eq!(s.manifest_dir, PathBuf::from("/flag/pods"));
    assert_eq!(s.state_dir, PathBuf::from("/srv/state"));
    assert_eq!(s.node_name, "fromfile");
}

#[test]
fn the_shipped_config_file_documents_every_key_with_its_default() {
    let shipped = include_str!("../../packaging/config.yaml");
    let uncommented: String = shipped
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter(|l| {
            l.split(':').next().is_some_and(|k| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
        })
        .map(|l| {
            if l.trim_end().ends_with(':') {
                format!("{l} null\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let from_file = Settings::merge(
        RunFlags {
            node_name: Some("n".into()),
            ..Default::default()
        },
        file(&uncommented),
    )
    .unwrap();
    let defaults = Settings::merge(
        RunFlags {
            node_name: Some("n".into()),
            ..Default::default()
        },
        FileSettings::default(),
    )
    .unwrap();
    assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    let keys = uncommented.lines().count();
    assert_eq!(keys, 29, "every setting appears in packaging/config.yaml");
}

#[test]
fn unknown_keys_are_rejected() {
    let err = serde_yaml::from_str::<FileSettings>("manifest_dirr: /x\n").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn shared_namespaces_are_refused() {
    for ns in ["k8s.io", "default"] {
        let flags = RunFlags {
            containerd_namespace: Some(ns.into()),
            node_name: Some("n".into()),
            ..Default::default()
        };
        let err = Settings::merge(flags, FileSettings::default()).unwrap_err();
        assert!(err.to_string().starts_with("containerd-namespace"), "{err}");
    }
}

#[test]
fn event_limits_come_from_flags_or_the_file_and_must_not_be_zero() {
    let f = file("event-ttl-seconds: 600\nevent-max-per-pod: 7\n");
    let flags = RunFlags {
        node_name: Some("n".into()),
        event_max_total: Some(50),
        ..Default::default()
    };
    let s = Settings::merge(flags.clone(), f).unwrap();
    assert_eq!(
        s.event_retention,
        Retention {
            ttl: std::time::Duration::from_secs(600),
            max_per_object: 7,
            max_total: 50,
        }
    );
    let err = Settings::merge(flags, file("event-max-per-pod: 0\n")).unwrap_err();
    assert!(err.to_string().starts_with("event-max-per-pod"), "{err}");
}

#[test]
fn bad_listen_address_names_the_key() {
    let flags = RunFlags {
        http_listen: Some("localhost".into()),
        node_name: Some("n".into()),
        ..Default::default()
    };
    let err = Settings::merge(flags, FileSettings::default()).unwrap_err();
    assert!(err.to_string().starts_with("http-listen"), "{err}");
}

#[test]
fn an_empty_listen_address_turns_the_listener_off() {
    let s = Settings::merge(
        RunFlags {
            http_listen: Some(String::new()),
            node_name: Some("n".into()),
            ..Default::default()
        },
        file("api-listen: '0.0.0.0:6443'\nmetrics-unauthenticated: true\n"),
    )
    .unwrap();
    assert_eq!(s.api.http_listen, None);
    assert_eq!(s.api.api_listen.unwrap().to_string(), "0.0.0.0:6443");
    assert!(s.api.metrics_unauthenticated);
}

#[test]
fn a_certificate_needs_its_key_and_the_listeners_their_own_ports() {
    let flags = RunFlags {
        tls_cert_file: Some("/etc/podkeeper/tls.crt".into()),
        node_name: Some("n".into()),
        ..Default::default()
    };
    let err = Settings::merge(flags, FileSettings::default()).unwrap_err();
    assert!(err.to_string().starts_with("tls-private-key-file"), "{err}");
    let flags = RunFlags {
        api_listen: Some("127.0.0.1:10255".into()),
        node_name: Some("n".into()),
        ..Default::default()
    };
    let err = Settings::merge(flags, FileSettings::default()).unwrap_err();
    assert!(err.to_string().starts_with("api-listen"), "{err}");
}
