//! One source of one fetch: opens the stream, forwards the driver's wants
//! and cancels, checks every block against its hash and stores it, and
//! tells the driver what happened.

use super::*;

/// What a session tells the driver.
pub(super) enum Event {
    Have(Vec<u8>),
    HaveMore(Vec<u32>),
    Stored {
        index: u32,
        new: bool,
        /// When its frame was read off the stream.
        landed: Instant,
    },
    DontHave(u32),
    Later(u32),
    Bad(u32),
    /// The source does not (yet) have the artifact.
    Unknown,
    Closed(String),
}

/// What every session of one fetch shares.
#[derive(Clone)]
pub(super) struct Fetch {
    pub(super) ex: Arc<Exchange>,
    pub(super) id: Hash,
    pub(super) manifest: Arc<Manifest>,
    pub(super) sink: Option<Arc<dyn BlockSink>>,
}

/// One source: opens the stream, forwards the driver's wants, checks and
/// stores the blocks that come back.
pub(super) async fn session(
    fetch: Fetch,
    peer: PeerId,
    mut cmds: mpsc::Receiver<Frame>,
    events: mpsc::Sender<(PeerId, u64, Event)>,
    token: u64,
) {
    let Fetch {
        ex,
        id,
        manifest,
        sink,
    } = fetch;
    let send = |ev: Event| {
        let events = events.clone();
        async move {
            let _ = events.send((peer, token, ev)).await;
        }
    };
    let result: Result<(), ExchangeError> = async {
        let mut control = ex.control.clone();
        let stream = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, PROTOCOL))
            .await
            .map_err(|_| ExchangeError::Timeout)?
            .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
        let (mut rd, mut wr) = stream.split();
        write_frame(
            &mut wr,
            &Frame::Open {
                v: VERSION,
                artifact: ByteBuf::from(id.to_vec()),
                manifest: false,
                later: true,
            },
        )
        .await?;
        let first = tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut rd, MAX_FRAME))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        match first {
            Frame::Have { bits } => send(Event::Have(bits.into_vec())).await,
            Frame::Unknown => {
                send(Event::Unknown).await;
                return Ok(());
            }
            other => return Err(ExchangeError::Protocol(format!("unexpected {other:?}"))),
        }
        let writer = async {
            while let Some(frame) = cmds.recv().await {
                write_frame(&mut wr, &frame).await?;
            }
            Ok::<(), ExchangeError>(())
        };
        // Blocks are checked and stored by a second loop, so that reading
        // the stream never waits for the disk (a few blocks may queue).
        let (put_tx, mut put_rx) = mpsc::channel::<(u32, ByteBuf, Instant)>(STORE_QUEUE);
        let reader = async {
            loop {
                match read_frame(&mut rd, MAX_FRAME).await? {
                    Frame::Block { index, data } => {
                        if index as usize >= manifest.len() {
                            return Err(ExchangeError::Protocol("block index out of range".into()));
                        }
                        let len = data.len() as u64;
                        ex.stats.fetched_bytes.fetch_add(len, Ordering::Relaxed);
                        ex.stats.fetched_blocks.fetch_add(1, Ordering::Relaxed);
                        if put_tx.send((index, data, Instant::now())).await.is_err() {
                            return Ok(());
                        }
                    }
                    Frame::HaveMore { blocks } => send(Event::HaveMore(blocks)).await,
                    Frame::DontHave { index } => send(Event::DontHave(index)).await,
                    Frame::Later { index } => send(Event::Later(index)).await,
                    other => return Err(ExchangeError::Protocol(format!("unexpected {other:?}"))),
                }
            }
        };
        let storer = async {
            while let Some(first) = put_rx.recv().await {
                // What queued meanwhile is checked and stored in the same
                // blocking call.
                let mut batch = vec![first];
                while let Ok(more) = put_rx.try_recv() {
                    batch.push(more);
                }
                let (store, sink, manifest) = (ex.store.clone(), sink.clone(), manifest.clone());
                let stored = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::with_capacity(batch.len());
                    for (index, data, landed) in batch {
                        let stored = store.put(&manifest.hash(index as usize), &data);
                        if let (Ok(_), Some(sink)) = (&stored, &sink) {
                            sink.block(index as usize, &data);
                        }
                        let failed = stored.is_err();
                        out.push((index, landed, stored));
                        if failed {
                            break;
                        }
                    }
                    out
                })
                .await
                .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
                for (index, landed, stored) in stored {
                    match stored {
                        Ok(new) => send(Event::Stored { index, new, landed }).await,
                        Err(BlockError::Corrupt(_)) => {
                            send(Event::Bad(index)).await;
                            return Ok(());
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(())
        };
        tokio::select! {
            r = writer => r,
            r = reader => r,
            r = storer => r,
        }
    }
    .await;
    let reason = match result {
        Ok(()) => "closed".to_owned(),
        Err(e) => e.to_string(),
    };
    send(Event::Closed(reason)).await;
}
