//! Every OpenAI-format endpoint through the proxy against the mock, OpenAI and Azure
//! deployments, streaming included, with the usage event each request produced.

mod common;

use base64::Engine as _;
use common::{sse_data, Env, KEY, LIMITED_KEY};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_json_and_streams_pass_through_with_the_public_model_name() {
    let env = Env::start().await;
    let msgs = json!([{"role": "user", "content": "three little words"}]);

    // JSON: unknown fields reach the provider (the mock ignores them), model is renamed back.
    let resp = env
        .post(
            "/v1/chat/completions",
            KEY,
            json!({"model": "gpt-mock", "messages": msgs, "max_tokens": 5, "x_custom": {"a": 1}}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "gpt-mock");
    assert_eq!(body["usage"]["completion_tokens"], 5);

    // Stream without include_usage: no usage chunk reaches the client.
    let resp = env
        .post(
            "/v1/chat/completions",
            KEY,
            json!({"model": "gpt-mock", "messages": msgs, "max_tokens": 4, "stream": true}),
        )
        .await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(
        events.iter().all(|e| !e.contains("\"usage\":{")),
        "{events:?}"
    );
    assert!(events
        .iter()
        .filter(|e| e.starts_with('{'))
        .all(|e| e.contains("\"model\":\"gpt-mock\"")));

    // Stream with include_usage: exactly one usage chunk.
    let resp = env.post("/v1/chat/completions", KEY, json!({"model": "gpt-mock", "messages": msgs, "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}})).await;
    let events = sse_data(&resp.text().await.unwrap());
    let usage: Vec<&String> = events
        .iter()
        .filter(|e| e.contains("\"usage\":{"))
        .collect();
    assert_eq!(usage.len(), 1);

    let evs = env.events(3).await;
    for (ev, (stream, completion)) in evs.iter().zip([(false, 5), (true, 4), (true, 4)]) {
        assert_eq!(ev.model, "gpt-mock");
        assert_eq!(ev.upstream_model, "mock-gpt-upstream");
        assert_eq!(ev.provider, "openai");
        assert_eq!(ev.endpoint, "chat.completions");
        assert_eq!(ev.stream, stream);
        assert_eq!(ev.status_code, 200);
        assert_eq!(ev.prompt_tokens, 3 + 4);
        assert_eq!(ev.completion_tokens, completion);
        assert!(!ev.usage_estimated);
        assert_eq!(ev.cost_nanos, 7 * 1000 + completion * 2000);
        assert_eq!(ev.ttft_us.is_some(), stream);
        assert_eq!(ev.attempts, 1);
        assert_eq!(ev.account_id, "acct_p");
        assert_eq!(ev.team_id, "team_p");
    }
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_embeddings_and_azure() {
    let env = Env::start().await;
    let resp = env
        .post(
            "/v1/completions",
            KEY,
            json!({"model": "gpt-mock", "prompt": "once upon a time", "max_tokens": 3}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "gpt-mock");

    let resp = env.post("/v1/completions", KEY, json!({"model": "gpt-mock", "prompt": "once upon a time", "max_tokens": 3, "stream": true})).await;
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");

    let resp = env
        .post(
            "/v1/embeddings",
            KEY,
            json!({"model": "embed-mock", "input": ["alpha beta", "gamma"]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["model"], "embed-mock");
    let resp = env
        .post(
            "/v1/embeddings",
            KEY,
            json!({"model": "embed-mock", "input": "alpha", "encoding_format": "base64"}),
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw.len(), 8 * 4);

    let resp = env.post("/v1/chat/completions", KEY, json!({"model": "azure-mock", "messages": [{"role": "user", "content": "hi azure"}], "max_tokens": 2})).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = env.post("/v1/chat/completions", KEY, json!({"model": "azure-mock", "stream": true, "messages": [{"role": "user", "content": "hi azure"}], "max_tokens": 2})).await;
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let resp = env
        .post(
            "/v1/embeddings",
            KEY,
            json!({"model": "azure-mock", "input": "alpha"}),
        )
        .await;
    assert_eq!(resp.status(), 200);

    let evs = env.events(7).await;
    let summary: Vec<(&str, &str, bool, i64, i64)> = evs
        .iter()
        .map(|e| {
            (
                e.endpoint.as_str(),
                e.provider.as_str(),
                e.stream,
                e.prompt_tokens,
                e.completion_tokens,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("completions", "openai", false, 4, 3),
            ("completions", "openai", true, 4, 3),
            ("embeddings", "openai", false, 3, 0),
            ("embeddings", "openai", false, 1, 0),
            ("chat.completions", "azure", false, 6, 2),
            ("chat.completions", "azure", true, 6, 2),
            ("embeddings", "azure", false, 1, 0),
        ]
    );
    assert!(evs
        .iter()
        .all(|e| e.status_code == 200 && !e.usage_estimated));
    env.proxy.shutdown().await;
}

/// A deployment with `http2_prior_knowledge` reaches the mock over h2c (the mock counts the
/// requests that arrive over HTTP/2): JSON and streams, metered as usual. One without it
/// speaks HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_deployment_answers_json_and_streams() {
    let env = Env::start().await;
    let msgs = json!([{"role": "user", "content": "over one connection"}]);
    let plain = json!({"model": "gpt-mock", "messages": msgs, "max_tokens": 3});
    assert_eq!(
        env.post("/v1/chat/completions", KEY, plain).await.status(),
        200
    );
    assert_eq!(env.mock.stats().http2_requests, 0, "HTTP/1.1 by default");
    let resp = env
        .post(
            "/v1/chat/completions",
            KEY,
            json!({"model": "h2c-mock", "messages": msgs, "max_tokens": 3}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "h2c-mock");
    // Concurrent streams share the HTTP/2 connection.
    let streams = (0..4).map(|_| {
        env.post(
            "/v1/chat/completions",
            KEY,
            json!({"model": "h2c-mock", "messages": msgs, "max_tokens": 4, "stream": true}),
        )
    });
    for resp in futures::future::join_all(streams).await {
        assert_eq!(resp.status(), 200);
        let events = sse_data(&resp.text().await.unwrap());
        assert_eq!(events.last().unwrap(), "[DONE]");
    }
    assert_eq!(
        env.mock.stats().http2_requests,
        5,
        "every request over HTTP/2"
    );
    let events = env.events(6).await;
    assert!(events
        .iter()
        .all(|e| e.status_code == 200 && !e.usage_estimated));
    let h2c = events.iter().filter(|e| e.upstream_model == "h2c-upstream");
    assert_eq!(h2c.count(), 5);
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_only_what_the_key_may_use() {
    let env = Env::start().await;
    let list = |key: &'static str| {
        let env = &env;
        async move {
            let resp = env
                .http
                .get(env.url("/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(LIMITED_KEY).await, vec!["gpt-mock"]);
    assert!(list(KEY).await.len() >= 8);
    let resp = env.http.get(env.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    env.proxy.shutdown().await;
}
