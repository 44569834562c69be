//! Relays an upstream SSE stream to the client while metering it.
//!
//! The relay forwards whole SSE events byte for byte (no re-serialisation), records the time
//! to the first content token, picks up the usage chunk, hides that chunk from clients that
//! did not ask for it, and finishes the request's [`Meter`] when the stream ends, fails, or is
//! dropped because the client went away.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::providers::openai::UsageJson;
use crate::usage::{Meter, Outcome, Tokens};

#[derive(Deserialize)]
struct ChunkProbe {
    #[serde(default)]
    choices: Vec<ChoiceProbe>,
    #[serde(default)]
    usage: Option<UsageJson>,
}

#[derive(Deserialize)]
struct ChoiceProbe {
    #[serde(default)]
    delta: Option<DeltaProbe>,
}

#[derive(Deserialize)]
struct DeltaProbe {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

/// What the relay learned from one SSE event.
#[derive(Debug, Default, PartialEq)]
struct EventInfo {
    done: bool,
    has_token: bool,
    usage: Option<Tokens>,
    usage_only: bool,
}

fn inspect(event: &[u8]) -> EventInfo {
    let mut info = EventInfo::default();
    for line in event.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            info.done = true;
        } else if let Ok(probe) = serde_json::from_slice::<ChunkProbe>(data) {
            info.has_token |= probe.choices.iter().any(|c| {
                c.delta.as_ref().is_some_and(|d| {
                    d.content.as_deref().is_some_and(|s| !s.is_empty()) || d.tool_calls.is_some()
                })
            });
            if let Some(u) = probe.usage {
                info.usage = Some(u.tokens());
                info.usage_only = probe.choices.is_empty();
            }
        }
    }
    info
}

/// The metering relay.
pub struct MeteredSse<S> {
    inner: S,
    meter: Option<Meter>,
    buf: BytesMut,
    started: Instant,
    upstream_latency_us: i64,
    ttft_us: Option<i64>,
    usage: Option<Tokens>,
    token_events: i64,
    prompt_estimate: i64,
    hide_usage: bool,
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
    /// Wrap `inner`. `hide_usage` drops the usage-only chunk the proxy asked for on its own.
    pub fn new(
        inner: S,
        meter: Meter,
        hide_usage: bool,
        prompt_estimate: i64,
        upstream_latency_us: i64,
    ) -> Self {
        let started = meter.started();
        Self {
            inner,
            meter: Some(meter),
            buf: BytesMut::new(),
            started,
            upstream_latency_us,
            ttft_us: None,
            usage: None,
            token_events: 0,
            prompt_estimate,
            hide_usage,
            done: false,
        }
    }

    fn outcome(&self, status: u16, error_type: Option<&str>) -> Outcome {
        let tokens = self.usage.unwrap_or(Tokens {
            prompt: self.prompt_estimate,
            completion: self.token_events,
            cached: 0,
            estimated: true,
        });
        Outcome {
            status,
            error_type: error_type.map(str::to_string),
            tokens,
            ttft_us: self.ttft_us,
            upstream_latency_us: self.upstream_latency_us,
            attempts: 1,
        }
    }

    /// Split complete events off the buffer; returns the bytes to forward.
    fn take_events(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let event = self.buf.split_to(pos + 2);
            let info = inspect(&event);
            if info.has_token {
                self.token_events += 1;
                if self.ttft_us.is_none() {
                    self.ttft_us = Some(self.started.elapsed().as_micros() as i64);
                }
            }
            self.done |= info.done;
            if let Some(u) = info.usage {
                self.usage = Some(u);
            }
            if !(self.hide_usage && info.usage_only) {
                out.extend_from_slice(&event);
            }
        }
        let progress = self.outcome(200, None);
        if let Some(m) = self.meter.as_mut() {
            m.progress(progress);
        }
        out
    }

    fn finish(&mut self, status: u16, error_type: Option<&str>) {
        let outcome = self.outcome(status, error_type);
        if let Some(m) = self.meter.take() {
            m.finish(outcome);
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
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.buf.extend_from_slice(&chunk);
                    let out = this.take_events();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out.freeze())));
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    this.finish(502, Some("upstream_stream_error"));
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream stream broke"))));
                }
                Poll::Ready(None) => {
                    if this.meter.is_none() {
                        return Poll::Ready(None);
                    }
                    let rest = this.buf.split();
                    let error = (!this.done).then_some("upstream_incomplete_stream");
                    this.finish(200, error);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(rest.freeze())));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_token_usage_and_done_events() {
        let token = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" hi\"}}]}\n\n";
        assert!(inspect(token).has_token);
        let role = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        assert!(!inspect(role).has_token);
        let usage =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
        let info = inspect(usage);
        assert!(info.usage_only);
        assert_eq!(info.usage.unwrap().completion, 2);
        assert!(inspect(b"data: [DONE]\n\n").done);
        assert_eq!(inspect(b": keep-alive\n\n"), EventInfo::default());
    }
}
