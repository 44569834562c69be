//! A fast reader of OpenAI stream chunks for metering.
//!
//! Every event of a stream is inspected (first token, output text, usage). Deserialising each
//! chunk with serde was 37 % of the proxy's CPU for a streamed request: it validates and
//! compares every key and allocates for the choice list. [`read`] walks the chunk's bytes once
//! instead, looking only at `choices[].delta.content`, `choices[].delta.tool_calls`,
//! `choices[].text` and `usage`, and skipping everything else by its brackets and quotes.
//!
//! It gives up (`None`) on anything off the plain path — a repeated key it reads, a value of
//! an unexpected type, mismatched brackets — and the caller then deserialises the chunk as
//! before, so for every well-formed chunk the result is serde's (tests and the `sse_stream`
//! fuzz target compare the two). Values it skips are not validated: a chunk that is broken only
//! inside such a value (a bad number, say) is still read, where serde ignored the whole chunk.

use super::json_scan::Scan;
use crate::providers::openai::UsageJson;

/// What a chunk holds for metering.
#[derive(Debug, Default, PartialEq)]
pub struct Chunk {
    /// Output text of every choice, in order.
    pub text: String,
    /// Whether a choice carried tool-call deltas.
    pub tool_calls: bool,
    /// Number of choices.
    pub choices: usize,
    /// The usage object, if any.
    pub usage: Option<UsageJson>,
}

/// Read an OpenAI chunk's `data` payload; `None` when it is not on the plain path.
pub fn read(data: &[u8]) -> Option<Chunk> {
    let mut s = Scan::new(data);
    let mut chunk = Chunk::default();
    let (mut choices_seen, mut usage_seen) = (false, false);
    s.object(|s, key| match key {
        b"choices" => {
            once(&mut choices_seen)?;
            if s.peek()? != b'[' {
                return None;
            }
            s.array(|s| {
                chunk.choices += 1;
                choice(s, &mut chunk)
            })
        }
        b"usage" => {
            once(&mut usage_seen)?;
            let start = s.i;
            s.skip_value()?;
            if s.b.get(start..s.i)? != b"null" {
                chunk.usage = Some(serde_json::from_slice(s.b.get(start..s.i)?).ok()?);
            }
            Some(())
        }
        _ => s.skip_value(),
    })?;
    s.ws();
    (s.i == s.b.len()).then_some(chunk)
}

