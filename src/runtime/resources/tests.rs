use super::*;
use serde_json::json;

const GI: i64 = 1 << 30;
const MI: i64 = 1 << 20;

/// A container with the given requests and limits (name → quantity text).
fn container(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
    let list = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut resources = serde_json::Map::new();
    if !requests.is_empty() {
        resources.insert("requests".into(), list(requests).into());
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), list(limits).into());
    }
    serde_json::from_value(json!({"name": name, "image": "busybox", "resources": resources}))
        .expect("container")
}

fn sidecar(name: &str, requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
    Container {
        restart_policy: Some("Always".into()),
        ..container(name, requests, limits)
    }
}

fn pod(containers: Vec<Container>, init: Vec<Container>) -> PodSpec {
    PodSpec {
        containers,
        init_containers: Some(init).filter(|i| !i.is_empty()),
        ..PodSpec::default()
    }
}

/// Resources of the pod's first container, QoS computed from the pod.
fn first(spec: &PodSpec, capacity: u64) -> ContainerResources {
    let qos = qos_class(spec).expect("qos");
    container_resources(spec, &spec.containers[0], false, qos, capacity).expect("resources")
}

#[test]
fn milli_cpu_to_shares_matches_kubelet() {
    let cases = [
        (0, 2),
        (1, 2),
        (2, 2),
        (100, 102),
        (250, 256),
        (500, 512),
        (1000, 1024),
        (256_000, 262_144),
        (300_000, 262_144),
        (i64::MAX, 262_144),
    ];
    for (milli, shares) in cases {
        assert_eq!(milli_cpu_to_shares(milli), shares, "{milli}m");
    }
}

#[test]
fn milli_cpu_to_quota_matches_kubelet() {
    let cases = [
        (0, None),
        (1, Some(1000)),
        (5, Some(1000)),
        (10, Some(1000)),
        (20, Some(2000)),
        (100, Some(10_000)),
        (1500, Some(150_000)),
        (64_000, Some(6_400_000)),
    ];
    for (milli, quota) in cases {
        assert_eq!(milli_cpu_to_quota(milli, CPU_PERIOD_US), quota, "{milli}m");
    }
}

#[test]
fn container_cpu_and_memory() {
    // (requests, limits, shares, quota, memory limit)
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        u64,
        Option<i64>,
        Option<i64>,
    );
    let cases: &[Case] = &[
        (&[], &[], 2, None, None),
        (&[("cpu", "100m")], &[], 102, None, None),
        (
            &[("cpu", "250m")],
            &[("cpu", "500m")],
            256,
            Some(50_000),
            None,
        ),
        // No request but a limit: the request defaults to the limit.
        (&[], &[("cpu", "500m")], 512, Some(50_000), None),
        // An explicit zero request also takes the limit's shares.
        (
            &[("cpu", "0")],
            &[("cpu", "1.5")],
            1536,
            Some(150_000),
            None,
        ),
        (&[], &[("cpu", "5m")], 5, Some(1000), None),
        (&[], &[("cpu", "1")], 1024, Some(100_000), None),
        (&[("cpu", "300")], &[], 262_144, None, None),
        // 1n rounds up to 1m.
        (&[("cpu", "1n")], &[("cpu", "1n")], 2, Some(1000), None),
        (
            &[("cpu", "0.5")],
            &[("cpu", "1e0")],
            512,
            Some(100_000),
            None,
        ),
        (&[], &[("memory", "64Mi")], 2, None, Some(64 * MI)),
        (&[], &[("memory", "1.5Gi")], 2, None, Some(3 * GI / 2)),
        (&[], &[("memory", "100M")], 2, None, Some(100_000_000)),
        (&[], &[("memory", "1e3")], 2, None, Some(1000)),
        // Fractional bytes round up.
        (&[], &[("memory", "1500m")], 2, None, Some(2)),
        (&[], &[("memory", "0")], 2, None, None),
        (&[("memory", "64Mi")], &[], 2, None, None),
    ];
    for (requests, limits, shares, quota, memory) in cases {
        let spec = pod(vec![container("app", requests, limits)], vec![]);
        let got = first(&spec, 8 * GI as u64);
        let case = format!("requests {requests:?} limits {limits:?}");
        assert_eq!(got.cpu_shares, *shares, "shares for {case}");
        assert_eq!(got.cpu_quota, *quota, "quota for {case}");
        assert_eq!(got.cpu_period, Some(100_000), "period for {case}");
        assert_eq!(got.memory_limit, *memory, "memory for {case}");
    }
}

