//! Keeping 127.0.0.0/8 the host's once the network lets it be routed.
//!
//! For hostPorts on 127.0.0.1, the portmap plugin with `snat` (the default,
//! and the built-in network's setting) turns on `route_localnet` on the
//! interface towards the pods, the bridge. From then on the kernel no
//! longer drops packets arriving there for 127.0.0.0/8 as martians: a pod
//! that routes 127.0.0.1 through its gateway (`NET_ADMIN`), or forges such
//! packets (`NET_RAW`, a default capability), reaches every host service
//! bound to loopback (CVE-2020-8558). kube-proxy closes this with a DROP
//! rule; this module installs the same rule, narrowed to the interface,
//! in a chain of its own jumped to first from INPUT:
//!
//! `-i <bridge> -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`
//!
//! Replies to the host's own connections to 127.0.0.1:hostPort are
//! ESTABLISHED, so hostPorts on loopback keep working. Without a bridge
//! plugin (ptp and the like put `route_localnet` on each pod's host-side
//! veth) the rule covers every interface but `lo`.
//!
//! The rule is (re)installed before every CNI ADD, so one flushed by a
//! firewall reload comes back with the next pod, and at agent start for the
//! pods already running. Like the plugins' own shared chains, it stays when
//! the agent stops: the pods, and the bridge's `route_localnet`, stay too.

use serde_json::Value;
use tokio::sync::Mutex;

use super::config::{check_interface_name, plugin_type, NetConfList, Source};
use super::iptables;
use super::NetworkError;

/// The start of every chain this module makes. The bridge name follows
/// ("PK-LOCALNET-podkeeper0"); the chain for all interfaces is the prefix
/// alone. 12 + 1 + 15 bytes stays within iptables' 28.
pub const CHAIN_PREFIX: &str = "PK-LOCALNET";

/// The bridge plugin's bridge when its config names none.
const DEFAULT_CNI_BRIDGE: &str = "cni0";

/// Told to whoever reads `iptables -L`.
const COMMENT: &str = "podkeeper: pods may not reach the host's 127.0.0.0/8 (CVE-2020-8558)";

/// Pods set up in parallel must not both find the rule missing and both
/// add it.
static INSTALLING: Mutex<()> = Mutex::const_new(());

/// Where the network may turn on `route_localnet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// A bridge plugin's bridge, whose name was checked by
    /// [`check_interface_name`].
    Bridge(String),
    /// Interfaces the agent cannot name in advance: all but `lo`.
    AnyInterface,
}

impl Scope {
    fn chain(&self) -> String {
        match self {
            Scope::Bridge(bridge) => chain_name(Some(bridge)),
            Scope::AnyInterface => chain_name(None),
        }
    }

    /// The DROP rule's match and target, after `-A <chain>`.
    fn rule(&self) -> Vec<String> {
        let interface: &[&str] = match self {
            Scope::Bridge(bridge) => &["-i", bridge],
            Scope::AnyInterface => &["!", "-i", "lo"],
        };
        let rest = [
            "-d",
            "127.0.0.0/8",
            "-m",
            "conntrack",
            "!",
            "--ctstate",
            "RELATED,ESTABLISHED,DNAT",
            "-m",
            "comment",
            "--comment",
            COMMENT,
            "-j",
            "DROP",
        ];
        interface
            .iter()
            .chain(rest.iter())
            .map(|s| s.to_string())
            .collect()
    }
}

/// The chain guarding `bridge`, or all interfaces when `None`; public so
/// that tests can remove what they made.
pub fn chain_name(bridge: Option<&str>) -> String {
    match bridge {
        Some(bridge) => format!("{CHAIN_PREFIX}-{bridge}"),
        None => CHAIN_PREFIX.to_string(),
    }
}

