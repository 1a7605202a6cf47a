//! PlanetMesh's shared language.
//!
//! Every party of a PlanetMesh federation (nodes, agents, brokers, service managers and
//! federation authorities) speaks only through the types of this crate:
//!
//! - [`identity`]: ed25519 keys, their `ed25519/<hex>` text form and key files;
//! - [`resources`]: the [`Resources`] vector with checked arithmetic and human units;
//! - [`codec`]: bounded CBOR encoding and decoding of every message and record;
//! - [`signed`]: [`Signed<T>`], a CBOR body signed under a per-type domain tag;
//! - [`membership`]: federation trust objects (membership certificates, peering, revocation);
//! - [`ad`]: resource advertisements, delegations and prices;
//! - [`heartbeat`]: a node's small signed sign of life between its ads;
//! - [`ask`]: the principal's signed ask, which agents mint against;
//! - [`slice`](mod@slice): slice requests, slice kinds and leases;
//! - [`ticket`]: attenuable, delegable capability tickets (biscuit) and their verification;
//! - [`rejection`]: typed refusal reasons with sentences a person can act on;
//! - [`protocol`]: every request and response of the agent, node and broker protocols.
//!
//! The crate does no network I/O and has no async code; the only file access is reading and
//! writing key files in [`identity`].
#![deny(missing_docs)]

pub mod ad;
pub mod ask;
pub mod codec;
pub mod heartbeat;
pub mod identity;
pub mod membership;
pub mod protocol;
pub mod rejection;
pub mod resources;
pub mod signed;
pub mod slice;
pub mod ticket;

pub use ad::{Delegation, DelegationScope, PriceList, ResourceAd};
pub use ask::{AskGrant, AskRefusal};
pub use codec::{DecodeError, decode, encode};
pub use heartbeat::Heartbeat;
pub use identity::{KeyError, PublicKey, SecretKey};
pub use membership::{MembershipCert, PeeringAgreement, RevocationList, Role};
pub use rejection::{ErrorReply, Rejection};
pub use resources::{Resources, ResourcesError};
pub use signed::{SignatureError, Signed, SignedType};
pub use slice::{AcquireMode, Lease, NetGrant, PublicEndpoint, SliceKind, SliceRequest};
pub use ticket::{Ticket, TicketError, TicketId, TicketRefusal, TicketVerifier, VerifiedTicket};
