//! Manifest source: static pod files → validated, defaulted pods.
//!
//! [`parse`] is pure (bytes in, pod or error out); [`source`] owns the
//! directory: listing, watching and keeping the last good version of each
//! file; [`permissions`] refuses manifests anyone but root could write.

pub mod parse;
pub mod permissions;
pub mod source;
