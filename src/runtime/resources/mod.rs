//! Pure translation of a pod's resource requests and limits into what the
//! kubelet (1.33, cgroupfs driver, default feature gates) would give its
//! containers and its pod cgroup: QoS class, CPU shares and CFS quota,
//! memory limits, `oom_score_adj`, and their cgroup v2 spellings.
//!
//! Sources: `pkg/apis/core/v1/helper/qos/qos.go` (QoS),
//! `pkg/kubelet/cm/helpers_linux.go` (shares, quota, `ResourceConfigForPod`),
//! `pkg/kubelet/kuberuntime/kuberuntime_container_linux.go` (per container),
//! `pkg/kubelet/qos/policy.go` (OOM score), `component-helpers/resource`
//! (pod totals, with sidecars and overhead). Pod-level `spec.resources` is
//! ignored: its feature gate is off by default in 1.33.

use std::collections::BTreeMap;
use std::io;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;
use oci_spec::runtime::{LinuxCpu, LinuxMemory, LinuxResources};

use super::quantity::{self, Quantity};

/// CPU shares of the sandbox (pause) container, as the kubelet asks for it.
pub const SANDBOX_CPU_SHARES: u64 = 2;
/// `oom_score_adj` of the sandbox (pause): containerd's `defaultSandboxOOMAdj`.
pub const SANDBOX_OOM_SCORE_ADJ: i32 = -998;
/// Where the kubelet's cgroupfs driver puts pods by default.
pub const DEFAULT_CGROUP_ROOT: &str = "/kubepods";
/// The CFS period the kubelet uses unless `cpuCFSQuotaPeriod` is changed.
pub const CPU_PERIOD_US: u64 = 100_000;

const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const SHARES_PER_CPU: i128 = 1024;
const MILLI_CPU_TO_CPU: i128 = 1000;
/// The kernel rejects quotas under 1 ms, so the kubelet raises them to it.
const MIN_QUOTA_PERIOD: i64 = 1000;
const GUARANTEED_OOM_SCORE_ADJ: i32 = -997;
const BEST_EFFORT_OOM_SCORE_ADJ: i32 = 1000;
/// Static pods are always "critical" to the kubelet, so this priority class
/// alone makes a pod node-critical.
const SYSTEM_NODE_CRITICAL: &str = "system-node-critical";
const CPU: &str = "cpu";
const MEMORY: &str = "memory";

/// The pod's quality-of-service class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name as `status.qosClass` spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

/// A resource value the pod cannot run with; `field` is the manifest path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ResourceError {
    pub field: String,
    pub message: String,
}

impl ResourceError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What one container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerResources {
    pub cpu_shares: u64,
    /// CFS quota in µs per period; `None` without a cpu limit.
    pub cpu_quota: Option<i64>,
    /// Always the kubelet's 100 ms: it sends the period even without a
    /// limit, and containerd passes it on to runc.
    pub cpu_period: Option<u64>,
    /// Bytes; `None` without a (non-zero) memory limit.
    pub memory_limit: Option<i64>,
    pub oom_score_adj: i32,
}

/// The pod-level cgroup (cgroupfs layout) and the limits the kubelet sets on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub path: String,
    pub cpu_shares: u64,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
}

/// One container's requests and limits, parsed, validated and defaulted.
#[derive(Debug, Default)]
struct Parsed {
    requests: BTreeMap<String, Quantity>,
    limits: BTreeMap<String, Quantity>,
    restartable: bool,
}

impl Parsed {
    fn request(&self, name: &str) -> Option<Quantity> {
        self.requests.get(name).copied()
    }

    fn limit(&self, name: &str) -> Option<Quantity> {
        self.limits.get(name).copied()
    }
}

fn container_field(container: &Container, init: bool) -> String {
    let list = if init { "initContainers" } else { "containers" };
    format!("spec.{list}[{}]", container.name)
}

