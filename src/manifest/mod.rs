//! Manifest source: static pod files → validated, defaulted pods.
//!
//! [`parse`] is pure (bytes in, pod or error out); [`source`] owns the
//! directory: listing, watching and keeping the last good version of each
//! file.

pub mod parse;
pub mod source;
