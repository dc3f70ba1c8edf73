//! Who is in the mesh and how loaded: every peer gossips a heartbeat each
//! interval; a peer is alive while its last heartbeat is younger than its
//! lease. Liveness is judged by local receive time, so clock skew between
//! peers does not matter. The static part of each peer (name, addresses,
//! region, capabilities, version) is also kept in the replicated `servers`
//! table, written by that peer only, so peers that are down still show.

use crate::hlc::{Clock, Hlc};
use crate::locks::RwLockExt;
use crate::store::{Merge, StoreError, Table};
use crate::wire::{Heartbeat, VERSION};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Heartbeat interval for meshes of up to [`PEERS_PER_SECOND`] peers.
pub const BASE_INTERVAL: Duration = Duration::from_secs(1);
/// Default shortest lease: a peer silent this long is dead.
pub const BASE_LEASE: Duration = Duration::from_secs(3);
/// Above this many peers the interval grows, so that each peer receives at
/// most this many heartbeats a second and idle traffic stays bounded.
pub const PEERS_PER_SECOND: usize = 20;
/// Longest interval.
const MAX_INTERVAL: Duration = Duration::from_secs(10);

/// The heartbeat interval for a mesh of `peers`.
pub fn interval_for(peers: usize) -> Duration {
    if peers <= PEERS_PER_SECOND {
        BASE_INTERVAL
    } else {
        BASE_INTERVAL
            .mul_f64(peers as f64 / PEERS_PER_SECOND as f64)
            .min(MAX_INTERVAL)
    }
}

/// The lease of a peer that beats every `interval`, at least `min`.
pub fn lease_for(interval: Duration, min: Duration) -> Duration {
    (interval * 3).max(min)
}

/// What this peer says about itself; the node keeps it current.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalInfo {
    pub name: String,
    pub region: String,
    pub version: String,
    /// See the node's load formula.
    pub load: f64,
    /// Builds this peer could start now.
    pub free_slots: u8,
    pub capabilities: Vec<String>,
}

/// A row of the `servers` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub id: String,
    pub name: String,
    pub addresses: Vec<String>,
    pub region: String,
    pub capabilities: Vec<String>,
    pub version: String,
    pub created_at_ms: u64,
    pub stamp: Hlc,
}

impl Merge for ServerRecord {
    /// Single writer: its newest write wins.
    fn merge(self, other: Self) -> Self {
        let key = |r: &Self| (r.stamp, r.id.clone());
        match key(&self).cmp(&key(&other)) {
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Equal => {
                if format!("{self:?}") >= format!("{other:?}") {
                    self
                } else {
                    other
                }
            }
        }
    }
}

/// One peer as this peer sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerView {
    pub id: String,
    pub name: String,
    pub addresses: Vec<String>,
    pub region: String,
    pub load: f64,
    pub free_slots: u8,
    pub capabilities: Vec<String>,
    pub version: String,
    /// When its last heartbeat arrived (ms since the Unix epoch, local clock).
    pub last_seen_ms: u64,
    pub alive: bool,
    #[serde(rename = "self")]
    pub is_self: bool,
}

struct Seen {
    beat: Heartbeat,
    at: Instant,
    wall_ms: u64,
}

/// A peer's static part, from the `servers` table (empty until its row arrives).
fn static_part(row: Option<ServerRecord>) -> (String, Vec<String>, String, Vec<String>, String) {
    row.map(|r| (r.name, r.addresses, r.region, r.capabilities, r.version))
        .unwrap_or_default()
}

/// The membership view.
pub struct Members {
    local: String,
    seen: RwLock<HashMap<String, Seen>>,
    servers: Table<ServerRecord>,
    clock: std::sync::Arc<Clock>,
    /// A peer silent this long (or three intervals, if longer) is dead.
    min_lease: Duration,
}

impl Members {
    pub fn new(
        local: String,
        servers: Table<ServerRecord>,
        clock: std::sync::Arc<Clock>,
        min_lease: Duration,
    ) -> Self {
        Self {
            local,
            seen: RwLock::new(HashMap::new()),
            servers,
            clock,
            min_lease,
        }
    }

    pub fn local_id(&self) -> &str {
        &self.local
    }

    /// Takes note of a heartbeat from another peer.
    pub fn observe(&self, peer: String, beat: Heartbeat) {
        if peer == self.local {
            return;
        }
        let wall_ms = self.clock.now().wall_ms;
        let mut seen = self.seen.write_unpoisoned();
        // A beat from a slower path (gossip) does not replace a live one
        // from a faster path (direct): it would stretch the lease.
        if let Some(old) = seen.get(&peer) {
            if self.alive(old) && old.beat.interval_ms < beat.interval_ms {
                return;
            }
        }
        seen.insert(
            peer,
            Seen {
                beat,
                at: Instant::now(),
                wall_ms,
            },
        );
    }

    /// Whether this peer is alone and has never known another peer: a mesh of one.
    pub fn alone(&self) -> bool {
        self.alive_count() == 1 && self.known_others() == 0
    }

    /// How many other peers the `servers` table remembers.
    pub fn known_others(&self) -> usize {
        self.servers
            .scan_prefix(b"")
            .map(|rows| rows.iter().filter(|(_, r)| r.id != self.local).count())
            .unwrap_or(0)
    }

    /// Forgets a peer at once (it said goodbye).
    pub fn forget(&self, peer: &str) {
        self.seen.write_unpoisoned().remove(peer);
    }

    fn alive(&self, s: &Seen) -> bool {
        s.at.elapsed()
            < lease_for(
                Duration::from_millis(u64::from(s.beat.interval_ms)),
                self.min_lease,
            )
    }

    /// How many peers are alive, this one included.
    pub fn alive_count(&self) -> usize {
        1 + self
            .seen
            .read_unpoisoned()
            .values()
            .filter(|s| self.alive(s))
            .count()
    }

