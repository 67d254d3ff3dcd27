//! Where names that come from pods meet the node's filesystem: paths are
//! built only from checked components under a trusted base
//! ([`safe_path`]), and trees are removed through file descriptors without
//! following a symlink or crossing a mount ([`remove`]), both on the
//! descriptor-relative system calls of [`fd`]; what only root may read is
//! created private from the start and written crash-safe
//! ([`private_files`]), and read back with torn files handled as absent
//! ([`state_file`]); and who is at the other end of a local connection
//! ([`socket_owner`]). Such work blocks, and runs off the async runtime
//! ([`blocking`]).

pub mod blocking;
pub mod fd;
pub mod private_files;
pub mod remove;
pub mod safe_path;
pub mod socket_owner;
pub mod state_file;

pub use remove::remove_tree;
pub use safe_path::{SafePath, UnsafeComponent};
