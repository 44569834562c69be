//! Tests of [`anthropic_to_openai_request`] and [`openai_to_anthropic_response`].

use serde_json::{json, Value};

use super::super::{anthropic_to_openai_response, openai_to_anthropic_request};
use super::*;

#[test]
fn translates_anthropic_requests() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "minimal",
            json!({"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "system blocks, sampling, stream, metadata, dropped fields",
            json!({"model": "gpt", "max_tokens": 100,
                   "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                              {"type": "text", "text": "No emoji."}],
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                   "temperature": 0.2, "top_p": 0.8, "top_k": 5, "stop_sequences": ["END"],
                   "stream": true, "metadata": {"user_id": "u-1"},
                   "thinking": {"type": "enabled", "budget_tokens": 1024}, "service_tier": "auto"}),
            json!({"model": "gpt", "max_tokens": 100,
                   "messages": [{"role": "system", "content": "Be brief.\nNo emoji."},
                                {"role": "user", "content": "hi"}],
                   "temperature": 0.2, "top_p": 0.8, "stop": ["END"], "stream": true,
                   "stream_options": {"include_usage": true}, "user": "u-1"}),
        ),
        (
            "images, tools, tool use and tool results",
            json!({"model": "gpt", "max_tokens": 50, "system": "sys",
                   "messages": [
                       {"role": "user", "content": [
                           {"type": "text", "text": "What is this, and the weather?"},
                           {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                           {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}},
                       ]},
                       {"role": "assistant", "content": [
                           {"type": "thinking", "thinking": "hmm", "signature": "s"},
                           {"type": "text", "text": "Checking."},
                           {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                       ]},
                       {"role": "user", "content": [
                           {"type": "tool_result", "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "sunny"}, {"type": "text", "text": "20C"}]},
                           {"type": "text", "text": "Thanks!"},
                       ]},
                       {"role": "assistant", "content": [
                           {"type": "tool_use", "id": "toolu_2", "name": "noop", "input": {}}]},
                       {"role": "user", "content": [
                           {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true, "content": "failed"}]},
                   ],
                   "tools": [{"name": "get_weather", "description": "Weather",
                              "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                              "cache_control": {"type": "ephemeral"}},
                             {"type": "custom", "name": "noop", "input_schema": {"type": "object"}}],
                   "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true}}),
            json!({"model": "gpt", "max_tokens": 50,
                   "messages": [
                       {"role": "system", "content": "sys"},
                       {"role": "user", "content": [
                           {"type": "text", "text": "What is this, and the weather?"},
                           {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                           {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}},
                       ]},
                       {"role": "assistant", "content": "Checking.", "tool_calls": [
                           {"id": "toolu_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                       {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny\n20C"},
                       {"role": "user", "content": "Thanks!"},
                       {"role": "assistant", "content": null, "tool_calls": [
                           {"id": "toolu_2", "type": "function", "function": {"name": "noop", "arguments": "{}"}}]},
                       {"role": "tool", "tool_call_id": "toolu_2", "content": "failed"},
                   ],
                   "tools": [
                       {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                       {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
                   ],
                   "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                   "parallel_tool_calls": false}),
        ),
    ];
    for (name, input, want) in cases {
        let got = anthropic_to_openai_request(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
    for (choice, want) in [
        ("auto", json!("auto")),
        ("any", json!("required")),
        ("none", json!("none")),
    ] {
        let req = json!({"model": "m", "max_tokens": 1, "messages": [],
                         "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": choice}});
        assert_eq!(
            anthropic_to_openai_request(&req).unwrap()["tool_choice"],
            want
        );
    }
    for f in DROPPED_ANTHROPIC_FIELDS {
        let req = json!({"model": "m", "max_tokens": 1, "messages": [], *f: {"x": 1}});
        assert_eq!(
            anthropic_to_openai_request(&req).unwrap(),
            json!({"model": "m", "max_tokens": 1, "messages": []})
        );
    }
}

#[test]
fn malformed_anthropic_requests_name_the_field() {
    let ok = |extra: Value| {
        let mut r = json!({"model": "m", "max_tokens": 1, "messages": []});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            r[k] = v;
        }
        r
    };
    let cases: Vec<(Value, &str)> = vec![
        (json!({"max_tokens": 1, "messages": []}), "model"),
        (json!({"model": "m", "messages": []}), "max_tokens"),
        (
            ok(json!({"messages": [{"role": "system", "content": "x"}]})),
            "messages[0].role",
        ),
        (
            ok(json!({"messages": [{"role": "user"}]})),
            "messages[0].content",
        ),
        (
            ok(json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]})),
            "messages[0].content[0].type",
        ),
        (
            ok(
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
            ),
            "messages[0].content[0].source.type",
        ),
        (
            ok(
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                "content": [{"type": "image"}]}]}]}),
            ),
            "messages[0].content[0].content[0].type",
        ),
        (
            ok(json!({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]})),
            "messages[0].content[0].tool_use_id",
        ),
        (
            ok(
                json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "name": "f"}]}]}),
            ),
            "messages[0].content[0].id",
        ),
        (ok(json!({"system": 3})), "system"),
        (ok(json!({"system": [{"type": "image"}]})), "system[0].type"),
        (
            ok(json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]})),
            "tools[0].type",
        ),
        (
            ok(json!({"tools": [{"name": "f"}]})),
            "tools[0].input_schema",
        ),
        (
            ok(json!({"tool_choice": {"type": "maybe"}})),
            "tool_choice.type",
        ),
        (ok(json!({"metadata": {"user_id": 5}})), "metadata.user_id"),
    ];
    for (input, path) in cases {
        let err = anthropic_to_openai_request(&input).expect_err(&input.to_string());
        assert_eq!(err.path(), Some(path), "{input} → {err}");
    }
}

