//! PlanetMesh's shared language.
//!
//! Every party of a PlanetMesh federation (nodes, agents, brokers, service managers and
//! federation authorities) speaks only through the types of this crate:
//!
//! - [`identity`]: ed25519 keys, their `ed25519/<hex>` text form and key files;
//! - [`resources`]: the [`Resources`] vector with checked arithmetic and human units;
//! - [`codec`]: bounded CBOR encoding and decoding of every message and record;
//! - [`signed`]: [`Signed<T>`], a CBOR body signed under a per-type domain tag.
//!
//! The crate does no network I/O and has no async code; the only file access is reading and
//! writing key files in [`identity`].
#![deny(missing_docs)]

pub mod codec;
pub mod identity;
pub mod resources;
pub mod signed;

pub use codec::{DecodeError, decode, encode};
pub use identity::{KeyError, PublicKey, SecretKey};
pub use resources::{Resources, ResourcesError};
pub use signed::{SignatureError, Signed, SignedType};
