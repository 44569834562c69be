//! The load generator against the mock upstream, and the mock's wire format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_loadtest::loadgen::{run, LoadConfig};
use tollgate_loadtest::mock::{MockConfig, MockServer, MockStats};

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start() -> MockServer {
    MockServer::start(local(), MockConfig::default())
        .await
        .unwrap()
}

fn chat_url(server: &MockServer) -> String {
    format!("{}/v1/chat/completions", server.base_url())
}

/// Data of every SSE event of a body.
fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("\n\n"), "{body:?}");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {e:?}"))
                .to_owned()
        })
        .collect()
}

fn json_events(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test]
async fn loadgen_token_sums_match_mock_stats() {
    let server = MockServer::start(
        local(),
        MockConfig {
            latency_ms: 2,
            chunk_delay_ms: 1,
            ..MockConfig::default()
        },
    )
    .await
    .unwrap();
    let prompt = "Tell me three facts about toll roads";
    let cfg = LoadConfig {
        base_url: server.base_url(),
        api_key: Some("ignored-by-mock".into()),
        model: "gpt-4o-mini".into(),
        requests: 50,
        concurrency: 8,
        stream_share: 0.3,
        max_tokens: 12,
        prompt: prompt.into(),
        include_usage: true,
        metadata: Some(json!({"team": "qa", "run": 1})),
        timeout: Duration::from_secs(20),
    };
    let report = run(cfg).await.unwrap();
    let stats = server.stats();

    assert_eq!(report.sent, 50);
    assert_eq!(report.ok, 50, "{}", report.to_text());
    assert_eq!(report.errors, 0);
    assert_eq!(report.transport_errors, 0);
    assert_eq!(report.stream_sent, 15);
    assert_eq!(report.streamed_ok, 15);
    assert_eq!(report.status_counts.get(&200), Some(&50));
    assert_eq!(report.status_counts.len(), 1);

    assert_eq!(report.prompt_tokens, stats.prompt_tokens);
    assert_eq!(report.completion_tokens, stats.completion_tokens);
    assert_eq!(
        stats,
        MockStats {
            requests: 50,
            stream_requests: 15,
            prompt_tokens: 50 * (7 + 4),
            completion_tokens: 50 * 12,
            http2_requests: 0,
        }
    );

    assert_eq!(report.latency.count, 50);
    assert!(report.latency.p50_ms >= 2.0, "{:?}", report.latency);
    assert!(report.latency.max_ms >= report.latency.p99_ms);
    assert_eq!(report.ttft.count, 15);
    assert!(report.rps > 0.0);
    assert!(report.to_text().contains("sent 50"));

    server.shutdown().await;
}

#[tokio::test]
async fn stream_without_usage_is_counted_by_mock_only() {
    let server = start().await;
    let report = run(LoadConfig {
        base_url: format!("{}/v1", server.base_url()),
        requests: 10,
        concurrency: 3,
        stream_share: 1.0,
        max_tokens: 5,
        include_usage: false,
        ..LoadConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(report.streamed_ok, 10);
    assert_eq!(report.prompt_tokens, 0);
    assert_eq!(report.completion_tokens, 0);
    assert_eq!(server.stats().completion_tokens, 50);
    assert_eq!(server.stats().stream_requests, 10);
}

#[tokio::test]
async fn status_override_returns_openai_error() {
    let server = start().await;
    let client = reqwest::Client::new();
    for code in [500u16, 429, 503] {
        let resp = client
            .post(chat_url(&server))
            .header("x-mock-status", code.to_string())
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code);
        let body: Value = resp.json().await.unwrap();
        let err = &body["error"];
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(err["type"].is_string());
        assert!(err.as_object().unwrap().contains_key("code"));
    }
    let stats = server.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.prompt_tokens, 0);
    assert_eq!(stats.completion_tokens, 0);
}

#[tokio::test]
async fn bad_json_and_unknown_paths_get_openai_errors() {
    let server = start().await;
    let client = reqwest::Client::new();
    for body in [
        "{not json",
        r#"{"model":"m"}"#,
        r#"{"model":"m","messages":[],"max_tokens":"x"}"#,
    ] {
        let resp = client
            .post(chat_url(&server))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let resp = client
        .post(chat_url(&server))
        .header("x-mock-latency-ms", "soon")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    let resp = client
        .get(format!("{}/v2/nothing", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"].is_string());
    assert_eq!(server.stats().completion_tokens, 0);
}

#[tokio::test]
async fn non_stream_completion_shape() {
    let server = start().await;
    let client = reqwest::Client::new();
    let v: Value = client
        .post(chat_url(&server))
        .bearer_auth("whatever")
        .json(&json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [
                    {"type": "text", "text": "describe this"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
                ]}
            ],
            "max_tokens": 3
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "lorem ipsum dolor");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 2 + 4 + 2 + 4, "completion_tokens": 3, "total_tokens": 15})
    );

    // No limit: default completion length, natural stop.
    let v: Value = client
        .post(chat_url(&server))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 16);
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        16
    );
}