/// Parses every quantity in the container's requests and limits (any
/// invalid one makes the pod invalid, as decoding it would in Kubernetes),
/// then applies `SetDefaults_Pod` (missing requests copied from limits) and
/// the validation that matters here: non-negative, request ≤ limit.
fn parse_container(container: &Container, init: bool) -> Result<Parsed, ResourceError> {
    let base = container_field(container, init);
    let mut parsed = Parsed {
        restartable: init && container.restart_policy.as_deref() == Some("Always"),
        ..Parsed::default()
    };
    let Some(resources) = &container.resources else {
        return Ok(parsed);
    };
    let read = |kind: &str, list: &Option<BTreeMap<String, KubeQuantity>>| {
        let mut out = BTreeMap::new();
        for (name, value) in list.iter().flatten() {
            let field = format!("{base}.resources.{kind}.{name}");
            out.insert(name.clone(), parse_value(&field, value)?);
        }
        Ok::<_, ResourceError>(out)
    };
    parsed.limits = read("limits", &resources.limits)?;
    parsed.requests = read("requests", &resources.requests)?;
    let text = |list: &Option<BTreeMap<String, KubeQuantity>>, name: &str| {
        list.as_ref()
            .and_then(|l| l.get(name))
            .map_or(String::new(), |q| q.0.trim().to_string())
    };
    for (name, limit) in &parsed.limits {
        if parsed
            .requests
            .get(name)
            .is_some_and(|request| request > limit)
        {
            return Err(ResourceError::new(
                format!("{base}.resources.requests.{name}"),
                format!(
                    "invalid value {:?}: must be less than or equal to {name} limit of {}",
                    text(&resources.requests, name),
                    text(&resources.limits, name),
                ),
            ));
        }
    }
    for (name, limit) in &parsed.limits {
        parsed.requests.entry(name.clone()).or_insert(*limit);
    }
    Ok(parsed)
}

/// Reads one manifest quantity. Surrounding whitespace is trimmed because
/// apimachinery's `UnmarshalJSON` trims it before parsing.
fn parse_value(field: &str, value: &KubeQuantity) -> Result<Quantity, ResourceError> {
    let text = value.0.trim();
    let quantity = quantity::parse(text)
        .map_err(|e| ResourceError::new(field, format!("invalid quantity {text:?}: {e}")))?;
    if quantity.is_negative() {
        return Err(ResourceError::new(
            field,
            format!("invalid value {text:?}: must be greater than or equal to 0"),
        ));
    }
    Ok(quantity)
}

/// Init containers first (the order the pod runs them), then the others.
fn parse_pod(spec: &PodSpec) -> Result<(Vec<Parsed>, Vec<Parsed>), ResourceError> {
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| parse_container(c, true))
        .collect::<Result<Vec<_>, _>>()?;
    let regular = spec
        .containers
        .iter()
        .map(|c| parse_container(c, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((init, regular))
}

/// QoS class by Kubernetes' rules (cpu and memory only; init containers
/// count; requests default to limits). Like `ComputePodQOS`, it compares the
/// pod's *summed* positive requests with its summed positive limits, and
/// needs every container to have both a cpu and a memory limit for
/// Guaranteed.
pub fn qos_class(spec: &PodSpec) -> Result<QosClass, ResourceError> {
    let (init, regular) = parse_pod(spec)?;
    let mut requests: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut limits: BTreeMap<&str, Quantity> = BTreeMap::new();
    let mut guaranteed = true;
    for container in regular.iter().chain(&init) {
        let mut limits_found = 0;
        for name in [CPU, MEMORY] {
            if let Some(request) = container.request(name).filter(|q| !q.is_zero()) {
                add_to(&mut requests, name, request);
            }
            if let Some(limit) = container.limit(name).filter(|q| !q.is_zero()) {
                add_to(&mut limits, name, limit);
                limits_found += 1;
            }
        }
        if limits_found < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok(QosClass::BestEffort);
    }
    let equal = requests
        .iter()
        .all(|(name, request)| limits.get(name) == Some(request));
    if guaranteed && equal && requests.len() == limits.len() {
        Ok(QosClass::Guaranteed)
    } else {
        Ok(QosClass::Burstable)
    }
}

fn add_to<'a>(list: &mut BTreeMap<&'a str, Quantity>, name: &'a str, value: Quantity) {
    let sum = match list.get(name) {
        Some(current) => current.saturating_add(value),
        None => value,
    };
    list.insert(name, sum);
}

