//! Streams captured from the mock upstream (`tollgate-mock`, `POST /v1/messages`) through the
//! translators, and stream round trips.

use serde_json::{json, Value};

use super::*;

/// `max_tokens: 6`, no tools: six text deltas, `max_tokens`.
const MOCK_TEXT: &str = include_str!("fixtures/mock_text_stream.sse");
/// Tools + "weather" + a `cache_control` system block: text, `get_weather` call, cached usage.
const MOCK_TOOL: &str = include_str!("fixtures/mock_tool_stream.sse");

fn to_openai(input: &[u8], cuts: &[usize]) -> (Vec<u8>, AnthropicToOpenAiStream) {
    let mut t = AnthropicToOpenAiStream::new("public", 7, true);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&t.feed(&input[start..cut]).unwrap());
        start = cut;
    }
    out.extend_from_slice(&t.finish().unwrap());
    (out, t)
}

/// What an OpenAI client assembles from a chunk stream.
#[derive(Debug, Default, PartialEq)]
struct OpenAiResult {
    text: String,
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
    usage: Option<Value>,
}

fn assemble_openai(body: &[u8]) -> OpenAiResult {
    let body = std::str::from_utf8(body).unwrap();
    let mut r = OpenAiResult::default();
    for event in body.split_terminator("\n\n") {
        let data = event.strip_prefix("data: ").unwrap();
        if data == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        if !v["usage"].is_null() {
            r.usage = Some(v["usage"].clone());
        }
        for c in v["choices"].as_array().unwrap() {
            r.text
                .push_str(c["delta"]["content"].as_str().unwrap_or_default());
            for tc in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let k = tc["index"].as_u64().unwrap() as usize;
                if r.calls.len() <= k {
                    r.calls.push(Default::default());
                }
                let call = &mut r.calls[k];
                call.0.push_str(tc["id"].as_str().unwrap_or_default());
                call.1
                    .push_str(tc["function"]["name"].as_str().unwrap_or_default());
                call.2
                    .push_str(tc["function"]["arguments"].as_str().unwrap_or_default());
            }
            if let Some(f) = c["finish_reason"].as_str() {
                r.finish = Some(f.to_owned());
            }
        }
    }
    r
}

/// The message an Anthropic client assembles from an event stream (as the SDK does).
fn assemble_anthropic(body: &[u8]) -> Value {
    let body = std::str::from_utf8(body).unwrap();
    let mut msg = Value::Null;
    let mut json_parts: Vec<String> = Vec::new();
    for event in body.split_terminator("\n\n") {
        let (_, data) = event.split_once("data: ").unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        let i = v["index"].as_u64().unwrap_or_default() as usize;
        match v["type"].as_str().unwrap() {
            "message_start" => msg = v["message"].clone(),
            "content_block_start" => {
                msg["content"]
                    .as_array_mut()
                    .unwrap()
                    .push(v["content_block"].clone());
                json_parts.push(String::new());
            }
            "content_block_delta" => match v["delta"]["type"].as_str().unwrap() {
                "text_delta" => {
                    let t = format!(
                        "{}{}",
                        msg["content"][i]["text"].as_str().unwrap(),
                        v["delta"]["text"].as_str().unwrap()
                    );
                    msg["content"][i]["text"] = json!(t);
                }
                _ => json_parts[i].push_str(v["delta"]["partial_json"].as_str().unwrap()),
            },
            "content_block_stop" if msg["content"][i]["type"] == "tool_use" => {
                msg["content"][i]["input"] = serde_json::from_str(&json_parts[i]).unwrap();
            }
            "message_delta" => {
                msg["stop_reason"] = v["delta"]["stop_reason"].clone();
                for (k, n) in v["usage"].as_object().unwrap() {
                    msg["usage"][k] = n.clone();
                }
            }
            _ => {}
        }
    }
    msg
}

#[test]
fn mock_text_stream_translates_at_every_split() {
    let input = MOCK_TEXT.as_bytes();
    let (whole, t) = to_openai(input, &[]);
    let r = assemble_openai(&whole);
    assert_eq!(
        r,
        OpenAiResult {
            text: "lorem ipsum dolor sit amet consectetur".into(),
            calls: vec![],
            finish: Some("length".into()),
            usage: Some(
                json!({"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14,
                               "prompt_tokens_details": {"cached_tokens": 0}})
            ),
        }
    );
    assert_eq!(
        t.usage().map(Tokens::from),
        Some(Tokens {
            prompt: 8,
            completion: 6,
            cached: 0,
            estimated: false
        })
    );
    assert!(t.emitted_token());
    for cut in 0..=input.len() {
        assert_eq!(to_openai(input, &[cut]).0, whole, "split at {cut}");
    }
    for step in [1, 2, 3, 5, 17, 64] {
        let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
        assert_eq!(to_openai(input, &cuts).0, whole, "every {step} bytes");
    }
}

