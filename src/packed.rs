//! `Vec<f32>` as one byte string for serde, for the values a [`crate::types::Slice`]
//! carries to a worker of another process.
//!
//! Timely serialises exchanged records with bincode, which writes a `Vec<f32>` value by
//! value: about 22 instructions a value on each side, 0.5 M a frame for the half of a
//! 25,000-feature frame that crosses to the peer of a two-process cluster (callgrind).
//! As one byte string the values are copied in and out instead. The bytes are
//! little-endian on every target; other formats (JSON) see an array of byte values.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serialises `values` as their little-endian bytes (`#[serde(with = "crate::packed")]`).
pub fn serialize<S: Serializer>(values: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
    if cfg!(target_endian = "little") {
        serializer.serialize_bytes(bytemuck::cast_slice(values))
    } else {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        serializer.serialize_bytes(&bytes)
    }
}

/// The values [`serialize`] wrote; a byte count that is not a multiple of 4 is an error.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f32>, D::Error> {
    deserializer.deserialize_bytes(PackedVisitor)
}

struct PackedVisitor;

impl<'de> Visitor<'de> for PackedVisitor {
    type Value = Vec<f32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the little-endian bytes of f32 values")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<f32>, E> {
        if !bytes.len().is_multiple_of(4) {
            return Err(E::invalid_length(bytes.len(), &self));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<f32>, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        self.visit_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use timely::bytes::arc::BytesMut;
    use timely::communication::Bytesable;
    use timely::Bincode;

    #[derive(Clone, Debug, Serialize, Deserialize)]
    struct Values(#[serde(with = "super")] Vec<f32>);

    fn bits(v: &Values) -> Vec<u32> {
        v.0.iter().map(|x| x.to_bits()).collect()
    }

    /// Through timely's own encoding, as between processes.
    fn across_processes(v: &Values) -> (usize, Values) {
        let message = Bincode::from(v.clone());
        let mut bytes = Vec::new();
        message.into_bytes(&mut bytes);
        assert_eq!(bytes.len(), message.length_in_bytes());
        let len = bytes.len();
        let bytes = BytesMut::from(bytes.into_boxed_slice()).freeze();
        (len, Bincode::<Values>::from_bytes(bytes).payload)
    }

    /// Every bit pattern comes back, NaN and signed zero included, through timely's
    /// encoding and through JSON; a truncated value is refused.
    #[test]
    fn values_round_trip_bit_for_bit() {
        let v = Values(vec![
            1.5,
            -0.0,
            f32::NAN,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            3e38,
        ]);
        let (len, back) = across_processes(&v);
        // a length and the bytes, 4 a value
        assert_eq!(len, 8 + 4 * v.0.len());
        assert_eq!(bits(&back), bits(&v));
        assert!(across_processes(&Values(Vec::new())).1 .0.is_empty());
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(bits(&serde_json::from_str(&json).unwrap()), bits(&v));
        assert!(serde_json::from_str::<Values>("[0,0,128]").is_err());
    }
}
