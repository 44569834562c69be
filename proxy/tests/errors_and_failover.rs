//! Error statuses (OpenAI-shaped bodies) and deployment failover with cooldown.

mod common;

use common::{Env, KEY, LIMITED_KEY};
use serde_json::{json, Value};

/// (case name, key, body, expected status, expected error code)
type Case = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_is_openai_shaped() {
    let env = Env::start().await;
    let url = env.url("/v1/chat/completions");
    let cases: Vec<Case> = vec![
        ("no key", None, serde_json::to_vec(&chat("gpt-mock")).unwrap(), 401, "missing_api_key"),
        ("bad key", Some("sk-nope-nope"), serde_json::to_vec(&chat("gpt-mock")).unwrap(), 401, "invalid_api_key"),
        ("disabled key", Some("sk-proxy-test-disabled"), serde_json::to_vec(&chat("gpt-mock")).unwrap(), 401, "api_key_disabled"),
        ("bad json", Some(KEY), b"{\"model\": ".to_vec(), 400, "invalid_json"),
        ("not an object", Some(KEY), b"[1,2]".to_vec(), 400, "invalid_json"),
        ("model type", Some(KEY), br#"{"model": 5, "messages": [{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request"),
        ("no messages", Some(KEY), br#"{"model": "gpt-mock"}"#.to_vec(), 400, "invalid_request"),
        ("negative max_tokens", Some(KEY), br#"{"model": "gpt-mock", "max_tokens": -1, "messages": [{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request"),
        ("absurd max_tokens", Some(KEY), br#"{"model": "gpt-mock", "max_tokens": 99999999999, "messages": [{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request"),
        ("stream type", Some(KEY), br#"{"model": "gpt-mock", "stream": "yes", "messages": [{"role":"user","content":"x"}]}"#.to_vec(), 400, "invalid_request"),
        ("not allowed", Some(LIMITED_KEY), serde_json::to_vec(&chat("azure-mock")).unwrap(), 403, "model_not_allowed"),
        ("unknown model", Some(KEY), serde_json::to_vec(&chat("gpt-9")).unwrap(), 404, "model_not_found"),
        ("too large", Some(KEY), vec![b' '; 100 * 1024], 413, "request_too_large"),
        ("unreachable upstream", Some(KEY), serde_json::to_vec(&chat("dead-mock")).unwrap(), 502, "upstream_unavailable"),
        ("upstream timeout", Some(KEY), serde_json::to_vec(&chat("slow-mock")).unwrap(), 504, "upstream_timeout"),
    ];
    for (name, key, body, status, code) in cases {
        let mut req = env
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{name}");
        assert!(resp.headers().contains_key("x-request-id"), "{name}");
        let json: Value = resp.json().await.unwrap();
        assert_eq!(json["error"]["code"], code, "{name}: {json}");
        assert!(
            json["error"]["message"].as_str().unwrap().len() > 10,
            "{name}"
        );
        assert!(json["error"]["type"].is_string(), "{name}");
    }
    // The upstream's own 429 passes through with its body.
    let resp = env
        .post("/v1/chat/completions", KEY, chat("ratelimited-mock"))
        .await;
    assert_eq!(resp.status(), 429);
    let json: Value = resp.json().await.unwrap();
    assert!(json["error"]["message"].is_string());
    // Embeddings cannot stream; unknown paths are OpenAI-shaped 404s.
    let resp = env
        .post(
            "/v1/embeddings",
            KEY,
            json!({"model": "embed-mock", "input": "x", "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let resp = env.post("/v1/nope", KEY, json!({})).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "unknown_url"
    );
    // A known path with the wrong method: 405 naming the method it answers.
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/chat/completions", "POST"),
        (reqwest::Method::POST, "/healthz", "GET"),
    ] {
        let resp = env
            .http
            .request(method, env.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        assert_eq!(resp.headers()["allow"], allow, "{path}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["code"],
            "method_not_allowed"
        );
    }
    let head = env.http.head(env.url("/healthz")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_next_tier_then_cooldown_skips_the_failing_deployment() {
    let env = Env::start().await;
    for _ in 0..2 {
        let resp = env
            .post("/v1/chat/completions", KEY, chat("failover-mock"))
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["model"],
            "failover-mock"
        );
    }
    // Two failures in a row started the cooldown: the failing deployment is skipped now.
    let resp = env
        .post("/v1/chat/completions", KEY, chat("failover-mock"))
        .await;
    assert_eq!(resp.status(), 200);
    let evs = env.events(3).await;
    let attempts: Vec<i32> = evs.iter().map(|e| e.attempts).collect();
    assert_eq!(attempts, vec![2, 2, 1]);
    assert!(evs
        .iter()
        .all(|e| e.upstream_model == "healthy-upstream" && e.status_code == 200));
    env.proxy.shutdown().await;
}
