//! Manifest source: static pod files → validated, defaulted pods.
//!
//! [`parse`] is pure (bytes in, pod or error out), with [`decode`] bounding
//! what the text may expand to; [`source`] owns the directory: listing,
//! watching and keeping the last good version of each file; [`permissions`]
//! refuses manifests anyone but root could write.

pub mod decode;
pub mod parse;
pub mod permissions;
pub mod source;
