//! A pod's hostPorts, and conflicts between pods wanting the same one.
//! Pure: the scheduler's NodePorts check, for a node without a scheduler.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::PortMapping;

/// The hostPort mappings of a pod: every `ports` entry with a hostPort of
/// its containers, then of its init containers (a sidecar's port is
/// published too), protocol lower-cased for CNI ("TCP" when unset), hostIP
/// kept. Exact duplicates are dropped; entries with ports out of range are
/// skipped (validation reports them elsewhere).
pub fn port_mappings(pod: &Pod) -> Vec<PortMapping> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut mappings: Vec<PortMapping> = Vec::new();
    for port in containers.flat_map(|c| c.ports.iter().flatten()) {
        let Some(host_port) = port.host_port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let Ok(container_port) = u16::try_from(port.container_port) else {
            continue;
        };
        if host_port == 0 || container_port == 0 {
            continue;
        }
        let mapping = PortMapping {
            host_port,
            container_port,
            protocol: port
                .protocol
                .as_deref()
                .unwrap_or("TCP")
                .to_ascii_lowercase(),
            host_ip: port.host_ip.clone().unwrap_or_default(),
        };
        if !mappings.contains(&mapping) {
            mappings.push(mapping);
        }
    }
    mappings
}

/// The first of `wanted` that another pod already holds (same protocol and
/// host port, overlapping host IPs), described for a Warning event:
/// "hostPort 8080/tcp is already used by pod default/web-node1". `taken`
/// pairs "namespace/name" with that pod's mappings.
pub fn conflict(wanted: &[PortMapping], taken: &[(String, Vec<PortMapping>)]) -> Option<String> {
    wanted.iter().find_map(|w| {
        taken.iter().find_map(|(pod, mappings)| {
            mappings
                .iter()
                .any(|t| {
                    t.host_port == w.host_port
                        && t.protocol.eq_ignore_ascii_case(&w.protocol)
                        && host_ips_overlap(&t.host_ip, &w.host_ip)
                })
                .then(|| {
                    format!(
                        "hostPort {}/{} is already used by pod {pod}",
                        w.host_port,
                        w.protocol.to_ascii_lowercase()
                    )
                })
        })
    })
}

/// "", 0.0.0.0 and :: bind every address, so they overlap everything (also
/// "::" with an IPv4 address: conservative, since a dual-stack listener on
/// :: takes IPv4 too); two specific addresses overlap when equal.
fn host_ips_overlap(a: &str, b: &str) -> bool {
    let wildcard =
        |s: &str| s.is_empty() || s.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    if wildcard(a) || wildcard(b) {
        return true;
    }
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        // Not addresses: compare the text, so equal typos still conflict.
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec};

    fn port(
        host: Option<i32>,
        container: i32,
        protocol: Option<&str>,
        host_ip: Option<&str>,
    ) -> ContainerPort {
        ContainerPort {
            host_port: host,
            container_port: container,
            protocol: protocol.map(String::from),
            host_ip: host_ip.map(String::from),
            ..Default::default()
        }
    }

    fn container(name: &str, ports: Vec<ContainerPort>) -> Container {
        Container {
            name: name.into(),
            ports: Some(ports),
            ..Default::default()
        }
    }

    fn mapping(host_port: u16, protocol: &str, host_ip: &str) -> PortMapping {
        PortMapping {
            host_port,
            container_port: 80,
            protocol: protocol.into(),
            host_ip: host_ip.into(),
        }
    }

    #[test]
    fn mappings_come_from_containers_and_init_containers() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container(
                        "web",
                        vec![
                            port(Some(8080), 80, None, None),
                            port(None, 9090, None, None),
                            port(Some(0), 9091, None, None),
                            port(Some(5353), 53, Some("UDP"), Some("127.0.0.1")),
                            port(Some(70000), 80, None, None),
                        ],
                    ),
                    container("dup", vec![port(Some(8080), 80, Some("TCP"), None)]),
                    Container {
                        name: "none".into(),
                        ..Default::default()
                    },
                ],
                init_containers: Some(vec![container(
                    "sidecar",
                    vec![port(Some(9000), 9000, Some("SCTP"), None)],
                )]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            port_mappings(&pod),
            [
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                    host_ip: String::new()
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                    host_ip: "127.0.0.1".into()
                },
                PortMapping {
                    host_port: 9000,
                    container_port: 9000,
                    protocol: "sctp".into(),
                    host_ip: String::new()
                },
            ]
        );
        assert!(port_mappings(&Pod::default()).is_empty());
    }

    #[test]
    fn the_same_port_and_protocol_on_overlapping_addresses_conflict() {
        let taken = vec![
            (
                "default/db-node1".to_string(),
                vec![mapping(5432, "tcp", "127.0.0.1")],
            ),
            (
                "default/web-node1".to_string(),
                vec![mapping(8080, "tcp", "")],
            ),
        ];
        let cases = [
            (mapping(8080, "tcp", ""), Some("default/web-node1")),
            (mapping(8080, "tcp", "192.0.2.1"), Some("default/web-node1")),
            (mapping(5432, "tcp", "127.0.0.1"), Some("default/db-node1")),
            (mapping(5432, "tcp", "0.0.0.0"), Some("default/db-node1")),
            (mapping(5432, "tcp", "::"), Some("default/db-node1")),
            (mapping(5432, "tcp", ""), Some("default/db-node1")),
            (mapping(5432, "tcp", "192.0.2.1"), None),
            (mapping(8080, "udp", ""), None),
            (mapping(8081, "tcp", ""), None),
        ];
        for (wanted, pod) in cases {
            let got = conflict(std::slice::from_ref(&wanted), &taken);
            let want = pod.map(|p| {
                format!(
                    "hostPort {}/{} is already used by pod {p}",
                    wanted.host_port, wanted.protocol
                )
            });
            assert_eq!(got, want, "{wanted:?}");
        }
        assert_eq!(
            conflict(&[mapping(1, "tcp", ""), mapping(8080, "tcp", "")], &taken).as_deref(),
            Some("hostPort 8080/tcp is already used by pod default/web-node1")
        );
        assert_eq!(conflict(&[mapping(8080, "tcp", "")], &[]), None);
    }
}