#[test]
fn translates_openai_responses() {
    let cases: Vec<(&str, Value, Value, Value)> = vec![
        (
            "text, stop, cached usage",
            json!({"content": "Hello!"}),
            json!("stop"),
            json!({"content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
                   "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 5}}),
        ),
        (
            "length",
            json!({"content": "Hel"}),
            json!("length"),
            json!({"content": [{"type": "text", "text": "Hel"}], "stop_reason": "max_tokens",
                   "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 5}}),
        ),
        (
            "tool calls",
            json!({"content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": ""}}]}),
            json!("tool_calls"),
            json!({"content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "noop", "input": {}}],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 5}}),
        ),
        (
            "content filter",
            json!({"content": ""}),
            json!("content_filter"),
            json!({"content": [], "stop_reason": "refusal",
                   "usage": {"input_tokens": 8, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 5}}),
        ),
    ];
    for (name, message, finish, want) in cases {
        let mut message = message;
        message["role"] = json!("assistant");
        let resp = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
                          "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                          "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                                    "prompt_tokens_details": {"cached_tokens": 4}}});
        let got = openai_to_anthropic_response(&resp, "public").unwrap();
        let mut full = json!({"id": "chatcmpl-1", "type": "message", "role": "assistant", "model": "public",
                              "stop_sequence": null});
        for (k, v) in want.as_object().cloned().unwrap_or_default() {
            full[k] = v;
        }
        assert_eq!(got, full, "{name}");
    }
    let bad = json!({"choices": [{"message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}}]});
    assert_eq!(
        openai_to_anthropic_response(&bad, "m").unwrap_err().path(),
        Some("choices[0].message.tool_calls[0].function.arguments")
    );
    assert_eq!(
        openai_to_anthropic_response(&json!({"choices": []}), "m")
            .unwrap_err()
            .path(),
        Some("choices[0]")
    );
    assert_eq!(
        openai_to_anthropic_response(&json!({}), "m")
            .unwrap_err()
            .path(),
        Some("choices")
    );
}

#[test]
fn round_trips_preserve_the_conversation() {
    let openai = json!({"model": "m", "max_tokens": 7,
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        "tools": [{"type": "function", "function": {"name": "w", "description": "d",
                   "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": "required", "stop": ["x"], "temperature": 0.5, "user": "u"});
    let there = openai_to_anthropic_request(&openai).unwrap();
    let back = anthropic_to_openai_request(&there).unwrap();
    assert_eq!(back, openai);

    let anthropic = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "pub",
        "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2, "output_tokens": 4}});
    let openai_resp = anthropic_to_openai_response(&anthropic, "pub", 5).unwrap();
    assert_eq!(
        openai_to_anthropic_response(&openai_resp, "pub").unwrap(),
        anthropic
    );
}