#[test]
fn oom_score_adj_by_qos_and_request() {
    let capacity = 8 * GI as u64;
    let burstable = |memory: &str| {
        pod(
            vec![container("app", &[("memory", memory)], &[("cpu", "1")])],
            vec![],
        )
    };
    // (spec, capacity, expected)
    let cases = [
        (
            pod(
                vec![container("app", &[], &[("cpu", "1"), ("memory", "1Gi")])],
                vec![],
            ),
            capacity,
            -997,
        ),
        (
            pod(vec![container("app", &[], &[])], vec![]),
            capacity,
            1000,
        ),
        (burstable("1Gi"), capacity, 875),
        (burstable("4Gi"), capacity, 500),
        // 1000 exactly becomes 999: Burstable must beat BestEffort.
        (burstable("0"), capacity, 999),
        (burstable("1"), capacity, 999),
        (burstable("8Gi"), capacity, 3),
        (burstable("9Gi"), capacity, 3),
        (burstable("7.99Gi"), capacity, 3),
        (burstable("1Gi"), 0, 999),
    ];
    for (index, (spec, capacity, expected)) in cases.iter().enumerate() {
        assert_eq!(
            first(spec, *capacity).oom_score_adj,
            *expected,
            "case {index}"
        );
    }
}

#[test]
fn node_critical_pods_get_guaranteed_oom_score() {
    let mut spec = pod(vec![container("app", &[], &[])], vec![]);
    spec.priority_class_name = Some("system-node-critical".into());
    assert_eq!(first(&spec, 8 * GI as u64).oom_score_adj, -997);
    spec.priority_class_name = Some("system-cluster-critical".into());
    assert_eq!(first(&spec, 8 * GI as u64).oom_score_adj, 1000);
}

#[test]
fn sidecar_oom_score_is_capped_by_smallest_regular_container() {
    let spec = pod(
        vec![
            container("big", &[("memory", "2Gi")], &[]),
            container("small", &[("memory", "1Gi")], &[]),
        ],
        vec![sidecar("proxy", &[], &[]), container("setup", &[], &[])],
    );
    let init = spec.init_containers.as_ref().expect("init");
    let qos = qos_class(&spec).expect("qos");
    assert_eq!(qos, QosClass::Burstable);
    let capacity = 8 * GI as u64;
    let adj = |c: &Container, init| {
        container_resources(&spec, c, init, qos, capacity)
            .expect("resources")
            .oom_score_adj
    };
    assert_eq!(adj(&spec.containers[0], false), 750);
    assert_eq!(adj(&init[0], true), 875, "sidecar capped at smallest");
    assert_eq!(adj(&init[1], true), 999, "ordinary init container");
}

