//! Tests of [`OpenAiToAnthropicStream`].

use serde_json::{json, Value};

use super::*;

const TOOL_STREAM: &str = include_str!("fixtures/openai_tool_stream.sse");

fn run(input: &[u8], cuts: &[usize]) -> (String, OpenAiToAnthropicStream) {
    let mut t = OpenAiToAnthropicStream::new("public-model");
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&t.feed(&input[start..cut]).unwrap());
        start = cut;
    }
    out.extend_from_slice(&t.finish().unwrap());
    (String::from_utf8(out).unwrap(), t)
}

/// `(event name, data)` of every event; checks the name equals `data.type`.
fn events(body: &str) -> Vec<Value> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name);
            data
        })
        .collect()
}

#[test]
fn translates_text_tool_calls_and_usage() {
    let (out, t) = run(TOOL_STREAM.as_bytes(), &[]);
    let want = vec![
        json!({"type": "message_start", "message": {"id": "chatcmpl-B9x", "type": "message", "role": "assistant",
               "model": "public-model", "content": [], "stop_reason": null, "stop_sequence": null,
               "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " check: é✓"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1,
               "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"Paris\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2,
               "content_block": {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
               "usage": {"input_tokens": 56, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 64, "output_tokens": 30}}),
        json!({"type": "message_stop"}),
    ];
    assert_eq!(events(&out), want);
    assert_eq!(
        t.usage(),
        Some(TokenUsage {
            prompt_tokens: 120,
            completion_tokens: 30,
            cached_tokens: 64,
            cache_creation_tokens: 0
        })
    );
    assert!(t.emitted_token() && t.is_done() && t.upstream_error().is_none());
}

#[test]
fn any_split_gives_the_same_output() {
    let input = TOOL_STREAM.as_bytes();
    let (whole, _) = run(input, &[]);
    for cut in 0..=input.len() {
        assert_eq!(run(input, &[cut]).0, whole, "split at {cut}");
    }
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run(input, &bytewise).0, whole);
}

#[test]
fn finish_reasons_map_to_stop_reasons() {
    for (finish, stop) in [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("function_call", "tool_use"),
    ] {
        let input = format!(
            "data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hi\"}}}}]}}\n\n\
             data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"{finish}\"}}]}}\n\n\
             data: [DONE]\n\n"
        );
        let evs = events(&run(input.as_bytes(), &[]).0);
        let delta = evs.iter().find(|e| e["type"] == "message_delta").unwrap();
        assert_eq!(delta["delta"]["stop_reason"], stop, "{finish}");
        assert_eq!(delta["usage"]["output_tokens"], 0, "no usage chunk: zero");
    }
}

#[test]
fn missing_done_is_tolerated_after_finish_reason() {
    let input = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n";
    let (out, t) = run(input.as_bytes(), &[]);
    let names: Vec<Value> = events(&out).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(
        names,
        vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(t.is_done());

    let mut t = OpenAiToAnthropicStream::new("m");
    t.feed(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n")
        .unwrap();
    assert_eq!(t.finish().unwrap_err(), TranslateError::Truncated("[DONE]"));
}

#[test]
fn error_chunk_becomes_error_event() {
    let input = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n\
                 data: {\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}\n\n\
                 data: [DONE]\n\n";
    let (out, t) = run(input.as_bytes(), &[]);
    let evs = events(&out);
    assert_eq!(
        evs.last().unwrap(),
        &json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit reached"}})
    );
    assert!(!out.contains("message_stop"));
    assert_eq!(t.upstream_error().unwrap()["code"], "rate_limit_exceeded");
}

#[test]
fn malformed_chunks_name_the_event() {
    let mut t = OpenAiToAnthropicStream::new("m");
    let err = t
        .feed(b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [1,\n\ndata: [DONE]\n\n")
        .unwrap_err();
    assert_eq!(err.path(), Some("event[1]"));
    let rest = String::from_utf8(t.feed(b"").unwrap().to_vec()).unwrap();
    let names: Vec<Value> = events(&rest).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(names.first().unwrap(), "message_start");
    assert_eq!(names.last().unwrap(), "message_stop");
    let mut t = OpenAiToAnthropicStream::new("m");
    let err = t
        .feed(b"data: {\"choices\":[{\"delta\":{\"content\":5}}]}\n\n")
        .unwrap_err();
    assert_eq!(err.path(), Some("event[0].choices[0].delta.content"));
}

#[test]
fn empty_stream_still_yields_a_message() {
    let (out, t) = run(b"data: [DONE]\n\n", &[]);
    let names: Vec<Value> = events(&out).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(
        names,
        vec!["message_start", "message_delta", "message_stop"]
    );
    assert!(!t.emitted_token());
    assert_eq!(t.usage(), None);
}
