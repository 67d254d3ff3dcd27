//! Paths under a trusted base (the state, log or volume directory, from the
//! agent's configuration) built from components that come from pods: a UID,
//! a name, a volume name. Manifests are validated before this, but such a
//! string also comes back from containerd's labels and from files on disk,
//! and a component that is absolute or `..` turns "remove the pod's
//! directory" into "remove a host directory". Every component is checked
//! here, once, so no caller can forget it.

use std::path::{Path, PathBuf};

/// The kernel's limit on one name in a path (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// Why a string cannot be one component of a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{component:?} cannot name a file or directory: {why}")]
pub struct UnsafeComponent {
    pub component: String,
    pub why: &'static str,
}

/// A path that stays under its base: the base, then components each of
/// which is one plain name (not empty, not `.` or `..`, no `/` or NUL).
/// Remembers which part is trusted, so removal can walk the rest by file
/// descriptor ([`crate::host::remove_tree`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafePath {
    base: PathBuf,
    components: Vec<String>,
}

impl SafePath {
    /// `base` itself, trusted as given (it comes from the agent's
    /// configuration, not from a pod).
    pub fn base(base: impl Into<PathBuf>) -> SafePath {
        SafePath {
            base: base.into(),
            components: Vec::new(),
        }
    }

    /// This path with `components` appended, each checked.
    pub fn join(&self, components: &[&str]) -> Result<SafePath, UnsafeComponent> {
        let mut joined = self.clone();
        for component in components {
            joined.components.push(check(component)?.to_string());
        }
        Ok(joined)
    }

    /// The full path, for the operations that take one.
    pub fn path(&self) -> PathBuf {
        let mut path = self.base.clone();
        path.extend(&self.components);
        path
    }

    /// The trusted base.
    pub fn trusted(&self) -> &Path {
        &self.base
    }

    /// The checked components below the base, outermost first.
    pub fn components(&self) -> &[String] {
        &self.components
    }
}

/// `component` if it is one plain name.
pub fn check(component: &str) -> Result<&str, UnsafeComponent> {
    let why = if component.is_empty() {
        "it is empty"
    } else if component == "." || component == ".." {
        "it is \".\" or \"..\""
    } else if component.contains('/') {
        "it contains '/'"
    } else if component.contains('\0') {
        "it contains a NUL byte"
    } else if component.len() > NAME_MAX {
        "it is longer than 255 bytes"
    } else {
        return Ok(component);
    };
    let shown: String = component.chars().take(NAME_MAX + 1).collect();
    Err(UnsafeComponent {
        component: shown,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_join_under_the_base() {
        let base = SafePath::base("/var/lib/podkeeper");
        let path = base
            .join(&["pods", "3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d"])
            .unwrap();
        assert_eq!(
            path.path(),
            Path::new("/var/lib/podkeeper/pods/3f2b1c9e-5d4a-4e7b-9c1d-2a6f8e0b4c7d")
        );
        assert_eq!(path.trusted(), Path::new("/var/lib/podkeeper"));
        assert_eq!(path.components().len(), 2);
        let deeper = path.join(&["..x", "a.json", "..."]).unwrap();
        assert!(deeper.path().starts_with(path.path()));
        assert_eq!(SafePath::base("/b").path(), Path::new("/b"));
    }

    #[test]
    fn anything_that_could_leave_the_base_is_refused() {
        let base = SafePath::base("/var/lib/podkeeper");
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "/",
            "/etc",
            "../..",
            "a/b",
            "a/",
            "a\0b",
            long.as_str(),
        ] {
            let err = base.join(&["pods", bad]).unwrap_err();
            assert_eq!(err.component, bad, "{err}");
            assert!(check(bad).is_err());
        }
        assert!(check(&"x".repeat(255)).is_ok());
    }
}