    /// Builds this peer's heartbeat and records its static part in `servers`
    /// when that changed.
    pub fn beat(
        &self,
        info: &LocalInfo,
        addresses: Vec<String>,
        interval: Duration,
    ) -> Result<Heartbeat, StoreError> {
        let now = self.clock.now();
        let current = self.servers.get(self.local.as_bytes())?;
        let unchanged = current.as_ref().is_some_and(|r| {
            r.name == info.name
                && r.addresses == addresses
                && r.region == info.region
                && r.capabilities == info.capabilities
                && r.version == info.version
        });
        if !unchanged {
            let row = ServerRecord {
                id: self.local.clone(),
                name: info.name.clone(),
                addresses: addresses.clone(),
                region: info.region.clone(),
                capabilities: info.capabilities.clone(),
                version: info.version.clone(),
                created_at_ms: current.map_or(now.wall_ms, |r| r.created_at_ms),
                stamp: now,
            };
            self.servers.merge(self.local.as_bytes(), row)?;
        }
        Ok(Heartbeat {
            v: VERSION,
            load: info.load as f32,
            free_slots: info.free_slots,
            interval_ms: interval.as_millis().min(u128::from(u32::MAX)) as u32,
        })
    }

    /// The region peer `id` announced in its server record, heard from
    /// lately or not (`None` if it has no record here).
    pub fn region_of(&self, id: &str) -> Option<String> {
        self.servers
            .get(id.as_bytes())
            .ok()
            .flatten()
            .map(|r| r.region)
    }

    /// Every known peer, this one first, then by id.
    pub fn view(&self, info: &LocalInfo, addresses: &[String]) -> Vec<PeerView> {
        let now_ms = self.clock.now().wall_ms;
        let mut out = vec![PeerView {
            id: self.local.clone(),
            name: info.name.clone(),
            addresses: addresses.to_vec(),
            region: info.region.clone(),
            load: info.load,
            free_slots: info.free_slots,
            capabilities: info.capabilities.clone(),
            version: info.version.clone(),
            last_seen_ms: now_ms,
            alive: true,
            is_self: true,
        }];
        let seen = self.seen.read_unpoisoned();
        let mut others: Vec<PeerView> = seen
            .iter()
            .map(|(id, s)| {
                let (name, addresses, region, capabilities, version) =
                    static_part(self.servers.get(id.as_bytes()).ok().flatten());
                PeerView {
                    id: id.clone(),
                    name,
                    addresses,
                    region,
                    load: f64::from(s.beat.load),
                    free_slots: s.beat.free_slots,
                    capabilities,
                    version,
                    last_seen_ms: s.wall_ms,
                    alive: self.alive(s),
                    is_self: false,
                }
            })
            .collect();
        for (_, row) in self.servers.scan_prefix(b"").unwrap_or_default() {
            if row.id != self.local && !seen.contains_key(&row.id) {
                others.push(PeerView {
                    id: row.id,
                    name: row.name,
                    addresses: row.addresses,
                    region: row.region,
                    load: 0.0,
                    free_slots: 0,
                    capabilities: row.capabilities,
                    version: row.version,
                    last_seen_ms: row.stamp.wall_ms,
                    alive: false,
                    is_self: false,
                });
            }
        }
        others.sort_by(|a, b| a.id.cmp(&b.id));
        out.extend(others);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn servers_rows_merge_by_the_laws(
            rows in proptest::collection::vec((0u64..3, 0u32..2, "[ab]", "[xy]"), 3)
        ) {
            let r: Vec<ServerRecord> = rows.into_iter().map(|(w, c, id, name)| ServerRecord {
                id, name, addresses: vec![], region: "r".into(), capabilities: vec![], version: "1".into(),
                created_at_ms: 0, stamp: Hlc { wall_ms: w, counter: c },
            }).collect();
            let (a, b, c) = (r[0].clone(), r[1].clone(), r[2].clone());
            proptest::prop_assert_eq!(a.clone().merge(b.clone()), b.clone().merge(a.clone()));
            proptest::prop_assert_eq!(a.clone().merge(b.clone()).merge(c.clone()), a.clone().merge(b.clone().merge(c)));
            proptest::prop_assert_eq!(a.clone().merge(a.clone()), a);
        }
    }

    #[test]
    fn interval_grows_with_the_mesh_and_the_lease_with_it() {
        assert_eq!(interval_for(10), Duration::from_secs(1));
        assert_eq!(interval_for(40), Duration::from_secs(2));
        assert_eq!(interval_for(10_000), MAX_INTERVAL);
        assert_eq!(lease_for(Duration::from_secs(1), BASE_LEASE), BASE_LEASE);
        assert_eq!(
            lease_for(Duration::from_secs(2), BASE_LEASE),
            Duration::from_secs(6)
        );
    }

    #[test]
    fn heartbeats_make_peers_alive_and_servers_rows_remember_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::Store::open(&dir.path().join("db")).unwrap();
        let members = Members::new(
            "me".into(),
            store.table("servers").unwrap(),
            Default::default(),
            BASE_LEASE,
        );
        let info = LocalInfo {
            name: "a".into(),
            ..Default::default()
        };
        let beat = members
            .beat(&info, vec!["/ip4/1.2.3.4/tcp/1".into()], BASE_INTERVAL)
            .unwrap();
        assert_eq!(beat.interval_ms, 1000);
        members.observe("other".into(), beat.clone());
        let view = members.view(&info, &[]);
        assert_eq!(view.len(), 2);
        assert!(view[0].is_self && view[1].alive);
        assert_eq!(members.alive_count(), 2);
        members.forget("other");
        assert_eq!(members.alive_count(), 1);
    }
}