#[test]
fn qos_classes() {
    use QosClass::*;
    let both = [("cpu", "1"), ("memory", "1Gi")];
    let cases = [
        (pod(vec![], vec![]), BestEffort),
        (pod(vec![container("a", &[], &[])], vec![]), BestEffort),
        (
            pod(
                vec![container("a", &[("ephemeral-storage", "1Gi")], &[])],
                vec![],
            ),
            BestEffort,
        ),
        (
            pod(
                vec![container("a", &[], &[("cpu", "0"), ("memory", "0")])],
                vec![],
            ),
            BestEffort,
        ),
        // Limits only: requests default to them.
        (pod(vec![container("a", &[], &both)], vec![]), Guaranteed),
        (pod(vec![container("a", &both, &both)], vec![]), Guaranteed),
        (
            pod(
                vec![container(
                    "a",
                    &[("cpu", "1000m"), ("memory", "1024Mi")],
                    &both,
                )],
                vec![],
            ),
            Guaranteed,
        ),
        (
            pod(vec![container("a", &[("cpu", "500m")], &both)], vec![]),
            Burstable,
        ),
        (
            pod(vec![container("a", &[], &[("cpu", "1")])], vec![]),
            Burstable,
        ),
        (
            pod(vec![container("a", &[("memory", "1Gi")], &[])], vec![]),
            Burstable,
        ),
        (
            pod(
                vec![container("a", &[], &both), container("b", &[], &[])],
                vec![],
            ),
            Burstable,
        ),
        // Init containers count.
        (
            pod(
                vec![container("a", &[], &both)],
                vec![container("init", &[], &[])],
            ),
            Burstable,
        ),
        (
            pod(
                vec![container("a", &[], &both)],
                vec![container("init", &[], &both)],
            ),
            Guaranteed,
        ),
        (
            pod(
                vec![container("a", &[], &[])],
                vec![container("init", &[("cpu", "1")], &[])],
            ),
            Burstable,
        ),
        // Extended resources do not matter.
        (
            pod(
                vec![container(
                    "a",
                    &[],
                    &[("cpu", "1"), ("memory", "1Gi"), ("example.com/gpu", "1")],
                )],
                vec![],
            ),
            Guaranteed,
        ),
    ];
    for (index, (spec, expected)) in cases.iter().enumerate() {
        assert_eq!(qos_class(spec), Ok(*expected), "case {index}");
    }
    assert_eq!(Guaranteed.as_str(), "Guaranteed");
    assert_eq!(Burstable.as_str(), "Burstable");
    assert_eq!(BestEffort.as_str(), "BestEffort");
}

#[test]
fn invalid_resources_name_the_field() {
    // (requests, limits, init, field, message fragment)
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        bool,
        &'a str,
        &'a str,
    );
    let cases: &[Case] = &[
        (
            &[],
            &[("cpu", "10K")],
            false,
            "spec.containers[app].resources.limits.cpu",
            "invalid quantity \"10K\": unable to parse quantity's suffix",
        ),
        (
            &[("memory", "1.5.5Gi")],
            &[],
            false,
            "spec.containers[app].resources.requests.memory",
            "quantities must match the regular expression",
        ),
        (
            &[("cpu", "")],
            &[],
            false,
            "spec.containers[app].resources.requests.cpu",
            "quantities must match the regular expression",
        ),
        (
            &[],
            &[("memory", "-1")],
            false,
            "spec.containers[app].resources.limits.memory",
            "invalid value \"-1\": must be greater than or equal to 0",
        ),
        (
            &[("cpu", "-1")],
            &[],
            true,
            "spec.initContainers[app].resources.requests.cpu",
            "must be greater than or equal to 0",
        ),
        (
            &[("cpu", "2")],
            &[("cpu", "1")],
            false,
            "spec.containers[app].resources.requests.cpu",
            "invalid value \"2\": must be less than or equal to cpu limit of 1",
        ),
        (
            &[],
            &[("ephemeral-storage", "1K")],
            false,
            "spec.containers[app].resources.limits.ephemeral-storage",
            "unable to parse quantity's suffix",
        ),
    ];
    for (requests, limits, init, field, fragment) in cases {
        let c = container("app", requests, limits);
        let spec = if *init {
            pod(vec![container("main", &[], &[])], vec![c.clone()])
        } else {
            pod(vec![c.clone()], vec![])
        };
        let err = qos_class(&spec).expect_err(field);
        assert_eq!(err.field, *field);
        assert!(err.message.contains(fragment), "{err}");
        let err = container_resources(&spec, &c, *init, QosClass::Burstable, 1).expect_err(field);
        assert_eq!(err.field, *field);
        let err = pod_cgroup("u", &spec, QosClass::Burstable, "/kubepods").expect_err(field);
        assert_eq!(err.field, *field);
    }
    let err =
        qos_class(&pod(vec![container("app", &[], &[("cpu", "10K")])], vec![])).expect_err("10K");
    assert_eq!(
        err.to_string(),
        "spec.containers[app].resources.limits.cpu: \
         invalid quantity \"10K\": unable to parse quantity's suffix"
    );
}

