//! A nesting-depth guard that runs before the recursive JSON parser sees the bytes.
//!
//! sonic-rs skips and builds nested values by recursion with no depth limit (a known open
//! upstream issue), so `{"x":` followed by 18,750 `[` (61 bytes gzipped) overflows the
//! decoding thread's stack and aborts the whole process. serde_json's own limit does not
//! help: the bytes never reach it. The guard is a plain byte scan, because the question it
//! answers ("how deep do the brackets outside strings go?") needs no parser, and a scan
//! cannot itself recurse.

/// The deepest nesting a frame may have: a client frame nests 2 levels (`{"data": {..}}`);
/// 128 is serde_json's own default limit and leaves room for any metadata a client adds.
pub const MAX_DEPTH: usize = 128;

/// Checks that `json` nests at most `limit` arrays/objects deep, counting only brackets
/// outside strings. Returns the deepest level reached when it is over `limit`.
///
/// Brackets are first counted without regard to strings (a vectorised count): a body with
/// no more than `limit` of them cannot nest deeper, so a client frame (2 braces) costs one
/// fast pass and never the exact scan.
pub(crate) fn check(json: &[u8], limit: usize) -> Result<(), usize> {
    let openers = json.iter().filter(|&&b| b == b'{' || b == b'[').count();
    if openers <= limit {
        return Ok(());
    }
    let deepest = deepest(json);
    if deepest > limit {
        Err(deepest)
    } else {
        Ok(())
    }
}

/// The deepest bracket nesting outside strings. Strings are lexed as a JSON parser does
/// (a `"` opens and closes, `\` escapes the next byte), so brackets inside names and values
/// never count. On malformed JSON the count may differ from what a parser would see only
/// after the point where the parser stops with an error.
fn deepest(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_shallow_bodies_pass() {
        assert_eq!(check(br#"{"data": {"feature_0": 1.0}}"#, 2), Ok(()));
        assert_eq!(check(b"[[[[]]]]", 4), Ok(()));
        // many brackets side by side are wide, not deep
        let wide = "[]".repeat(1000);
        assert_eq!(check(wide.as_bytes(), 2), Ok(()));
    }

    #[test]
    fn deep_nesting_is_measured() {
        let deep = format!(r#"{{"x":{}}}"#, "[".repeat(18_750));
        assert_eq!(check(deep.as_bytes(), MAX_DEPTH), Err(18_751));
        let just_over = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert_eq!(check(just_over.as_bytes(), MAX_DEPTH), Err(129));
        let at_limit = format!("{}{}", "{\"a\":".repeat(128), "}".repeat(128));
        assert_eq!(check(at_limit.as_bytes(), MAX_DEPTH), Ok(()));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let in_string = format!(
            r#"{{"data": {{"feature_0": 1}}, "note": "{}"}}"#,
            "[".repeat(500)
        );
        assert_eq!(check(in_string.as_bytes(), MAX_DEPTH), Ok(()));
        // an escaped quote does not end the string
        let escaped = format!(r#"{{"note": "\"{}"}}"#, "{".repeat(500));
        assert_eq!(check(escaped.as_bytes(), MAX_DEPTH), Ok(()));
        // an escaped backslash does
        let after = format!(r#"{{"note": "\\", "x": {}}}"#, "[".repeat(300));
        assert_eq!(check(after.as_bytes(), MAX_DEPTH), Err(301));
    }
}
