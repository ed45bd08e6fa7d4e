//! Byte scans over JSON text that do not build anything: where a string ends, and where an
//! object or array ends. The [cursor](super::cursor) skips most of a review with them, and the
//! [writer](super::writer) finds what to escape with the first.
//!
//! Both look at sixteen bytes at a time (SSE2 on x86-64, through `wide`'s safe API). A skip
//! classifies 64-byte blocks at once, as structural JSON parsers do: masks of quotes and
//! brackets, the bytes inside strings from a prefix XOR of the quote mask, and then only the
//! brackets outside strings are visited. A block with a backslash is walked byte by byte, so
//! escapes need no bit tricks.

use wide::u8x16;

/// The first quote or backslash at or after `from` (or control character, when `controls`): sixteen
/// bytes at a time, then the last few one by one.
pub(crate) fn find_string_end(bytes: &[u8], mut from: usize, controls: bool) -> Option<usize> {
    let (quote, backslash, space) = (u8x16::splat(b'"'), u8x16::splat(b'\\'), u8x16::splat(0x20));
    while let Some(chunk) = bytes.get(from..from + 16) {
        let v = lanes(chunk);
        let mut hits = v.simd_eq(quote) | v.simd_eq(backslash);
        if controls {
            hits |= v.simd_lt(space);
        }
        let mask = hits.to_bitmask();
        if mask != 0 {
            return Some(from + mask.trailing_zeros() as usize);
        }
        from += 16;
    }
    let end = |b: u8| b == b'"' || b == b'\\' || (controls && b < 0x20);
    bytes.get(from..)?.iter().position(|&b| end(b)).map(|i| from + i)
}

/// Why an object or array could not be skipped, and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipError {
    /// The body ends inside a string.
    UnterminatedString,
    /// The body ends before the closing bracket.
    Unterminated,
    /// An opening bracket at this byte nests deeper than allowed.
    TooDeep(usize),
    /// A closing bracket at this byte does not match its opening one.
    Mismatched(usize),
}

/// Deepest nesting a skip tracks (a bit per level in a `u128`).
pub(crate) const MAX_ROOM: usize = 128;

/// Skips the object or array that opens at `bytes[start]`: the index just past its closing
/// bracket. Strings are closed (escapes honoured) and brackets matched by type, at most `room`
/// levels deep (capped at [`MAX_ROOM`]); scalars are not looked at. A closing bracket before
/// any opening one is a mismatch.
pub(crate) fn skip_container(bytes: &[u8], start: usize, room: usize) -> Result<usize, SkipError> {
    let mut walk = Walk { level: 0, open: 0, room: room.min(MAX_ROOM), in_string: false, escaped: false };
    let mut at = start;
    while let Some(block) = bytes.get(at..at + 64) {
        let masks = Masks::of(block);
        let done =
            if masks.backslash == 0 && !walk.escaped { walk.block(block, at, masks)? } else { walk.bytes(block, at)? };
        if let Some(end) = done {
            return Ok(end);
        }
        at += 64;
    }
    match walk.bytes(&bytes[at.min(bytes.len())..], at)? {
        Some(end) => Ok(end),
        None if walk.in_string => Err(SkipError::UnterminatedString),
        None => Err(SkipError::Unterminated),
    }
}

/// Bit `i` set where byte `i` of a 64-byte block is a quote, a backslash, or maybe a bracket.
#[derive(Debug, Clone, Copy)]
struct Masks {
    quote: u64,
    backslash: u64,
    /// Every bracket, and also `Y`, `_`, `y` and DEL (one compare instead of two): outside
    /// strings those only occur in invalid JSON, and each candidate's byte is checked.
    bracket: u64,
}

