//! The decoder's fast path, for frames in the plain shape clients send:
//! `{"data":{"feature_0":0.82,...}}`, optionally with `"id"` and `"timestamp"` strings and
//! other top-level keys whose values are scalars (`"seq": 7`, `"entity": "pump-3"`), in
//! any order.
//!
//! Going through serde costs several hundred instructions per feature (a key visitor, a
//! value seed and `deserialize_any` dispatch for each of 25,000 pairs), more than
//! inflating the frame. This path reads the same bytes with a loop that compares each
//! key with the name expected at its position and hands the number to `sonic_number`
//! (the number parser inside sonic-rs, so values are bit-identical to the serde path).
//!
//! It is a recogniser of a strict subset of JSON, not a JSON parser: whenever the input
//! leaves that subset (escapes, unknown or missing features, duplicates, nested values
//! under other top-level keys, non-numbers, any syntax error) it answers `None` and the serde path decodes the
//! frame from the start, so every error and every unusual frame is decided there, with
//! its precise message. No crate offers a decoder that writes straight into model order
//! without per-key dispatch, hence this hand-written loop.

use sonic_number::swar::{is_eight_digits, parse_eight_digits};
use sonic_number::{parse_number, ParserNumber};

/// 10^0 ..= 10^22: the powers of ten an f64 holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

use super::{parse_timestamp, Decoded, PositionName, ENTITY_KEYS};
use crate::model::FeatureIndex;

