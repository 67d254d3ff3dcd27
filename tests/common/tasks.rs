//! What a private containerd holds, read with `ctr`, for assertions.

use super::containerd::PrivateContainerd;

/// A task as `ctr tasks ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

/// Every task in `namespace`, sorted by ID.
pub fn tasks(containerd: &PrivateContainerd, namespace: &str) -> Vec<Task> {
    let out = containerd
        .ctr(namespace, &["tasks", "ls"])
        .expect("ctr tasks ls");
    let mut tasks: Vec<Task> = out
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some(Task {
                id: fields.next()?.to_string(),
                pid: fields.next()?.parse().ok()?,
                status: fields.next()?.to_string(),
            })
        })
        .collect();
    tasks.sort_by(|a, b| a.id.cmp(&b.id));
    tasks
}

/// The PID of the one running task in `namespace` whose ID contains
/// `part`, so a test can tell a task that kept running from one restarted.
pub fn running_task_pid(containerd: &PrivateContainerd, namespace: &str, part: &str) -> u32 {
    let matching: Vec<u32> = tasks(containerd, namespace)
        .into_iter()
        .filter(|t| t.id.contains(part) && t.status == "RUNNING")
        .map(|t| t.pid)
        .collect();
    assert_eq!(matching.len(), 1, "running tasks matching {part}");
    matching[0]
}

/// IDs of every container in `namespace`.
pub fn container_ids(containerd: &PrivateContainerd, namespace: &str) -> Vec<String> {
    let out = containerd
        .ctr(namespace, &["containers", "ls", "-q"])
        .expect("ctr containers ls");
    let mut ids: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(String::from)
        .collect();
    ids.sort();
    ids
}
