//! A cursor over a JSON body, reading it in one pass: [`Cursor::object`] and [`Cursor::array`]
//! call back per member and element, which reads or skips its value; strings are borrowed from
//! the body unless they had escapes.
//!
//! A skipped value only has its strings closed and its brackets matched (its scalars are not
//! validated: the API server sends valid JSON), through the byte scans of [`super::scan`]. Read
//! strings are strict (escapes, surrogate pairs, no control characters). The `lenient_*` reads
//! skip a value of another type than expected and say so, for schemas that read an odd field as
//! absent. Nesting is limited to [`MAX_DEPTH`] levels, read or skipped.

use std::borrow::Cow;

use super::scan::{self, find_string_end, SkipError, MAX_ROOM};

/// Deepest nesting accepted: 128 levels (serde_json stops one level sooner), all a skip tracks.
pub(crate) const MAX_DEPTH: usize = MAX_ROOM;

/// Why a body cannot be read: what is wrong, and at which byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub(crate) String);

pub(crate) type Result<T, E = ReadError> = std::result::Result<T, E>;

/// A cursor over a UTF-8 body; `text` and `bytes` are the same body.
pub(crate) struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub(crate) fn new(text: &'a str) -> Cursor<'a> {
        Cursor { text, bytes: text.as_bytes(), pos: 0, depth: 0 }
    }

    /// A cursor at the start of `body`, which must be UTF-8.
    pub(crate) fn from_utf8(body: &'a [u8]) -> Result<Cursor<'a>> {
        let text = std::str::from_utf8(body).map_err(|e| ReadError(format!("the body is not UTF-8: {e}")))?;
        Ok(Cursor::new(text))
    }

    /// `what` is wrong at the cursor (or the body ended).
    pub(crate) fn error(&self, what: &str) -> ReadError {
        if self.pos >= self.bytes.len() {
            ReadError(format!("{what}: the body ends at byte {}", self.bytes.len()))
        } else {
            ReadError(format!("{what} at byte {}", self.pos))
        }
    }

    /// Only white space is left; else the error `what` (e.g. trailing characters after the
    /// value).
    pub(crate) fn finish(&mut self, what: &str) -> Result<()> {
        self.ws();
        if self.pos != self.bytes.len() {
            return Err(self.error(what));
        }
        Ok(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next significant byte, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.pos).copied()
    }

    /// Consumes `b` if it comes next.
    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect(&mut self, b: u8, what: &str) -> Result<()> {
        if self.eat(b) {
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn literal(&mut self, word: &str) -> Result<()> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    /// Consumes `null` if it comes next.
    pub(crate) fn null(&mut self) -> Result<bool> {
        if self.peek() == Some(b'n') {
            self.literal("null")?;
            return Ok(true);
        }
        Ok(false)
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        Ok(())
    }

    /// Calls `member` with each key of an object; `member` reads or skips its value.
    pub(crate) fn object(&mut self, mut member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<()>) -> Result<()> {
        self.expect(b'{', "expected an object")?;
        self.enter()?;
        if !self.eat(b'}') {
            loop {
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a string key"));
                }
                let key = self.string()?;
                self.expect(b':', "expected ':'")?;
                member(self, key)?;
                if !self.eat(b',') {
                    self.expect(b'}', "expected ',' or '}'")?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// Calls `element` for each element of an array; `element` reads or skips it.
    pub(crate) fn array(&mut self, mut element: impl FnMut(&mut Self) -> Result<()>) -> Result<()> {
        self.expect(b'[', "expected an array")?;
        self.enter()?;
        if !self.eat(b']') {
            loop {
                element(self)?;
                if !self.eat(b',') {
                    self.expect(b']', "expected ',' or ']'")?;
                    break;
                }
            }
        }
        self.depth -= 1;
        Ok(())
    }

    /// A string, borrowed from the body unless it has escapes.
    pub(crate) fn string(&mut self) -> Result<Cow<'a, str>> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        let Some(end) = find_string_end(self.bytes, start, true) else {
            self.pos = self.bytes.len();
            return Err(self.error("unterminated string"));
        };
        match self.bytes[end] {
            b'"' => {
                self.pos = end + 1;
                Ok(Cow::Borrowed(&self.text[start..end]))
            }
            b'\\' => self.escaped_string(start).map(Cow::Owned),
            _ => {
                self.pos = end;
                Err(self.error("control character in a string"))
            }
        }
    }

    fn escaped_string(&mut self, start: usize) -> Result<String> {
        let mut out = String::new();
        self.pos = start;
        loop {
            let Some(end) = find_string_end(self.bytes, self.pos, true) else {
                self.pos = self.bytes.len();
                return Err(self.error("unterminated string"));
            };
            out.push_str(&self.text[self.pos..end]);
            self.pos = end + 1;
            match self.bytes[end] {
                b'"' => return Ok(out),
                b'\\' => {}
                _ => {
                    self.pos = end;
                    return Err(self.error("control character in a string"));
                }
            }
            let Some(&escape) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match escape {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => out.push(self.unicode_escape()?),
                _ => {
                    self.pos -= 1;
                    return Err(self.error("invalid escape"));
                }
            }
        }
    }

    /// The character of `\uXXXX` (the `\u` consumed), joining surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.error("lone leading surrogate in a \\u escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("invalid surrogate pair in a \\u escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone trailing surrogate in a \\u escape")),
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.error("truncated \\u escape"))?;
        let mut value = 0;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or_else(|| self.error("invalid \\u escape"))?;
            value = value * 16 + v;
        }
        self.pos += 4;
        Ok(value)
    }

    /// A string, or `None` for `null`.
    pub(crate) fn opt_string(&mut self) -> Result<Option<Cow<'a, str>>> {
        if self.null()? {
            return Ok(None);
        }
        Ok(Some(self.string()?))
    }

    /// Skips one value.
    pub(crate) fn skip(&mut self) -> Result<()> {
        match self.peek() {
            Some(b'"') => {
                self.pos += 1;
                self.skip_string_body()
            }
            Some(b'{' | b'[') => self.skip_container(),
            Some(_) => self.scalar().map(|_| ()),
            None => Err(self.error("expected a value")),
        }
    }

    /// Skips to just past the closing quote (the opening one consumed).
    fn skip_string_body(&mut self) -> Result<()> {
        loop {
            let Some(at) = find_string_end(self.bytes, self.pos, false) else {
                self.pos = self.bytes.len();
                return Err(self.error("unterminated string"));
            };
            if self.bytes[at] == b'"' {
                self.pos = at + 1;
                return Ok(());
            }
            self.pos = at + 2;
            if self.pos > self.bytes.len() {
                return Err(self.error("unterminated string"));
            }
        }
    }

    /// Skips an object or array, matching brackets (most of a review is skipped here).
    fn skip_container(&mut self) -> Result<()> {
        match scan::skip_container(self.bytes, self.pos, MAX_DEPTH - self.depth) {
            Ok(end) => {
                self.pos = end;
                Ok(())
            }
            Err(e) => {
                let (at, what) = match e {
                    SkipError::UnterminatedString => (self.bytes.len(), "unterminated string"),
                    SkipError::Unterminated => (self.bytes.len(), "unterminated object or array"),
                    SkipError::TooDeep(at) => (at, "nested too deeply"),
                    SkipError::Mismatched(at) => (at, "mismatched bracket"),
                };
                self.pos = at;
                Err(self.error(what))
            }
        }
    }

    /// A number or literal token's text (not validated).
    fn scalar(&mut self) -> Result<&'a str> {
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'+' | b'-' | b'.') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a value"));
        }
        Ok(&self.text[start..self.pos])
    }

    /// A string, or `None` (the value skipped) when it is of another type.
    pub(crate) fn text(&mut self) -> Result<Option<Cow<'a, str>>> {
        if self.peek() == Some(b'"') {
            return self.string().map(Some);
        }
        self.skip().map(|()| None)
    }

    /// Calls `member` for each key of an object, or skips a value of another type (`false`).
    pub(crate) fn lenient_object(&mut self, member: impl FnMut(&mut Self, Cow<'a, str>) -> Result<()>) -> Result<bool> {
        if self.peek() != Some(b'{') {
            return self.skip().map(|()| false);
        }
        self.object(member).map(|()| true)
    }

    /// The elements of an array read by `element`, or `None` (skipped) for another type.
    pub(crate) fn lenient_array<T>(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Option<Vec<T>>> {
        if self.peek() != Some(b'[') {
            return self.skip().map(|()| None);
        }
        let mut items = Vec::new();
        self.array(|s| {
            items.push(element(s)?);
            Ok(())
        })?;
        Ok(Some(items))
    }

    /// The string member `name` of an object (`None` when absent, not a string, or not an object).
    pub(crate) fn text_member(&mut self, name: &str) -> Result<Option<Cow<'a, str>>> {
        let mut found = None;
        self.lenient_object(|s, key| {
            if key == name {
                found = s.text()?;
                Ok(())
            } else {
                s.skip()
            }
        })?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_unless_they_have_escapes() {
        let mut s = Cursor::new(r#"["plain", "t\u00e9\n", null]"#);
        let mut items = Vec::new();
        s.array(|s| {
            items.push(s.opt_string()?);
            Ok(())
        })
        .expect("reads");
        s.finish("trailing").expect("nothing after");
        assert!(matches!(&items[0], Some(Cow::Borrowed("plain"))), "{items:?}");
        assert!(matches!(&items[1], Some(Cow::Owned(t)) if t == "t\u{e9}\n"), "{items:?}");
        assert_eq!(items[2], None);
    }

    #[test]
    fn lenient_reads_skip_another_type_and_say_so() {
        let mut s = Cursor::new(r#"{"a": [1, {"b": "]"}], "c": "x", "d": 7}"#);
        let mut seen = Vec::new();
        s.object(|s, key| {
            let object = s.lenient_object(|s, _| s.skip())?;
            seen.push((key.into_owned(), object));
            Ok(())
        })
        .expect("reads");
        assert_eq!(seen, [("a".into(), false), ("c".into(), false), ("d".into(), false)]);
        let mut trailing = Cursor::new("[1] x");
        trailing.skip().expect("skips");
        assert_eq!(trailing.finish("trailing").expect_err("x").to_string(), "trailing at byte 4");
    }
}
