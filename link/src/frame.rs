//! Frames: `u32 length (big endian) | u8 type | u8 flags | payload`.
//!
//! `length` counts the type byte, the flags byte and the payload. A frame
//! longer than the reader's limit is refused from its header alone, before
//! anything is allocated. Flag bit 0 means the payload is one zstd frame; its
//! decompressed size is bounded by the same limit.

use std::io::Read;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default largest frame (16 MiB), after decompression.
pub const DEFAULT_MAX_FRAME: u32 = 16 << 20;
/// Flag bit: the payload is zstd-compressed.
pub const FLAG_ZSTD: u8 = 1;
const MIN_COMPRESS: usize = 128;

/// One frame as read: its type byte and the (decompressed) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Why reading a frame failed. Every error ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: u32 },
    #[error("frame length {0} is too short for a header")]
    TooShort(u32),
    #[error("frame flags {0:#04x} are unknown")]
    BadFlags(u8),
    #[error("decompressing a frame: {0}")]
    Decompress(String),
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Read one frame of at most `max` bytes (header and decompressed payload).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: u32) -> Result<Frame, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    if len < 2 {
        return Err(FrameError::TooShort(len));
    }
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let mut payload = vec![0u8; len as usize - 2];
    r.read_exact(&mut payload).await?;
    let (kind, flags) = (head[0], head[1]);
    if flags & !FLAG_ZSTD != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    if flags & FLAG_ZSTD != 0 {
        payload = decompress(&payload, max)?;
    }
    Ok(Frame { kind, payload })
}

fn decompress(data: &[u8], max: u32) -> Result<Vec<u8>, FrameError> {
    let dec = zstd::stream::read::Decoder::new(data)
        .map_err(|e| FrameError::Decompress(e.to_string()))?;
    let mut out = Vec::new();
    dec.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| FrameError::Decompress(e.to_string()))?;
    if out.len() as u64 > max as u64 {
        return Err(FrameError::TooLarge {
            len: out.len() as u64,
            max,
        });
    }
    Ok(out)
}

/// Encode a frame; compress with zstd at `level` (0 = off) when that helps.
pub fn encode_frame(kind: u8, payload: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let mut flags = 0u8;
    let mut body: std::borrow::Cow<[u8]> = payload.into();
    if level > 0 && payload.len() >= MIN_COMPRESS {
        let c = zstd::bulk::compress(payload, level)?;
        if c.len() < payload.len() {
            body = c.into();
            flags |= FLAG_ZSTD;
        }
    }
    let len = u32::try_from(body.len() + 2)
        .map_err(|_| std::io::Error::other("frame larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(body.len() + 6);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Write one frame and flush. Returns the bytes put on the wire.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
    level: i32,
) -> std::io::Result<usize> {
    let bytes = encode_frame(kind, payload, level)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn round_trip_plain_and_compressed() {
        rt().block_on(async {
            for level in [0, 3] {
                let payload = vec![7u8; 10_000];
                let bytes = encode_frame(9, &payload, level).unwrap();
                if level > 0 {
                    assert!(bytes.len() < 1000);
                }
                let f = read_frame(&mut &bytes[..], DEFAULT_MAX_FRAME)
                    .await
                    .unwrap();
                assert_eq!(f, Frame { kind: 9, payload });
            }
        });
    }

    #[test]
    fn refuses_oversized_before_allocating() {
        rt().block_on(async {
            let mut bytes = u32::MAX.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[1, 0]);
            let e = read_frame(&mut &bytes[..], 1024).await.unwrap_err();
            assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
            // A zstd bomb: small on the wire, large inflated.
            let bomb = encode_frame(1, &vec![0u8; 1 << 20], 19).unwrap();
            assert!(bomb.len() < 1024);
            let e = read_frame(&mut &bomb[..], 1024).await.unwrap_err();
            assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
            let e = read_frame(&mut &[0u8, 0, 0, 1, 5][..], 1024)
                .await
                .unwrap_err();
            assert!(matches!(e, FrameError::TooShort(1)), "{e}");
            let e = read_frame(&mut &[0u8, 0, 0, 2, 5, 0x80][..], 1024)
                .await
                .unwrap_err();
            assert!(matches!(e, FrameError::BadFlags(_)), "{e}");
            let e = read_frame(&mut &[0u8, 0, 0, 9, 5, 0][..], 1024)
                .await
                .unwrap_err();
            assert!(matches!(e, FrameError::Io(_)), "{e}");
            let e = read_frame(&mut &[][..], 1024).await.unwrap_err();
            assert!(matches!(e, FrameError::Closed), "{e}");
        });
    }
}
