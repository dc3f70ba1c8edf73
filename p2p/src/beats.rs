//! Heartbeats over one long-lived stream per connected peer. A heartbeat
//! goes to each connected peer exactly once, without relays or signatures
//! (the connection is authenticated), which keeps idle traffic to a few
//! bytes per peer pair per second. Peers that are not directly connected
//! (meshes larger than the connection target) hear a slower heartbeat over
//! gossipsub instead; see `mesh::heartbeat`.

use crate::members::Members;
use crate::net::Client;
use crate::wire::{self, Heartbeat};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{debug, warn};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/beat/1");
/// Largest heartbeat frame accepted.
const MAX_BEAT_BYTES: usize = 128;
/// Inbound heartbeat streams served at once.
const MAX_INBOUND: usize = 512;
/// A stream with no heartbeat for this long is dropped.
const SILENCE: Duration = Duration::from_secs(60);
/// Bound on opening a stream or writing one frame.
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Encodes a heartbeat as a length-prefixed frame.
pub fn frame(beat: &Heartbeat) -> Result<Vec<u8>, wire::WireError> {
    let body = wire::encode(beat)?;
    if body.len() > MAX_BEAT_BYTES {
        return Err(wire::WireError::TooLarge(body.len()));
    }
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend(body);
    Ok(out)
}

/// Accepts heartbeat streams until shutdown.
pub async fn accept(client: Client, members: Arc<Members>, shutdown: watch::Receiver<bool>) {
    crate::net::accept_streams(
        client.streams(),
        PROTOCOL,
        MAX_INBOUND,
        shutdown,
        |peer, stream| {
            let members = members.clone();
            async move { read_beats(peer, stream, &members).await }
        },
    )
    .await;
}

async fn read_beats(peer: PeerId, mut stream: Stream, members: &Members) {
    let mut len = [0u8; 2];
    let mut body = [0u8; MAX_BEAT_BYTES];
    loop {
        match tokio::time::timeout(SILENCE, stream.read_exact(&mut len)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n > MAX_BEAT_BYTES {
            warn!(%peer, bytes = n, "oversized heartbeat; closing the stream");
            return;
        }
        if stream.read_exact(&mut body[..n]).await.is_err() {
            return;
        }
        match wire::decode_gossip::<Heartbeat>(&body[..n]) {
            Ok(beat) => members.observe(peer.to_string(), beat),
            Err(err) => {
                warn!(%peer, error = %err, "malformed heartbeat; closing the stream");
                return;
            }
        }
    }
}

/// This peer's outbound heartbeat streams, one per connected peer.
#[derive(Default)]
pub struct Outbound {
    streams: HashMap<PeerId, Stream>,
}

impl Outbound {
    /// Sends `frame` to each of `peers`, opening streams as needed and
    /// forgetting those that fail (they are reopened next time).
    pub async fn send(
        &mut self,
        control: &mut libp2p_stream::Control,
        peers: &[PeerId],
        frame: &[u8],
    ) {
        self.streams.retain(|p, _| peers.contains(p));
        for peer in peers {
            if !self.streams.contains_key(peer) {
                match tokio::time::timeout(IO_TIMEOUT, control.open_stream(*peer, PROTOCOL)).await {
                    Ok(Ok(stream)) => {
                        self.streams.insert(*peer, stream);
                    }
                    Ok(Err(err)) => {
                        debug!(%peer, error = %err, "could not open a heartbeat stream");
                        continue;
                    }
                    Err(_) => continue,
                }
            }
            let Some(stream) = self.streams.get_mut(peer) else {
                continue;
            };
            let sent = tokio::time::timeout(IO_TIMEOUT, async {
                stream.write_all(frame).await?;
                stream.flush().await
            })
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                self.streams.remove(peer);
            }
        }
    }
}
