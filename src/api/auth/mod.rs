//! Who is calling the HTTPS API, and what they may do.
//!
//! Authentication follows the API server's: a bearer token from a
//! `--token-auth-file`-style CSV (plus the agent's own admin token), or a
//! client certificate signed by `client-ca-file` whose subject's CN is the
//! user and whose O values are the groups. Authorization is two-level:
//! every authenticated user may do everything, except members of
//! [`VIEWERS_GROUP`], who may only read.

pub mod token_file;

use std::collections::HashMap;
use std::sync::Arc;

use hyper::Method;
use sha2::{Digest, Sha256};

/// Users in this group may read everything but change or enter nothing.
pub const VIEWERS_GROUP: &str = "podkeeper:viewers";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn is_viewer(&self) -> bool {
        self.groups.iter().any(|g| g == VIEWERS_GROUP)
    }
}

/// Bearer tokens and their users, keyed by the token's SHA-256: a lookup
/// compares digests, so how long it takes tells nothing about how much of a
/// guessed token was right, and the tokens themselves are not kept.
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Arc<User>>,
}

impl Tokens {
    /// Adds `token` for `user`; returns false when the token was already
    /// known (the later entry wins, as with the API server).
    pub fn insert(&mut self, token: &str, user: User) -> bool {
        self.by_digest
            .insert(digest(token), Arc::new(user))
            .is_none()
    }

    pub fn lookup(&self, token: &str) -> Option<Arc<User>> {
        self.by_digest.get(&digest(token)).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, as in RFC 7235); `None` for anything else.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user a verified client certificate names, as the API server reads
/// it: the subject's first CN is the user, every O a group. A certificate
/// without a CN authenticates nobody.
pub fn user_from_certificate(der: &[u8]) -> Option<User> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = certificate.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(String::from)
        .collect();
    Some(User {
        name: name.to_string(),
        uid: String::new(),
        groups,
    })
}

/// Whether `user` may send `method` to `path`; the error is the message of
/// the 403 the caller gets.
pub fn authorize(user: &User, method: &Method, path: &str) -> Result<(), String> {
    if !user.is_viewer() {
        return Ok(());
    }
    let reads = method == Method::GET || method == Method::HEAD;
    if reads && !enters_a_container(path) {
        return Ok(());
    }
    Err(format!(
        "forbidden: User \"{}\" (group {VIEWERS_GROUP}) may only read; {method} {path} is not allowed",
        user.name
    ))
}

/// Paths that run something in a container or open a stream into it:
/// `exec`, `attach` and `portforward` (and `proxy`) of a pod, and the
/// kubelet's own `/exec`, `/attach`, `/run` and `/portForward`. These are
/// requested with GET (a WebSocket upgrade), so the method alone does not
/// tell a read.
fn enters_a_container(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["exec" | "attach" | "run" | "portForward", ..] => true,
        ["api", "v1", "namespaces", _, "pods", _, sub, ..] => {
            matches!(*sub, "exec" | "attach" | "portforward" | "proxy")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
