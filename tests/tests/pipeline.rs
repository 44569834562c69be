//! Walking skeleton, end to end: requests through the proxy become exactly one ClickHouse row
//! each, with the tokens the upstream reported, the configured cost, and a TTFT on streams.

use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use tollgate_e2e::{TestStack, TEST_KEY, TEST_MODEL};
use tollgate_loadtest::MockConfig;

#[derive(Debug, Row, Deserialize)]
struct Totals {
    rows: u64,
    distinct_events: u64,
    distinct_seq: u64,
    streams: u64,
    prompt: i64,
    completion: i64,
    cost: i64,
    expected_cost: i64,
    stream_ttft: u64,
    nonstream_ttft: u64,
    ok: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_requests_become_n_rows_with_tokens_cost_and_ttft() {
    let stack = TestStack::start(
        "pipeline",
        3,
        MockConfig {
            latency_ms: 2,
            chunk_delay_ms: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();

    // 90 requests, a third streamed (with include_usage), plus 10 streams that did not ask for usage.
    let report = tollgate_loadtest::run(stack.load(90, 1.0 / 3.0))
        .await
        .unwrap();
    assert_eq!(report.ok, 90, "{}", report.to_text());
    let mut no_usage = stack.load(10, 1.0);
    no_usage.include_usage = false;
    let report2 = tollgate_loadtest::run(no_usage).await.unwrap();
    assert_eq!(report2.ok, 10);
    assert_eq!(
        report2.completion_tokens, 0,
        "usage chunk must be hidden from clients that did not ask"
    );

    let n = 100;
    stack
        .wait_for_rows(n, Duration::from_secs(60))
        .await
        .unwrap();
    let mock = stack.mock.stats();
    let t: Totals = stack
        .db()
        .query(
            "SELECT count() AS rows, uniqExact(event_id) AS distinct_events, uniqExact(proxy_seq) AS distinct_seq, \
             countIf(stream = 1) AS streams, sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion, \
             sum(cost_nanos) AS cost, sum(prompt_tokens * 1000 + completion_tokens * 2000) AS expected_cost, \
             countIf(stream = 1 AND ifNull(ttft_us, 0) > 0) AS stream_ttft, \
             countIf(stream = 0 AND isNotNull(ttft_us) = 1) AS nonstream_ttft, \
             countIf(status_code = 200 AND usage_estimated = 0 AND model = ? AND upstream_model = 'mock-upstream-model' \
                     AND account_id = 'acct_test' AND api_key_id = 'key_test' AND latency_us > 0) AS ok \
             FROM usage_events",
        )
        .bind(TEST_MODEL)
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(t.rows, n);
    assert_eq!(t.distinct_events, n);
    assert_eq!(t.distinct_seq, n);
    assert_eq!(t.streams, 40);
    assert_eq!(t.ok, n);
    assert_eq!(
        t.prompt as u64, mock.prompt_tokens,
        "prompt tokens as the upstream reported"
    );
    assert_eq!(
        t.completion as u64, mock.completion_tokens,
        "completion tokens as the upstream reported"
    );
    assert_eq!(t.completion as u64, report.completion_tokens + 10 * 12);
    assert_eq!(t.cost, t.expected_cost, "cost = tokens x configured prices");
    assert!(t.cost > 0);
    assert_eq!(t.stream_ttft, 40, "every stream has a TTFT");
    assert_eq!(t.nonstream_ttft, 0);

    let (_, delivered, failed, dropped) = {
        let s = stack.proxy.publisher_stats();
        s.snapshot()
    };
    assert_eq!((delivered, failed, dropped), (n, 0, 0));
    agg.shutdown().await;
    stack.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_errors_are_openai_shaped_and_request_ids_returned() {
    let stack = TestStack::start("errors", 1, MockConfig::default())
        .await
        .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", stack.proxy.base_url());
    let body =
        serde_json::json!({"model": TEST_MODEL, "messages": [{"role": "user", "content": "hi"}]});

    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (
            None,
            serde_json::to_vec(&body).unwrap(),
            401,
            "missing_api_key",
        ),
        (
            Some("sk-wrong-key-123"),
            serde_json::to_vec(&body).unwrap(),
            401,
            "invalid_api_key",
        ),
        (Some(TEST_KEY), b"{not json".to_vec(), 400, "invalid_json"),
        (
            Some(TEST_KEY),
            br#"{"messages":[]}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Some(TEST_KEY),
            br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#.to_vec(),
            404,
            "model_not_found",
        ),
        (
            Some(TEST_KEY),
            vec![b' '; 5 * 1024 * 1024],
            413,
            "request_too_large",
        ),
    ];
    for (key, payload, status, code) in cases {
        let mut req = http
            .post(&url)
            .header("x-request-id", "rid-fixed-1")
            .body(payload);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{code}");
        assert_eq!(resp.headers()["x-request-id"], "rid-fixed-1");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(json["error"]["message"].as_str().unwrap().len() > 10);
    }

    // An upstream failure passes through with its status and body, and a request id is
    // generated when the client sent none; an unreachable upstream is a 502.
    for (model, status) in [("failing-model", 503), ("unreachable-model", 502)] {
        let resp = http
            .post(&url)
            .bearer_auth(TEST_KEY)
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["x-request-id"].len(), 36);
        let json: serde_json::Value = resp.json().await.unwrap();
        assert!(json["error"]["message"].is_string(), "{json}");
    }

    // Authenticated requests are metered, failures included; 401s are not.
    stack
        .wait_for_rows(6, Duration::from_secs(60))
        .await
        .unwrap();
    let statuses: Vec<u16> = stack
        .db()
        .query("SELECT status_code FROM usage_events ORDER BY status_code")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(statuses, vec![400, 400, 404, 413, 502, 503]);
    agg.shutdown().await;
    stack.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_leaving_mid_stream_still_yields_one_event() {
    let stack = TestStack::start(
        "disconnect",
        1,
        MockConfig {
            chunk_delay_ms: 50,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let agg = stack.aggregator(&tollgate_e2e::unique("g")).await.unwrap();
    let http = reqwest::Client::new();
    let body = serde_json::json!({
        "model": TEST_MODEL, "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "count slowly"}]
    });
    let mut resp = http
        .post(format!("{}/v1/chat/completions", stack.proxy.base_url()))
        .bearer_auth(TEST_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 5 {
        let chunk = resp.chunk().await.unwrap().unwrap();
        seen += chunk.windows(9).filter(|w| w == b"\"content\"").count();
    }
    drop(resp);
    stack
        .wait_for_rows(1, Duration::from_secs(60))
        .await
        .unwrap();
    let (status, completion, estimated, ttft): (u16, i64, u8, Option<i64>) = stack
        .db()
        .query("SELECT status_code, completion_tokens, usage_estimated, ttft_us FROM usage_events")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(status, 499);
    assert_eq!(estimated, 1);
    assert!(
        (3..100).contains(&completion),
        "tokens delivered so far, got {completion}"
    );
    assert!(ttft.is_some());
    agg.shutdown().await;
    stack.proxy.shutdown().await;
}
