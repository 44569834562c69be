//! Tests of [`openai_to_anthropic_request`].

use serde_json::{json, Value};

use super::*;

fn base(extra: Value) -> Value {
    let mut req = json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        req[k] = v;
    }
    req
}

#[test]
fn translates_requests() {
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "minimal: default max_tokens, string content",
            base(json!({})),
            json!({"model": "claude", "max_tokens": DEFAULT_MAX_TOKENS,
                   "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "system and developer messages are hoisted, sampling fields mapped",
            json!({"model": "claude",
                   "messages": [
                       {"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "hi"},
                       {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                   ],
                   "max_tokens": 10, "max_completion_tokens": 20, "temperature": 1.7,
                   "top_p": 0.9, "stop": "END", "stream": true, "user": "u-42",
                   "stream_options": {"include_usage": true}, "seed": 3,
                   "presence_penalty": 0.5, "metadata": {"team": "a"}, "n": 1}),
            json!({"model": "claude",
                   "system": [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "No emoji."}],
                   "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 20, "temperature": 1.0, "top_p": 0.9,
                   "stop_sequences": ["END"], "stream": true,
                   "metadata": {"user_id": "u-42"}}),
        ),
        (
            "multi-part user content with images and cache_control",
            base(json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]}], "stop": ["a", "b"]})),
            json!({"model": "claude", "max_tokens": DEFAULT_MAX_TOKENS,
            "stop_sequences": ["a", "b"],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]}]}),
        ),
        (
            "tools, tool_choice, tool calls and tool results",
            base(json!({
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}},
                    ]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "call_2",
                     "content": [{"type": "text", "text": "rainy"}]},
                    {"role": "user", "content": "Thanks"},
                ],
                "tools": [
                    {"type": "function", "function": {"name": "get_weather",
                        "description": "Current weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                        "strict": true}},
                    {"type": "function", "function": {"name": "noop"}},
                ],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": false,
            })),
            json!({"model": "claude", "max_tokens": DEFAULT_MAX_TOKENS,
                "messages": [
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    {"role": "assistant", "content": [
                        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                        {"type": "tool_result", "tool_use_id": "call_2",
                         "content": [{"type": "text", "text": "rainy"}]},
                        {"type": "text", "text": "Thanks"},
                    ]},
                ],
                "tools": [
                    {"name": "get_weather", "description": "Current weather",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"name": "noop", "input_schema": {"type": "object", "properties": {}}},
                ],
                "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true}}),
        ),
        (
            "assistant text with refusal part, consecutive user turns merged",
            base(json!({"messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b", "name": "bob"},
                {"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "refusal", "refusal": "no"}]},
                {"role": "assistant", "content": null},
            ]})),
            json!({"model": "claude", "max_tokens": DEFAULT_MAX_TOKENS, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "no"}]},
            ]}),
        ),
        (
            "tool_choice strings; no tools drops tool_choice",
            base(json!({"tool_choice": "required"})),
            json!({"model": "claude", "max_tokens": DEFAULT_MAX_TOKENS,
                   "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ];
    for (name, input, want) in cases {
        let got = openai_to_anthropic_request(&input).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn maps_tool_choice_variants() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let cases: Vec<(Value, Option<bool>, Option<Value>)> = vec![
        (Value::Null, None, None),
        (json!("auto"), None, Some(json!({"type": "auto"}))),
        (json!("none"), Some(false), Some(json!({"type": "none"}))),
        (json!("required"), None, Some(json!({"type": "any"}))),
        (
            Value::Null,
            Some(false),
            Some(json!({"type": "auto", "disable_parallel_tool_use": true})),
        ),
        (json!("auto"), Some(true), Some(json!({"type": "auto"}))),
    ];
    for (choice, parallel, want) in cases {
        let mut req = base(json!({"tools": tools, "tool_choice": choice}));
        if let Some(p) = parallel {
            req["parallel_tool_calls"] = json!(p);
        }
        let got = openai_to_anthropic_request(&req).unwrap();
        assert_eq!(
            got.get("tool_choice").cloned(),
            want,
            "{choice} {parallel:?}"
        );
    }
}

#[test]
fn drops_openai_only_fields() {
    let mut req = base(json!({}));
    for f in DROPPED_OPENAI_FIELDS {
        req[*f] = json!(null);
    }
    req["logprobs"] = json!(true);
    req["response_format"] = json!({"type": "json_object"});
    req["some_future_field"] = json!(1);
    let got = openai_to_anthropic_request(&req).unwrap();
    assert_eq!(
        got,
        json!({"model": "claude", "max_tokens": DEFAULT_MAX_TOKENS,
               "messages": [{"role": "user", "content": "hi"}]})
    );
    assert!(include_usage(
        &json!({"stream_options": {"include_usage": true}})
    ));
    assert!(!include_usage(&json!({"stream": true})));
}

#[test]
fn malformed_requests_name_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!([1]), "(body)"),
        (json!({"messages": []}), "model"),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": {}}), "messages"),
        (json!({"model": "m", "messages": [1]}), "messages[0]"),
        (
            json!({"model": "m", "messages": [{"content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "bot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "function", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "input_audio"}]}]}),
            "messages[1].content[1].type",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [{"text": "b"}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!({"model": "m", "messages": [{"role": "system", "content": [
                {"type": "image_url", "image_url": {"url": "https://x"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
                {"function": {"name": "f"}}]}]}),
            "messages[0].tool_calls[0].id",
        ),
        (
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"model": "m", "messages": [], "max_tokens": -1}),
            "max_tokens",
        ),
        (
            json!({"model": "m", "messages": [], "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "m", "messages": [], "stop": [1]}),
            "stop[0]",
        ),
        (json!({"model": "m", "messages": [], "n": 2}), "n"),
        (
            json!({"model": "m", "messages": [], "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"model": "m", "messages": [], "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": "sometimes"}),
            "tool_choice",
        ),
    ];
    for (input, path) in cases {
        let err = openai_to_anthropic_request(&input).expect_err(&input.to_string());
        assert_eq!(err.path(), Some(path), "{input} → {err}");
        assert!(err.to_string().contains(path), "{err}");
    }
}