async fn stream_body(server: &MockServer, include_usage: Option<bool>) -> (String, String) {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "count to four"}],
        "max_tokens": 4,
        "stream": true,
    });
    if let Some(inc) = include_usage {
        body["stream_options"] = json!({ "include_usage": inc });
    }
    let resp = reqwest::Client::new()
        .post(chat_url(server))
        .header("x-mock-chunk-delay-ms", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    (ctype, resp.text().await.unwrap())
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let server = start().await;
    for inc in [None, Some(false)] {
        let (ctype, body) = stream_body(&server, inc).await;
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        let chunks = json_events(&sse_events(&body));
        // role + 4 tokens + finish
        assert_eq!(chunks.len(), 6, "{body}");
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert!(c.get("usage").is_none(), "{c}");
            assert_eq!(c["choices"].as_array().unwrap().len(), 1);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "lorem ipsum dolor sit");
        assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
        assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
        let ids: std::collections::HashSet<_> =
            chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 1);
    }
    let stats = server.stats();
    assert_eq!(stats.stream_requests, 2);
    assert_eq!(stats.completion_tokens, 8);
    assert_eq!(stats.prompt_tokens, 2 * (3 + 4));
}

#[tokio::test]
async fn stream_with_include_usage_has_exactly_one_usage_chunk() {
    let server = start().await;
    let (_, body) = stream_body(&server, Some(true)).await;
    let chunks = json_events(&sse_events(&body));
    assert_eq!(chunks.len(), 7, "{body}");
    let usage_chunks: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"].as_array().unwrap().is_empty())
        .collect();
    assert_eq!(usage_chunks.len(), 1);
    assert_eq!(
        usage_chunks[0]["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11})
    );
    // It is the last chunk before [DONE]; the others carry `usage: null`.
    assert_eq!(chunks.last(), Some(usage_chunks[0]));
    for c in &chunks[..chunks.len() - 1] {
        assert!(c.get("usage").is_some_and(Value::is_null), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn admin_endpoints() {
    let server = start().await;
    let client = reqwest::Client::new();
    let base = server.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    assert_eq!(
        server.addr().port(),
        base.rsplit(':').next().unwrap().parse::<u16>().unwrap()
    );

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert!(!models["data"].as_array().unwrap().is_empty());

    client
        .post(chat_url(&server))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "a b c"}]}))
        .send()
        .await
        .unwrap();
    let stats: MockStats = client
        .get(format!("{base}/__mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats,
        MockStats {
            requests: 1,
            stream_requests: 0,
            prompt_tokens: 7,
            completion_tokens: 16,
            http2_requests: 0,
        }
    );
    let reset = client
        .post(format!("{base}/__mock/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status().as_u16(), 200);
    assert_eq!(server.stats(), MockStats::default());
}

#[tokio::test]
async fn latency_override_delays_response() {
    let server = start().await;
    let started = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .post(chat_url(&server))
        .header("x-mock-latency-ms", "150")
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn unreachable_target_is_all_transport_errors() {
    // Grab a free port and release it: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let report = run(LoadConfig {
        base_url: format!("http://127.0.0.1:{port}"),
        requests: 5,
        concurrency: 2,
        timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(report.sent, 5);
    assert_eq!(report.transport_errors, 5);
    assert_eq!(report.errors, 5);
    assert!(report.all_transport_failed());
    assert!(report.status_counts.is_empty());
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let server = start().await;
    let url = chat_url(&server);
    server.shutdown().await;
    let err = reqwest::Client::new()
        .post(&url)
        .json(&json!({"model": "m", "messages": []}))
        .send()
        .await;
    assert!(err.is_err());

    let server = start().await;
    let url = format!("{}/healthz", server.base_url());
    drop(server);
    let mut stopped = false;
    for _ in 0..50 {
        if reqwest::get(&url).await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped);
}

#[tokio::test]
async fn shutdown_ends_inflight_streams() {
    let server = start().await;
    let resp = reqwest::Client::new()
        .post(chat_url(&server))
        .header("x-mock-chunk-delay-ms", "1000")
        .json(&json!({"model": "m", "messages": [], "stream": true, "max_tokens": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let started = std::time::Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    // The body ends early, without [DONE].
    let body = resp.text().await.unwrap_or_default();
    assert!(!body.contains("[DONE]"));
}
