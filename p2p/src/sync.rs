//! Anti-entropy: repairs whatever gossip lost. A round with one peer
//! compares table roots, then bucket digests of the tables that differ, then
//! the `(key, row hash)` lists of the buckets that differ, and finally pulls
//! the rows the peer has and pushes the rows it lacks, all in bounded
//! batches. Merges are joins, so pulling and pushing extra rows is harmless.

use crate::net::{Client, NetError};
use crate::store::{Store, StoreError};
use crate::wire::{Row, SyncRequest, SyncResponse, TableRoot};
use libp2p::PeerId;
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use tracing::{debug, warn};

/// Most `(key, hash)` entries in one answer.
pub const MAX_KEYS_PER_RESPONSE: usize = 4096;
/// Most rows in one pull or push.
pub const MAX_ROWS_PER_BATCH: usize = 128;
/// Most bytes of rows in one pull answer or push.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most requests one round makes for one table, so a round stays bounded;
/// the next round continues where this one stopped.
const MAX_REQUESTS_PER_TABLE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("peer answered out of turn: {0}")]
    Protocol(String),
}

/// What a round moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    pub tables_differing: usize,
    pub pulled: usize,
    pub pushed: usize,
    /// The round stopped at its request budget; more remains.
    pub truncated: bool,
}

impl RoundStats {
    pub fn in_sync(&self) -> bool {
        self.tables_differing == 0
    }
}

fn roots(store: &Store) -> Result<Vec<TableRoot>, StoreError> {
    store
        .table_names()
        .into_iter()
        .map(|table| {
            let d = store.digest(&table)?;
            Ok(TableRoot {
                table,
                root: ByteBuf::from(d.root().to_vec()),
                rows: d.rows,
            })
        })
        .collect()
}

/// Rows for `keys`, within the batch byte budget.
fn rows_for(store: &Store, table: &str, keys: &[ByteBuf]) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    for key in keys.iter().take(MAX_ROWS_PER_BATCH) {
        if let Some(value) = store.raw(table, key)? {
            bytes += key.len() + value.len();
            if bytes > MAX_BATCH_BYTES && !out.is_empty() {
                break;
            }
            out.push(Row {
                key: key.clone(),
                value: ByteBuf::from(value),
            });
        }
    }
    Ok(out)
}

fn apply_rows(store: &Store, table: &str, rows: &[Row]) -> usize {
    let mut applied = 0;
    for row in rows {
        match store.apply_remote(table, &row.key, &row.value) {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(err) => warn!(table, error = %err, "dropping a bad row from a peer"),
        }
    }
    applied
}

/// Answers one request from a peer.
pub fn serve(store: &Store, request: SyncRequest) -> SyncResponse {
    let result: Result<SyncResponse, StoreError> = (|| {
        Ok(match request {
            SyncRequest::Summary(_) => SyncResponse::Summary(roots(store)?),
            SyncRequest::Buckets { table } => SyncResponse::Buckets(
                store
                    .digest(&table)?
                    .buckets
                    .iter()
                    .map(|b| ByteBuf::from(b.to_vec()))
                    .collect(),
            ),
            SyncRequest::Keys {
                table,
                buckets,
                after,
            } => {
                let mut entries = store.hashes_in(
                    &table,
                    &buckets,
                    after.as_ref().map(|a| a.as_slice()),
                    MAX_KEYS_PER_RESPONSE + 1,
                )?;
                let more = entries.len() > MAX_KEYS_PER_RESPONSE;
                entries.truncate(MAX_KEYS_PER_RESPONSE);
                SyncResponse::Keys {
                    entries: entries
                        .into_iter()
                        .map(|(k, h)| (ByteBuf::from(k), ByteBuf::from(h.to_vec())))
                        .collect(),
                    more,
                }
            }
            SyncRequest::Rows { table, keys } => {
                SyncResponse::Rows(rows_for(store, &table, &keys)?)
            }
            SyncRequest::Push { table, rows } => {
                let rows: Vec<_> = rows.into_iter().take(MAX_ROWS_PER_BATCH).collect();
                SyncResponse::Pushed {
                    applied: apply_rows(store, &table, &rows) as u32,
                }
            }
        })
    })();
    result.unwrap_or_else(|e| SyncResponse::Refused(e.to_string()))
}