/// `MilliCPUToShares`: 1024 shares per CPU, clamped to [2, 262144].
fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    let shares = i128::from(milli) * SHARES_PER_CPU / MILLI_CPU_TO_CPU;
    u64::try_from(shares)
        .unwrap_or(MAX_SHARES)
        .clamp(MIN_SHARES, MAX_SHARES)
}

/// `MilliCPUToQuota`: the share of one period, at least 1 ms; `None` (the
/// kubelet's 0, "unset") without a limit.
fn milli_cpu_to_quota(milli: i64, period: u64) -> Option<i64> {
    if milli <= 0 {
        return None;
    }
    let quota = i128::from(milli) * i128::from(period) / MILLI_CPU_TO_CPU;
    Some(
        i64::try_from(quota)
            .unwrap_or(i64::MAX)
            .max(MIN_QUOTA_PERIOD),
    )
}

/// What one container gets (`calculateLinuxResources` plus the OOM score).
/// `memory_capacity` is the node's memory in bytes; 0 (unknown) makes a
/// Burstable container as killable as Burstable gets (999).
pub fn container_resources(
    spec: &PodSpec,
    container: &Container,
    init: bool,
    qos: QosClass,
    memory_capacity: u64,
) -> Result<ContainerResources, ResourceError> {
    let parsed = parse_container(container, init)?;
    let cpu_request = parsed.request(CPU).unwrap_or_default();
    let cpu_limit = parsed.limit(CPU).unwrap_or_default();
    // A zero request with a limit falls back to the limit, as the kubelet
    // does for pods that predate request defaulting.
    let cpu_shares = if cpu_request.is_zero() && !cpu_limit.is_zero() {
        milli_cpu_to_shares(cpu_limit.milli_value())
    } else {
        milli_cpu_to_shares(cpu_request.milli_value())
    };
    let memory_limit = parsed
        .limit(MEMORY)
        .map(|q| q.value())
        .filter(|&bytes| bytes != 0);
    let oom_score_adj = oom_score_adj(spec, &parsed, qos, memory_capacity)?;
    Ok(ContainerResources {
        cpu_shares,
        cpu_quota: milli_cpu_to_quota(cpu_limit.milli_value(), CPU_PERIOD_US),
        cpu_period: Some(CPU_PERIOD_US),
        memory_limit,
        oom_score_adj,
    })
}

/// `GetContainerOOMScoreAdjust`: Guaranteed and node-critical -997,
/// BestEffort 1000, Burstable `1000 - 1000*request/capacity` kept within
/// [3, 999]; a sidecar (restartable init container) never scores above the
/// regular container with the smallest memory request.
fn oom_score_adj(
    spec: &PodSpec,
    container: &Parsed,
    qos: QosClass,
    memory_capacity: u64,
) -> Result<i32, ResourceError> {
    if spec.priority_class_name.as_deref() == Some(SYSTEM_NODE_CRITICAL) {
        return Ok(GUARANTEED_OOM_SCORE_ADJ);
    }
    match qos {
        QosClass::Guaranteed => return Ok(GUARANTEED_OOM_SCORE_ADJ),
        QosClass::BestEffort => return Ok(BEST_EFFORT_OOM_SCORE_ADJ),
        QosClass::Burstable => {}
    }
    let capacity = i128::from(memory_capacity);
    let score = |request_bytes: i64| -> i128 {
        if capacity == 0 {
            1000
        } else {
            1000 - 1000 * i128::from(request_bytes) / capacity
        }
    };
    let memory_request = |c: &Parsed| c.request(MEMORY).map_or(0, |q| q.value());
    let mut adj = score(memory_request(container));
    if container.restartable {
        let mut smallest: Option<i64> = None;
        for regular in &spec.containers {
            let request = memory_request(&parse_container(regular, false)?);
            smallest = Some(smallest.map_or(request, |s| s.min(request)));
        }
        if let Some(smallest) = smallest {
            adj = adj.min(score(smallest));
        }
    }
    let minimum = i128::from(1000 + GUARANTEED_OOM_SCORE_ADJ);
    let adj = if adj < minimum {
        minimum
    } else if adj == i128::from(BEST_EFFORT_OOM_SCORE_ADJ) {
        adj - 1
    } else {
        adj
    };
    Ok(i32::try_from(adj).unwrap_or(BEST_EFFORT_OOM_SCORE_ADJ - 1))
}

