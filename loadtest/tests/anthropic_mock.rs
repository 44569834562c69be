//! The mock's Anthropic endpoint (`POST /v1/messages`): wire format, rules and counters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use serde_json::{json, Value};
use tollgate_loadtest::mock::{MockConfig, MockServer, MockStats};

async fn start() -> MockServer {
    MockServer::start(SocketAddr::from(([127, 0, 0, 1], 0)), MockConfig::default())
        .await
        .unwrap()
}

fn post(server: &MockServer, body: &Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/v1/messages", server.base_url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(body)
}

/// `(event name, data)` of every event of an Anthropic SSE body.
fn events(body: &str) -> Vec<(String, Value)> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split_terminator("\n\n")
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            let name = name.strip_prefix("event: ").unwrap().to_owned();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str());
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn answers_messages_in_anthropic_format() {
    let server = start().await;
    let body = json!({"model": "claude-test", "max_tokens": 5, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Say hello to the world"}]});
    let resp = post(&server, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    let mut want = json!({"type": "message", "role": "assistant", "model": "claude-test",
        "content": [{"type": "text", "text": "lorem ipsum dolor sit amet"}],
        "stop_reason": "max_tokens", "stop_sequence": null,
        "usage": {"input_tokens": 15, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "output_tokens": 5}});
    want["id"] = v["id"].clone();
    assert_eq!(v, want);

    // cache_control: half the prompt is read from the cache.
    let cached = json!({"model": "m", "max_tokens": 2,
        "system": [{"type": "text", "text": "Long shared context here", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}]});
    let v: Value = post(&server, &cached)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["input_tokens"], 7);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 6);

    // A stop sequence cuts the answer.
    let stop = json!({"model": "m", "max_tokens": 8, "stop_sequences": ["sit"],
                      "messages": [{"role": "user", "content": "hi"}]});
    let v: Value = post(&server, &stop)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["content"][0]["text"], "lorem ipsum dolor");
    assert_eq!(
        (v["stop_reason"].as_str(), v["stop_sequence"].as_str()),
        (Some("stop_sequence"), Some("sit"))
    );
    assert_eq!(v["usage"]["output_tokens"], 3);

    assert_eq!(
        server.stats(),
        MockStats {
            requests: 3,
            stream_requests: 0,
            prompt_tokens: 15 + 13 + 5,
            completion_tokens: 5 + 2 + 3,
            http2_requests: 0,
        }
    );
    server.shutdown().await;
}

#[tokio::test]
async fn streams_the_real_event_sequence() {
    let server = start().await;
    let body = json!({"model": "claude-test", "max_tokens": 4, "stream": true,
                      "messages": [{"role": "user", "content": "one two"}]});
    let resp = post(&server, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let evs = events(&resp.text().await.unwrap());
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &evs[0].1["message"];
    assert_eq!(start["usage"]["input_tokens"], 6);
    assert_eq!(start["model"], "claude-test");
    let text: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "lorem ipsum dolor sit");
    assert_eq!(evs[8].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(evs[8].1["usage"]["output_tokens"], 4);
    assert_eq!(server.stats().stream_requests, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn weather_with_tools_calls_get_weather() {
    let server = start().await;
    let tools = json!([{"name": "get_weather", "description": "Weather",
                        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let body = json!({"model": "m", "max_tokens": 100, "tools": tools,
                      "messages": [{"role": "user", "content": "What is the weather in Paris?"}]});
    let v: Value = post(&server, &body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"][0],
        json!({"type": "text", "text": "Let me check the weather."})
    );
    let call = &v["content"][1];
    assert_eq!(
        (call["type"].as_str(), call["name"].as_str()),
        (Some("tool_use"), Some("get_weather"))
    );
    assert_eq!(call["input"], json!({"city": "Paris"}));
    assert!(call["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(v["usage"]["output_tokens"], 10);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let evs = events(
        &post(&server, &streamed)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let tool_start = evs
        .iter()
        .find(|(n, d)| n == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(tool_start.1["index"], 1);
    let args: String = evs
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let delta = evs.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    server.shutdown().await;
}

#[tokio::test]
async fn errors_are_anthropic_shaped_and_counted() {
    let server = start().await;
    let body =
        json!({"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", server.base_url());

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client
                .post(&url)
                .header("anthropic-version", "2023-06-01")
                .json(&body),
            401,
            "authentication_error",
        ),
        (
            client.post(&url).bearer_auth("k").json(&body),
            400,
            "invalid_request_error",
        ),
        (
            client.post(&url).header("x-api-key", "k").json(&body),
            400,
            "invalid_request_error",
        ),
        (
            post(&server, &body).header("x-mock-status", "429"),
            429,
            "rate_limit_error",
        ),
        (
            post(&server, &body).header("x-mock-status", "500"),
            500,
            "api_error",
        ),
        (
            post(&server, &body).header("x-mock-status", "nope"),
            400,
            "invalid_request_error",
        ),
        (
            post(
                &server,
                &json!({"model": "mock-status-529", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]}),
            ),
            529,
            "overloaded_error",
        ),
        (
            post(
                &server,
                &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            ),
            400,
            "invalid_request_error",
        ),
        (
            post(
                &server,
                &json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}),
            ),
            400,
            "invalid_request_error",
        ),
        (
            post(
                &server,
                &json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
            ),
            400,
            "invalid_request_error",
        ),
        (
            post(
                &server,
                &json!({"model": "m", "max_tokens": 1, "messages": []}),
            ),
            400,
            "invalid_request_error",
        ),
    ];
    let n = cases.len() as u64;
    for (req, status, kind) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        server.stats(),
        MockStats {
            requests: n,
            ..MockStats::default()
        }
    );

    // Recent official SDKs send the key as a bearer token.
    let resp = client
        .post(&url)
        .bearer_auth("sk-ant-test")
        .header("anthropic-version", "2026-10-21")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.shutdown().await;
}
