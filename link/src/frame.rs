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
    let (kind, flags, n) = read_header(r, max).await?;
    let mut payload = vec![0u8; n];
    r.read_exact(&mut payload).await?;
    if flags & FLAG_ZSTD != 0 {
        payload = decompress(&payload, max)?;
    }
    Ok(Frame { kind, payload })
}

fn decompress(data: &[u8], max: u32) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    decompress_stream(data, max, &mut out)?;
    Ok(out)
}

/// Decompress `data` into `out` (cleared first), at most `max` bytes.
fn decompress_stream(data: &[u8], max: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.clear();
    let dec = zstd::stream::read::Decoder::new(data)
        .map_err(|e| FrameError::Decompress(e.to_string()))?;
    dec.take(max as u64 + 1)
        .read_to_end(out)
        .map_err(|e| FrameError::Decompress(e.to_string()))?;
    if out.len() as u64 > max as u64 {
        return Err(FrameError::TooLarge {
            len: out.len() as u64,
            max,
        });
    }
    Ok(())
}

/// Payload buffers handed back once their frame is done with, for the
/// next frames to reuse: a fresh multi-megabyte buffer per frame costs a
/// page fault and a cleared page per 4 KiB (and `memset`), a reused one
/// nothing. Cheap to clone (shared); keeps at most [`POOL_BUFFERS`].
#[derive(Debug, Clone, Default)]
pub struct BufferPool(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

/// Most buffers a [`BufferPool`] keeps (the frame being read, the one
/// decoded ahead, the one being applied, one spare).
pub const POOL_BUFFERS: usize = 4;

impl BufferPool {
    /// An empty buffer, reused when one was given back.
    pub fn take(&self) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        v.clear();
        v
    }

    /// Give a buffer back (its contents are never seen again: [`Self::take`]
    /// clears it, and every reader overwrites what it returns).
    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < POOL_BUFFERS && buf.capacity() > 0 {
            pool.push(buf);
        }
    }

    /// Buffers held now (for tests).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no buffer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads frames like [`read_frame`], reusing its buffers: the compressed
/// bytes go into a buffer kept from frame to frame, each payload into a
/// buffer of its [`BufferPool`] (give it back when done), and a zstd
/// payload is decompressed in one call into a buffer of the exact size its
/// header announces (no growing and copying), with one decompression
/// context for all frames. Limits and errors are those of [`read_frame`].
pub struct FrameReader {
    wire: Vec<u8>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    pool: BufferPool,
}

impl FrameReader {
    /// A reader taking payload buffers from `pool`.
    pub fn new(pool: BufferPool) -> FrameReader {
        FrameReader {
            wire: Vec::new(),
            dctx: None,
            pool,
        }
    }