#[test]
fn mock_tool_stream_translates_tool_calls_and_cached_usage() {
    let input = MOCK_TOOL.as_bytes();
    let (whole, t) = to_openai(input, &[]);
    let r = assemble_openai(&whole);
    assert_eq!(r.text, "Let me check the weather.");
    assert_eq!(r.calls.len(), 1);
    let (id, name, args) = &r.calls[0];
    assert!(id.starts_with("toolu_"));
    assert_eq!(name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(r.finish.as_deref(), Some("tool_calls"));
    assert_eq!(
        t.usage(),
        Some(TokenUsage {
            prompt_tokens: 19,
            completion_tokens: 10,
            cached_tokens: 9,
            cache_creation_tokens: 0
        })
    );
    let cuts: Vec<usize> = (1..input.len()).collect();
    assert_eq!(to_openai(input, &cuts).0, whole);
}

#[test]
fn streams_round_trip_through_openai() {
    for input in [MOCK_TEXT, MOCK_TOOL] {
        let original = assemble_anthropic(input.as_bytes());
        let (openai, _) = to_openai(input.as_bytes(), &[]);
        let mut back = OpenAiToAnthropicStream::new("claude-mock");
        let mut out = back.feed(&openai).unwrap().to_vec();
        out.extend_from_slice(&back.finish().unwrap());
        let mut again = assemble_anthropic(&out);
        // The OpenAI leg reports the message id and usage, not `stop_sequence`.
        assert_eq!(again["id"], original["id"]);
        again["usage"]["output_tokens"] = original["usage"]["output_tokens"].clone();
        let strip = |mut v: Value| {
            v.as_object_mut().unwrap().remove("usage");
            v
        };
        assert_eq!(strip(again.clone()), strip(original.clone()));
        let (u1, u2) = (
            TokenUsage::from_anthropic(&again["usage"]),
            TokenUsage::from_anthropic(&original["usage"]),
        );
        assert_eq!(
            (u1.prompt_tokens, u1.cached_tokens),
            (u2.prompt_tokens, u2.cached_tokens)
        );
        assert_eq!(
            back.usage().unwrap().completion_tokens,
            TokenUsage::from_anthropic(&original["usage"]).completion_tokens
        );
    }
}

#[test]
fn usage_conversions() {
    let a = json!({"input_tokens": 3, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 5, "output_tokens": 6});
    let u = TokenUsage::from_anthropic(&a);
    assert_eq!(
        u,
        TokenUsage {
            prompt_tokens: 12,
            completion_tokens: 6,
            cached_tokens: 4,
            cache_creation_tokens: 5
        }
    );
    assert_eq!(u.anthropic_json(), a);
    assert_eq!(
        u.openai_json(),
        json!({"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18, "prompt_tokens_details": {"cached_tokens": 4}})
    );
    assert_eq!(TokenUsage::from_openai(&u.openai_json()).cached_tokens, 4);
    assert_eq!(
        TokenUsage::from_anthropic(&json!({})),
        TokenUsage::default()
    );
    assert_eq!(
        Tokens::from(u),
        Tokens {
            prompt: 12,
            completion: 6,
            cached: 4,
            estimated: false
        }
    );
}

#[test]
fn anthropic_responses_translate() {
    let cases: Vec<(&str, Value, Value, &str)> = vec![
        (
            "text",
            json!([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]),
            json!("Hello there"),
            "end_turn",
        ),
        (
            "thinking dropped",
            json!([{"type": "thinking", "thinking": "t"}, {"type": "text", "text": "A"}]),
            json!("A"),
            "max_tokens",
        ),
        (
            "tool only",
            json!([{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1]}}]),
            Value::Null,
            "tool_use",
        ),
        ("empty", json!([]), json!(""), "stop_sequence"),
    ];
    for (name, content, want_content, stop) in cases {
        let resp = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                          "content": content, "stop_reason": stop, "stop_sequence": null,
                          "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 2}});
        let v = anthropic_to_openai_response(&resp, "public", 99).unwrap();
        assert_eq!(v["id"], "msg_1", "{name}");
        assert_eq!(
            (
                v["object"].as_str(),
                v["model"].as_str(),
                v["created"].as_u64()
            ),
            (Some("chat.completion"), Some("public"), Some(99))
        );
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], want_content, "{name}");
        assert_eq!(
            v["choices"][0]["finish_reason"],
            finish_reason_from_anthropic(stop)
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 15, "completion_tokens": 2, "total_tokens": 17,
                                      "prompt_tokens_details": {"cached_tokens": 5}})
        );
        if name == "tool only" {
            assert_eq!(
                msg["tool_calls"],
                json!([{"id": "t", "type": "function",
                                                  "function": {"name": "f", "arguments": "{\"a\":[1]}"}}])
            );
        } else {
            assert!(msg.get("tool_calls").is_none());
        }
    }
    let errs: Vec<(Value, &str)> = vec![
        (json!({"type": "error", "error": {}}), "type"),
        (json!({"type": "message"}), "content"),
        (json!({"content": [{"text": "x"}]}), "content[0].type"),
        (
            json!({"content": [{"type": "tool_use", "name": "f"}]}),
            "content[0].id",
        ),
        (json!({"content": [], "usage": 3}), "usage"),
    ];
    for (resp, path) in errs {
        assert_eq!(
            anthropic_to_openai_response(&resp, "m", 0)
                .unwrap_err()
                .path(),
            Some(path),
            "{resp}"
        );
    }
}