/// Where `list` may turn on `route_localnet`: nowhere without a portmap
/// plugin doing SNAT; else on each bridge plugin's bridge, or on any
/// interface when there is no bridge plugin. A bridge name that is not a
/// safe interface name is an error naming the file and the field.
pub(super) fn scopes(list: &NetConfList) -> Result<Vec<Scope>, NetworkError> {
    // portmap's `snat` defaults to true; only an explicit false turns it off.
    let snat = list
        .plugins
        .iter()
        .any(|p| plugin_type(p) == "portmap" && p.get("snat") != Some(&Value::Bool(false)));
    if !snat {
        return Ok(Vec::new());
    }
    let mut scopes = Vec::new();
    for (i, plugin) in list.plugins.iter().enumerate() {
        if plugin_type(plugin) != "bridge" {
            continue;
        }
        let bridge = match plugin.get("bridge") {
            None => DEFAULT_CNI_BRIDGE,
            Some(Value::String(name)) => name.as_str(),
            Some(_) => return Err(bad_bridge(list, i, "must be a string".into())),
        };
        check_interface_name(bridge).map_err(|reason| {
            bad_bridge(list, i, format!("{bridge:?} cannot be guarded: {reason}"))
        })?;
        let scope = Scope::Bridge(bridge.to_string());
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if scopes.is_empty() {
        scopes.push(Scope::AnyInterface);
    }
    Ok(scopes)
}

fn bad_bridge(list: &NetConfList, index: usize, reason: String) -> NetworkError {
    let reason = format!("plugins[{index}].bridge: {reason}");
    match &list.source {
        Source::File(path) => NetworkError::ConfInvalid {
            path: path.clone(),
            reason,
        },
        Source::BuiltIn { .. } => NetworkError::Settings(reason),
    }
}

/// Makes sure every DROP rule `list` needs is in place; adds what is
/// missing. Cheap when all is there (two checks per scope).
pub(super) async fn ensure(list: &NetConfList) -> Result<(), NetworkError> {
    let scopes = scopes(list)?;
    if scopes.is_empty() {
        return Ok(());
    }
    let _one_at_a_time = INSTALLING.lock().await;
    for scope in &scopes {
        install(scope).await?;
    }
    Ok(())
}

/// iptables' arguments for `op` on `chain` (filter table), waiting for the
/// lock.
fn args(op: &str, chain: &str, spec: &[String]) -> Vec<String> {
    ["--wait", op, chain]
        .iter()
        .map(|s| s.to_string())
        .chain(spec.iter().cloned())
        .collect()
}

/// Creates (or repairs) the chain with its one rule, then the jump to it at
/// the top of INPUT, so no ACCEPT rule of a host firewall comes first.
async fn install(scope: &Scope) -> Result<(), NetworkError> {
    let chain = scope.chain();
    let rule = scope.rule();
    let jump = vec!["-j".to_string(), chain.clone()];
    let error = |reason: String| NetworkError::Loopback {
        chain: chain.clone(),
        reason,
    };
    let run = |args: Vec<String>| async move {
        iptables::run("iptables", &args)
            .await
            .map_err(|e| e.to_string())
    };
    let jump_there = run(args("-C", "INPUT", &jump))
        .await
        .map_err(error)?
        .success;
    let rule_there = run(args("-C", &chain, &rule)).await.map_err(error)?.success;
    if jump_there && rule_there {
        return Ok(());
    }
    // Fails when the chain exists, which is fine: it is flushed next.
    run(args("-N", &chain, &[])).await.map_err(error)?;
    let steps = [
        Some(args("-F", &chain, &[])),
        Some(args("-A", &chain, &rule)),
        (!jump_there).then(|| {
            let mut at_top = vec!["1".to_string()];
            at_top.extend(jump.iter().cloned());
            args("-I", "INPUT", &at_top)
        }),
    ];
    for step in steps.into_iter().flatten() {
        let outcome = run(step.clone()).await.map_err(error)?;
        if !outcome.success {
            return Err(error(format!(
                "iptables {}: {}",
                step.join(" "),
                outcome.stderr
            )));
        }
    }
    tracing::info!(
        chain,
        "installed the rule that keeps pods off the host's 127.0.0.0/8"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::network::config::parse;
    use std::path::Path;

    fn list(text: &str) -> NetConfList {
        parse(Path::new("/etc/cni/net.d/10-x.conflist"), text.as_bytes()).unwrap()
    }

    fn conflist(plugins: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"n","plugins":[{plugins}]}}"#)
    }

    #[test]
    fn the_rule_drops_new_packets_for_loopback_from_the_bridge_only() {
        let bridge = Scope::Bridge("podkeeper0".into());
        assert_eq!(bridge.chain(), "PK-LOCALNET-podkeeper0");
        assert_eq!(
            args("-A", &bridge.chain(), &bridge.rule()).join(" "),
            format!(
                "--wait -A PK-LOCALNET-podkeeper0 -i podkeeper0 -d 127.0.0.0/8 -m conntrack \
                 ! --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment {COMMENT} -j DROP"
            )
        );
        let any = Scope::AnyInterface;
        assert_eq!(any.chain(), "PK-LOCALNET");
        assert_eq!(any.rule()[..5].join(" "), "! -i lo -d 127.0.0.0/8");
        // iptables' limit for chain names.
        assert!(chain_name(Some("a23456789012345")).len() <= 28);
    }

    #[test]
    fn the_built_in_network_guards_its_bridge() {
        let settings = crate::runtime::network::NetworkSettings {
            default_bridge: "pk7".into(),
            ..Default::default()
        };
        let builtin = crate::runtime::network::config::builtin(&settings).unwrap();
        assert_eq!(scopes(&builtin).unwrap(), [Scope::Bridge("pk7".into())]);
    }

    #[test]
    fn user_configs_are_guarded_where_portmap_can_turn_route_localnet_on() {
        let portmap = r#"{"type":"portmap","capabilities":{"portMappings":true}}"#;
        let cases = [
            // No portmap, or portmap without SNAT: nothing turns it on.
            (conflist(r#"{"type":"bridge","bridge":"br0"}"#), vec![]),
            (
                conflist(r#"{"type":"bridge"},{"type":"portmap","snat":false}"#),
                vec![],
            ),
            (
                conflist(&format!(r#"{{"type":"bridge"}},{portmap}"#)),
                vec![Scope::Bridge("cni0".into())],
            ),
            (
                conflist(r#"{"type":"bridge","bridge":"br0"},{"type":"portmap","snat":true}"#),
                vec![Scope::Bridge("br0".into())],
            ),
            (
                conflist(&format!(r#"{{"type":"ptp"}},{portmap}"#)),
                vec![Scope::AnyInterface],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(scopes(&list(&text)).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn a_bridge_name_that_is_not_a_safe_argument_is_refused() {
        let portmap = r#"{"type":"portmap"}"#;
        for bridge in [r#""-j ACCEPT""#, r#""br+""#, "7"] {
            let text = conflist(&format!(
                r#"{{"type":"bridge","bridge":{bridge}}},{portmap}"#
            ));
            let error = scopes(&list(&text)).unwrap_err().to_string();
            assert!(
                error.starts_with("CNI config /etc/cni/net.d/10-x.conflist: plugins[0].bridge"),
                "{error}"
            );
        }
    }
}