    /// The pool payload buffers come from.
    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Read one frame of at most `max` bytes.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: u32,
    ) -> Result<Frame, FrameError> {
        let (kind, flags, n) = read_header(r, max).await?;
        if flags & FLAG_ZSTD == 0 {
            let mut out = self.pool.take();
            read_exact_into(r, n, &mut out).await?;
            return Ok(Frame { kind, payload: out });
        }
        read_exact_into(r, n, &mut self.wire).await?;
        let mut out = self.pool.take();
        if let Err(e) = self.decompress(max, &mut out) {
            self.pool.give(out);
            return Err(e);
        }
        Ok(Frame { kind, payload: out })
    }

    fn decompress(&mut self, max: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let data = &self.wire[..];
        match zstd::zstd_safe::get_frame_content_size(data) {
            Ok(Some(size)) if size > max as u64 => {
                return Err(FrameError::TooLarge { len: size, max });
            }
            Ok(Some(size)) => {
                if self.dctx.is_none() {
                    self.dctx = Some(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| FrameError::Decompress(e.to_string()))?,
                    );
                }
                let dctx = self.dctx.as_mut().expect("just made");
                out.clear();
                out.reserve_exact(size as usize);
                // Fails when the data holds more than its header says
                // (several zstd frames): the streaming path sorts it out.
                if let Ok(got) = dctx.decompress_to_buffer(data, out) {
                    if got == out.len() && got as u64 <= max as u64 {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
        decompress_stream(data, max, out)
    }
}

/// The header of the next frame: type, flags and payload length.
async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<(u8, u8, usize), FrameError> {
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
    let (kind, flags) = (head[0], head[1]);
    if flags & !FLAG_ZSTD != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    Ok((kind, flags, len as usize - 2))
}

/// Read exactly `n` bytes into `buf` (replacing its contents), straight
/// into its spare capacity: nothing is zeroed first.
async fn read_exact_into<R: AsyncRead + Unpin>(
    r: &mut R,
    n: usize,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    buf.clear();
    buf.reserve_exact(n);
    let mut rest = r.take(n as u64);
    while buf.len() < n {
        if rest.read_buf(buf).await? == 0 {
            return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(())
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

    /// Frames `encode_frame` wrote, read by a [`FrameReader`].
    fn read_all(
        bytes: &[u8],
        reader: &mut FrameReader,
        max: u32,
    ) -> Vec<Result<Frame, FrameError>> {
        rt().block_on(async {
            let mut r = bytes;
            let mut out = Vec::new();
            loop {
                match reader.read(&mut r, max).await {
                    Err(FrameError::Closed) => return out,
                    x => {
                        let stop = x.is_err();
                        out.push(x);
                        if stop {
                            return out;
                        }
                    }
                }
            }
        })
    }

    #[test]
    fn frame_reader_reuses_buffers_without_leaking_data_between_frames() {
        let pool = BufferPool::default();
        let mut reader = FrameReader::new(pool.clone());
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let small = b"tiny payload that compresses? no: too short".to_vec();
        let mut stream = Vec::new();
        for level in [0, 3] {
            stream.extend(encode_frame(1, &big, level).unwrap());
            stream.extend(encode_frame(2, &small, level).unwrap());
            stream.extend(encode_frame(3, &[], level).unwrap());
        }
        // Read each frame, then give its buffer back before the next one.
        let frames = rt().block_on(async {
            let mut r = &stream[..];
            let mut got = Vec::new();
            for _ in 0..6 {
                let f = reader.read(&mut r, DEFAULT_MAX_FRAME).await.unwrap();
                got.push((f.kind, f.payload.clone(), f.payload.capacity()));
                pool.give(f.payload);
            }
            got
        });
        for (i, (kind, payload, cap)) in frames.iter().enumerate() {
            let want: &[u8] = match kind {
                1 => &big,
                2 => &small,
                _ => &[],
            };
            assert_eq!(payload, want, "frame {i}");
            if i > 0 {
                // The big frame's buffer came back and was reused.
                assert!(*cap >= big.len(), "frame {i} got a fresh buffer");
            }
        }
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn frame_reader_refuses_what_read_frame_refuses() {
        let mut reader = FrameReader::new(BufferPool::default());
        let bomb = encode_frame(1, &vec![0u8; 1 << 20], 19).unwrap();
        let r = read_all(&bomb, &mut reader, 1024);
        assert!(
            matches!(r[0], Err(FrameError::TooLarge { .. })),
            "{:?}",
            r[0]
        );
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[1, 0]);
        let r = read_all(&bytes, &mut reader, 1024);
        assert!(matches!(r[0], Err(FrameError::TooLarge { .. })));
        let r = read_all(&[0u8, 0, 0, 2, 5, 0x80], &mut reader, 1024);
        assert!(matches!(r[0], Err(FrameError::BadFlags(_))));
        let r = read_all(&[0u8, 0, 0, 9, 5, 0, 1, 2], &mut reader, 1024);
        assert!(matches!(r[0], Err(FrameError::Io(_))), "{:?}", r[0]);
        // Garbage flagged as zstd.
        let r = read_all(&[0u8, 0, 0, 6, 5, 1, 1, 2, 3, 4], &mut reader, 1024);
        assert!(matches!(r[0], Err(FrameError::Decompress(_))), "{:?}", r[0]);
    }

    #[test]
    fn frame_reader_takes_zstd_data_without_or_with_a_wrong_size_header() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let frame = |body: Vec<u8>| {
            let mut f = ((body.len() + 2) as u32).to_be_bytes().to_vec();
            f.extend_from_slice(&[4, FLAG_ZSTD]);
            f.extend(body);
            f
        };
        // A streaming encoder does not write the content size.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, &data).unwrap();
        let unsized_body = enc.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&unsized_body).unwrap(),
            None
        );
        // Two zstd frames back to back: the first header tells only its own size.
        let mut two = zstd::bulk::compress(&data[..50_000], 3).unwrap();
        two.extend(zstd::bulk::compress(&data[50_000..], 3).unwrap());
        let mut reader = FrameReader::new(BufferPool::default());
        for body in [unsized_body, two] {
            let r = read_all(&frame(body.clone()), &mut reader, DEFAULT_MAX_FRAME);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].as_ref().unwrap().payload, data);
            // Over the limit either way.
            let r = read_all(&frame(body), &mut reader, 60_000);
            assert!(
                matches!(r[0], Err(FrameError::TooLarge { .. })),
                "{:?}",
                r[0]
            );
        }
    }
}
