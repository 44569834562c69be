//! The server-sent-event body of a streaming chat completion.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::handlers::sleep_or_shutdown;
use super::openai::{ChunkHeader, Usage};
use super::tokens::{completion_word, FinishReason};

/// Everything needed to produce one stream.
#[derive(Clone, Debug)]
pub(crate) struct StreamPlan {
    /// Identity of the chunks.
    pub(crate) header: ChunkHeader,
    /// Completion tokens, one chunk each.
    pub(crate) tokens: u32,
    /// Reported on the final choice chunk.
    pub(crate) finish: FinishReason,
    /// `Some` when a usage chunk must be sent (`include_usage`).
    pub(crate) usage: Option<Usage>,
    /// Delay before each token chunk and before the finish chunk.
    pub(crate) chunk_delay_ms: u64,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Role,
    Token(u32),
    Finish,
    Usage,
    Done,
    End,
}

#[derive(Debug)]
struct State {
    plan: StreamPlan,
    step: Step,
    shutdown: watch::Receiver<bool>,
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl State {
    fn after_tokens(&self, next: u32) -> Step {
        if next < self.plan.tokens {
            Step::Token(next)
        } else {
            Step::Finish
        }
    }

    /// Produces the next event, or `None` at the end (or on shutdown).
    async fn next_event(&mut self) -> Option<Bytes> {
        let h = &self.plan.header;
        let (bytes, next) = match self.step {
            Step::Role => (
                event(&h.delta_chunk(json!({"role": "assistant", "content": ""}), None)),
                self.after_tokens(0),
            ),
            Step::Token(i) => {
                if !sleep_or_shutdown(self.plan.chunk_delay_ms, &mut self.shutdown).await {
                    return None;
                }
                let word = completion_word(i);
                let content = if i == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                };
                let h = &self.plan.header;
                (
                    event(&h.delta_chunk(json!({ "content": content }), None)),
                    self.after_tokens(i.saturating_add(1)),
                )
            }
            Step::Finish => {
                if !sleep_or_shutdown(self.plan.chunk_delay_ms, &mut self.shutdown).await {
                    return None;
                }
                let h = &self.plan.header;
                let next = if self.plan.usage.is_some() {
                    Step::Usage
                } else {
                    Step::Done
                };
                (
                    event(&h.delta_chunk(json!({}), Some(self.plan.finish))),
                    next,
                )
            }
            Step::Usage => match self.plan.usage {
                Some(u) => (event(&h.usage_chunk(u)), Step::Done),
                None => (Bytes::new(), Step::Done),
            },
            Step::Done => (Bytes::from_static(b"data: [DONE]\n\n"), Step::End),
            Step::End => return None,
        };
        self.step = next;
        Some(bytes)
    }
}

/// A `200 text/event-stream` response streaming `plan`.
///
/// Event order: a role chunk (`delta: {role: "assistant", content: ""}`),
/// one chunk per completion token (the first word bare, the following ones
/// with a leading space, so the concatenation equals the non-stream
/// content), a chunk with an empty delta and the `finish_reason`, the usage
/// chunk (empty `choices`) when requested, and `data: [DONE]`. If the server
/// shuts down mid-stream the body simply ends.
pub(crate) fn sse_response(plan: StreamPlan, shutdown: watch::Receiver<bool>) -> Response {
    let state = State {
        plan,
        step: Step::Role,
        shutdown,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let bytes = st.next_event().await?;
        Some((Ok::<Bytes, Infallible>(bytes), st))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
