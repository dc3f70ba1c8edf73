//! shoal's mesh substrate. It knows nothing of deployments or HTTP: it offers
//! replicated tables (typed, CBOR-encoded, merged by a law the caller
//! supplies) on a local sled database, and a hybrid logical clock to order
//! writes across peers. Gossip and anti-entropy over libp2p build on these
//! tables; they never need to understand the rows they carry.

pub mod hlc;
pub mod store;

pub use hlc::{Clock, Hlc};
pub use store::{Merge, Store, StoreError, Table};
