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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_open_when_the_grace_period_ends_is_cut_and_metered() {
    // 20 chunks 500 ms apart: the stream would need 10 s; the grace period is 1 s.
    let mock = tollgate_loadtest::MockServer::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            chunk_delay_ms: 500,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let topic = common::unique("proxy_grace");
    common::create_topic(&topic).await;
    let mut cfg = common::config(&mock.base_url(), &mock.base_url(), &topic, "");
    cfg.shutdown_grace_secs = 1;
    let proxy = tollgate_proxy::start(cfg).await.unwrap();
    let stats = proxy.publisher_stats();
    let mut resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", proxy.base_url()))
        .bearer_auth(KEY)
        .json(
            &json!({"model": "gpt-mock", "stream": true, "max_tokens": 20,
            "messages": [{"role": "user", "content": "a very slow story"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.chunk().await.unwrap().is_some(), "the stream started");
    let started = std::time::Instant::now();
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "shutdown waited for the grace period, not for the stream: {:?}",
        started.elapsed()
    );
    // The client's stream ends without [DONE].
    let mut rest = Vec::new();
    while let Ok(Some(c)) = resp.chunk().await {
        rest.extend_from_slice(&c);
    }
    assert!(!String::from_utf8_lossy(&rest).contains("[DONE]"));
    let (submitted, delivered, failed, dropped) = stats.snapshot();
    assert_eq!(
        (submitted, delivered, failed, dropped),
        (1, 1, 0, 0),
        "the cut stream's event was published before the publisher stopped"
    );
    let reader = Env {
        proxy: tollgate_proxy::start(common::config(
            &mock.base_url(),
            &mock.base_url(),
            &topic,
            "",
        ))
        .await
        .unwrap(),
        topic,
        slow_mock: tollgate_loadtest::MockServer::start(
            "127.0.0.1:0".parse().unwrap(),
            MockConfig::default(),
        )
        .await
        .unwrap(),
        mock,
        http: reqwest::Client::new(),
    };
    let evs = reader.events(1).await;
    assert_eq!(evs[0].status_code, 499, "{:?}", evs[0]);
    assert!(evs[0].completion_tokens < 20, "{:?}", evs[0]);
    reader.proxy.shutdown().await;
}
