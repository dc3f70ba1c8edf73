//! shoal's mesh substrate. It knows nothing of deployments or HTTP. It has
//! two halves over one libp2p swarm (`net`, `swarm`, `behaviour`, `mesh`):
//!
//! - **Replicated tables** (`store`, `digest`, `sync`, `hlc`, `members`,
//!   `beats`): typed, CBOR-encoded rows on a local sled database, merged by
//!   a law the caller supplies and ordered by a hybrid logical clock; gossip
//!   pushes each change at once, anti-entropy repairs what gossip lost,
//!   heartbeats tell who is alive and how loaded.
//! - **Block exchange** (`blocks`, `exchange`, `picker`): artifacts cut into
//!   content-addressed blocks with a manifest, kept in a block store on
//!   disk, and fetched bitswap-style from every peer that has some of them,
//!   each block checked against its hash as it lands.

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
