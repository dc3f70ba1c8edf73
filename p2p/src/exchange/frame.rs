//! The wire form of the block exchange: length-prefixed CBOR frames with a
//! hard size limit, each read into exactly its size and written from one
//! buffer sized beforehand, and the bitfields that say which blocks a peer
//! holds.

use super::ExchangeError;
use futures_util::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::time::Duration;

/// The protocol version an `Open` carries.
pub(super) const VERSION: u8 = 1;
/// Bound on writing one frame (a reader that stops reading is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Frame {
    Open {
        v: u8,
        artifact: ByteBuf,
        manifest: bool,
        /// The asker understands [`Frame::Later`] (a server that predates
        /// it ignores the field, and one that knows it never sends it to an
        /// asker that does not set it).
        #[serde(default)]
        later: bool,
    },
    Manifest {
        bytes: ByteBuf,
    },
    Unknown,
    Have {
        bits: ByteBuf,
    },
    HaveMore {
        blocks: Vec<u32>,
    },
    Want {
        blocks: Vec<u32>,
    },
    Cancel {
        blocks: Vec<u32>,
    },
    Block {
        index: u32,
        data: ByteBuf,
    },
    DontHave {
        index: u32,
    },
    /// The block went out from here a moment ago as its first copy, and
    /// blocks no one was sent yet are waiting: ask its new holder, or ask
    /// again later (see [`super::HOLD`]).
    Later {
        index: u32,
    },
}

pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), ExchangeError> {
    // Encode behind a length placeholder: one buffer, sized beforehand, and
    // one copy of a block.
    let payload = match frame {
        Frame::Block { data, .. } => data.len(),
        Frame::Manifest { bytes } => bytes.len(),
        Frame::Have { bits } => bits.len(),
        _ => 0,
    };
    let mut buf = Vec::with_capacity(payload + 64);
    buf.extend_from_slice(&[0u8; 4]);
    let mut buf =
        cbor4ii::serde::to_vec(buf, frame).map_err(|e| ExchangeError::Protocol(e.to_string()))?;
    let len = u32::try_from(buf.len() - 4)
        .map_err(|_| ExchangeError::Protocol("frame too large".into()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    tokio::time::timeout(WRITE_TIMEOUT, async {
        w.write_all(&buf).await?;
        w.flush().await
    })
    .await
    .map_err(|_| ExchangeError::Timeout)??;
    Ok(())
}

pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Frame, ExchangeError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > limit {
        return Err(ExchangeError::Protocol(format!(
            "frame of {n} bytes over the {limit}-byte limit"
        )));
    }
    // Read into exactly n bytes: `read_to_end` would grow a full buffer
    // once more to look for the end (a copy and a fill of a block's size).
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    cbor4ii::serde::from_slice(&body).map_err(|e| ExchangeError::Protocol(e.to_string()))
}

pub(super) fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

pub(super) fn set_bit(bits: &mut [u8], i: usize) {
    if let Some(b) = bits.get_mut(i / 8) {
        *b |= 1 << (i % 8);
    }
}

pub(super) fn clear_bit(bits: &mut [u8], i: usize) {
    if let Some(b) = bits.get_mut(i / 8) {
        *b &= !(1 << (i % 8));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bits_round_trip() {
        let mut b = vec![0u8; 2];
        set_bit(&mut b, 3);
        set_bit(&mut b, 9);
        assert!(bit(&b, 3) && bit(&b, 9) && !bit(&b, 4));
        clear_bit(&mut b, 3);
        assert!(!bit(&b, 3));
        assert!(!bit(&b, 100), "out of range reads as absent");
        set_bit(&mut b, 100); // out of range writes are ignored
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &Frame::Want {
                blocks: vec![1, 2, 3],
            },
        )
        .await
        .unwrap();
        let mut r = futures_util::io::Cursor::new(buf.clone());
        assert!(matches!(
            read_frame(&mut r, 1024).await.unwrap(),
            Frame::Want { blocks } if blocks == vec![1, 2, 3]
        ));
        let mut r = futures_util::io::Cursor::new(buf);
        assert!(matches!(
            read_frame(&mut r, 3).await,
            Err(ExchangeError::Protocol(_))
        ));
        let mut garbage = futures_util::io::Cursor::new(vec![0, 0, 0, 2, 0xff, 0xff]);
        assert!(read_frame(&mut garbage, 1024).await.is_err());
    }
}
