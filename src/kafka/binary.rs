//! tidewatch's compact binary frame: a fixed header and the values as little-endian
//! `f32`, about a third of the size of the client's gzip JSON and with nothing to parse.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "TWF1" (54 57 46 31): tidewatch frame, format 1
//!      4     4  u32 LE  feature count N (must be the model's)
//!      8     8  u64 LE  the producer's sequence number of the frame
//!     16     8  i64 LE  event time, Unix milliseconds; i64::MIN = none
//!     24     2  u16 LE  length L of the frame id in bytes; 0 = none
//!     26     L  the frame id, UTF-8
//!   26+L    4N  the values, f32 LE, in model feature order
//! ```
//!
//! Every value must be finite. The message may also be gzip-compressed as a whole (the
//! source recognises gzip by its magic bytes first, as for JSON).

use thiserror::Error;

/// The first four bytes of a binary frame.
pub const MAGIC: [u8; 4] = *b"TWF1";

/// Bytes before the id.
const FIXED_HEADER: usize = 26;

/// The fields of a binary frame other than its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryHeader<'a> {
    /// The producer's sequence number.
    pub seq: u64,
    /// Event time in Unix milliseconds, if the producer gave one.
    pub event_ms: Option<i64>,
    /// The frame id, if any.
    pub id: Option<&'a str>,
}

