//! Unit tests of the mock's Anthropic planning rules.

use serde_json::{json, Value};

use super::*;

fn plan_of(body: Value) -> Plan {
    let req: MessagesRequest = serde_json::from_value(body.clone()).unwrap();
    plan(&req, &body, 16, 4096)
}

#[test]
fn plans_follow_the_token_rules() {
    let cases: Vec<(&str, Value, u32, &str, u64, u64)> = vec![
        (
            "limit reached",
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "one two three"}]}),
            5,
            "max_tokens",
            7,
            0,
        ),
        (
            "system and blocks count, cache_control halves",
            json!({"model": "m", "max_tokens": 3,
            "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a b c"},
                                             {"type": "image", "source": {"type": "base64"}}]},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "sunny warm"},
                                             {"type": "tool_result", "tool_use_id": "u",
                                              "content": [{"type": "text", "text": "wet"}]}]},
            ]}),
            // system 2+4, user 3+4, assistant 1+4, tool results 3+4 = 25.
            3,
            "max_tokens",
            13,
            12,
        ),
        (
            "cap stops first",
            json!({"model": "m", "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}),
            4096,
            "end_turn",
            5,
            0,
        ),
        (
            "stop sequence ends before the word completing it",
            json!({"model": "m", "max_tokens": 6, "stop_sequences": ["zzz", "m do"],
                   "messages": [{"role": "user", "content": "hi"}]}),
            2,
            "stop_sequence",
            5,
            0,
        ),
    ];
    for (name, body, tokens, stop, input, cached) in cases {
        let p = plan_of(body);
        assert_eq!(
            (
                p.tokens,
                p.stop_reason,
                p.input_tokens,
                p.cached_tokens,
                p.output_tokens
            ),
            (tokens, stop, input, cached, u64::from(tokens)),
            "{name}"
        );
    }
    let p = plan_of(
        json!({"model": "m", "max_tokens": 6, "stop_sequences": ["m do"],
                           "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(p.stop_sequence.as_deref(), Some("m do"));
    assert_eq!(p.text(), "lorem ipsum");
}

#[test]
fn weather_with_tools_plans_a_tool_call() {
    let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let p = plan_of(json!({"model": "m", "max_tokens": 50, "tools": tools,
                           "messages": [{"role": "user", "content": [{"type": "text", "text": "What's the WEATHER?"}]}]}));
    assert!(p.tool);
    assert_eq!(
        (p.stop_reason, p.output_tokens),
        ("tool_use", TOOL_USE_OUTPUT_TOKENS)
    );
    assert_eq!(p.text(), TOOL_USE_TEXT);
    // No tools, or a tool result as the last user turn: a plain answer.
    let p = plan_of(json!({"model": "m", "max_tokens": 2,
                           "messages": [{"role": "user", "content": "weather?"}]}));
    assert!(!p.tool);
    let p = plan_of(
        json!({"model": "m", "max_tokens": 2, "tools": tools, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "sunny"}]},
        ]}),
    );
    assert!(!p.tool);
}

#[test]
fn stream_events_are_in_anthropic_order() {
    let p = plan_of(json!({"model": "m", "max_tokens": 50,
                           "tools": [{"name": "get_weather", "input_schema": {}}],
                           "messages": [{"role": "user", "content": "weather in Paris"}]}));
    let events = stream_events("msg_1", "m", &p);
    let names: Vec<String> = events
        .iter()
        .map(|(_, b)| {
            let text = std::str::from_utf8(b).unwrap();
            assert!(text.ends_with("\n\n"));
            text.lines()
                .next()
                .unwrap()
                .trim_start_matches("event: ")
                .to_owned()
        })
        .collect();
    let mut want = vec!["message_start", "content_block_start", "ping"];
    want.extend(["content_block_delta"; 5]);
    want.extend(["content_block_stop", "content_block_start"]);
    want.extend(["content_block_delta"; 3]);
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    let delayed = events.iter().filter(|(d, _)| *d).count();
    assert_eq!(delayed, 5 + 3 + 1);
}

#[test]
fn error_bodies_are_anthropic_shaped() {
    let cases = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
    ];
    for (code, kind) in cases {
        let v = error_body(StatusCode::from_u16(code).unwrap(), "m");
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"], json!({"type": kind, "message": "m"}));
        assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    }
}
