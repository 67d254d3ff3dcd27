//! A container's environment as the kubelet builds it: the image's
//! variables, `HOSTNAME`, then the container's `env` in order, each value
//! expanded (`$(VAR)`) against the variables defined before it, with
//! `valueFrom.fieldRef` and `resourceFieldRef` resolved from the pod.
//! Pure.
//!
//! Expansion is bounded: a value may name an earlier variable twice, so 44
//! variables can double one byte to 16 TiB. Every expansion is given what
//! is left of [`MAX_CONTAINER_CONFIG_BYTES`] and fails before it builds
//! more.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, ObjectFieldSelector};

use crate::desired::DesiredPod;

/// What the downward API may read that is not in the pod object itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub pod_ip: Option<String>,
    pub host_ip: Option<String>,
    /// The node's CPUs and memory bytes: what `resourceFieldRef` reports
    /// for a limit that is not set (node allocatable, as the kubelet does).
    pub node_cpus: u64,
    pub node_memory: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct EnvError {
    pub field: String,
    pub message: String,
}

/// The most bytes a container's environment, command and args may take
/// after `$(VAR)` expansion, counted as `execve` counts them (`NAME=value`
/// and each word with its terminating NUL). Linux refuses an `execve`
/// whose arguments and environment pass a quarter of the stack limit
/// (2 MiB with the usual 8 MiB stack), so no container that could start is
/// refused, and no manifest makes the agent build gigabytes of strings.
pub const MAX_CONTAINER_CONFIG_BYTES: usize = 1 << 20;

/// An expansion that would be longer than the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expands to more than {limit} bytes")]
pub struct TooLarge {
    pub limit: usize,
}

/// A word of a container's command line whose expansion would take the
/// container past [`MAX_CONTAINER_CONFIG_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "word {word} of the command line: the container's environment, command and args \
     would pass {MAX_CONTAINER_CONFIG_BYTES} bytes after $(VAR) expansion"
)]
pub struct CommandTooLarge {
    /// Index in the command line (command then args).
    pub word: usize,
}

/// Expands `$(NAME)` references with `lookup`, as Kubernetes does: `$$` is
/// a literal `$`, an unknown or unterminated reference stays as written.
/// Fails as soon as the result would pass `limit` bytes, before copying.
pub fn expand<'v>(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<&'v str>,
    limit: usize,
) -> Result<String, TooLarge> {
    let mut out = Bounded {
        text: String::with_capacity(text.len().min(limit)),
        limit,
    };
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push(&rest[..at])?;
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push("$")?;
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let reference = &rest[at..at + end + 3];
                    out.push(lookup(&inner[..end]).unwrap_or(reference))?;
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push("$(")?;
                    rest = inner;
                }
            }
        } else {
            out.push("$")?;
            rest = after;
        }
    }
    out.push(rest)?;
    Ok(out.text)
}

/// A string that refuses to grow past `limit` bytes.
struct Bounded {
    text: String,
    limit: usize,
}

impl Bounded {
    fn push(&mut self, piece: &str) -> Result<(), TooLarge> {
        if piece.len() > self.limit - self.text.len() {
            return Err(TooLarge { limit: self.limit });
        }
        self.text.push_str(piece);
        Ok(())
    }
}

/// What `NAME=value` takes in a process's environment.
fn variable_bytes(name: &str, value: &str) -> usize {
    name.len() + value.len() + 2
}