#[test]
fn whitespace_around_quantities_is_ignored() {
    let spec = pod(vec![container("app", &[], &[("cpu", " 500m ")])], vec![]);
    assert_eq!(first(&spec, 1).cpu_quota, Some(50_000));
}

#[test]
fn pod_cgroups() {
    let both = |cpu, memory| [("cpu", cpu), ("memory", memory)];
    let cgroup = |spec: &PodSpec| {
        let qos = qos_class(spec).expect("qos");
        pod_cgroup("uid-1", spec, qos, "/kubepods").expect("cgroup")
    };
    let expect = |path: &str, shares, quota, memory| PodCgroup {
        path: path.to_string(),
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: quota.map(|_| 100_000),
        memory_limit: memory,
    };
    let cases = [
        // Guaranteed: everything, summed over containers.
        (
            pod(
                vec![
                    container("a", &[], &both("500m", "128Mi")),
                    container("b", &[], &both("500m", "128Mi")),
                ],
                vec![],
            ),
            expect("/kubepods/poduid-1", 1024, Some(100_000), Some(256 * MI)),
        ),
        // Burstable with every limit declared: quota and memory too.
        (
            pod(
                vec![container(
                    "a",
                    &both("250m", "64Mi"),
                    &both("500m", "128Mi"),
                )],
                vec![],
            ),
            expect(
                "/kubepods/burstable/poduid-1",
                256,
                Some(50_000),
                Some(128 * MI),
            ),
        ),
        // One container without a cpu limit: no pod quota.
        (
            pod(
                vec![
                    container("a", &both("250m", "64Mi"), &both("500m", "128Mi")),
                    container("b", &[("cpu", "100m")], &[("memory", "64Mi")]),
                ],
                vec![],
            ),
            expect("/kubepods/burstable/poduid-1", 358, None, Some(192 * MI)),
        ),
        // An init container without a memory limit: no pod memory limit.
        (
            pod(
                vec![container(
                    "a",
                    &both("250m", "64Mi"),
                    &both("500m", "128Mi"),
                )],
                vec![container("init", &[], &[("cpu", "1")])],
            ),
            expect("/kubepods/burstable/poduid-1", 1024, Some(100_000), None),
        ),
        (
            pod(vec![container("a", &[], &[])], vec![]),
            expect("/kubepods/besteffort/poduid-1", 2, None, None),
        ),
        // Requests only: shares, nothing else.
        (
            pod(vec![container("a", &[("cpu", "2")], &[])], vec![]),
            expect("/kubepods/burstable/poduid-1", 2048, None, None),
        ),
        // An init container bigger than the sum of the others sets the total.
        (
            pod(
                vec![
                    container("a", &[], &both("500m", "128Mi")),
                    container("b", &[], &both("500m", "128Mi")),
                ],
                vec![container("init", &[], &both("2", "1Gi"))],
            ),
            expect("/kubepods/poduid-1", 2048, Some(200_000), Some(GI)),
        ),
        // Sidecars add up with the regular containers, and an init
        // container runs beside the sidecars started before it.
        (
            pod(
                vec![container("a", &[], &both("500m", "128Mi"))],
                vec![
                    sidecar("proxy", &[], &both("250m", "64Mi")),
                    container("init", &[], &both("1", "128Mi")),
                ],
            ),
            expect("/kubepods/poduid-1", 1280, Some(125_000), Some(192 * MI)),
        ),
    ];
    for (index, (spec, expected)) in cases.iter().enumerate() {
        assert_eq!(&cgroup(spec), expected, "case {index}");
    }
}

