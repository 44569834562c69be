//! Request and token windows shared by three proxies on one Redis. Both scenarios need a full
//! minute to show capacity coming back, so they run side by side in one test (~65 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ratelimit_support;

use std::time::Duration;

use futures::StreamExt;
use ratelimit_support::*;
use tollgate_loadtest::MockConfig;

const RPM_KEY: &str = "sk-rl-rpm-000001";
const TPM_KEY: &str = "sk-rl-tpm-000001";

#[tokio::test]
async fn rpm_and_tpm_are_shared_by_three_proxies_and_hold_at_window_edges() {
    let keys = key("key_rpm", RPM_KEY, "{rpm: 60}")
        + &key("key_tpm", TPM_KEY, "{tpm: 2000, tokens: total}");
    // A generous Redis timeout and fail-closed: on a loaded machine a slow answer must not
    // quietly fall back to per-proxy limits (which would admit up to 3 × 60).
    let limits = "lease_secs: 30, timeout_ms: 3000, failure_mode: closed";
    let fleet = Fleet::start(3, MockConfig::default(), limits, &keys).await;
    let started = std::time::Instant::now();
    tokio::join!(rpm_scenario(&fleet), tpm_scenario(&fleet));
    println!("both scenarios done in {:?}", started.elapsed());
    fleet.shutdown().await;
}

/// 180 requests (60 per proxy) at once: 60 admitted. Then nothing more until the first of
/// them leaves the window — also not right after a minute boundary, where a fixed window
/// would reset — and then requests pass again.
async fn rpm_scenario(fleet: &Fleet) {
    let mut conn = redis_conn().await;
    let mut t0 = redis_now_ms(&mut conn).await;
    if t0 % 60_000 < 3_000 {
        // Keep the next minute boundary well inside the probing period.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        t0 = redis_now_ms(&mut conn).await;
    }
    let burst = |n: usize| {
        futures::stream::iter(0..n)
            .map(|i| async move { outcome(fleet.chat(i, RPM_KEY, &body(1, false)).await).await })
            .buffer_unordered(30)
            .collect::<Vec<_>>()
    };
    let first = burst(180).await;
    let admitted = first.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(
        admitted, 60,
        "rpm 60 across three proxies admits 60, not 180"
    );
    for (status, h, body) in first.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("API key ID: key_rpm") && msg.contains("Limited on rpm"),
            "{msg}"
        );
        let retry = header_u64(h, "retry-after").unwrap();
        assert!((1..=61).contains(&retry), "retry-after {retry}");
        assert_eq!(header_u64(h, "x-ratelimit-limit-requests"), Some(60));
        assert_eq!(header_u64(h, "x-ratelimit-remaining-requests"), Some(0));
    }
    let edge = (t0 / 60_000 + 1) * 60_000;
    let mut crossed = false;
    let mut probes = 0;
    loop {
        let now = redis_now_ms(&mut conn).await;
        // Stop 2 s before the first admitted request can leave the window (≥ t0 + 60 s).
        if now >= t0 + 58_000 {
            break;
        }
        let n = if !crossed && now >= edge {
            crossed = true;
            println!("minute boundary crossed {} ms after the burst", now - t0);
            30
        } else {
            3
        };
        for (status, _, body) in burst(n).await {
            assert_eq!(
                status,
                429,
                "admitted {} ms after the burst: {body}",
                now - t0
            );
        }
        probes += n;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(crossed, "the probing minute contains a minute boundary");
    println!("{probes} probes refused within the minute");
    while redis_now_ms(&mut conn).await < t0 + 64_000 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let after = burst(3).await;
    assert!(after.iter().all(|(s, _, _)| *s == 200), "capacity is back");
}

/// Requests with 300-token completions (streamed and not): six fit in tpm 2000; the seventh
/// is refused naming tpm, and one passes again once the window has moved on.
async fn tpm_scenario(fleet: &Fleet) {
    let mut admitted = 0;
    let mut used = 0u64;
    let refusal = loop {
        let stream = admitted % 2 == 1;
        let resp = fleet.chat(admitted, TPM_KEY, &body(300, stream)).await;
        let (status, h, json) = outcome(resp).await;
        if status != 200 {
            break (status, h, json);
        }
        admitted += 1;
        used += 305; // mock: "hi" = 1 word + 4 framing, 300 completion tokens
        assert_eq!(header_u64(&h, "x-ratelimit-limit-tokens"), Some(2000));
        let remaining = header_u64(&h, "x-ratelimit-remaining-tokens").unwrap();
        assert!(
            remaining <= 2000 - used,
            "remaining {remaining} after {used}"
        );
        assert!(admitted <= 6, "more than tpm allows");
    };
    assert_eq!(
        admitted, 6,
        "6 × 305 tokens fit in 2000, a seventh would not"
    );
    let (status, h, json) = refusal;
    assert_eq!(status, 429, "{json}");
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
    let msg = json["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("API key ID: key_tpm") && msg.contains("Limited on tpm"),
        "{msg}"
    );
    let retry = header_u64(&h, "retry-after").unwrap();
    assert!((1..=61).contains(&retry), "retry-after {retry}");
    // Other proxies agree.
    for i in 1..3 {
        let (s, _, _) = outcome(fleet.chat(i, TPM_KEY, &body(300, false)).await).await;
        assert_eq!(s, 429);
    }
    tokio::time::sleep(Duration::from_secs(retry + 1)).await;
    let (s, _, json) = outcome(fleet.chat(0, TPM_KEY, &body(300, true)).await).await;
    assert_eq!(s, 200, "resumes after the window moved on: {json}");
}
