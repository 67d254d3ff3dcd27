//! Helpers shared by the integration tests in `tests/*.rs` (each test binary
//! includes this with `mod common;` and uses only what it needs).
#![allow(dead_code)]

pub mod agent;
pub mod archives;
pub mod containerd;
pub mod process;
pub mod registry;
pub mod synthetic;
pub mod tasks;