/// The container's own variables (from `env`), resolved and expanded in
/// order; a name defined again moves to the end with its new value. `list`
/// names the container list for error fields. Together they may take at
/// most [`MAX_CONTAINER_CONFIG_BYTES`]; the error names the variable that
/// would pass it.
pub fn container_variables(
    pod: &DesiredPod,
    container: &Container,
    list: &str,
    addresses: &PodFacts,
) -> Result<Vec<(String, String)>, EnvError> {
    // Name → (order of definition, value), so that a long env list costs
    // no more than its length in lookups.
    let mut defined: HashMap<&str, (usize, String)> = HashMap::new();
    let mut used = 0;
    for (i, var) in container.env.iter().flatten().enumerate() {
        let field = format!("{list}[{}].env[{i}]", container.name);
        // A value defined again replaces the old one, which its expansion
        // may still name.
        used -= defined
            .get(var.name.as_str())
            .map_or(0, |(_, old)| variable_bytes(&var.name, old));
        let too_large = || EnvError {
            field: field.clone(),
            message: format!(
                "variable {:?}: the container's environment, command and args would pass \
                 {MAX_CONTAINER_CONFIG_BYTES} bytes after $(VAR) expansion",
                var.name
            ),
        };
        let left = MAX_CONTAINER_CONFIG_BYTES
            .checked_sub(used + variable_bytes(&var.name, ""))
            .ok_or_else(too_large)?;
        let value = match &var.value_from {
            None => expand(
                var.value.as_deref().unwrap_or(""),
                &|name| defined.get(name).map(|(_, value)| value.as_str()),
                left,
            )
            .map_err(|_| too_large())?,
            Some(source) => {
                let value = resolve_source(pod, container, var, source, &field, addresses)?;
                if value.len() > left {
                    return Err(too_large());
                }
                value
            }
        };
        used += variable_bytes(&var.name, &value);
        defined.insert(&var.name, (i, value));
    }
    let mut ordered: Vec<(usize, String, String)> = defined
        .into_iter()
        .map(|(name, (order, value))| (order, name.to_string(), value))
        .collect();
    ordered.sort_unstable_by_key(|(order, _, _)| *order);
    Ok(ordered
        .into_iter()
        .map(|(_, name, value)| (name, value))
        .collect())
}

fn resolve_source(
    pod: &DesiredPod,
    container: &Container,
    var: &EnvVar,
    source: &k8s_openapi::api::core::v1::EnvVarSource,
    field: &str,
    addresses: &PodFacts,
) -> Result<String, EnvError> {
    let error = |message: String| EnvError {
        field: format!("{field}.valueFrom"),
        message,
    };
    if let Some(selector) = &source.field_ref {
        return field_value(pod, selector, addresses).map_err(error);
    }
    if let Some(selector) = &source.resource_field_ref {
        let target = selector.container_name.as_deref().filter(|n| !n.is_empty());
        let spec = pod.pod.spec.as_ref();
        let resources_of = match target {
            None => Some(container),
            Some(name) => spec.and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|c| c.name == name)
            }),
        };
        let Some(of) = resources_of else {
            return Err(error(format!(
                "resourceFieldRef names container {:?}, which is not in this pod",
                target.unwrap_or_default()
            )));
        };
        return resource_field_value(of, selector, addresses).map_err(error);
    }
    Err(error(format!(
        "env {}: only fieldRef and resourceFieldRef are supported (static pods cannot reference ConfigMaps or Secrets)",
        var.name
    )))
}

/// The value of a `resourceFieldRef` for container `of`: the quantity
/// divided by `divisor` (default 1), rounded up. An unset limit reports the
/// node's capacity; an unset request falls back to the limit, as
/// Kubernetes defaults requests from limits.
fn resource_field_value(
    of: &Container,
    selector: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    facts: &PodFacts,
) -> Result<String, String> {
    use super::quantity;
    let resources = of.resources.clone().unwrap_or_default();
    let get = |map: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               name: &str| {
        map.as_ref().and_then(|m| m.get(name)).map(|q| q.0.clone())
    };
    let (kind, text) = match selector.resource.as_str() {
        "limits.cpu" => ("cpu", get(&resources.limits, "cpu")),
        "requests.cpu" => (
            "cpu",
            get(&resources.requests, "cpu").or(get(&resources.limits, "cpu")),
        ),
        "limits.memory" => ("memory", get(&resources.limits, "memory")),
        "requests.memory" => (
            "memory",
            get(&resources.requests, "memory").or(get(&resources.limits, "memory")),
        ),
        other => return Err(format!("resourceFieldRef {other:?} is not supported")),
    };
    let parse = |t: &str| quantity::parse(t).map_err(|e| format!("{t:?}: {e}"));
    let divisor = match &selector.divisor {
        Some(d) => parse(&d.0)?,
        None => parse("1")?,
    };
    if divisor.is_zero() {
        return Err("divisor must not be zero".into());
    }
    let value = match (kind, text) {
        ("cpu", Some(t)) => parse(&t)?.milli_value(),
        ("cpu", None) => facts.node_cpus as i64 * 1000,
        (_, Some(t)) => parse(&t)?.value(),
        (_, None) => facts.node_memory as i64,
    };
    let per = if kind == "cpu" {
        divisor.milli_value()
    } else {
        divisor.value()
    };
    if per <= 0 {
        return Err("divisor is too small".into());
    }
    Ok(((value + per - 1) / per).to_string())
}