/// Why bytes are not a valid binary frame.
#[derive(Debug, Error, PartialEq)]
pub enum BinaryError {
    /// Fewer bytes than the header says there are.
    #[error("binary frame truncated: {got} bytes, {need} needed")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes the header implies.
        need: usize,
    },
    /// More bytes than the header says there are.
    #[error("binary frame has {extra} bytes after its last value")]
    Trailing {
        /// Bytes left over.
        extra: usize,
    },
    /// The magic is not `TWF1`.
    #[error("not a binary frame (no TWF1 magic)")]
    NotBinary,
    /// The frame's feature count is not the model's.
    #[error("binary frame has {got} features, the model {expected}")]
    WrongCount {
        /// Features in the frame.
        got: usize,
        /// Features of the model.
        expected: usize,
    },
    /// The id is not UTF-8.
    #[error("binary frame id is not UTF-8")]
    BadId,
    /// A value is NaN or infinite.
    #[error("value of feature {index} is not a finite number ({value})")]
    NotFinite {
        /// Model feature index.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// Whether `bytes` start like a binary frame.
pub fn is_binary(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Bytes a binary frame of `n` features with an id of `id_len` bytes takes.
pub fn encoded_len(n: usize, id_len: usize) -> usize {
    FIXED_HEADER + id_len + 4 * n
}

/// Appends the binary frame of `values` to `out`. Ids longer than 65,535 bytes are
/// refused (the length field is 16 bits).
pub fn encode(
    values: &[f32],
    seq: u64,
    event_ms: Option<i64>,
    id: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let id = id.unwrap_or("");
    let id_len = u16::try_from(id.len())
        .map_err(|_| format!("frame id of {} bytes is over 65,535", id.len()))?;
    let n = u32::try_from(values.len())
        .map_err(|_| format!("{} features do not fit a u32", values.len()))?;
    out.reserve(encoded_len(values.len(), id.len()));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&event_ms.unwrap_or(i64::MIN).to_le_bytes());
    out.extend_from_slice(&id_len.to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// Decodes a binary frame of `expected` features into `values` (resized to
/// `expected`); on error `values` holds garbage.
pub fn decode<'a>(
    bytes: &'a [u8],
    expected: usize,
    values: &mut Vec<f32>,
) -> Result<BinaryHeader<'a>, BinaryError> {
    if !is_binary(bytes) {
        return Err(BinaryError::NotBinary);
    }
    if bytes.len() < FIXED_HEADER {
        return Err(BinaryError::Truncated {
            got: bytes.len(),
            need: FIXED_HEADER,
        });
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let n = u32_at(4) as usize;
    let seq = u64_at(8);
    let event_ms = Some(u64_at(16) as i64).filter(|&t| t != i64::MIN);
    let id_len = u16::from_le_bytes([bytes[24], bytes[25]]) as usize;
    if n != expected {
        return Err(BinaryError::WrongCount { got: n, expected });
    }
    let need = encoded_len(n, id_len);
    if bytes.len() < need {
        return Err(BinaryError::Truncated {
            got: bytes.len(),
            need,
        });
    }
    if bytes.len() > need {
        return Err(BinaryError::Trailing {
            extra: bytes.len() - need,
        });
    }
    let id = std::str::from_utf8(&bytes[FIXED_HEADER..FIXED_HEADER + id_len])
        .map_err(|_| BinaryError::BadId)?;
    values.clear();
    values.extend(
        bytes[FIXED_HEADER + id_len..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
    );
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(BinaryError::NotFinite {
            index,
            value: values[index],
        });
    }
    Ok(BinaryHeader {
        seq,
        event_ms,
        id: (!id.is_empty()).then_some(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_field_and_value() {
        let values = [0.5f32, -1.25, 3.0e-7, f32::MAX];
        let mut buf = Vec::new();
        encode(
            &values,
            42,
            Some(1_795_428_000_123),
            Some("frame-7"),
            &mut buf,
        )
        .unwrap();
        assert_eq!(buf.len(), encoded_len(4, 7));
        assert!(is_binary(&buf));
        let mut out = Vec::new();
        let h = decode(&buf, 4, &mut out).unwrap();
        assert_eq!(out, values);
        assert_eq!(h.seq, 42);
        assert_eq!(h.event_ms, Some(1_795_428_000_123));
        assert_eq!(h.id, Some("frame-7"));

        buf.clear();
        encode(&values, 0, None, None, &mut buf).unwrap();
        let h = decode(&buf, 4, &mut out).unwrap();
        assert_eq!((h.event_ms, h.id), (None, None));
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let mut buf = Vec::new();
        encode(&[1.0], 2, Some(3), Some("x"), &mut buf).unwrap();
        let mut expected = b"TWF1".to_vec();
        expected.extend([1, 0, 0, 0]);
        expected.extend([2, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend([3, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend([1, 0, b'x']);
        expected.extend(1.0f32.to_le_bytes());
        assert_eq!(buf, expected);
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        let mut buf = Vec::new();
        encode(&[1.0, 2.0], 0, None, Some("id"), &mut buf).unwrap();
        let mut v = Vec::new();
        assert_eq!(
            decode(&buf, 3, &mut v),
            Err(BinaryError::WrongCount {
                got: 2,
                expected: 3
            })
        );
        assert_eq!(
            decode(&buf[..buf.len() - 1], 2, &mut v),
            Err(BinaryError::Truncated {
                got: buf.len() - 1,
                need: buf.len()
            })
        );
        assert!(matches!(
            decode(&buf[..10], 2, &mut v),
            Err(BinaryError::Truncated { need: 26, .. })
        ));
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(
            decode(&long, 2, &mut v),
            Err(BinaryError::Trailing { extra: 1 })
        );
        assert_eq!(
            decode(b"{\"data\":{}}", 2, &mut v),
            Err(BinaryError::NotBinary)
        );
        let mut nan = Vec::new();
        encode(&[1.0, f32::NAN], 0, None, None, &mut nan).unwrap();
        assert!(matches!(
            decode(&nan, 2, &mut v),
            Err(BinaryError::NotFinite { index: 1, .. })
        ));
        let mut bad_id = buf.clone();
        bad_id[26] = 0xff;
        assert_eq!(decode(&bad_id, 2, &mut v), Err(BinaryError::BadId));
        assert!(encode(&[], 0, None, Some(&"x".repeat(70_000)), &mut Vec::new()).is_err());
    }
}