/// Mark a key as seen; a second time gives up (serde refuses repeated fields).
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// One element of `choices`: an object with `delta` and (legacy completions) `text`; as the
/// serde reading does, `delta.content` wins over `text` when it is a string.
fn choice(s: &mut Scan<'_>, chunk: &mut Chunk) -> Option<()> {
    if s.peek()? != b'{' {
        return None;
    }
    let (mut delta_seen, mut text_seen) = (false, false);
    let mut content = false;
    let mut legacy = String::new();
    s.object(|s, key| match key {
        b"delta" => {
            once(&mut delta_seen)?;
            match s.peek()? {
                b'{' => {
                    let (mut content_seen, mut tools_seen) = (false, false);
                    s.object(|s, key| match key {
                        b"content" => {
                            once(&mut content_seen)?;
                            content = s.text(&mut chunk.text)?;
                            Some(())
                        }
                        b"tool_calls" => {
                            once(&mut tools_seen)?;
                            chunk.tool_calls |= s.peek()? != b'n';
                            s.skip_value()
                        }
                        _ => s.skip_value(),
                    })
                }
                _ => s.null(),
            }
        }
        b"text" => {
            once(&mut text_seen)?;
            s.text(&mut legacy).map(|_| ())
        }
        _ => s.skip_value(),
    })?;
    if !content {
        chunk.text.push_str(&legacy);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn reads_content_tool_calls_and_usage() {
        let c = read(br#"{"id":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"hi \"you\"\n"},"logprobs":null,"finish_reason":null}],"model":"m"}"#).unwrap();
        assert_eq!(c.text, "hi \"you\"\n");
        assert_eq!(
            (c.choices, c.tool_calls, c.usage.is_none()),
            (1, false, true)
        );
        let t = read(br#"{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":[1,{}]}"}}]}}]}"#).unwrap();
        assert!(t.tool_calls && t.text.is_empty());
        let u =
            read(br#" { "choices" : [ ] , "usage" : {"prompt_tokens":3,"completion_tokens":2} } "#)
                .unwrap();
        assert_eq!((u.choices, u.usage.unwrap().completion_tokens), (0, 2));
        let legacy = read(br#"{"choices":[{"text":"abc","index":0}]}"#).unwrap();
        assert_eq!(legacy.text, "abc");
    }

    /// Random chunks shaped like a provider's (and odd variants of them).
    fn random_chunk(rng: &mut StdRng) -> String {
        let text = |rng: &mut StdRng| {
            let parts = [
                "hi", " ", "é", "\\n", "\\\"", "\\u00e9", "日本", "}", "]", "{",
            ];
            let s: String = (0..rng.gen_range(0..9))
                .map(|_| parts[rng.gen_range(0..parts.len())])
                .collect();
            format!("\"{s}\"")
        };
        let value = |rng: &mut StdRng| -> String {
            match rng.gen_range(0..7) {
                0 => "null".into(),
                1 => text(rng),
                2 => "12".into(),
                3 => "[1, {\"a\": [\"]\"]}]".into(),
                4 => "{}".into(),
                5 => "true".into(),
                _ => "-0.5e3".into(),
            }
        };
        let choice = |rng: &mut StdRng| {
            let mut fields = vec![format!("\"index\":{}", rng.gen_range(0..3))];
            if rng.gen_bool(0.8) {
                let mut delta = Vec::new();
                for (key, p) in [
                    ("role", 0.3),
                    ("content", 0.8),
                    ("tool_calls", 0.2),
                    ("x", 0.2),
                ] {
                    if rng.gen_bool(p) {
                        let v = if key == "content" && rng.gen_bool(0.8) {
                            text(rng)
                        } else {
                            value(rng)
                        };
                        delta.push(format!("\"{key}\": {v}"));
                    }
                }
                if rng.gen_bool(0.05) {
                    delta.push(format!("\"content\":{}", text(rng)));
                }
                let d = if rng.gen_bool(0.1) {
                    value(rng)
                } else {
                    format!("{{{}}}", delta.join(","))
                };
                fields.push(format!("\"delta\":{d}"));
            }
            if rng.gen_bool(0.2) {
                fields.push(format!(
                    "\"text\":{}",
                    if rng.gen_bool(0.8) {
                        text(rng)
                    } else {
                        value(rng)
                    }
                ));
            }
            fields.push(format!("\"logprobs\":{}", value(rng)));
            format!("{{{}}}", fields.join(" , "))
        };
        let mut top = vec![
            r#""id":"chatcmpl-1""#.to_string(),
            format!("\"model\":{}", text(rng)),
        ];
        if rng.gen_bool(0.9) {
            let n = rng.gen_range(0..3);
            let list: Vec<String> = (0..n).map(|_| choice(rng)).collect();
            let c = if rng.gen_bool(0.05) {
                value(rng)
            } else {
                format!("[{}]", list.join(","))
            };
            top.push(format!("\"choices\":{c}"));
        }
        if rng.gen_bool(0.3) {
            let u = match rng.gen_range(0..4) {
                0 => "null".to_string(),
                1 => value(rng),
                _ => format!(
                    r#"{{"prompt_tokens":{},"completion_tokens":2,"total_tokens":9,"prompt_tokens_details":{{"cached_tokens":1}}}}"#,
                    rng.gen_range(0..9)
                ),
            };
            top.push(format!("\"usage\":{u}"));
        }
        if rng.gen_bool(0.03) {
            top.push(r#""choices":[]"#.into());
        }
        let sep = [",", ", ", ",\n "][rng.gen_range(0..3)];
        format!("{{{}}}", top.join(sep))
    }

    /// The fast read agrees with serde on every well-formed chunk it reads.
    #[test]
    fn agrees_with_serde_on_generated_chunks() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut read_fast = 0;
        for _ in 0..20_000 {
            let data = random_chunk(&mut rng);
            let valid = serde_json::from_str::<serde::de::IgnoredAny>(&data).is_ok();
            if let (true, Some(fast)) = (valid, read(data.as_bytes())) {
                read_fast += 1;
                let slow = crate::http::sse::probe_openai(data.as_bytes());
                assert_eq!(Some(fast), slow, "{data}");
            }
        }
        assert!(
            read_fast > 10_000,
            "most chunks take the fast path: {read_fast}"
        );
    }

    #[test]
    fn gives_up_off_the_plain_path() {
        for data in [
            &br#"{"choices":null}"#[..],
            br#"{"choices":[1]}"#,
            br#"{"choices":[{"delta":{"content":1}}]}"#,
            br#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            br#"{"choices":[],"choices":[]}"#,
            br#"{"choices":[{"delta":[]}]}"#,
            br#"{"choices":[] "x":1}"#,
            br#"{"choices":[]} trailing"#,
            br#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            br#"{"usage":{"prompt_tokens":"x"}}"#,
            br#"{"a":[1,{"b":"]"}]"#,
            b"[DONE]",
            b"",
        ] {
            assert!(read(data).is_none(), "{}", String::from_utf8_lossy(data));
        }
    }
}
