//! The streamed answer of `POST /v1/messages`: Anthropic's event sequence.

use std::convert::Infallible;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{random_id, tool_block, usage_json, Plan, TOOL_INPUT_PARTS};
use crate::mock::handlers::sleep_or_shutdown;

/// One SSE event and whether the chunk delay is slept before it.
type Event = (bool, Bytes);

fn event(delay: bool, v: &Value) -> Event {
    let name = v.get("type").and_then(Value::as_str).unwrap_or("message");
    (delay, Bytes::from(format!("event: {name}\ndata: {v}\n\n")))
}

/// Every event of a streamed answer, in order.
pub(crate) fn stream_events(id: &str, model: &str, p: &Plan) -> Vec<Event> {
    let mut out = vec![event(
        false,
        &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage_json(p, 1)}}),
    )];
    let ping = || event(false, &json!({"type": "ping"}));
    let mut index = 0u32;
    if p.tokens > 0 {
        out.push(event(
            false,
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ));
        out.push(ping());
        for i in 0..p.tokens {
            out.push(event(
                true,
                &json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": p.word(i)}}),
            ));
        }
        out.push(event(
            false,
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        index = 1;
    } else {
        out.push(ping());
    }
    if p.tool {
        let block = tool_block(&random_id("toolu_"), json!({}));
        out.push(event(
            false,
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        for part in TOOL_INPUT_PARTS {
            out.push(event(
                true,
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        out.push(event(
            false,
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    out.push(event(
        true,
        &json!({"type": "message_delta",
                "delta": {"stop_reason": p.stop_reason, "stop_sequence": p.stop_sequence},
                "usage": {"output_tokens": p.output_tokens}}),
    ));
    out.push(event(false, &json!({"type": "message_stop"})));
    out
}

pub(crate) fn sse_response(
    events: Vec<Event>,
    delay_ms: u64,
    shutdown: watch::Receiver<bool>,
) -> Response {
    let stream = futures::stream::unfold(
        (events.into_iter(), shutdown),
        move |(mut events, mut shutdown)| async move {
            let (delay, bytes) = events.next()?;
            if delay && !sleep_or_shutdown(delay_ms, &mut shutdown).await {
                return None;
            }
            Some((Ok::<Bytes, Infallible>(bytes), (events, shutdown)))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
