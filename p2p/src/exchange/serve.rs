//! The serving side of the block exchange: one stream per asker and
//! artifact, answered with the manifest (if asked) and what is held here,
//! kept up to date as more arrives, and the wanted blocks in the order they
//! were wanted, read ahead a few at a time, paced by the upload limit, with
//! a second copy of a first copy held back while blocks no one has remain.

use super::*;

/// Limits the rate at which this peer sends block bytes (all streams together).
pub(super) struct Limiter {
    pub(super) bytes_per_sec: u64,
    /// When the bytes sent so far will have drained.
    pub(super) next_free: Mutex<Instant>,
}

impl Limiter {
    pub(super) async fn take(&self, n: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let wait = {
            let mut next = self.next_free.lock_unpoisoned();
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Exchange {
    /// Serves block streams until shutdown.
    pub async fn serve(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let control = self.control.clone();
        crate::net::accept_streams(control, PROTOCOL, MAX_INBOUND, shutdown, |peer, stream| {
            let this = self.clone();
            async move {
                if let Err(err) = this.serve_stream(stream).await {
                    debug!(%peer, error = %err, "block stream ended");
                }
            }
        })
        .await;
    }

    pub(super) async fn serve_stream(&self, stream: libp2p::Stream) -> Result<(), ExchangeError> {
        let (mut rd, mut wr) = stream.split();
        let open = tokio::time::timeout(OPEN_TIMEOUT, read_frame(&mut rd, 1024))
            .await
            .map_err(|_| ExchangeError::Timeout)??;
        let Frame::Open {
            v: VERSION,
            artifact,
            manifest,
            later,
        } = open
        else {
            return Err(ExchangeError::Protocol("expected Open".into()));
        };
        let id: Option<Hash> = artifact.as_slice().try_into().ok();
        let Some((id, held)) = id.and_then(|id| Some((id, self.held(&id)?))) else {
            return write_frame(&mut wr, &Frame::Unknown).await;
        };
        if manifest {
            // Read when asked (once per fetcher) rather than kept beside
            // the decoded one: 32 bytes a block, per artifact held.
            let store = self.store.clone();
            let bytes = tokio::task::spawn_blocking(move || store.manifest_bytes(&id))
                .await
                .ok()
                .and_then(|read| read.ok().flatten());
            let frame = match bytes {
                Some(bytes) => Frame::Manifest {
                    bytes: ByteBuf::from(bytes),
                },
                None => Frame::Unknown, // collected meanwhile
            };
            write_frame(&mut wr, &frame).await?;
            return Ok(()); // a manifest stream carries nothing else
        }
        let mut changes = held.changed.subscribe();
        let mut sent = held.bits();
        write_frame(
            &mut wr,
            &Frame::Have {
                bits: ByteBuf::from(sent.clone()),
            },
        )
        .await?;
        let queue = Arc::new((Mutex::new(WantQueue::default()), Notify::new()));
        let n = held.manifest.len();
        let reader = {
            let queue = queue.clone();
            async move {
                let result = read_wants(&mut rd, &queue, n).await;
                queue.0.lock_unpoisoned().closed = true;
                queue.1.notify_one();
                result
            }
        };
        let writer = async {
            let mut last_have = Instant::now();
            // Blocks read and not sent yet.
            let mut ready: VecDeque<(u32, Answer)> = VecDeque::new();
            // Blocks arrived here that the asker has not been told of.
            let mut dirty = false;
            loop {
                // Tell the asker what arrived here meanwhile, at most every
                // HAVE_EVERY, also while busy sending blocks.
                dirty |= changes.has_changed().unwrap_or(false);
                if dirty && last_have.elapsed() >= HAVE_EVERY {
                    changes.borrow_and_update();
                    dirty = false;
                    last_have = Instant::now();
                    let now = held.bits();
                    // Compared a byte at a time: most bytes are unchanged.
                    let fresh: Vec<u32> = now
                        .iter()
                        .zip(&sent)
                        .enumerate()
                        .filter(|(_, (a, b))| a != b)
                        .flat_map(|(w, (a, b))| {
                            let new = a & !b;
                            (0..8)
                                .filter(move |k| new & (1 << k) != 0)
                                .map(move |k| (w * 8 + k) as u32)
                        })
                        .collect();
                    sent = now;
                    for part in fresh.chunks(MAX_LIST) {
                        write_frame(
                            &mut wr,
                            &Frame::HaveMore {
                                blocks: part.to_vec(),
                            },
                        )
                        .await?;
                    }
                }
                // Wanted blocks are read a few at a time, in one blocking
                // call (its wake-ups cost more than the reads on a busy
                // machine), and sent one frame each.
                if ready.is_empty() {
                    let batch: Vec<u32> = {
                        let mut q = queue.0.lock_unpoisoned();
                        if q.closed {
                            return Ok::<(), ExchangeError>(());
                        }
                        let k = q.wants.len().min(READ_AHEAD);
                        let batch: Vec<u32> = q.wants.drain(..k).collect();
                        q.taken.extend(&batch);
                        batch
                    };
                    if batch.is_empty() {
                        tokio::select! {
                            _ = queue.1.notified() => {}
                            changed = changes.changed(), if !dirty => {
                                if changed.is_err() { return Ok(()); }
                                dirty = true;
                            }
                            _ = tokio::time::sleep_until((last_have + HAVE_EVERY).into()), if dirty => {}
                            _ = tokio::time::sleep(IDLE) => return Ok(()),
                        }
                        continue;
                    }
                    let now = Instant::now();
                    // The hash of each block to read, or the answer instead.
                    let wanted: Vec<(u32, Result<Hash, Answer>)> = batch
                        .into_iter()
                        .map(|index| {
                            let i = index as usize;
                            let what = if !held.has(i) {
                                Err(Answer::DontHave)
                            } else if later && !held.sends().may_send(index, now) {
                                Err(Answer::Later)
                            } else {
                                Ok(held.manifest.hash(i))
                            };
                            (index, what)
                        })
                        .collect();
                    let store = self.store.clone();
                    ready = tokio::task::spawn_blocking(move || {
                        wanted
                            .into_iter()
                            .map(|(index, what)| {
                                let answer = match what {
                                    Ok(hash) => Answer::Block(store.read_raw(&hash)),
                                    Err(answer) => answer,
                                };
                                (index, answer)
                            })
                            .collect()
                    })
                    .await
                    .map_err(|e| ExchangeError::Protocol(e.to_string()))?;
                }
                let Some((index, data)) = ready.pop_front() else {
                    continue;
                };
                let cancelled = {
                    let mut q = queue.0.lock_unpoisoned();
                    q.taken.remove(&index);
                    q.cancelled.remove(&index)
                };
                if cancelled {
                    continue;
                }
                let data = match data {
                    Answer::Block(Ok(data)) => data,
                    Answer::Block(Err(_)) => {
                        // Gone from the store since: stop offering it.
                        held.mark(index as usize, false);
                        write_frame(&mut wr, &Frame::DontHave { index }).await?;
                        continue;
                    }
                    Answer::DontHave => {
                        write_frame(&mut wr, &Frame::DontHave { index }).await?;
                        continue;
                    }
                    Answer::Later => {
                        write_frame(&mut wr, &Frame::Later { index }).await?;
                        continue;
                    }
                };
                self.limiter.take(data.len()).await;
                let len = data.len() as u64;
                write_frame(
                    &mut wr,
                    &Frame::Block {
                        index,
                        data: ByteBuf::from(data),
                    },
                )
                .await?;
                self.stats.served_bytes.fetch_add(len, Ordering::Relaxed);
                self.stats.served_blocks.fetch_add(1, Ordering::Relaxed);
            }
        };
        let (r, w) = tokio::join!(reader, writer);
        r.and(w)
    }
}

/// A server's answer to one wanted block.
enum Answer {
    Block(Result<Vec<u8>, BlockError>),
    DontHave,
    Later,
}

#[derive(Default)]
struct WantQueue {
    wants: VecDeque<u32>,
    /// Taken from `wants` to be sent (read ahead), and of those, the ones
    /// the asker has cancelled since.
    taken: HashSet<u32>,
    cancelled: HashSet<u32>,
    closed: bool,
}

async fn read_wants<R: AsyncRead + Unpin>(
    rd: &mut R,
    queue: &(Mutex<WantQueue>, Notify),
    n: usize,
) -> Result<(), ExchangeError> {
    loop {
        let frame = match read_frame(rd, MAX_FRAME).await {
            Ok(f) => f,
            Err(ExchangeError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        {
            let mut q = queue.0.lock_unpoisoned();
            match frame {
                Frame::Want { blocks } => {
                    if blocks.len() > MAX_LIST
                        || q.wants.len() + blocks.len() > MAX_QUEUED
                        || blocks.iter().any(|b| *b as usize >= n)
                    {
                        return Err(ExchangeError::Protocol("bad or excessive Want".into()));
                    }
                    q.wants.extend(blocks);
                }
                Frame::Cancel { blocks } => {
                    let gone: HashSet<u32> = blocks.into_iter().take(MAX_LIST).collect();
                    q.wants.retain(|b| !gone.contains(b));
                    let late: Vec<u32> = gone.into_iter().filter(|b| q.taken.contains(b)).collect();
                    q.cancelled.extend(late);
                }
                other => return Err(ExchangeError::Protocol(format!("unexpected {other:?}"))),
            }
        }
        queue.1.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn the_limiter_paces_bytes() {
        let l = Limiter {
            bytes_per_sec: 1_000_000,
            next_free: Mutex::new(Instant::now()),
        };
        let start = Instant::now();
        for _ in 0..5 {
            l.take(50_000).await;
        }
        // 250 kB at 1 MB/s: the last take waits for the first four (200 ms).
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }
}
