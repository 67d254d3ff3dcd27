//! What the agent knows and reports: the latest status of each pod
//! ([`store`]) and the lifecycle events ([`events`]). Workers and the
//! manifest source write; the API only reads.

pub mod events;
pub mod store;
