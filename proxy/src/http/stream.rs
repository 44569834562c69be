//! Relays an upstream SSE stream to the client while metering it.
//!
//! Stages: upstream bytes → optional `pre` translation (into the metered format) → split into
//! events → inspect (TTFT, usage, text) → drop the usage chunk the proxy asked for on its own,
//! rewrite the model name → optional `post` translation (into the client's format) → client.
//! The request's [`Meter`] is finished when the stream ends, fails, or is dropped because the
//! client went away; without reported usage the tokens are estimated with the tokenizer, once,
//! at that point (never per chunk: the tokenizer costs tens of MB and O(text) per call).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::Stream;

use super::sse::{inspect_anthropic, inspect_openai, AnthropicUsage, EventSplitter};
use crate::providers::tokens;
use crate::usage::{Meter, Outcome, Tokens};

/// Most output text kept for token estimation.
const MAX_TEXT: usize = 1 << 20;

/// A stateful byte-stream translation between SSE formats.
pub trait SseTransform: Send {
    /// Translate more input; returns output bytes (possibly empty).
    fn push(&mut self, input: &[u8]) -> Vec<u8>;
    /// Input ended; returns the remaining output.
    fn finish(&mut self) -> Vec<u8>;
}

/// Which format the metered events are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterFormat {
    /// OpenAI `chat.completion.chunk` / completion chunks.
    Openai,
    /// Anthropic message events.
    Anthropic,
}

/// Options of a relay.
pub struct RelayOptions {
    /// Format of the events after `pre`.
    pub format: MeterFormat,
    /// Translation applied to upstream bytes first.
    pub pre: Option<Box<dyn SseTransform>>,
    /// Translation applied to the metered events last.
    pub post: Option<Box<dyn SseTransform>>,
    /// Drop OpenAI usage-only chunks (the client did not ask for usage).
    pub hide_usage: bool,
    /// Rewrite `"model":"<from>"` to `"model":"<to>"` in forwarded events.
    pub rename_model: Option<std::sync::Arc<super::sse::ModelRename>>,
    /// Prompt tokens estimated from the request (used when the upstream reports none).
    pub prompt_estimate: i64,
    /// Upstream time until the response headers, µs.
    pub upstream_headers_us: i64,
    /// Attempts made before this response.
    pub attempts: i32,
}

/// The metering relay.
pub struct MeteredSse<S> {
    inner: S,
    meter: Option<Meter>,
    opts: RelayOptions,
    splitter: EventSplitter,
    started: Instant,
    /// When the upstream's response headers were handed to the relay.
    relay_started: Instant,
    ttft_us: Option<i64>,
    usage: Option<Tokens>,
    anthropic_usage: Option<AnthropicUsage>,
    text: String,
    done: bool,
}

impl<S> std::fmt::Debug for MeteredSse<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredSse")
            .field("done", &self.done)
            .finish()
    }
}

impl<S> MeteredSse<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, meter: Meter, opts: RelayOptions) -> Self {
        let started = meter.started();
        Self {
            inner,
            meter: Some(meter),
            opts,
            splitter: EventSplitter::default(),
            started,
            relay_started: Instant::now(),
            ttft_us: None,
            usage: None,
            anthropic_usage: None,
            text: String::new(),
            done: false,
        }
    }

    fn tokens(&self) -> Tokens {
        if let Some(u) = self.usage {
            return u;
        }
        if let Some(u) = self.anthropic_usage {
            return u.tokens();
        }
        Tokens {
            prompt: self.opts.prompt_estimate,
            completion: tokens::count(&self.text),
            cached: 0,
            estimated: true,
        }
    }

    fn outcome(&self, status: u16, error_type: Option<&str>) -> Outcome {
        Outcome {
            status,
            error_type: error_type.map(str::to_string),
            tokens: self.tokens(),
            ttft_us: self.ttft_us,
            // Waiting for the headers, then relaying the body: the proxy's own time before
            // the upstream call is not in it (`tollgate_proxy_overhead_seconds`).
            upstream_latency_us: self.opts.upstream_headers_us
                + self.relay_started.elapsed().as_micros() as i64,
            attempts: self.opts.attempts,
        }
    }

    /// Meter and filter complete events; returns the bytes to forward (an event passed on
    /// unchanged is not copied when it is the only one).
    fn process(&mut self, input: &[u8]) -> Bytes {
        let translated;
        let input = match self.opts.pre.as_mut() {
            Some(pre) => {
                translated = pre.push(input);
                &translated[..]
            }
            None => input,
        };
        let mut out = BytesMut::new();
        for event in self.splitter.push(input) {
            let info = match self.opts.format {
                MeterFormat::Openai => inspect_openai(&event),
                MeterFormat::Anthropic => {
                    let (info, usage) = inspect_anthropic(&event);
                    if let Some(u) = usage {
                        match self.anthropic_usage.as_mut() {
                            Some(prev) => prev.merge(&u),
                            None => self.anthropic_usage = Some(u),
                        }
                    }
                    info
                }
            };
            if info.has_token && self.ttft_us.is_none() {
                self.ttft_us = Some(self.started.elapsed().as_micros() as i64);
            }
            if self.text.len() < MAX_TEXT {
                self.text.push_str(&info.text);
            }
            self.done |= info.done;
            if let Some(u) = info.usage {
                self.usage = Some(u);
            }
            if self.opts.hide_usage && info.usage_only {
                continue;
            }
            let rename = self.opts.rename_model.as_deref();
            if rename.is_some_and(|r| r.apply_into(&event, &mut out)) {
                continue;
            }
            if out.is_empty() {
                out = event;
            } else {
                out.extend_from_slice(&event);
            }
        }
        match self.opts.post.as_mut() {
            Some(post) => Bytes::from(post.push(&out)),
            None => out.freeze(),
        }
    }

    fn finish_bytes(&mut self) -> Vec<u8> {
        let mut rest = self.splitter.rest().to_vec();
        if let Some(pre) = self.opts.pre.as_mut() {
            let tail = pre.finish();
            let more = self.process(&tail);
            rest.extend_from_slice(&more);
        }
        if let Some(post) = self.opts.post.as_mut() {
            let mut tail = post.push(&rest);
            tail.extend(post.finish());
            return tail;
        }
        rest
    }

    fn finish(&mut self, status: u16, error_type: Option<&str>) {
        let outcome = self.outcome(status, error_type);
        if let Some(m) = self.meter.take() {
            m.finish(outcome);
        }
    }
}

/// The client went away mid-stream: meter what was delivered (status 499). Tokens are
/// counted here, once, and only when the upstream reported no usage before the cut.
impl<S> Drop for MeteredSse<S> {
    fn drop(&mut self) {
        if self.meter.is_some() {
            self.finish(499, Some(crate::usage::CLIENT_DISCONNECTED));
        }
    }
}

impl<S, E> Stream for MeteredSse<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.meter.is_none() {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = this.process(&chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let request_id = this.meter.as_ref().map_or("", |m| m.request_id());
                    tracing::warn!(request_id, error = %e, "upstream stream broke");
                    this.finish(502, Some("upstream_stream_error"));
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream stream broke"))));
                }
                Poll::Ready(None) => {
                    let rest = this.finish_bytes();
                    let error = (!this.done).then_some("upstream_incomplete_stream");
                    this.finish(200, error);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Bytes::from(rest))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl std::fmt::Debug for RelayOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayOptions")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}
