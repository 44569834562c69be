//! A cursor over JSON bytes that reads the few values the proxy needs and skips the rest by
//! their brackets and quotes, without building a tree or validating what it skips: stream
//! chunks ([`super::chunk`]) and the top level of non-streamed responses ([`envelope`]).
//! Every reader gives up (`None`) off the plain path, and its caller then uses serde.

use std::ops::Range;

/// Where `model` and `usage` are in a response body: the byte ranges of their values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The value of `model`.
    pub model: Option<Range<usize>>,
    /// The value of `usage`.
    pub usage: Option<Range<usize>>,
}

/// The values of `model` and `usage` in `data`, a JSON object (`null` counts as absent); every
/// other value is skipped (not validated). `None` when `data` is not one object, a key has an escape, `model` or
/// `usage` repeats (serde refuses that) or brackets do not match.
pub fn envelope(data: &[u8]) -> Option<Envelope> {
    let mut s = Scan::new(data);
    let mut env = Envelope::default();
    let (mut model_seen, mut usage_seen) = (false, false);
    s.object(|s, key| {
        let (slot, seen) = match key {
            b"model" => (&mut env.model, &mut model_seen),
            b"usage" => (&mut env.usage, &mut usage_seen),
            // An escaped key could spell either: serde, which unescapes, decides.
            _ if key.contains(&b'\\') => return None,
            _ => return s.skip_value(),
        };
        if std::mem::replace(seen, true) {
            return None;
        }
        s.peek()?;
        let start = s.i;
        s.skip_value()?;
        // `null` reads as absent, as serde reads it into an `Option`.
        *slot = (data.get(start..s.i)? != b"null").then_some(start..s.i);
        Some(())
    })?;
    s.ws();
    (s.i == data.len()).then_some(env)
}

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// The high bit of each byte of `word` (little-endian: the first byte is the lowest) that is
/// zero. Bytes after the first zero byte may be marked wrongly (a borrow), so only the
/// lowest mark is exact: that is the only one read.
fn zeros(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

/// Marks of the quotes and backslashes in eight bytes; the lowest mark is the first of them.
fn specials(word: u64) -> u64 {
    zeros(word ^ (ONES * u64::from(b'"'))) | zeros(word ^ (ONES * u64::from(b'\\')))
}

/// A cursor over JSON bytes.
pub(crate) struct Scan<'a> {
    /// The bytes.
    pub b: &'a [u8],
    /// Where the next read starts.
    pub i: usize,
}

impl<'a> Scan<'a> {
    /// A cursor at the start of `b`.
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

