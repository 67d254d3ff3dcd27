//! What the plugins cannot clean up once the pod's network namespace is
//! gone.
//!
//! The bridge plugin (containernetworking-plugins 1.1.1) removes its
//! `ipMasq` rules on DEL only for the addresses it finds on the pod's
//! interface, inside the namespace; with the namespace gone it releases the
//! address but leaves a POSTROUTING rule and a chain behind. They are named
//! from the network and container ID (a SHA-512 prefix, the plugins'
//! `utils.FormatChainName`) and match the pod's address, which the cached
//! ADD result has, so they are removed here with iptables. Every step is
//! best effort: a rule that is not there (a fixed plugin removed it, or the
//! host rebooted) is not an error.

use std::net::IpAddr;

use serde_json::Value;
use sha2::{Digest, Sha512};

use super::config::{plugin_type, NetConfList};
use super::{exec, iptables, POD_INTERFACE};

/// The plugins' chain name for a network and container: "CNI-" and the
/// start of the hex SHA-512 of both, 28 characters in all (iptables'
/// limit).
pub(super) fn chain_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("CNI-{}", &hex[..24])
}

/// The comment the plugins put on a container's rules.
pub(super) fn comment(network: &str, container_id: &str) -> String {
    format!("name: \"{network}\" id: \"{container_id}\"")
}

/// The iptables commands (arguments after the binary) that remove the
/// bridge plugin's masquerade rules for one address.
pub(super) fn masquerade_cleanup(
    network: &str,
    container_id: &str,
    ip: IpAddr,
) -> Vec<Vec<String>> {
    let chain = chain_name(network, container_id);
    let source = ip.to_string();
    let base = |args: &[&str]| -> Vec<String> {
        ["--wait", "-t", "nat"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let comment = comment(network, container_id);
    vec![
        base(&[
            "-D",
            "POSTROUTING",
            "-s",
            &source,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            &chain,
        ]),
        base(&["-F", &chain]),
        base(&["-X", &chain]),
    ]
}

/// Removes the masquerade rules of every bridge plugin with `ipMasq` in the
/// list for the pod's addresses in `result`.
pub(super) async fn remove_bridge_masquerade(
    list: &NetConfList,
    container_id: &str,
    result: &Value,
) {
    let masquerades = list.plugins.iter().any(|p| {
        plugin_type(p) == "bridge" && p.get("ipMasq").and_then(Value::as_bool) == Some(true)
    });
    if !masquerades {
        return;
    }
    let Ok(network) = exec::pod_network(result, POD_INTERFACE) else {
        return;
    };
    for ip in network.ips {
        let binary = if ip.is_ipv4() {
            "iptables"
        } else {
            "ip6tables"
        };
        for args in masquerade_cleanup(&list.name, container_id, ip) {
            match iptables::run(binary, &args).await {
                Ok(outcome) if outcome.success => {
                    tracing::debug!(
                        container = container_id,
                        ?args,
                        "removed a leftover masquerade rule"
                    );
                }
                // Not there: the usual case when a plugin did its job.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(container = container_id, error = %e, "removing leftover masquerade rules");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_match_the_plugins() {
        // Both seen in iptables-save after the bridge plugin 1.1.1 ran
        // with network "pkexp" and these container IDs.
        assert_eq!(chain_name("pkexp", "sbx1"), "CNI-a172697b562a1799787f6a15");
        assert_eq!(chain_name("pkexp", "sbx2"), "CNI-9f8028674eea4c5b74286875");
        assert_eq!(comment("pkexp", "sbx2"), "name: \"pkexp\" id: \"sbx2\"");
    }

    #[test]
    fn cleanup_deletes_the_jump_then_the_chain() {
        let cmds = masquerade_cleanup("pkexp", "sbx2", "10.250.0.3".parse().unwrap());
        assert_eq!(
            cmds[0].join(" "),
            "--wait -t nat -D POSTROUTING -s 10.250.0.3 -m comment --comment \
             name: \"pkexp\" id: \"sbx2\" -j CNI-9f8028674eea4c5b74286875"
        );
        assert_eq!(
            cmds[1].join(" "),
            "--wait -t nat -F CNI-9f8028674eea4c5b74286875"
        );
        assert_eq!(
            cmds[2].join(" "),
            "--wait -t nat -X CNI-9f8028674eea4c5b74286875"
        );
    }
}
