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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_the_proxy_cannot_translate_is_a_502_metered_once() {
    // An "Anthropic" upstream that answers 200 with a message without `content`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({"type": "message", "id": "msg_1",
            "usage": {"input_tokens": 3, "output_tokens": 1}}))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let env = Env::start_with_models(&format!(
        "  - name: broken-claude\n    retry: {{max_attempts: 1}}\n    deployments:\n      - {{provider: anthropic, base_url: \"{upstream}\", api_key: k}}\n"
    ))
    .await;
    let resp = env
        .post("/v1/chat/completions", KEY, chat("broken-claude"))
        .await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("untranslatable"),
        "{body}"
    );
    let ev = env.events(1).await.remove(0);
    assert_eq!(ev.status_code, 502);
    assert_eq!(ev.error_type.as_deref(), Some("upstream_untranslatable"));
    assert!(ev.usage_estimated && ev.prompt_tokens > 0, "{ev:?}");
    assert!(ev.upstream_latency_us > 0 && ev.upstream_latency_us <= ev.latency_us);
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_request_already_upstream_is_metered_for_its_worst_case() {
    // Every answer takes 1.5 s; the client gives up after 300 ms.
    let env = Env::start_with(tollgate_loadtest::MockConfig {
        latency_ms: 1_500,
        ..Default::default()
    })
    .await;
    let cut = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap()
        .post(env.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "gpt-mock", "max_tokens": 7,
            "messages": [{"role": "user", "content": "a question that takes long"}]}))
        .send()
        .await;
    assert!(cut.is_err(), "the client timed out");
    let ev = env.events(1).await.remove(0);
    assert_eq!(ev.status_code, 499, "{ev:?}");
    assert_eq!(ev.error_type.as_deref(), Some("client_disconnected"));
    assert!(ev.usage_estimated && ev.prompt_tokens > 0, "{ev:?}");
    assert_eq!(ev.completion_tokens, 7, "the completion limit it asked for");
    assert!(ev.cost_nanos > 0);
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_provider_key_is_refused_fails_over_and_never_shows_a_401() {
    let env = Env::start_with_models(
        "  - name: revoked-mock
    retry: {max_attempts: 2, backoff_ms: 1}
    deployments:
      - {base_url: \"{mock}/v1\", upstream_model: mock-status-401, priority: 0}
      - {base_url: \"{mock}/v1\", upstream_model: healthy-upstream, priority: 1}
  - name: all-revoked-mock
    retry: {max_attempts: 1}
    deployments:
      - {base_url: \"{mock}/v1\", upstream_model: mock-status-403}
",
    )
    .await;
    let ok = env
        .post("/v1/chat/completions", KEY, chat("revoked-mock"))
        .await;
    assert_eq!(ok.status(), 200, "the next deployment answered");
    let refused = env
        .post("/v1/chat/completions", KEY, chat("all-revoked-mock"))
        .await;
    assert_eq!(refused.status(), 502);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_auth_failed", "{body}");
    assert_eq!(body["error"]["type"], "api_error");
    let evs = env.events(2).await;
    assert_eq!((evs[0].status_code, evs[0].attempts), (200, 2));
    assert_eq!(evs[1].status_code, 502);
    assert_eq!(evs[1].error_type.as_deref(), Some("upstream_auth_failed"));
    env.proxy.shutdown().await;
}