    /// Skip whitespace.
    pub(crate) fn ws(&mut self) {
        while self.b.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    /// Consume `c`, the next byte after whitespace.
    pub(crate) fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// A string; returns its raw bytes between the quotes (escapes left as they are).
    pub(crate) fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let (b, start) = (self.b, self.i);
        // Eight bytes at a time up to the next quote or backslash: the strings of a chunk are
        // short (ids, names, a token or two), where memchr's setup costs more than it saves.
        loop {
            while let Some(word) = b.get(self.i..self.i + 8) {
                let mask = specials(u64::from_le_bytes(word.try_into().ok()?));
                if mask != 0 {
                    self.i += (mask.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match *b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    return b.get(start..self.i - 1);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }

    /// `null`.
    pub(crate) fn null(&mut self) -> Option<()> {
        self.ws();
        self.b
            .get(self.i..)?
            .starts_with(b"null")
            .then(|| self.i += 4)
    }

    /// A string or `null`; a string is appended to `out`, unescaped (`true`).
    pub(crate) fn text(&mut self, out: &mut String) -> Option<bool> {
        if self.peek()? == b'n' {
            return self.null().map(|()| false);
        }
        let start = self.i;
        let raw = self.string()?;
        if raw.contains(&b'\\') {
            let quoted = self.b.get(start..self.i)?;
            out.push_str(&serde_json::from_slice::<String>(quoted).ok()?);
        } else {
            out.push_str(std::str::from_utf8(raw).ok()?);
        }
        Some(true)
    }

    /// An object: each key is handed to `f`, which must read its value.
    pub(crate) fn object(
        &mut self,
        mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            // Keys with escapes are compared as written: such a key is never one read here,
            // and serde, which unescapes, reads the same when the caller falls back.
            f(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `f` reads each element.
    pub(crate) fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Skip one value: strings by their quotes, containers by their brackets, scalars up to
    /// the next delimiter.
    pub(crate) fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                // Open brackets as a stack of bits (1: object), up to 64 levels.
                let (mut stack, mut depth) = (0u64, 0u32);
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        open @ (b'{' | b'[') => {
                            depth += 1;
                            if depth > 64 {
                                return None;
                            }
                            stack = stack << 1 | u64::from(open == b'{');
                        }
                        close @ (b'}' | b']') => {
                            if depth == 0 || (stack & 1 == 1) != (close == b'}') {
                                return None;
                            }
                            depth -= 1;
                            stack >>= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while self
                    .b
                    .get(self.i)
                    .is_some_and(|c| !matches!(c, b',' | b'}' | b']') && !c.is_ascii_whitespace())
                {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::value::RawValue;

    use super::*;

    /// The lowest mark of `specials` is the first quote or backslash of eight bytes.
    #[test]
    fn specials_mark_the_first_quote_or_backslash() {
        let mut rng = StdRng::seed_from_u64(5);
        let pool = [
            b'"',
            b'\\',
            b'#',
            b'!',
            b']',
            b'\\' + 1,
            0x00,
            0x01,
            0x80,
            0xff,
            b'a',
        ];
        for _ in 0..200_000 {
            let bytes: [u8; 8] = std::array::from_fn(|_| {
                if rng.gen_bool(0.5) {
                    pool[rng.gen_range(0..pool.len())]
                } else {
                    rng.r#gen()
                }
            });
            let first = bytes.iter().position(|c| matches!(c, b'"' | b'\\'));
            let mask = specials(u64::from_le_bytes(bytes));
            let got = (mask != 0).then(|| (mask.trailing_zeros() / 8) as usize);
            assert_eq!(got, first, "{bytes:?}");
        }
    }

    /// The top level as serde reads it (what the proxy used before [`envelope`]).
    #[derive(serde::Deserialize)]
    struct SerdeEnvelope<'a> {
        #[serde(borrow, default)]
        model: Option<&'a RawValue>,
        #[serde(borrow, default)]
        usage: Option<&'a RawValue>,
    }

    fn span(data: &str, raw: Option<&RawValue>) -> Option<Range<usize>> {
        raw.map(|r| {
            let start = r.get().as_ptr() as usize - data.as_ptr() as usize;
            start..start + r.get().len()
        })
    }

    /// A response body shaped like a provider's, with odd variants.
    fn random_body(rng: &mut StdRng) -> String {
        let parts = ["hi", " ", "é", "\\n", "\\\"", "\\u00e9", "}", "]", "{", ","];
        let text = |rng: &mut StdRng| {
            let s: String = (0..rng.gen_range(0..12))
                .map(|_| parts[rng.gen_range(0..parts.len())])
                .collect();
            format!("\"{s}\"")
        };
        let mut fields = vec![
            r#""id":"chatcmpl-1""#.to_string(),
            format!(
                r#""choices":[{{"index":0,"message":{{"role":"assistant","content":{}}},"finish_reason":"stop"}}]"#,
                text(rng)
            ),
        ];
        for _ in 0..rng.gen_range(0..3) {
            let v = match rng.gen_range(0..6) {
                0 => "null".to_string(),
                1 => text(rng),
                2 => r#"{"prompt_tokens":3,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1}}"#.into(),
                3 => "[1, {\"a\": [\"]\"]}]".into(),
                4 => "12".into(),
                _ => "{}".into(),
            };
            let key = ["model", "usage", "mod\\u0065l", "x"][rng.gen_range(0..4)];
            fields.push(format!("\"{key}\" : {v}"));
        }
        let n = fields.len();
        for i in (1..n).rev() {
            fields.swap(i, rng.gen_range(0..=i));
        }
        let sep = [",", ", ", ",\n  "][rng.gen_range(0..3)];
        format!(" {{{}}}\n", fields.join(sep))
    }

    /// On every well-formed body it reads, `envelope` finds the spans serde finds; it gives
    /// up only where serde's reading differs (repeated or escaped keys).
    #[test]
    fn envelope_agrees_with_serde() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut read_fast = 0;
        for _ in 0..20_000 {
            let data = random_body(&mut rng);
            let Ok(slow) = serde_json::from_str::<SerdeEnvelope<'_>>(&data) else {
                continue;
            };
            match envelope(data.as_bytes()) {
                Some(fast) => {
                    read_fast += 1;
                    assert_eq!(fast.model, span(&data, slow.model), "{data}");
                    assert_eq!(fast.usage, span(&data, slow.usage), "{data}");
                }
                None => assert!(data.contains("\\u0065"), "gave up on {data}"),
            }
        }
        assert!(
            read_fast > 10_000,
            "most bodies take the fast path: {read_fast}"
        );
    }

    #[test]
    fn envelope_gives_up_off_the_plain_path() {
        for data in [
            &br#"{"model":"a","model":"b"}"#[..],
            br#"{"model":null,"model":"b"}"#,
            br#"{"usage":{},"usage":null}"#,
            br#"{"mod\u0065l":"a"}"#,
            br#"["model","a"]"#,
            br#"{"a":[1,{"b":"]"}]"#,
            br#"{"model":"a"} trailing"#,
            br#"{"model":"a" "x":1}"#,
            b"",
        ] {
            assert!(
                envelope(data).is_none(),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
        let env = envelope(br#"{ "model" : "m" , "usage":null }"#).unwrap();
        assert_eq!((env.model, env.usage), (Some(12..15), None));
    }
}
