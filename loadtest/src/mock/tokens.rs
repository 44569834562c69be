//! Deterministic token accounting of the mock upstream.
//!
//! The mock does not run a tokenizer. Instead it uses rules simple enough for
//! tests to predict exactly:
//!
//! * **prompt tokens** = for every message, the number of whitespace-separated
//!   words of its `content` plus [`PER_MESSAGE_OVERHEAD`] (4). When `content`
//!   is a string its words are counted; when it is an array of content parts,
//!   the words of every part's string `text` field are counted (parts without
//!   `text`, e.g. images, count 0); a missing or `null` content counts 0.
//! * **completion tokens** = the request's `max_completion_tokens`, else its
//!   `max_tokens`, else the configured default, capped at the configured
//!   maximum (see [`plan_completion`]).
//! * **completion text** = that many words cycling through [`WORDS`], one
//!   token per word.

use serde_json::Value;

/// Tokens added to the prompt count for every message, whatever its content.
pub const PER_MESSAGE_OVERHEAD: u64 = 4;

/// Words the completion text cycles through, one token per word.
pub const WORDS: [&str; 8] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
];

/// Why a completion ended, as reported in `finish_reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The mock's natural answer ended (`"stop"`).
    Stop,
    /// The request's token limit cut the answer (`"length"`).
    Length,
}

impl FinishReason {
    /// The OpenAI wire value: `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Number of whitespace-separated words in `text`.
pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Words of one message `content` value: a string, or an array of content
/// parts whose string `text` fields are counted. Anything else counts 0.
pub fn content_words(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(s)) => count_words(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(count_words)
            .sum(),
        _ => 0,
    }
}

/// Prompt tokens of a list of message contents: the words of each content
/// plus [`PER_MESSAGE_OVERHEAD`] per message.
pub fn prompt_tokens<'a, I>(contents: I) -> u64
where
    I: IntoIterator<Item = Option<&'a Value>>,
{
    contents
        .into_iter()
        .map(|c| content_words(c).saturating_add(PER_MESSAGE_OVERHEAD))
        .fold(0u64, u64::saturating_add)
}

/// Completion tokens to produce and the resulting finish reason.
///
/// `requested` is the request's limit (`max_completion_tokens`, else
/// `max_tokens`). The count is `min(requested.unwrap_or(default), cap)`.
/// The finish reason is `"length"` when the request carried a limit and the
/// completion reached it (the mock always writes until the limit), and
/// `"stop"` otherwise (no limit given, or the cap stopped it first).
pub fn plan_completion(requested: Option<u64>, default: u32, cap: u32) -> (u32, FinishReason) {
    let wanted = requested.unwrap_or(u64::from(default));
    let tokens = wanted.min(u64::from(cap));
    // `tokens <= cap`, which is a u32.
    let tokens = u32::try_from(tokens).unwrap_or(cap);
    let reason = match requested {
        Some(limit) if u64::from(tokens) == limit => FinishReason::Length,
        _ => FinishReason::Stop,
    };
    (tokens, reason)
}

/// The `i`-th word (0-based) of the completion text.
pub fn completion_word(i: u32) -> &'static str {
    WORDS[(i as usize) % WORDS.len()]
}

/// The full completion text of `tokens` words, separated by single spaces.
pub fn completion_text(tokens: u32) -> String {
    let mut out = String::with_capacity(tokens as usize * 7);
    for i in 0..tokens {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(completion_word(i));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_words_of_strings() {
        assert_eq!(count_words(""), 0);
        assert_eq!(count_words("   "), 0);
        assert_eq!(count_words("hello"), 1);
        assert_eq!(count_words("  hello \n world\tagain "), 3);
    }

    #[test]
    fn counts_content_variants() {
        assert_eq!(content_words(None), 0);
        assert_eq!(content_words(Some(&Value::Null)), 0);
        assert_eq!(content_words(Some(&json!("one two three"))), 3);
        let parts = json!([
            {"type": "text", "text": "one two"},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
            {"type": "text", "text": "three"}
        ]);
        assert_eq!(content_words(Some(&parts)), 3);
        assert_eq!(content_words(Some(&json!(42))), 0);
    }

    #[test]
    fn prompt_tokens_adds_overhead_per_message() {
        let a = json!("You are helpful.");
        let b = json!("Say hello to the world");
        assert_eq!(prompt_tokens([Some(&a), Some(&b)]), 3 + 4 + 5 + 4);
        assert_eq!(prompt_tokens([None]), 4);
        assert_eq!(prompt_tokens(std::iter::empty()), 0);
    }

    #[test]
    fn completion_plan() {
        assert_eq!(plan_completion(None, 16, 4096), (16, FinishReason::Stop));
        assert_eq!(
            plan_completion(Some(5), 16, 4096),
            (5, FinishReason::Length)
        );
        assert_eq!(
            plan_completion(Some(100), 16, 4096),
            (100, FinishReason::Length)
        );
        assert_eq!(plan_completion(Some(100), 16, 50), (50, FinishReason::Stop));
        assert_eq!(plan_completion(None, 16, 10), (10, FinishReason::Stop));
        assert_eq!(plan_completion(Some(0), 16, 10), (0, FinishReason::Length));
        assert_eq!(
            plan_completion(Some(u64::MAX), 16, 4096),
            (4096, FinishReason::Stop)
        );
    }

    #[test]
    fn completion_text_has_one_word_per_token() {
        assert_eq!(completion_text(0), "");
        assert_eq!(completion_text(3), "lorem ipsum dolor");
        let long = completion_text(20);
        assert_eq!(count_words(&long), 20);
        assert_eq!(completion_word(8), "lorem");
    }
}
