//! Token estimation for providers that report no usage (flagged `usage_estimated`).

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Load the tokenizer now (it takes a moment) instead of on the first estimate.
pub fn warm_up() {
    let _ = bpe();
}

/// Tokens in `text` with the o200k tokenizer (≈ bytes/4 if it is unavailable).
pub fn count(text: &str) -> i64 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as i64,
        None => text.len().div_ceil(4) as i64,
    }
}

/// Text tokenized exactly by [`estimate_prompt`]; longer prompts are extrapolated from it so the
/// per-request cost stays bounded (this runs on the hot path for limit reservations).
const EXACT_PREFIX_BYTES: usize = 2_048;

/// Tokens of `text`: exact for the first [`EXACT_PREFIX_BYTES`], extrapolated by length beyond.
pub fn count_bounded(text: &str) -> i64 {
    if text.len() <= EXACT_PREFIX_BYTES {
        return count(text);
    }
    let mut cut = EXACT_PREFIX_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = count(&text[..cut]).max(1);
    (head as f64 * text.len() as f64 / cut as f64).round() as i64
}

/// Estimate the prompt tokens of an OpenAI or Anthropic request body: the text of every
/// message/content part, `prompt`, `input` and `system`, plus 4 tokens of framing per message.
pub fn estimate_prompt(body: &serde_json::Value) -> i64 {
    let mut text = String::new();
    let mut messages = 0i64;
    collect(body.get("system"), &mut text);
    collect(body.get("prompt"), &mut text);
    collect(body.get("input"), &mut text);
    if let Some(msgs) = body.get("messages").and_then(|m| m.as_array()) {
        for m in msgs {
            messages += 1;
            collect(m.get("content"), &mut text);
        }
    }
    count_bounded(&text) + 4 * messages
}

fn collect(v: Option<&serde_json::Value>, out: &mut String) {
    match v {
        Some(serde_json::Value::String(s)) => {
            out.push_str(s);
            out.push('\n');
        }
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                match item {
                    serde_json::Value::String(_) => collect(Some(item), out),
                    serde_json::Value::Object(o) => collect(o.get("text"), out),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_text_and_message_framing() {
        assert_eq!(count("hello world"), 2);
        let body = serde_json::json!({"messages": [
            {"role": "user", "content": "hello world"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]}
        ]});
        // "hello world\n" (3 tokens incl. newline) + "hello\n" (2) + 2 * 4 framing
        let n = estimate_prompt(&body);
        assert!((12..=14).contains(&n), "{n}");
    }

    #[test]
    fn long_text_is_extrapolated_from_an_exact_prefix() {
        let text = "hello world ".repeat(2_000);
        let exact = count(&text);
        let bounded = count_bounded(&text);
        assert!(
            (bounded - exact).abs() * 20 < exact,
            "exact {exact}, bounded {bounded}"
        );
    }
}
