//! The libp2p behaviours shoal runs and the transports under them: QUIC,
//! and TCP with (optionally) a private-network handshake, noise and yamux.

use crate::net::{NetConfig, NetError};
use crate::wire::{self, SyncRequest, SyncResponse};
use either::Either;
use libp2p::core::{muxing::StreamMuxerBox, transport::upgrade::Version};
use libp2p::gossipsub::{self, MessageAuthenticity};
use libp2p::pnet::PnetConfig;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, kad, noise, ping, tcp, yamux, StreamProtocol, Swarm, Transport};
use std::time::Duration;

/// How often each connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(60);
/// Connections kept open without traffic (the mesh wants them).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// A QUIC connection that hears nothing (not even keep-alives) this long is
/// dead.
const QUIC_IDLE: Duration = Duration::from_secs(5);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) sync: request_response::cbor::Behaviour<SyncRequest, SyncResponse>,
    /// Long-lived streams to each peer (heartbeats).
    pub(crate) stream: libp2p_stream::Behaviour,
}

pub(crate) fn build_swarm(cfg: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let psk = cfg.psk;
    let quic = cfg.quic_enabled();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| {
            let noise = noise::Config::new(key)?;
            let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
            let maybe_private = match psk {
                Some(psk) => Either::Left(
                    base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
                ),
                None => Either::Right(base),
            };
            let tcp = maybe_private
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(10))
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
            // QUIC brings its own encryption (TLS 1.3), streams and
            // congestion control, in user space: on a busy host it moves
            // more per CPU-second than TCP + noise + yamux (docs/benchmarks.md).
            let transport = if quic {
                let mut quic = libp2p::quic::Config::new(key);
                // A peer that died without closing (killed, or its host
                // gone) is noticed within this long; nothing else tells
                // (TCP has the kernel's reset).
                quic.max_idle_timeout = QUIC_IDLE.as_millis() as u32;
                quic.keep_alive_interval = QUIC_IDLE / 4;
                libp2p::quic::tokio::Transport::new(quic)
                    .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
                    .or_transport(tcp)
                    .map(|either, _| match either {
                        futures_util::future::Either::Left(out)
                        | futures_util::future::Either::Right(out) => out,
                    })
                    .boxed()
            } else {
                tcp.boxed()
            };
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(transport)
        })
        .map_err(|e| setup(&e))?
        .with_dns()
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .max_transmit_size(wire::MAX_GOSSIP_BYTES)
                .heartbeat_interval(Duration::from_secs(1))
                // A sparser mesh than the default (6): with flood-publish the
                // author already reaches every connected peer, so relays only
                // cover gaps, and each extra mesh link costs a duplicate of
                // every message (idle traffic is mostly heartbeats).
                .mesh_n(3)
                .mesh_n_low(2)
                .mesh_n_high(5)
                .mesh_outbound_min(1)
                .gossip_lazy(3)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
            let mut kad_cfg = kad::Config::new(StreamProtocol::new("/shoal/kad/1"));
            kad_cfg.set_query_timeout(Duration::from_secs(30));
            // Provider records (who holds which artifact) are announced
            // again every hour and expire after four without it.
            kad_cfg.set_provider_publication_interval(Some(Duration::from_secs(3600)));
            kad_cfg.set_provider_record_ttl(Some(Duration::from_secs(4 * 3600)));
            let mut kad =
                kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_cfg);
            kad.set_mode(Some(kad::Mode::Server));
            let codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(wire::MAX_SYNC_REQUEST_BYTES)
                .set_response_size_maximum(wire::MAX_SYNC_RESPONSE_BYTES);
            let sync = request_response::Behaviour::with_codec(
                codec,
                [(
                    StreamProtocol::new(wire::SYNC_PROTOCOL),
                    ProtocolSupport::Full,
                )],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new("/shoal/id/1".into(), key.public())
                        .with_agent_version(format!("shoal/{}", env!("CARGO_PKG_VERSION"))),
                ),
                // Heartbeats already tell who is alive; pings only guard
                // against half-open connections.
                ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
                kad,
                gossipsub,
                sync,
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| {
            // One address of a peer at a time, in order (QUIC first): dialled
            // at once, the first to connect would win and the others be
            // dropped, and the peer would see a connection come up over
            // QUIC, keep it over TCP's, and lose it.
            c.with_idle_connection_timeout(IDLE_TIMEOUT)
                .with_dial_concurrency_factor(std::num::NonZeroU8::MIN)
        })
        .build();
    Ok(swarm)
}
