//! The request-response frame codec: one CBOR message per stream, read with a hard cap.
//!
//! A frame is the whole stream up to the writer's close. The reader never holds more than
//! the cap plus one byte:
//! - a request over [`MAX_REQUEST_BYTES`] is read no further, the rest of the stream is
//!   drained (up to [`MAX_DRAIN_BYTES`]) and the frame becomes [`Frame::TooLarge`], so the
//!   server can still answer with a typed refusal on the same stream;
//! - a response over [`MAX_RESPONSE_BYTES`] becomes [`Frame::TooLarge`] without draining
//!   (the caller drops the stream).
//!
//! Writing is capped the same way: a frame over the cap is never sent (an `InvalidInput`
//! error; the typed handle API refuses such requests before they reach the codec).
//!
//! CBOR decoding happens above this layer (in the typed handle API), so a malformed body is
//! answered with a `malformed` error reply instead of killing the stream or the connection.

use std::io;

use capability_schema::protocol::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The most bytes drained from an oversized request before the stream is given up.
pub const MAX_DRAIN_BYTES: u64 = 16 * 1024 * 1024;

/// One request or response as it crossed the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of a frame within the cap.
    Bytes(Vec<u8>),
    /// A frame over the cap (only ever produced by reading).
    TooLarge {
        /// The cap it exceeded.
        limit: usize,
    },
}

/// Reads and writes [`Frame`]s with size caps.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    /// Largest request read.
    pub request_limit: usize,
    /// Largest response read.
    pub response_limit: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            request_limit: MAX_REQUEST_BYTES,
            response_limit: MAX_RESPONSE_BYTES,
        }
    }
}

/// Reads up to `limit + 1` bytes; more than `limit` makes a [`Frame::TooLarge`].
async fn read_capped<T>(io: &mut T, limit: usize, drain: bool) -> io::Result<Frame>
where
    T: AsyncRead + Unpin + Send,
{
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    (&mut *io).take(cap).read_to_end(&mut buf).await?;
    if buf.len() <= limit {
        return Ok(Frame::Bytes(buf));
    }
    if drain {
        // Let the writer finish so it reads our refusal; never buffer what it sends.
        let drained =
            futures::io::copy((&mut *io).take(MAX_DRAIN_BYTES), &mut futures::io::sink()).await?;
        if drained >= MAX_DRAIN_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "oversized frame still going after the drain limit",
            ));
        }
    }
    Ok(Frame::TooLarge { limit })
}

/// Writes a frame of at most `limit` bytes (the peer reads no more than that anyway).
async fn write_frame<T>(io: &mut T, frame: Frame, limit: usize) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    match frame {
        Frame::Bytes(bytes) if bytes.len() > limit => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a frame of {} bytes exceeds the {limit}-byte limit; it was not sent",
                bytes.len()
            ),
        )),
        Frame::Bytes(bytes) => io.write_all(&bytes).await,
        Frame::TooLarge { .. } => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an oversized frame marker cannot be sent",
        )),
    }
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Frame;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.request_limit, true).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.response_limit, false).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, req, self.request_limit).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, res, self.response_limit).await
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    use super::*;

    fn protocol() -> StreamProtocol {
        StreamProtocol::new("/planetmesh/test/1")
    }

    #[tokio::test]
    async fn frames_within_the_cap_round_trip() {
        let mut codec = FrameCodec {
            request_limit: 8,
            response_limit: 4,
        };
        let mut out = Cursor::new(Vec::new());
        codec
            .write_request(&protocol(), &mut out, Frame::Bytes(b"12345678".to_vec()))
            .await
            .unwrap();
        let mut input = Cursor::new(out.into_inner());
        assert_eq!(
            codec.read_request(&protocol(), &mut input).await.unwrap(),
            Frame::Bytes(b"12345678".to_vec())
        );
        let mut input = Cursor::new(b"1234".to_vec());
        assert_eq!(
            codec.read_response(&protocol(), &mut input).await.unwrap(),
            Frame::Bytes(b"1234".to_vec())
        );
    }

    #[tokio::test]
    async fn oversized_frames_are_marked_and_drained() {
        let mut codec = FrameCodec {
            request_limit: 8,
            response_limit: 4,
        };
        let mut input = Cursor::new(vec![7u8; 1000]);
        assert_eq!(
            codec.read_request(&protocol(), &mut input).await.unwrap(),
            Frame::TooLarge { limit: 8 }
        );
        assert_eq!(input.position(), 1000, "the rest of the request is drained");
        let mut input = Cursor::new(vec![7u8; 1000]);
        assert_eq!(
            codec.read_response(&protocol(), &mut input).await.unwrap(),
            Frame::TooLarge { limit: 4 }
        );
        assert_eq!(
            input.position(),
            5,
            "a response is read no further than the cap"
        );
        let mut out = Cursor::new(Vec::new());
        assert!(
            codec
                .write_response(&protocol(), &mut out, Frame::TooLarge { limit: 4 })
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn frames_over_the_cap_are_never_written() {
        let mut codec = FrameCodec {
            request_limit: 8,
            response_limit: 4,
        };
        let mut out = Cursor::new(Vec::new());
        let error = codec
            .write_request(&protocol(), &mut out, Frame::Bytes(vec![1; 9]))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        let error = codec
            .write_response(&protocol(), &mut out, Frame::Bytes(vec![1; 5]))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(out.into_inner().is_empty(), "nothing of either was written");
        let mut out = Cursor::new(Vec::new());
        codec
            .write_response(&protocol(), &mut out, Frame::Bytes(vec![1; 4]))
            .await
            .unwrap();
        assert_eq!(out.into_inner(), vec![1; 4]);
    }
}