/// The value of a downward-API field path.
pub fn field_value(
    pod: &DesiredPod,
    selector: &ObjectFieldSelector,
    addresses: &PodFacts,
) -> Result<String, String> {
    let meta = &pod.pod.metadata;
    let path = selector.field_path.as_str();
    let keyed = |prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(key.to_string())
    };
    let spec = pod.pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => pod.name().into(),
        "metadata.namespace" => pod.namespace().into(),
        "metadata.uid" => pod.uid().into(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => addresses.pod_ip.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => addresses.host_ip.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => {
            if let Some(key) = keyed("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|m| m.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = keyed("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|m| m.get(&key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("fieldRef {path:?} is not a supported field path"));
            }
        }
    })
}

/// `key="value"` lines, sorted, as the downward API writes maps.
pub fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands `$(VAR)` in `command` and `args` with the container's
/// variables, within what the variables leave of
/// [`MAX_CONTAINER_CONFIG_BYTES`].
pub fn expand_command(
    words: &[String],
    variables: &[(String, String)],
) -> Result<Vec<String>, CommandTooLarge> {
    let known: HashMap<&str, &str> = variables
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut left = variables
        .iter()
        .map(|(name, value)| variable_bytes(name, value))
        .try_fold(MAX_CONTAINER_CONFIG_BYTES, usize::checked_sub)
        .ok_or(CommandTooLarge { word: 0 })?;
    let mut expanded = Vec::with_capacity(words.len());
    for (word, text) in words.iter().enumerate() {
        let too_large = CommandTooLarge { word };
        let limit = left.checked_sub(1).ok_or(too_large)?;
        let out = expand(text, &|name| known.get(name).copied(), limit).map_err(|_| too_large)?;
        left = limit - out.len();
        expanded.push(out);
    }
    Ok(expanded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "A" => Some("alpha"),
            "EMPTY" => Some(""),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let e = |s: &str| expand(s, &lookup, 100).unwrap();
        assert_eq!(e("$(A)"), "alpha");
        assert_eq!(e("x-$(A)-y"), "x-alpha-y");
        assert_eq!(e("$$(A)"), "$(A)");
        assert_eq!(e("$(B)"), "$(B)");
        assert_eq!(e("$(A"), "$(A");
        assert_eq!(e("$A"), "$A");
        assert_eq!(e("cost: 5$"), "cost: 5$");
        assert_eq!(e("$(EMPTY)x"), "x");
        assert_eq!(e("$$$(A)"), "$alpha");
        assert_eq!(e("ü$(A)ü"), "üalphaü");
    }

    fn pod(env: &str) -> DesiredPod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {{app: web, tier: front}}\n  annotations: {{note: hi}}\nspec:\n  containers:\n  - name: app\n    image: x\n    env:\n{env}"
        );
        crate::manifest::parse::parse_manifest(text.as_bytes(), Path::new("/m/web.yaml"), "node1")
            .unwrap()
    }

    fn variables(pod: &DesiredPod) -> Result<Vec<(String, String)>, EnvError> {
        let container = &pod.pod.spec.as_ref().unwrap().containers[0];
        let addresses = PodFacts {
            pod_ip: Some("10.85.0.7".into()),
            host_ip: Some("192.0.2.1".into()),
            node_cpus: 4,
            node_memory: 8 << 30,
        };
        container_variables(pod, container, "spec.containers", &addresses)
    }

    #[test]
    fn values_expand_against_earlier_variables_only() {
        let p = pod("    - {name: A, value: one}\n    - {name: B, value: '$(A)-two-$(C)'}\n    - {name: C, value: three}\n");
        let vars = variables(&p).unwrap();
        assert_eq!(vars[1], ("B".to_string(), "one-two-$(C)".to_string()));
    }

    #[test]
    fn field_refs_resolve_from_the_pod() {
        let p = pod(concat!(
            "    - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n",
            "    - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}\n",
            "    - {name: UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}\n",
            "    - {name: TIER, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['tier']\"}}}\n",
            "    - {name: NOTE, valueFrom: {fieldRef: {fieldPath: \"metadata.annotations['note']\"}}}\n",
            "    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}\n",
            "    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n",
            "    - {name: HOST, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}\n",
            "    - {name: LABELS, valueFrom: {fieldRef: {fieldPath: metadata.labels}}}\n",
        ));
        let vars: HashMap<String, String> = variables(&p).unwrap().into_iter().collect();
        assert_eq!(vars["NAME"], "web-node1");
        assert_eq!(vars["NS"], "default");
        assert_eq!(vars["UID"], p.uid());
        assert_eq!(vars["TIER"], "front");
        assert_eq!(vars["NOTE"], "hi");
        assert_eq!(vars["NODE"], "node1");
        assert_eq!(vars["IP"], "10.85.0.7");
        assert_eq!(vars["HOST"], "192.0.2.1");
        assert_eq!(vars["LABELS"], "app=\"web\"\ntier=\"front\"");
    }

    #[test]
    fn unknown_field_paths_and_secret_refs_name_the_variable() {
        let p = pod("    - {name: X, valueFrom: {fieldRef: {fieldPath: spec.bogus}}}\n");
        let err = variables(&p).unwrap_err();
        assert_eq!(err.field, "spec.containers[app].env[0].valueFrom");
        assert!(err.message.contains("spec.bogus"));
        let p = pod("    - {name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}\n");
        assert!(variables(&p).unwrap_err().message.contains("Secrets"));
    }

    #[test]
    fn resource_field_refs_divide_and_round_up() {
        let text = concat!(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: app\n    image: x\n",
            "    resources: {limits: {cpu: 1500m, memory: 64Mi}}\n",
            "    env:\n",
            "    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}\n",
            "    - {name: CPU_M, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}\n",
            "    - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}\n",
            "    - {name: REQ_MEM, valueFrom: {resourceFieldRef: {resource: requests.memory}}}\n",
        );
        let p =
            crate::manifest::parse::parse_manifest(text.as_bytes(), Path::new("/m/w.yaml"), "n")
                .unwrap();
        let vars: HashMap<String, String> = variables(&p).unwrap().into_iter().collect();
        assert_eq!(vars["CPU"], "2");
        assert_eq!(vars["CPU_M"], "1500");
        assert_eq!(vars["MEM_MI"], "64");
        assert_eq!(vars["REQ_MEM"], "67108864");
    }

    #[test]
    fn an_unset_limit_reports_the_node() {
        let p = pod("    - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}\n");
        let vars: HashMap<String, String> = variables(&p).unwrap().into_iter().collect();
        assert_eq!(vars["CPU"], "4");
    }

    #[test]
    fn commands_expand_with_the_container_variables() {
        let vars = vec![("GREETING".to_string(), "hello".to_string())];
        let words = vec![
            "echo".to_string(),
            "$(GREETING) $(NOPE) $$(GREETING)".to_string(),
        ];
        assert_eq!(
            expand_command(&words, &vars).unwrap(),
            ["echo", "hello $(NOPE) $(GREETING)"]
        );
    }

    #[test]
    fn expansion_stops_at_its_limit() {
        assert_eq!(expand("$(A)$(A)", &lookup, 10).unwrap(), "alphaalpha");
        assert_eq!(
            expand("$(A)$(A)x", &lookup, 10),
            Err(TooLarge { limit: 10 })
        );
        // What is kept as written counts as much as what is substituted.
        assert!(expand("$(NOPE)$(NOPE)", &lookup, 13).is_err());
        assert!(expand("$$$$", &lookup, 1).is_err());
    }

    /// `env` entries each naming the one before twice: `count` of them
    /// double one byte to 2^count bytes.
    fn doubling(count: usize) -> String {
        let mut env = String::from("    - {name: V0, value: x}\n");
        for n in 1..=count {
            env.push_str(&format!(
                "    - {{name: V{n}, value: '$(V{p})$(V{p})'}}\n",
                p = n - 1
            ));
        }
        env
    }

    #[test]
    fn doubling_variables_are_refused_by_name() {
        // 2^44 bytes (16 TiB) if it were built.
        let err = variables(&pod(&doubling(44))).unwrap_err();
        // V19 (512 KiB) would bring them, with the names, past 1 MiB.
        assert_eq!(err.field, "spec.containers[app].env[19]");
        assert!(err.message.starts_with("variable \"V19\": "), "{err}");
        assert!(err.message.contains("1048576 bytes"), "{err}");
        assert_eq!(variables(&pod(&doubling(18))).unwrap().len(), 19);
    }

    #[test]
    fn the_limit_counts_every_variable_once() {
        let half = "x".repeat(MAX_CONTAINER_CONFIG_BYTES / 2);
        let env = format!("    - {{name: A, value: {half}}}\n    - {{name: B, value: '$(A)'}}\n");
        let err = variables(&pod(&env)).unwrap_err();
        assert_eq!(err.field, "spec.containers[app].env[1]");
        // Defined again, a variable's old value no longer counts.
        let env = format!("    - {{name: A, value: {half}}}\n    - {{name: A, value: '$(A)'}}\n");
        let vars = variables(&pod(&env)).unwrap();
        assert_eq!(vars.len(), 1);
        assert!(vars[0].1 == half, "A is no longer the half");
        // A downward-API value counts too.
        let label = "x".repeat(MAX_CONTAINER_CONFIG_BYTES);
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, labels: {{big: {label}}}}}\nspec:\n  containers:\n  - name: app\n    image: x\n    env:\n    - {{name: L, valueFrom: {{fieldRef: {{fieldPath: \"metadata.labels['big']\"}}}}}}\n"
        );
        let p =
            crate::manifest::parse::parse_manifest(text.as_bytes(), Path::new("/m/w.yaml"), "n")
                .unwrap();
        assert!(variables(&p)
            .unwrap_err()
            .message
            .starts_with("variable \"L\""));
    }

    #[test]
    fn redefined_variables_move_to_the_end() {
        let p = pod("    - {name: A, value: one}\n    - {name: B, value: two}\n    - {name: A, value: '$(A)-again'}\n");
        let vars = variables(&p).unwrap();
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["B", "A"]);
        assert_eq!(vars[1].1, "one-again");
    }

    #[test]
    fn the_command_gets_what_the_variables_leave() {
        let value = "x".repeat(MAX_CONTAINER_CONFIG_BYTES / 4);
        let vars = vec![("X".to_string(), value)];
        let words = |refs: usize| vec!["echo".to_string(), "$(X)".repeat(refs)];
        assert!(expand_command(&words(2), &vars).is_ok());
        assert_eq!(
            expand_command(&words(3), &vars),
            Err(CommandTooLarge { word: 1 })
        );
    }
}