/// One anti-entropy round with `peer`.
pub async fn round(store: &Store, client: &Client, peer: PeerId) -> Result<RoundStats, SyncError> {
    let mine = roots(store)?;
    let theirs = match client
        .request(peer, SyncRequest::Summary(mine.clone()))
        .await?
    {
        SyncResponse::Summary(t) => t,
        other => return Err(SyncError::Protocol(format!("{other:?}"))),
    };
    let theirs: HashMap<_, _> = theirs.into_iter().map(|r| (r.table.clone(), r)).collect();
    let mut stats = RoundStats::default();
    for root in mine {
        if theirs.get(&root.table).is_some_and(|t| t.root == root.root) {
            continue;
        }
        stats.tables_differing += 1;
        // A table the peer does not have (an older version) gets pushed in full.
        reconcile(
            store,
            client,
            peer,
            &root.table,
            theirs.contains_key(&root.table),
            &mut stats,
        )
        .await?;
    }
    debug!(%peer, ?stats, "anti-entropy round");
    Ok(stats)
}

async fn reconcile(
    store: &Store,
    client: &Client,
    peer: PeerId,
    table: &str,
    peer_has_table: bool,
    stats: &mut RoundStats,
) -> Result<(), SyncError> {
    if !peer_has_table {
        return Ok(());
    }
    let theirs = match client
        .request(
            peer,
            SyncRequest::Buckets {
                table: table.into(),
            },
        )
        .await?
    {
        SyncResponse::Buckets(b) => b,
        SyncResponse::Refused(why) => return Err(SyncError::Protocol(why)),
        other => return Err(SyncError::Protocol(format!("{other:?}"))),
    };
    let theirs: Vec<[u8; 32]> = theirs
        .iter()
        .map(|b| b.as_slice().try_into().unwrap_or([0; 32]))
        .collect();
    let differing = store.digest(table)?.differing(&theirs);
    if differing.is_empty() {
        return Ok(());
    }
    // Their (key, hash) list for the differing buckets, page by page.
    let mut their_rows: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut after: Option<ByteBuf> = None;
    let mut requests = 0;
    loop {
        requests += 1;
        let req = SyncRequest::Keys {
            table: table.into(),
            buckets: ByteBuf::from(differing.clone()),
            after: after.clone(),
        };
        let (entries, more) = match client.request(peer, req).await? {
            SyncResponse::Keys { entries, more } => (entries, more),
            other => return Err(SyncError::Protocol(format!("{other:?}"))),
        };
        after = entries.last().map(|(k, _)| k.clone());
        their_rows.extend(
            entries
                .into_iter()
                .map(|(k, h)| (k.into_vec(), h.into_vec())),
        );
        if !more || after.is_none() {
            break;
        }
        if requests >= MAX_REQUESTS_PER_TABLE {
            stats.truncated = true;
            break;
        }
    }
    let mine = store.hashes_in(table, &differing, None, usize::MAX)?;
    let mut to_push = Vec::new();
    for (key, hash) in &mine {
        match their_rows.remove(key) {
            Some(h) if h == hash => {}
            Some(_) => {
                to_push.push(ByteBuf::from(key.clone()));
                their_rows.insert(key.clone(), Vec::new()); // differs: pull theirs too
            }
            None if !stats.truncated => to_push.push(ByteBuf::from(key.clone())),
            None => {}
        }
    }
    let to_pull: Vec<ByteBuf> = their_rows.into_keys().map(ByteBuf::from).collect();
    for chunk in to_pull.chunks(MAX_ROWS_PER_BATCH) {
        if requests >= MAX_REQUESTS_PER_TABLE {
            stats.truncated = true;
            break;
        }
        requests += 1;
        match client
            .request(
                peer,
                SyncRequest::Rows {
                    table: table.into(),
                    keys: chunk.to_vec(),
                },
            )
            .await?
        {
            SyncResponse::Rows(rows) => stats.pulled += apply_rows(store, table, &rows),
            other => return Err(SyncError::Protocol(format!("{other:?}"))),
        }
    }
    for chunk in to_push.chunks(MAX_ROWS_PER_BATCH) {
        if requests >= MAX_REQUESTS_PER_TABLE {
            stats.truncated = true;
            break;
        }
        requests += 1;
        let rows = rows_for(store, table, chunk)?;
        let n = rows.len();
        match client
            .request(
                peer,
                SyncRequest::Push {
                    table: table.into(),
                    rows,
                },
            )
            .await?
        {
            SyncResponse::Pushed { .. } => stats.pushed += n,
            other => return Err(SyncError::Protocol(format!("{other:?}"))),
        }
    }
    Ok(())
}