impl Masks {
    fn of(block: &[u8]) -> Masks {
        // `[`, `]`, `{` and `}` (0x5B, 0x5D, 0x7B, 0x7D) all become 0x7F when OR-ed with 0x26.
        let (quote, backslash) = (u8x16::splat(b'"'), u8x16::splat(b'\\'));
        let (fold, folded_bracket) = (u8x16::splat(0x26), u8x16::splat(0x7F));
        let mut m = Masks { quote: 0, backslash: 0, bracket: 0 };
        for (k, chunk) in block.chunks_exact(16).enumerate() {
            let v = lanes(chunk);
            let shift = 16 * k;
            m.quote |= u64::from(v.simd_eq(quote).to_bitmask()) << shift;
            m.backslash |= u64::from(v.simd_eq(backslash).to_bitmask()) << shift;
            m.bracket |= u64::from((v | fold).simd_eq(folded_bracket).to_bitmask()) << shift;
        }
        m
    }
}

/// Bit `i` of the result is the XOR of bits `0..=i`: with quote bits, the bytes inside strings.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

/// The state of a skip between blocks.
struct Walk {
    level: usize,
    /// A bit per open level, 1 for `{`.
    open: u128,
    room: usize,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
}

impl Walk {
    /// A 64-byte block with no backslash, starting at byte `base`.
    fn block(&mut self, block: &[u8], base: usize, masks: Masks) -> Result<Option<usize>, SkipError> {
        let inside = prefix_xor(masks.quote) ^ if self.in_string { u64::MAX } else { 0 };
        self.in_string = inside >> 63 == 1;
        let mut brackets = masks.bracket & !inside;
        while brackets != 0 {
            let i = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            if matches!(block[i], b'{' | b'[' | b'}' | b']') {
                if let Some(end) = self.bracket(block[i], base + i)? {
                    return Ok(Some(end));
                }
            }
        }
        Ok(None)
    }

    /// Any bytes starting at byte `base`, one by one.
    fn bytes(&mut self, bytes: &[u8], base: usize) -> Result<Option<usize>, SkipError> {
        for (i, &b) in bytes.iter().enumerate() {
            if self.escaped {
                self.escaped = false;
            } else if self.in_string {
                match b {
                    b'"' => self.in_string = false,
                    b'\\' => self.escaped = true,
                    _ => {}
                }
            } else if b == b'"' {
                self.in_string = true;
            } else if matches!(b, b'{' | b'[' | b'}' | b']') {
                if let Some(end) = self.bracket(b, base + i)? {
                    return Ok(Some(end));
                }
            }
        }
        Ok(None)
    }

    /// A bracket outside strings at byte `at`: the end of the skip when it closes the first.
    fn bracket(&mut self, b: u8, at: usize) -> Result<Option<usize>, SkipError> {
        let curly = b & 0x20 != 0;
        if b == b'{' || b == b'[' {
            self.level += 1;
            if self.level > self.room {
                return Err(SkipError::TooDeep(at));
            }
            self.open = (self.open << 1) | u128::from(curly);
            return Ok(None);
        }
        if self.level == 0 || (self.open & 1 == 1) != curly {
            return Err(SkipError::Mismatched(at));
        }
        self.open >>= 1;
        self.level -= 1;
        Ok((self.level == 0).then_some(at + 1))
    }
}

