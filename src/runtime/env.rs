//! A container's environment as the kubelet builds it: the image's
//! variables, `HOSTNAME`, then the container's `env` in order, each value
//! expanded (`$(VAR)`) against the variables defined before it, with
//! `valueFrom.fieldRef` and `resourceFieldRef` resolved from the pod.
//! Pure.

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

/// Expands `$(NAME)` references with `lookup`, as Kubernetes does: `$$` is
/// a literal `$`, an unknown or unterminated reference stays as written.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's own variables (from `env`), resolved and expanded in
/// order. `list` names the container list for error fields.
pub fn container_variables(
    pod: &DesiredPod,
    container: &Container,
    list: &str,
    addresses: &PodFacts,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut defined: Vec<(String, String)> = Vec::new();
    for (i, var) in container.env.iter().flatten().enumerate() {
        let field = format!("{list}[{}].env[{i}]", container.name);
        let value = match &var.value_from {
            None => {
                let known: HashMap<&str, &str> = defined
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                expand(var.value.as_deref().unwrap_or(""), &|name| {
                    known.get(name).map(|v| v.to_string())
                })
            }
            Some(source) => resolve_source(pod, container, var, source, &field, addresses)?,
        };
        defined.retain(|(name, _)| name != &var.name);
        defined.push((var.name.clone(), value));
    }
    Ok(defined)
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

/// Expands `$(VAR)` in `command` and `args` with the container's variables.
pub fn expand_command(words: &[String], variables: &[(String, String)]) -> Vec<String> {
    let known: HashMap<&str, &str> = variables
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    words
        .iter()
        .map(|w| expand(w, &|name| known.get(name).map(|v| v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let e = |s: &str| expand(s, &lookup);
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
            expand_command(&words, &vars),
            ["echo", "hello $(NOPE) $(GREETING)"]
        );
    }
}