/// Decodes `json` into `values` (`index.len()` slots, all NaN on entry) if the frame is
/// in the plain shape and names every feature exactly once; `None` (with `values` holding
/// garbage) otherwise.
pub(super) fn decode_plain(
    json: &[u8],
    index: &FeatureIndex,
    values: &mut [f32],
) -> Option<Decoded> {
    let mut at = Cursor { bytes: json, at: 0 };
    let mut decoded = Decoded::default();
    let (mut seen_data, mut seen_id, mut seen_ts) = (false, false, false);
    let mut entities: [Option<Option<&str>>; 4] = [None; 4];
    at.eat(b'{')?;
    loop {
        let key = at.string()?;
        at.eat(b':')?;
        if let Some(i) = ENTITY_KEYS.iter().position(|k| k.as_bytes() == key) {
            // a string or null stays here; a number's text is left to the serde path
            if entities[i].replace(at.null_or_string()?).is_some() {
                return None;
            }
            match at.next_byte()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
        let seen = match key {
            b"data" => &mut seen_data,
            b"id" => &mut seen_id,
            b"timestamp" => &mut seen_ts,
            // Another key (`seq`, `entity`, ...): ignored, as the serde path ignores it,
            // if its value is a scalar; anything nested is left to the serde path.
            _ => {
                // serde refuses a key that is not UTF-8 (found by the fuzzer)
                std::str::from_utf8(key).ok()?;
                at.scalar()?;
                match at.next_byte()? {
                    b',' => continue,
                    b'}' => break,
                    _ => return None,
                }
            }
        };
        if std::mem::replace(seen, true) {
            return None;
        }
        match key {
            b"data" => at.data(index, values)?,
            b"id" => decoded.id = at.null_or_string()?.map(str::to_string),
            _ => {
                decoded.event_ms = match at.null_or_string()? {
                    None => None,
                    Some(text) => Some(parse_timestamp(text).ok()?),
                }
            }
        }
        match at.next_byte()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    at.skip_whitespace();
    decoded.entity = entities
        .into_iter()
        .flatten()
        .flatten()
        .next()
        .map(str::to_string);
    (seen_data && at.at == json.len()).then_some(decoded)
}

/// A position in the body.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, consumed.
    #[inline]
    fn next_byte(&mut self) -> Option<u8> {
        self.skip_whitespace();
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    #[inline]
    fn eat(&mut self, expected: u8) -> Option<()> {
        (self.next_byte()? == expected).then_some(())
    }

    /// A string with no escapes and no control characters: the bytes between the quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let rest = &self.bytes[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 1;
        Some(&rest[..len])
    }

    /// `null`, or a string (valid UTF-8, no escapes).
    fn null_or_string(&mut self) -> Option<Option<&'a str>> {
        self.skip_whitespace();
        if self.bytes[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        std::str::from_utf8(self.string()?).ok().map(Some)
    }

    /// A scalar JSON value, skipped: a number, a string (no escapes, valid UTF-8),
    /// `true`, `false` or `null`. `None` for anything else, objects and arrays included.
    fn scalar(&mut self) -> Option<()> {
        self.skip_whitespace();
        let rest = &self.bytes[self.at..];
        let word = [&b"true"[..], b"false", b"null"]
            .into_iter()
            .find(|w| rest.starts_with(w));
        match (rest.first()?, word) {
            (_, Some(w)) => self.at += w.len(),
            (b'"', None) => {
                std::str::from_utf8(self.string()?).ok()?;
            }
            (b'-' | b'0'..=b'9', None) => {
                self.number()?;
            }
            _ => return None,
        }
        Some(())
    }

    /// Whether the bytes at the cursor are exactly `key`; consumes them if so.
    #[inline]
    fn skip_key(&mut self, key: &PositionName) -> bool {
        let matches = key.starts(&self.bytes[self.at..]);
        if matches {
            self.at += key.as_bytes().len();
        }
        matches
    }

    /// A JSON number, as serde's path would see it.
    #[inline]
    fn number(&mut self) -> Option<f64> {
        self.skip_whitespace();
        if let Some(value) = self.plain_decimal() {
            return Some(value);
        }
        let negative = self.bytes.get(self.at) == Some(&b'-');
        self.at += usize::from(negative);
        Some(
            match parse_number(self.bytes, &mut self.at, negative).ok()? {
                ParserNumber::Unsigned(u) => u as f64,
                ParserNumber::Signed(i) => i as f64,
                ParserNumber::Float(f) => f,
            },
        )
    }

    /// The commonest number: `-?\d+(\.\d+)?` whose digits, read as one integer, are
    /// below 2^53. Such a decimal is that integer divided by a power of ten that f64
    /// holds exactly, and one IEEE division of exact operands is correctly rounded
    /// (Clinger's fast path), so the value equals the full parser's. `None`, with the
    /// cursor unmoved, for every other number.
    #[inline]
    fn plain_decimal(&mut self) -> Option<f64> {
        let bytes = self.bytes;
        let negative = bytes.get(self.at) == Some(&b'-');
        let int_at = self.at + usize::from(negative);
        let mut at = int_at;
        let mut mantissa = 0u64;
        while let Some(&b @ b'0'..=b'9') = bytes.get(at) {
            mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            at += 1;
        }
        let int_digits = at - int_at;
        // JSON allows no leading zeros ("01"); the full parser reports those.
        if int_digits == 0 || (int_digits > 1 && bytes[int_at] == b'0') {
            return None;
        }
        let mut frac_digits = 0;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            let frac_at = at;
            while bytes.len() - at >= 8 && is_eight_digits(&bytes[at..]) {
                let eight = u64::from(parse_eight_digits(&bytes[at..]));
                mantissa = mantissa.wrapping_mul(100_000_000).wrapping_add(eight);
                at += 8;
            }
            while let Some(&b @ b'0'..=b'9') = bytes.get(at) {
                mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                at += 1;
            }
            frac_digits = at - frac_at;
            if frac_digits == 0 {
                return None;
            }
        }
        // 19 digits cannot wrap a u64; an exponent is the full parser's business.
        if int_digits + frac_digits > 19
            || mantissa >= 1 << 53
            || frac_digits >= EXACT_POWERS_OF_TEN.len()
            || matches!(bytes.get(at), Some(b'e' | b'E'))
        {
            return None;
        }
        let magnitude = mantissa as f64 / EXACT_POWERS_OF_TEN[frac_digits];
        self.at = at;
        // The full parser reads `-0` and `-0.0` as +0; so must this path, bit for bit.
        Some(if negative && mantissa != 0 {
            -magnitude
        } else {
            magnitude
        })
    }

    /// The `"data"` object: every feature once, each a number that fits a finite f32.
    fn data(&mut self, index: &FeatureIndex, values: &mut [f32]) -> Option<()> {
        self.eat(b'{')?;
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b'}') {
            // No features at all: missing features are the serde path's to report.
            return None;
        }
        // The key expected at each position, quoted and with its colon: in the client's
        // frames one comparison then covers the key and what follows it.
        // A pattern whose text JSON would escape (a quote, a backslash, a control
        // character) is not its own JSON spelling: its keys go through `string()`.
        let plain_text = |t: &str| !t.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
        let mut expected = index
            .pattern_parts()
            .filter(|(prefix, suffix)| plain_text(prefix) && plain_text(suffix))
            .and_then(|(prefix, suffix)| {
                PositionName::new(&format!("\"{prefix}"), &format!("{suffix}\":"))
            });
        let mut filled = 0usize;
        for position in 0.. {
            let in_order =
                position < values.len() && expected.as_ref().is_some_and(|key| self.skip_key(key));
            let i = if in_order {
                position
            } else {
                let key = std::str::from_utf8(self.string()?).ok()?;
                self.eat(b':')?;
                if position < values.len() && index.is_name_of(key, position) {
                    position
                } else {
                    index.index_of(key)?
                }
            };
            if let Some(key) = &mut expected {
                key.advance();
            }
            let value = self.number()? as f32;
            let slot = &mut values[i];
            if !value.is_finite() || !slot.is_nan() {
                return None;
            }
            *slot = value;
            filled += 1;
            if self.bytes.get(self.at) == Some(&b',') {
                self.at += 1;
                continue;
            }
            match self.next_byte()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
        // Every value written was new, so `filled` counts distinct features.
        (filled == values.len()).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::super::{decode_with_serde, DecodeError, KeyPolicy};
    use super::*;
    use crate::model::{FeatureIndex, FeatureNames};

    /// What the fast path and the serde path make of `json`: the fast path's answer
    /// (if it took the frame), and the serde path's, values as bits so NaN and -0 compare.
    #[allow(clippy::type_complexity)]
    fn both(
        json: &str,
        index: &FeatureIndex,
    ) -> (
        Option<(Decoded, Vec<u32>)>,
        Result<(Decoded, Vec<u32>), DecodeError>,
    ) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut fast = vec![f32::NAN; index.len()];
        let plain = decode_plain(json.as_bytes(), index, &mut fast).map(|d| (d, bits(&fast)));
        let mut slow = vec![f32::NAN; index.len()];
        let serde = decode_with_serde(json.as_bytes(), index, KeyPolicy::default(), &mut slow)
            .map(|d| (d, bits(&slow)));
        (plain, serde)
    }

    /// Asserts the fast path takes `json` and agrees with the serde path to the bit.
    fn assert_taken(json: &str, index: &FeatureIndex) {
        let (plain, serde) = both(json, index);
        let plain = plain.unwrap_or_else(|| panic!("fast path refused {json}"));
        assert_eq!(Ok(plain), serde, "{json}");
    }

    /// Asserts the fast path leaves `json` to the serde path.
    fn assert_left(json: &str, index: &FeatureIndex) {
        assert_eq!(both(json, index).0, None, "fast path took {json}");
    }

    fn frame(values: &[String]) -> String {
        let pairs: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("\"feature_{i}\":{v}"))
            .collect();
        format!("{{\"data\":{{{}}}}}", pairs.join(","))
    }

    #[test]
    fn random_values_decode_exactly_as_serde_does() {
        // Every way the clients write numbers: shortest f64 text (JavaScript's and
        // Python's repr), f32 widened to f64, fixed digits, exponents, integers, signs.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let index = FeatureIndex::numbered(4000);
        for round in 0..6 {
            let values: Vec<String> = (0..index.len())
                .map(|i| {
                    let x: f64 = rng.random::<f64>() * 10f64.powi(rng.random_range(-8..8));
                    let x = if rng.random::<bool>() { -x } else { x };
                    match (round + i) % 7 {
                        0 => format!("{x}"),
                        1 => format!("{}", x as f32 as f64),
                        2 => format!("{x:.3}"),
                        3 => format!("{x:e}"),
                        4 => format!("{}", (x * 1e6).round() as i64),
                        5 => format!("{x:.19}"),
                        _ => format!("{}", rng.random::<f64>()),
                    }
                })
                .collect();
            assert_taken(&frame(&values), &index);
        }
    }

    #[test]
    fn edge_numbers_decode_exactly_as_serde_does() {
        let index = FeatureIndex::numbered(1);
        for v in [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1",
            "9007199254740991",
            "9007199254740993",
            "0.9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "0.1234567890123456789012345",
            "1e-50",
            "1E5",
            "1e+5",
            "3.4028234663852886e38",
            "0.000000000000000000000001",
            "1.00000000000000000000000000000000000001",
        ] {
            assert_taken(&frame(&[v.to_string()]), &index);
        }
    }

    #[test]
    fn unusual_but_valid_frames_are_still_taken() {
        let index = FeatureIndex::numbered(3);
        for json in [
            // Whitespace anywhere JSON allows it.
            " {\n \"data\" : {\"feature_0\" : 1 ,\r\n\t\"feature_1\":2, \"feature_2\":-3.5 } } \n",
            // Keys out of model order.
            r#"{"data":{"feature_2":1,"feature_0":2,"feature_1":3}}"#,
            // The client's id and event time, before or after the data, or null.
            r#"{"id":"f-1","data":{"feature_0":1,"feature_1":2,"feature_2":3},"timestamp":"2026-11-23T10:00:00Z"}"#,
            r#"{"data":{"feature_0":1,"feature_1":2,"feature_2":3},"timestamp":null,"id":null}"#,
            // Other top-level keys with scalar values, before or after the data.
            r#"{"seq":12,"entity":"pump-3","data":{"feature_0":1,"feature_1":2,"feature_2":3}}"#,
            r#"{"data":{"feature_0":1,"feature_1":2,"feature_2":3},"ok":true,"n":null,"x":-1.5e3,"f":false}"#,
            r#"{"seq":1,"seq":2,"data":{"feature_0":1,"feature_1":2,"feature_2":3}}"#,
        ] {
            assert_taken(json, &index);
        }
        let listed = FeatureIndex::new(
            &FeatureNames::List(vec!["temp".into(), "pressure".into(), "flow".into()]),
            3,
        )
        .unwrap();
        assert_taken(r#"{"data":{"temp":1,"flow":3,"pressure":2}}"#, &listed);
    }

    /// Random edits of valid frames (bytes deleted, inserted, replaced, spans repeated):
    /// whatever the fast path takes, the serde path takes too, with the same values and
    /// the same id and event time. The fast path may refuse more, never accept more.
    #[test]
    fn mutated_frames_are_never_taken_unless_serde_agrees() {
        const ALPHABET: &[u8] = b"{}[]:,\" -+.0123456789eEfatrunl_\\ \n\tdi";
        let index = FeatureIndex::numbered(3);
        let seeds = [
            r#"{"data":{"feature_0":0.5,"feature_1":-12,"feature_2":3e2}}"#,
            r#"{"id":"f-1","data":{"feature_2":1.25,"feature_0":0,"feature_1":7},"timestamp":"2026-11-23T10:00:00Z"}"#,
            r#" {"timestamp":null, "data" : {"feature_0":1 ,"feature_1":2,"feature_2":-0.0},"id":null} "#,
            r#"{"seq":7,"entity":"e-1","data":{"feature_0":1,"feature_1":2,"feature_2":3},"ok":true,"n":null}"#,
        ];
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (mut taken, mut tried) = (0, 0);
        for seed in seeds {
            for _ in 0..20_000 {
                let mut bytes = seed.as_bytes().to_vec();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    let byte = ALPHABET[rng.random_range(0..ALPHABET.len())];
                    match rng.random_range(0..4) {
                        0 => {
                            bytes.remove(at);
                        }
                        1 => bytes.insert(at, byte),
                        2 => bytes[at] = byte,
                        _ => {
                            let end = (at + rng.random_range(1..8)).min(bytes.len());
                            let span = bytes[at..end].to_vec();
                            bytes.splice(at..at, span);
                        }
                    }
                    if bytes.is_empty() {
                        bytes.push(b'{');
                    }
                }
                let Ok(json) = String::from_utf8(bytes) else {
                    continue;
                };
                tried += 1;
                if let (Some(plain), serde) = both(&json, &index) {
                    taken += 1;
                    assert_eq!(Ok(plain), serde, "{json}");
                }
            }
        }
        // Some edits keep a valid frame (a digit for a digit): the check is not vacuous.
        assert!(taken > 100 && taken < tried, "{taken} of {tried} taken");
    }

    #[test]
    fn everything_else_is_left_to_the_serde_path() {
        let index = FeatureIndex::numbered(2);
        for json in [
            "",
            "[]",
            r#"{"data":{}}"#,
            r#"{"data":{"feature_0":1}}"#,
            r#"{"data":{"feature_0":1,"feature_1":2,"feature_7":3}}"#,
            r#"{"data":{"feature_0":1,"feature_0":2}}"#,
            r#"{"data":{"feature_0":1,"feature_\u0031":2}}"#,
            r#"{"data":{"feature_0":1,"feature_1":"2"}}"#,
            r#"{"data":{"feature_0":1,"feature_1":NaN}}"#,
            r#"{"data":{"feature_0":1,"feature_1":01}}"#,
            r#"{"data":{"feature_0":1,"feature_1":1.}}"#,
            r#"{"data":{"feature_0":1,"feature_1":.5}}"#,
            r#"{"data":{"feature_0":1,"feature_1":1e39}}"#,
            r#"{"data":{"feature_0":1,"feature_1":2,}}"#,
            r#"{"data":{"feature_0":1,"feature_1":2}} x"#,
            r#"{"data":{"feature_0":1,"feature_1":2}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"data":{}}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"extra":[1]}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"extra":{}}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"extra":"a\u0041"}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"extra":tru}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"extra":truex}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"extra":01}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"extra":}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"id":7}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"id":"a\"b"}"#,
            r#"{"data":{"feature_0":1,"feature_1":2},"timestamp":"yesterday"}"#,
        ] {
            assert_left(json, &index);
        }
        // Patterns whose text JSON escapes: the raw text in a key is not valid JSON
        // for it, and the escaped spelling is the serde path's to read.
        for (pattern, json) in [
            ("a\"{i}", r#"{"data":{"a"0":1}}"#),
            ("x\\{i}", r#"{"data":{"x\0":1}}"#),
            ("a\"{i}", r#"{"data":{"a\"0":1}}"#),
        ] {
            let index = FeatureIndex::new(&FeatureNames::Pattern(pattern.into()), 1).unwrap();
            assert_left(json, &index);
        }
    }
}
