//! Tests of [`AnthropicToOpenAiStream`].

use serde_json::{json, Value};

use super::*;

const TOOL_STREAM: &str = include_str!("fixtures/anthropic_tool_stream.sse");

/// Feeds `input` in pieces cut at `cuts`, then finishes.
fn run(input: &[u8], cuts: &[usize], include_usage: bool) -> (String, AnthropicToOpenAiStream) {
    let mut t = AnthropicToOpenAiStream::new("public-model", 1_700_000_000, include_usage);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&t.feed(&input[start..cut]).unwrap());
        start = cut;
    }
    out.extend_from_slice(&t.finish().unwrap());
    (String::from_utf8(out).unwrap(), t)
}

/// The `data:` payloads of an OpenAI SSE body.
fn datas(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split_terminator("\n\n")
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("{e:?}"))
                .to_owned()
        })
        .collect()
}

fn deltas(body: &str) -> Vec<Value> {
    datas(body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect()
}

#[test]
fn translates_text_tool_calls_and_usage() {
    let (out, t) = run(TOOL_STREAM.as_bytes(), &[], true);
    let chunks = deltas(&out);
    let delta = |c: &Value| c["choices"][0]["delta"].clone();
    let want = vec![
        json!({"role": "assistant", "content": ""}),
        json!({"content": "Okay, let's check"}),
        json!({"content": " the weather: é✓"}),
        json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisco, CA\"}"}}]}),
        json!({}),
    ];
    let got: Vec<Value> = chunks[..chunks.len() - 1].iter().map(delta).collect();
    assert_eq!(got, want);
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "public-model");
        assert_eq!(c["created"], 1_700_000_000);
    }
    let finish: Vec<Value> = chunks
        .iter()
        .map(|c| c["choices"][0]["finish_reason"].clone())
        .collect();
    assert_eq!(
        finish[..finish.len() - 2]
            .iter()
            .filter(|f| !f.is_null())
            .count(),
        0
    );
    assert_eq!(finish[finish.len() - 2], "tool_calls");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 582, "completion_tokens": 89, "total_tokens": 671,
               "prompt_tokens_details": {"cached_tokens": 100}})
    );
    assert!(out.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        t.usage(),
        Some(TokenUsage {
            prompt_tokens: 582,
            completion_tokens: 89,
            cached_tokens: 100,
            cache_creation_tokens: 10
        })
    );
    assert!(t.emitted_token());
    assert!(t.is_done());
    assert_eq!(t.finish_reason(), Some("tool_calls"));
    assert!(t.upstream_error().is_none());
}

#[test]
fn any_split_gives_the_same_output() {
    let input = TOOL_STREAM.as_bytes();
    let (whole, _) = run(input, &[], false);
    assert!(!whole.contains("\"usage\""), "no usage chunk unless asked");
    for cut in 0..=input.len() {
        let (split, t) = run(input, &[cut], false);
        assert_eq!(split, whole, "split at {cut}");
        assert_eq!(t.usage().map(|u| u.completion_tokens), Some(89));
    }
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run(input, &bytewise, false).0, whole);
    let crlf = TOOL_STREAM.replace('\n', "\r\n");
    assert_eq!(run(crlf.as_bytes(), &[7, 300], false).0, whole);
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    let cases = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ];
    for (stop, finish) in cases {
        let stream = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"usage\":{{\"input_tokens\":3,\"output_tokens\":1}}}}}}\n\n\
             data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{stop}\"}},\"usage\":{{\"output_tokens\":5}}}}\n\n\
             data: {{\"type\":\"message_stop\"}}\n\n"
        );
        let (out, t) = run(stream.as_bytes(), &[], true);
        let chunks = deltas(&out);
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], finish, "{stop}");
        assert_eq!(chunks[2]["usage"]["total_tokens"], 8);
        assert!(!t.emitted_token());
    }
}

#[test]
fn message_delta_input_usage_overrides_message_start() {
    let stream = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}\n\n\
                  data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"input_tokens\":6,\"output_tokens\":5}}\n\n\
                  data: {\"type\":\"message_stop\"}\n\n";
    let (_, t) = run(stream.as_bytes(), &[], false);
    assert_eq!(
        t.usage(),
        Some(TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 4,
            cache_creation_tokens: 0
        })
    );
}

#[test]
fn error_event_becomes_openai_error_without_done() {
    let stream = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3}}}\n\n\
                  event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
                  event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n\
                  event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n\
                  data: {\"type\":\"message_stop\"}\n\n";
    let (out, t) = run(stream.as_bytes(), &[], true);
    let events = datas(&out);
    assert_eq!(events.len(), 3);
    assert!(!out.contains("[DONE]"));
    let err: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(
        err,
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": "overloaded"}})
    );
    assert_eq!(t.upstream_error().unwrap()["type"], "overloaded_error");
    assert!(t.is_done() && t.emitted_token());
}

#[test]
fn truncated_and_malformed_streams_fail() {
    let mut t = AnthropicToOpenAiStream::new("m", 0, false);
    let start = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\n";
    assert!(!t.feed(start.as_bytes()).unwrap().is_empty());
    assert_eq!(
        t.finish().unwrap_err(),
        TranslateError::Truncated("message_stop")
    );
    // A last event without its blank line, then the end: translated, kept for the client.
    let mut t = AnthropicToOpenAiStream::new("m", 0, false);
    t.feed(start.as_bytes()).unwrap();
    let delta = "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"last words\"}}";
    assert!(
        t.feed(delta.as_bytes()).unwrap().is_empty(),
        "waits for its blank line"
    );
    assert!(t.finish().is_err());
    let kept = t.take_pending();
    assert!(
        String::from_utf8_lossy(&kept).contains("last words"),
        "{kept:?}"
    );

    // A bad event is reported with its index; output before it is not lost, later events
    // still translate.
    let mut t = AnthropicToOpenAiStream::new("m", 0, false);
    let input = format!(
        "{start}data: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"a\"}}}}\n\n\
         data: {{not json\n\n\
         data: {{\"type\":\"content_block_delta\",\"delta\":{{\"type\":\"text_delta\",\"text\":\"b\"}}}}\n\n\
         data: {{\"type\":\"message_stop\"}}\n\n"
    );
    let err = t.feed(input.as_bytes()).unwrap_err();
    assert_eq!(err.path(), Some("event[2]"));
    let err = t.feed(b"").unwrap_err();
    assert_eq!(err, TranslateError::Missing("event[3].index".into()));
    let rest = String::from_utf8(t.feed(b"").unwrap().to_vec()).unwrap();
    let chunks = deltas(&rest);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content": "a"}));
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert!(rest.ends_with("data: [DONE]\n\n"));
    assert!(t
        .feed(b"data: {\"type\":\"message_stop\"}\n\n")
        .unwrap()
        .is_empty());
    assert!(t.finish().unwrap().is_empty());
}

#[test]
fn last_event_without_blank_line_is_translated_at_finish() {
    let stream = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\ndata: {\"type\":\"message_stop\"}";
    let (out, t) = run(stream.as_bytes(), &[], false);
    assert!(out.ends_with("data: [DONE]\n\n"));
    assert_eq!(t.usage(), Some(TokenUsage::default()));
}
