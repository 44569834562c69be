//! Token estimation for providers that report no usage (flagged `usage_estimated`).

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Tokens in `text` with the o200k tokenizer (≈ bytes/4 if it is unavailable).
pub fn count(text: &str) -> i64 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as i64,
        None => text.len().div_ceil(4) as i64,
    }
}

/// Tokens of `text` estimated without the tokenizer: a token per 4 bytes of ASCII (English
/// averages 4 to 4.5 characters per o200k token) plus one per other character (CJK and most
/// non-Latin scripts run close to a token per character). O(n) over the bytes, no allocation.
pub fn estimate(text: &str) -> i64 {
    let ascii = text.bytes().filter(u8::is_ascii).count();
    let other = text.chars().count() - ascii;
    (ascii.div_ceil(4) + other) as i64
}

/// [`estimate`] over several texts, each followed by a newline (as if joined), plus 4 tokens
/// of framing per message: what [`estimate_prompt`] adds up, without joining the texts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    ascii: usize,
    other: usize,
    messages: i64,
}

impl Tally {
    /// Add a text and its newline.
    pub fn text(&mut self, text: &str) {
        let ascii = text.bytes().filter(u8::is_ascii).count();
        self.ascii += ascii + 1;
        self.other += text.chars().count() - ascii;
    }

    /// Add a message's framing.
    pub fn message(&mut self) {
        self.messages += 1;
    }

    /// Add another tally.
    pub fn add(&mut self, other: &Tally) {
        self.ascii += other.ascii;
        self.other += other.other;
        self.messages += other.messages;
    }

    /// The estimate.
    pub fn estimate(&self) -> i64 {
        (self.ascii.div_ceil(4) + self.other) as i64 + 4 * self.messages
    }
}

/// Estimate the prompt tokens of an OpenAI or Anthropic request body: the text of every
/// message/content part, `prompt`, `input` and `system` ([`estimate`]), plus 4 tokens of
/// framing per message. It sizes limit and budget reservations (settled with the real usage
/// afterwards) on every request, so it does not load the tokenizer: the tokenizer (tens of MB)
/// is loaded only when an upstream reports no usage and the completion must be counted. The
/// request path reads the same from the raw body (`http::client_body`); this is the estimate
/// of a parsed tree.
pub fn estimate_prompt(body: &serde_json::Value) -> i64 {
    let mut t = Tally::default();
    collect(body.get("system"), &mut t);
    collect(body.get("prompt"), &mut t);
    collect(body.get("input"), &mut t);
    if let Some(msgs) = body.get("messages").and_then(|m| m.as_array()) {
        for m in msgs {
            t.message();
            collect(m.get("content"), &mut t);
        }
    }
    t.estimate()
}

fn collect(v: Option<&serde_json::Value>, out: &mut Tally) {
    match v {
        Some(serde_json::Value::String(s)) => out.text(s),
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
    fn counts_text_and_estimates_prompts_with_message_framing() {
        assert_eq!(count("hello world"), 2);
        let body = serde_json::json!({"messages": [
            {"role": "user", "content": "hello world"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]}
        ]});
        // "hello world\n" (12 bytes: 3) + "hello\n" (6 bytes: 2) + 2 * 4 framing
        assert_eq!(estimate_prompt(&body), 13);
    }

    #[test]
    fn the_estimate_stays_near_the_tokenizer() {
        let english = "The quick brown fox jumps over the lazy dog, then writes a short poem \
                       about toll bridges and the people who cross them every morning. "
            .repeat(40);
        let cjk = "收费站的诗写给每天早上过桥的人们。".repeat(40);
        for text in [english, cjk] {
            let (exact, guess) = (count(&text), estimate(&text));
            assert!(
                (guess - exact).abs() * 4 < exact,
                "within 25 %: exact {exact}, estimate {guess}"
            );
        }
        assert_eq!(estimate(""), 0);
    }
}
