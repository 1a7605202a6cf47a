//! Bounded CBOR: how every PlanetMesh message and stored record becomes bytes and back.
//!
//! Decoding untrusted bytes happens in two steps:
//! 1. [`check_wellformed`] walks the CBOR item structure without allocating: the input must be
//!    at most [`MAX_MESSAGE_BYTES`], nest at most [`MAX_DEPTH`] deep, and every declared length
//!    must fit in what remains of the input, so a 5-byte header cannot ask for 4 GiB.
//! 2. ciborium decodes the (now known-small) input into the typed value.
//!
//! Any byte string therefore yields a value or a [`DecodeError`]; never a panic and never an
//! allocation larger than the input.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest message or record accepted, in bytes (requests and responses alike).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The deepest nesting of arrays, maps and tags accepted.
pub const MAX_DEPTH: usize = 32;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the cap.
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("message nests deeper than {0} levels")]
    TooDeep(usize),
    /// The input ends inside an item, or an item declares more bytes than remain.
    #[error("message is truncated or declares more bytes than it has")]
    Truncated,
    /// Bytes after the single top-level item.
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    /// Not CBOR at all (reserved additional info, bad indefinite-length use, …).
    #[error("malformed CBOR: {0}")]
    Malformed(&'static str),
    /// Well-formed CBOR that is not the expected type.
    #[error("unexpected message shape: {0}")]
    Shape(String),
}

/// Encodes a value as CBOR. Encoding a PlanetMesh type cannot fail.
#[allow(
    clippy::expect_used,
    reason = "a Vec takes every write, and every PlanetMesh type serializes to CBOR"
)]
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

/// Decodes untrusted bytes into `T`, within [`MAX_MESSAGE_BYTES`] and [`MAX_DEPTH`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_with_limit(bytes, MAX_MESSAGE_BYTES)
}

/// Like [`decode`] with a smaller size cap for a given message kind.
pub fn decode_with_limit<T: DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, DecodeError> {
    check_wellformed(bytes, limit)?;
    ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH + 8)
        .map_err(|e| DecodeError::Shape(e.to_string()))
}

/// Checks that `bytes` is exactly one well-formed CBOR item within the caps.
pub fn check_wellformed(bytes: &[u8], limit: usize) -> Result<(), DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let mut walker = Walker { bytes, pos: 0 };
    walker.item(0)?;
    match bytes.len() - walker.pos {
        0 => Ok(()),
        extra => Err(DecodeError::TrailingBytes(extra)),
    }
}

struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// What a header announces.
enum Head {
    /// A definite argument (length, count or value).
    Value(u64),
    /// Indefinite length (additional info 31).
    Indefinite,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn head(&mut self) -> Result<(u8, Head), DecodeError> {
        let first = self.take(1)?[0];
        let major = first >> 5;
        let info = first & 0x1f;
        let head = match info {
            0..=23 => Head::Value(u64::from(info)),
            24..=27 => {
                let n = 1usize << (info - 24);
                let raw = self.take(n)?;
                Head::Value(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
            }
            28..=30 => return Err(DecodeError::Malformed("reserved additional information")),
            _ => Head::Indefinite,
        };
        Ok((major, head))
    }

    /// A length that must fit in what remains, given each element takes at least `min` bytes.
    fn bounded(&self, n: u64, min: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        if n.checked_mul(min)
            .is_none_or(|total| total > self.remaining())
        {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    fn item(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep(MAX_DEPTH));
        }
        let (major, head) = self.head()?;
        match (major, head) {
            // Unsigned and negative integers: the header is the whole item.
            (0 | 1, Head::Value(_)) => Ok(()),
            (0 | 1, Head::Indefinite) => Err(DecodeError::Malformed("indefinite integer")),
            // Byte and text strings.
            (2 | 3, Head::Value(n)) => {
                let n = self.bounded(n, 1)?;
                self.take(n).map(|_| ())
            }
            (2 | 3, Head::Indefinite) => loop {
                if self.peek_break()? {
                    return Ok(());
                }
                let (chunk_major, chunk) = self.head()?;
                match chunk {
                    Head::Value(n) if chunk_major == major => {
                        let n = self.bounded(n, 1)?;
                        self.take(n)?;
                    }
                    _ => return Err(DecodeError::Malformed("bad chunk in indefinite string")),
                }
            },
            // Arrays (one item per element) and maps (two items per entry).
            (4 | 5, Head::Value(n)) => {
                let per = if major == 4 { 1 } else { 2 };
                let n = self.bounded(n, per)?;
                for _ in 0..n * per {
                    self.item(depth + 1)?;
                }
                Ok(())
            }
            (4 | 5, Head::Indefinite) => {
                let per = if major == 4 { 1 } else { 2 };
                loop {
                    if self.peek_break()? {
                        return Ok(());
                    }
                    for _ in 0..per {
                        self.item(depth + 1)?;
                    }
                }
            }
            // Tags wrap one item.
            (6, Head::Value(_)) => self.item(depth + 1),
            (6, Head::Indefinite) => Err(DecodeError::Malformed("indefinite tag")),
            // Simple values and floats: the header carried them (info 24..27 consumed above).
            (7, Head::Value(_)) => Ok(()),
            (7, Head::Indefinite) => Err(DecodeError::Malformed("unexpected break")),
            _ => unreachable!("major type is three bits"),
        }
    }

    fn peek_break(&mut self) -> Result<bool, DecodeError> {
        match self.bytes.get(self.pos) {
            None => Err(DecodeError::Truncated),
            Some(0xff) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trips_a_value() {
        let value = (1u32, "two".to_owned(), vec![3u8, 4]);
        assert_eq!(
            decode::<(u32, String, Vec<u8>)>(&encode(&value)).unwrap(),
            value
        );
    }

    #[test]
    fn huge_declared_length_is_refused_without_allocating() {
        // A byte string that claims 2^32 bytes.
        let bytes = [0x5a, 0xff, 0xff, 0xff, 0xff, 0x00];
        assert_eq!(
            decode::<Vec<u8>>(&bytes).unwrap_err(),
            DecodeError::Truncated
        );
        // An array that claims 2^63 elements.
        let bytes = [0x9b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode::<Vec<u8>>(&bytes).unwrap_err(),
            DecodeError::Truncated
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut bytes = vec![0x81; 1000];
        bytes.push(0x00);
        assert_eq!(
            decode::<ciborium::Value>(&bytes).unwrap_err(),
            DecodeError::TooDeep(MAX_DEPTH)
        );
        let mut tags = vec![0xc6; 100];
        tags.push(0x00);
        assert_eq!(
            decode::<ciborium::Value>(&tags).unwrap_err(),
            DecodeError::TooDeep(MAX_DEPTH)
        );
    }

    #[test]
    fn oversize_and_trailing_are_refused() {
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            decode::<u8>(&big),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(
            decode::<u8>(&[0x01, 0x02]).unwrap_err(),
            DecodeError::TrailingBytes(1)
        );
        assert_eq!(decode::<u8>(&[]).unwrap_err(), DecodeError::Truncated);
        assert!(matches!(
            decode::<u8>(&[0x1c]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn indefinite_items_are_walked() {
        // [_ 1, 2] and (_ "a", "b")
        assert_eq!(
            decode::<Vec<u8>>(&[0x9f, 0x01, 0x02, 0xff]).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            decode::<String>(&[0x7f, 0x61, b'a', 0x61, b'b', 0xff]).unwrap(),
            "ab"
        );
        assert!(decode::<String>(&[0x7f, 0x41, b'a', 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<ciborium::Value>(&bytes);
            let _ = decode::<(u64, String, Vec<Vec<u8>>)>(&bytes);
        }
    }
}