/// A pod's totals the way `PodRequests`/`PodLimits` compute them: regular
/// containers and sidecars add up; each ordinary init container runs alone
/// beside the sidecars started before it, so the total is at least that.
/// `on_container` sees each container's effective list (for limits, the
/// kubelet's "was a limit declared everywhere" check).
fn pod_totals(
    init: &[Parsed],
    regular: &[Parsed],
    pick: impl Fn(&Parsed) -> &BTreeMap<String, Quantity>,
    mut on_container: impl FnMut(&BTreeMap<String, Quantity>),
) -> BTreeMap<String, Quantity> {
    fn add(into: &mut BTreeMap<String, Quantity>, from: &BTreeMap<String, Quantity>) {
        for (name, value) in from {
            let sum = into.get(name).map_or(*value, |v| v.saturating_add(*value));
            into.insert(name.clone(), sum);
        }
    }
    fn max(into: &mut BTreeMap<String, Quantity>, from: &BTreeMap<String, Quantity>) {
        for (name, value) in from {
            if into.get(name).is_none_or(|current| value > current) {
                into.insert(name.clone(), *value);
            }
        }
    }
    let mut total = BTreeMap::new();
    for container in regular {
        on_container(pick(container));
        add(&mut total, pick(container));
    }
    let mut sidecars = BTreeMap::new();
    let mut init_peak = BTreeMap::new();
    for container in init {
        let effective = if container.restartable {
            add(&mut total, pick(container));
            add(&mut sidecars, pick(container));
            sidecars.clone()
        } else {
            let mut alone = pick(container).clone();
            add(&mut alone, &sidecars);
            alone
        };
        on_container(&effective);
        max(&mut init_peak, &effective);
    }
    max(&mut total, &init_peak);
    total
}

/// The pod-level cgroup, as the kubelet's cgroupfs driver lays it out under
/// `root` (default "/kubepods"): Guaranteed → `<root>/pod<uid>`, Burstable
/// → `<root>/burstable/pod<uid>`, BestEffort → `<root>/besteffort/pod<uid>`,
/// with the limits of `ResourceConfigForPod`: Guaranteed shares, quota,
/// period and memory; Burstable shares always, quota only if every
/// container has a cpu limit, memory only if every container has a memory
/// limit; BestEffort shares 2. Pod overhead (`spec.overhead`) is added to
/// requests and to non-zero limits, as the kubelet does.
pub fn pod_cgroup(
    uid: &str,
    spec: &PodSpec,
    qos: QosClass,
    root: &str,
) -> Result<PodCgroup, ResourceError> {
    // The path is later created and removed on the host: refuse anything
    // that could step outside the pod's own directory.
    crate::host::safe_path::check(uid)
        .map_err(|e| ResourceError::new("metadata.uid", format!("cannot name a cgroup: {e}")))?;
    if !root.starts_with('/') || root.split('/').any(|c| c == ".." || c == ".") {
        return Err(ResourceError::new(
            "cgroup root",
            format!("{root:?} must be an absolute cgroup path"),
        ));
    }
    let root = root.trim_end_matches('/');
    let path = match qos {
        QosClass::Guaranteed => format!("{root}/pod{uid}"),
        QosClass::Burstable => format!("{root}/burstable/pod{uid}"),
        QosClass::BestEffort => format!("{root}/besteffort/pod{uid}"),
    };
    let (init, regular) = parse_pod(spec)?;
    if qos == QosClass::BestEffort {
        return Ok(PodCgroup {
            path,
            cpu_shares: MIN_SHARES,
            cpu_quota: None,
            cpu_period: None,
            memory_limit: None,
        });
    }

    let mut overhead = BTreeMap::new();
    for (name, value) in spec.overhead.iter().flatten() {
        overhead.insert(
            name.clone(),
            parse_value(&format!("spec.overhead.{name}"), value)?,
        );
    }
    let mut requests = pod_totals(&init, &regular, |c| &c.requests, |_| {});
    let (mut cpu_declared, mut memory_declared) = (true, true);
    let mut limits = pod_totals(
        &init,
        &regular,
        |c| &c.limits,
        |limits| {
            let declared = |name| limits.get(name).is_some_and(|q: &Quantity| !q.is_zero());
            cpu_declared &= declared(CPU);
            memory_declared &= declared(MEMORY);
        },
    );
    for (name, extra) in &overhead {
        let request = requests
            .get(name)
            .map_or(*extra, |q| q.saturating_add(*extra));
        requests.insert(name.clone(), request);
        if let Some(limit) = limits.get_mut(name).filter(|q| !q.is_zero()) {
            *limit = limit.saturating_add(*extra);
        }
    }
    let cpu_request = requests.get(CPU).map_or(0, |q| q.milli_value());
    let cpu_limit = limits.get(CPU).map_or(0, |q| q.milli_value());
    let memory_limit = limits.get(MEMORY).map_or(0, |q| q.value());
    let cpu_shares = milli_cpu_to_shares(cpu_request);
    let guaranteed = qos == QosClass::Guaranteed;
    let (cpu_quota, cpu_period) = if guaranteed || cpu_declared {
        (
            milli_cpu_to_quota(cpu_limit, CPU_PERIOD_US),
            Some(CPU_PERIOD_US),
        )
    } else {
        (None, None)
    };
    let memory_limit = if guaranteed || memory_declared {
        Some(memory_limit).filter(|&bytes| bytes > 0)
    } else {
        None
    };
    Ok(PodCgroup {
        path,
        cpu_shares,
        cpu_quota,
        cpu_period,
        memory_limit,
    })
}

