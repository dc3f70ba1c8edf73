//! Everything that crosses the wire, in CBOR (serde + cbor4ii), versioned
//! and size-limited. Decoding never panics: bad input is an error value that
//! the caller logs and drops.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Version of the gossip payloads; peers drop messages of other versions.
pub const VERSION: u8 = 1;
/// Gossip topics.
pub const STATE_TOPIC: &str = "shoal/state/1";
pub const HEARTBEAT_TOPIC: &str = "shoal/heartbeat/1";
/// The anti-entropy protocol (request-response).
pub const SYNC_PROTOCOL: &str = "/shoal/sync/1";

/// Largest gossip message accepted or sent.
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Largest sync request and response.
pub const MAX_SYNC_REQUEST_BYTES: u64 = 1024 * 1024;
pub const MAX_SYNC_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unsupported message version {0}")]
    Version(u8),
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    cbor4ii::serde::to_vec(Vec::new(), msg).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decodes `bytes` if they are within `limit`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge(bytes.len()));
    }
    cbor4ii::serde::from_slice(bytes).map_err(|e| WireError::Malformed(e.to_string()))
}

/// One changed row, pushed on [`STATE_TOPIC`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateMsg {
    pub v: u8,
    pub table: String,
    pub key: ByteBuf,
    pub value: ByteBuf,
}

/// A peer says it is alive, on [`HEARTBEAT_TOPIC`]. Deliberately small: it
/// is the one message every peer sends every second. The sender is the
/// message's signed source; its name, addresses, region and capabilities
/// travel once, in its `servers` row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub v: u8,
    pub load: f32,
    /// Builds the sender could start now; 0 means it cannot take one.
    pub free_slots: u8,
    /// How often the sender beats; receivers scale its lease by this.
    pub interval_ms: u32,
}

/// The root digest of one table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRoot {
    pub table: String,
    pub root: ByteBuf,
    pub rows: u64,
}

/// One row in transit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub key: ByteBuf,
    pub value: ByteBuf,
}

/// Anti-entropy requests, in the order a round uses them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// "Here are my table roots; send yours."
    Summary(Vec<TableRoot>),
    /// The 256 bucket digests of a table.
    Buckets { table: String },
    /// `(key, row hash)` for rows in these buckets, in key order after `after`.
    Keys {
        table: String,
        buckets: ByteBuf,
        after: Option<ByteBuf>,
    },
    /// These rows, please.
    Rows { table: String, keys: Vec<ByteBuf> },
    /// Rows you may lack; merge them.
    Push { table: String, rows: Vec<Row> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SyncResponse {
    Summary(Vec<TableRoot>),
    Buckets(Vec<ByteBuf>),
    Keys {
        entries: Vec<(ByteBuf, ByteBuf)>,
        more: bool,
    },
    Rows(Vec<Row>),
    Pushed {
        applied: u32,
    },
    Refused(String),
}

/// Decodes a gossip payload and checks its version.
pub fn decode_gossip<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, WireError> {
    let msg: T = decode(bytes, MAX_GOSSIP_BYTES)?;
    if msg.version() != VERSION {
        return Err(WireError::Version(msg.version()));
    }
    Ok(msg)
}

/// Gossip payloads carry their version.
pub trait Versioned {
    fn version(&self) -> u8;
}

impl Versioned for StateMsg {
    fn version(&self) -> u8 {
        self.v
    }
}

impl Versioned for Heartbeat {
    fn version(&self) -> u8 {
        self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_checks_versions() {
        let msg = StateMsg {
            v: VERSION,
            table: "t".into(),
            key: ByteBuf::from(b"k".to_vec()),
            value: ByteBuf::from(vec![1, 2]),
        };
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode_gossip::<StateMsg>(&bytes).unwrap(), msg);
        let old = StateMsg { v: 0, ..msg };
        assert!(matches!(
            decode_gossip::<StateMsg>(&encode(&old).unwrap()),
            Err(WireError::Version(0))
        ));
        assert!(matches!(
            decode::<StateMsg>(&[0; 100], 10),
            Err(WireError::TooLarge(100))
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_gossip::<StateMsg>(&bytes);
            let _ = decode_gossip::<Heartbeat>(&bytes);
            let _ = decode::<SyncRequest>(&bytes, 1 << 20);
            let _ = decode::<SyncResponse>(&bytes, 1 << 20);
        }
    }
}
