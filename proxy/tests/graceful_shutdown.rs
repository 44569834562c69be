//! SIGTERM semantics: stop accepting, let in-flight streams finish within the grace period,
//! then flush their usage events.

mod common;

use std::time::Duration;

use common::{sse_data, Env, KEY};
use serde_json::json;
use tollgate_loadtest::MockConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_stream_finishes_and_is_metered_after_shutdown_starts() {
    let env = Env::start_with(MockConfig {
        chunk_delay_ms: 40,
        ..Default::default()
    })
    .await;
    let resp = env
        .post(
            "/v1/chat/completions",
            KEY,
            json!({"model": "gpt-mock", "stream": true, "max_tokens": 20,
            "messages": [{"role": "user", "content": "a slow story"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let base = env.proxy.base_url();
    let Env {
        proxy,
        topic,
        mock,
        slow_mock,
        http,
    } = env;
    let shutdown = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused while the stream goes on.
    assert!(reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err());
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let content_events = events
        .iter()
        .filter(|e| e.contains("\"content\":\"") && !e.contains("\"content\":\"\""))
        .count();
    assert_eq!(content_events, 20, "the whole stream was delivered");
    shutdown.await.unwrap();
    let reader = Env {
        proxy: tollgate_proxy::start(common::config(
            &mock.base_url(),
            &slow_mock.base_url(),
            &topic,
            "",
        ))
        .await
        .unwrap(),
        topic,
        mock,
        slow_mock,
        http,
    };
    let evs = reader.events(1).await;
    assert_eq!(evs[0].status_code, 200);
    assert_eq!(evs[0].completion_tokens, 20);
    reader.proxy.shutdown().await;
}
