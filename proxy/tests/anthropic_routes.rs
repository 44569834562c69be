//! Anthropic in both directions: OpenAI chat clients on an Anthropic deployment, and
//! Anthropic `/v1/messages` clients on OpenAI-compatible and Anthropic deployments.

mod common;

use common::{sse_data, Env, KEY};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_on_an_anthropic_deployment_with_tools_and_streams() {
    let env = Env::start().await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let resp = env
        .post("/v1/chat/completions", KEY, json!({"model": "claude-mock", "max_tokens": 50, "tools": tools,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is the weather"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model"], "claude-mock");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap()
            ["city"],
        "Paris"
    );

    let resp = env
        .post("/v1/chat/completions", KEY, json!({"model": "claude-mock", "max_tokens": 3, "stream": true,
            "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "count to three"}]}))
        .await;
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text.split_whitespace().count(), 3);
    assert_eq!(
        events.iter().filter(|e| e.contains("\"usage\":{")).count(),
        1
    );

    let evs = env.events(2).await;
    assert!(evs
        .iter()
        .all(|e| e.provider == "anthropic" && e.upstream_model == "claude-mock-upstream"));
    assert_eq!(evs[0].completion_tokens, 10);
    assert_eq!(evs[1].completion_tokens, 3);
    assert!(evs[1].ttft_us.is_some());
    assert!(evs
        .iter()
        .all(|e| !e.usage_estimated && e.prompt_tokens > 0));
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_endpoint_translates_to_openai_and_passes_through_to_anthropic() {
    let env = Env::start().await;
    let req = |model: &str, stream: bool| {
        json!({"model": model, "max_tokens": 4, "stream": stream,
               "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
               "messages": [{"role": "user", "content": "hello there claude"}]})
    };
    for model in ["gpt-mock", "claude-mock"] {
        let resp = env
            .http
            .post(env.url("/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&req(model, false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{model}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "message");
        assert_eq!(body["model"], model);
        assert_eq!(body["stop_reason"], "max_tokens");
        assert_eq!(body["usage"]["output_tokens"], 4);

        let resp = env
            .http
            .post(env.url("/v1/messages"))
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .json(&req(model, true))
            .send()
            .await
            .unwrap();
        let text = resp.text().await.unwrap();
        assert!(text.contains("event: message_start"), "{model}: {text}");
        assert!(text.contains("event: message_stop"), "{model}");
    }
    // Errors on /v1/messages are in Anthropic's shape.
    let resp = env
        .http
        .post(env.url("/v1/messages"))
        .header("x-api-key", KEY)
        .json(&json!({"model": "nope", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "not_found_error");

    let evs = env.events(5).await;
    let seen: Vec<(&str, bool, i64)> = evs
        .iter()
        .map(|e| (e.provider.as_str(), e.stream, e.completion_tokens))
        .collect();
    assert_eq!(
        &seen[..4],
        &[
            ("openai", false, 4),
            ("openai", true, 4),
            ("anthropic", false, 4),
            ("anthropic", true, 4)
        ]
    );
    assert!(evs[..4]
        .iter()
        .all(|e| e.endpoint == "messages" && e.status_code == 200 && !e.usage_estimated));
    assert!(evs[3].ttft_us.is_some());
    assert!(
        evs[2].cached_tokens > 0,
        "cache_control on an Anthropic deployment reports cached tokens"
    );
    assert_eq!(evs[4].status_code, 404);
    env.proxy.shutdown().await;
}