#[test]
fn pod_overhead_is_added() {
    let mut spec = pod(
        vec![container("a", &[("cpu", "100m")], &[("memory", "128Mi")])],
        vec![],
    );
    spec.overhead = Some(
        [("cpu", "250m"), ("memory", "64Mi")]
            .iter()
            .map(|(k, v)| (k.to_string(), KubeQuantity(v.to_string())))
            .collect(),
    );
    let got = pod_cgroup("u", &spec, QosClass::Burstable, "/kubepods").expect("cgroup");
    assert_eq!(got.cpu_shares, 358);
    assert_eq!(got.cpu_quota, None);
    assert_eq!(got.memory_limit, Some(192 * MI));
}

#[test]
fn pod_cgroup_roots_and_bad_names() {
    let spec = pod(vec![container("a", &[], &[])], vec![]);
    let path = |root| {
        pod_cgroup("u", &spec, QosClass::BestEffort, root)
            .expect("cgroup")
            .path
    };
    assert_eq!(path("/kubepods"), "/kubepods/besteffort/podu");
    assert_eq!(path("/kubepods/"), "/kubepods/besteffort/podu");
    assert_eq!(path("/"), "/besteffort/podu");
    assert_eq!(path("/a/b"), "/a/b/besteffort/podu");
    for root in ["kubepods", "", "/a/../b"] {
        let err = pod_cgroup("u", &spec, QosClass::BestEffort, root).expect_err(root);
        assert_eq!(err.field, "cgroup root");
    }
    for uid in ["", "../x", "a/b"] {
        let err = pod_cgroup(uid, &spec, QosClass::BestEffort, "/kubepods").expect_err(uid);
        assert_eq!(err.field, "metadata.uid");
    }
}

#[test]
fn oci_resources() {
    let resources = ContainerResources {
        cpu_shares: 256,
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(128 * MI),
        oom_score_adj: 3,
    };
    let oci = to_oci(&resources);
    let cpu = oci.cpu().as_ref().expect("cpu");
    assert_eq!(cpu.shares(), Some(256));
    assert_eq!(cpu.quota(), Some(50_000));
    assert_eq!(cpu.period(), Some(100_000));
    assert_eq!(
        oci.memory().as_ref().and_then(|m| m.limit()),
        Some(128 * MI)
    );
    assert!(oci.devices().is_none());

    let unlimited = to_oci(&ContainerResources {
        cpu_quota: None,
        memory_limit: None,
        ..resources
    });
    assert_eq!(unlimited.cpu().as_ref().and_then(|c| c.quota()), None);
    assert!(unlimited.memory().is_none());
}

#[test]
fn cgroup_v2_values() {
    let weights = [
        (0, 1),
        (1, 1),
        (2, 1),
        (102, 4),
        (256, 10),
        (512, 20),
        (1024, 39),
        (2048, 79),
        (262_144, 10_000),
        (u64::MAX, 10_000),
    ];
    for (shares, weight) in weights {
        assert_eq!(cpu_weight(shares), weight, "shares {shares}");
    }
    let maxes = [
        (Some(50_000), Some(100_000), "50000 100000"),
        (Some(1000), None, "1000 100000"),
        (None, Some(100_000), "max 100000"),
        (None, None, "max 100000"),
        (Some(0), Some(100_000), "max 100000"),
        (Some(-1), Some(50_000), "max 50000"),
    ];
    for (quota, period, expected) in maxes {
        assert_eq!(cpu_max(quota, period), expected, "{quota:?} {period:?}");
    }
    let memories = [
        (Some(128 * MI), "134217728"),
        (Some(1), "1"),
        (None, "max"),
        (Some(0), "max"),
        (Some(-1), "max"),
    ];
    for (limit, expected) in memories {
        assert_eq!(memory_max(limit), expected, "{limit:?}");
    }
}

#[test]
fn mem_total() {
    let meminfo = "MemTotal:       24684084 kB\nMemFree:         1234 kB\n";
    assert_eq!(parse_mem_total(meminfo), Some(24_684_084 * 1024));
    assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
    assert!(node_memory_capacity().expect("meminfo") > 0);
}