fn lanes(chunk: &[u8]) -> u8x16 {
    let mut lanes = [0u8; 16];
    lanes.copy_from_slice(chunk);
    u8x16::new(lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference, written apart from `Walk`: one byte at a time, a stack of open brackets.
    fn naive_skip(bytes: &[u8], start: usize, room: usize) -> Result<usize, SkipError> {
        let (mut stack, mut in_string, mut escaped) = (Vec::new(), false, false);
        for (i, &b) in bytes.iter().enumerate().skip(start) {
            match (in_string, escaped, b) {
                (true, true, _) => escaped = false,
                (true, false, b'\\') => escaped = true,
                (true, false, b'"') => in_string = false,
                (true, false, _) => {}
                (false, _, b'"') => in_string = true,
                (false, _, b'{' | b'[') if stack.len() == room.min(MAX_ROOM) => return Err(SkipError::TooDeep(i)),
                (false, _, b'{' | b'[') => stack.push(b),
                (false, _, b'}' | b']') => {
                    let want = if b == b'}' { b'{' } else { b'[' };
                    if stack.pop() != Some(want) {
                        return Err(SkipError::Mismatched(i));
                    }
                    if stack.is_empty() {
                        return Ok(i + 1);
                    }
                }
                (false, _, _) => {}
            }
        }
        Err(if in_string { SkipError::UnterminatedString } else { SkipError::Unterminated })
    }

    #[test]
    fn skips_to_just_past_the_matching_bracket() {
        let text = br#"{"a": [1, "]}", {"b": "\"{"}], "c": "x"} , 7"#;
        assert_eq!(skip_container(text, 0, 128), Ok(text.len() - 4));
        let long = format!(r#"[{}"{}", {{"k": "}}"}}] tail"#, "{\"n\": [1, 2]}, ".repeat(40), "x".repeat(100));
        assert_eq!(skip_container(long.as_bytes(), 0, 128), Ok(long.len() - 5));
    }

    #[test]
    fn reports_unterminated_mismatched_and_too_deep_containers() {
        assert_eq!(skip_container(br#"{"a": "b"#, 0, 128), Err(SkipError::UnterminatedString));
        assert_eq!(skip_container(br#"{"a": ["b"]"#, 0, 128), Err(SkipError::Unterminated));
        assert_eq!(skip_container(br#"{"a": ["b"}}"#, 0, 128), Err(SkipError::Mismatched(10)));
        assert_eq!(skip_container(b"[[[1]]]", 0, 2), Err(SkipError::TooDeep(2)));
    }

    fn json_ish() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let byte = prop_oneof![
            24 => Just(b'a'), 6 => Just(b' '), 3 => Just(b'"'), 2 => Just(b'\\'),
            3 => Just(b'['), 2 => Just(b']'), 3 => Just(b'{'), 2 => Just(b'}'),
            1 => Just(b'_'), 1 => Just(b'y'), 1 => Just(0x7f),
        ];
        proptest::collection::vec(byte, 1..400)
    }

    proptest::proptest! {
        #[test]
        fn finds_the_same_string_end_as_a_byte_by_byte_search(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80), from in 0usize..80, controls: bool) {
            let naive = bytes.iter().enumerate().skip(from)
                .find(|(_, &b)| b == b'"' || b == b'\\' || (controls && b < 0x20)).map(|(i, _)| i);
            proptest::prop_assert_eq!(find_string_end(&bytes, from, controls), naive);
        }

        /// JSON-ish bytes with brackets rarer than text and opening ones likelier than closing
        /// ones, so that most skips run through several blocks (to their end, a mismatch or the
        /// depth limit) and quotes, escapes and brackets fall on block edges.
        #[test]
        fn skips_as_a_byte_by_byte_walk_would(text in json_ish(), room in 1usize..200) {
            let bytes = [b"[".as_slice(), &text].concat();
            proptest::prop_assert_eq!(skip_container(&bytes, 0, room), naive_skip(&bytes, 0, room));
        }

        #[test]
        fn a_close_before_any_open_is_a_mismatch_not_a_panic(text in json_ish()) {
            let bytes = [b"]".as_slice(), &text].concat();
            proptest::prop_assert_eq!(skip_container(&bytes, 0, 8), Err(SkipError::Mismatched(0)));
        }

        #[test]
        fn skips_valid_json_to_its_end(value in proptest::collection::vec("[ -~\u{e9}]{0,90}", 0..12)) {
            let text = serde_json::to_string(&serde_json::json!({"items": value, "more": [{"x": value}]})).expect("json");
            let padded = format!("{text}, \"after\"");
            proptest::prop_assert_eq!(skip_container(padded.as_bytes(), 0, 128), Ok(text.len()));
        }
    }
}
