//! shoal's mesh substrate. It knows nothing of deployments or HTTP: it offers
//! replicated tables (typed, CBOR-encoded, merged by a law the caller
//! supplies) on a local sled database, a hybrid logical clock to order writes
//! across peers, and the libp2p mesh that keeps those tables the same on
//! every peer: gossip pushes each change at once, anti-entropy repairs what
//! gossip lost, heartbeats tell who is alive and how loaded.

pub mod beats;
mod behaviour;
pub mod blocks;
pub mod digest;
pub mod exchange;
pub mod hlc;
pub mod locks;
pub mod members;
pub mod mesh;
pub mod net;
mod picker;
pub mod store;
mod swarm;
pub mod sync;
pub mod wire;

pub use hlc::{Clock, Hlc};
pub use libp2p::PeerId;
pub use store::{Change, Listener, Merge, Origin, Store, StoreError, Table};