/// OCI `linux.resources` for a container: cpu shares, quota and period,
/// memory limit. Devices are left to the spec builder.
pub fn to_oci(resources: &ContainerResources) -> LinuxResources {
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(resources.cpu_shares));
    cpu.set_quota(resources.cpu_quota);
    cpu.set_period(resources.cpu_period);
    let mut out = LinuxResources::default();
    out.set_cpu(Some(cpu));
    if let Some(limit) = resources.memory_limit {
        let mut memory = LinuxMemory::default();
        memory.set_limit(Some(limit));
        out.set_memory(Some(memory));
    }
    out
}

/// cgroup v2 `cpu.weight` for v1 shares, by runc's original linear mapping
/// `1 + (shares-2)*9999/262142` (1024 → 39). That is what runc 1.1 (the
/// runtime under containerd 1.6) writes for the containers themselves, and
/// what the kubelet 1.33 writes for pod cgroups, so pod and container
/// weights stay on one scale. Newer runtimes use a quadratic curve (1024 →
/// 100); Kubernetes' e2e tests accept either. Out-of-range shares are
/// clamped to [2, 262144] first, so the result is always in [1, 10000].
pub fn cpu_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + (shares - MIN_SHARES) * 9999 / (MAX_SHARES - MIN_SHARES)
}

/// cgroup v2 `cpu.max`: "<quota> <period>", or "max <period>" without a
/// (positive) quota; the period defaults to 100 ms.
pub fn cpu_max(quota: Option<i64>, period: Option<u64>) -> String {
    let period = period.filter(|&p| p > 0).unwrap_or(CPU_PERIOD_US);
    match quota.filter(|&q| q > 0) {
        Some(quota) => format!("{quota} {period}"),
        None => format!("max {period}"),
    }
}

/// cgroup v2 `memory.max`: the byte limit, or "max" when unlimited.
pub fn memory_max(limit: Option<i64>) -> String {
    match limit.filter(|&l| l > 0) {
        Some(limit) => limit.to_string(),
        None => "max".to_string(),
    }
}

/// The node's memory in bytes, from `MemTotal` in /proc/meminfo (what the
/// kubelet's cAdvisor reports as memory capacity).
pub fn node_memory_capacity() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_mem_total(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "/proc/meminfo has no readable MemTotal line",
        )
    })
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let amount: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => amount.checked_mul(1024),
        None => Some(amount),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
