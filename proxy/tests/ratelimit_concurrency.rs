//! Concurrency limits shared by three proxies on one Redis: never more streams in flight than
//! the limit, and the leases of a proxy that is killed expire within the lease time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ratelimit_support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ratelimit_support::*;
use tollgate_loadtest::MockConfig;

const SECRET: &str = "sk-rl-conc-00001";

fn conc_key() -> String {
    key("key_conc", SECRET, "{concurrency: 5}")
}

/// Read a streamed body until `[DONE]` (or its end).
async fn drain(resp: reqwest::Response) {
    let mut body = resp.bytes_stream();
    let mut tail = Vec::new();
    while let Some(Ok(chunk)) = body.next().await {
        tail.extend_from_slice(&chunk);
        if tail.windows(6).any(|w| w == b"[DONE]") {
            return;
        }
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
}

#[tokio::test]
async fn never_more_streams_in_flight_than_the_limit_across_proxies() {
    let mock = MockConfig {
        chunk_delay_ms: 100,
        ..MockConfig::default()
    };
    let fleet = Fleet::start(3, mock, "lease_secs: 5", &conc_key()).await;

    // A wave of 15 slow streams at once: 5 pass, 10 are refused.
    let slow = body(30, true); // 3 s at 100 ms per chunk
    let wave: Vec<_> =
        futures::future::join_all((0..15).map(|i| fleet.chat(i, SECRET, &slow))).await;
    let (ok, refused): (Vec<_>, Vec<_>) = wave.into_iter().partition(|r| r.status() == 200);
    assert_eq!(ok.len(), 5, "concurrency 5 across three proxies");
    for r in refused {
        let (status, h, json) = outcome(r).await;
        assert_eq!(status, 429);
        assert_eq!(json["error"]["code"], "concurrency_limit_exceeded");
        assert_eq!(
            json["error"]["message"],
            "Concurrency limit exceeded for API key ID: key_conc"
        );
        assert_eq!(header(&h, "retry-after").as_deref(), Some("1"));
        assert_eq!(header_u64(&h, "x-ratelimit-limit-concurrent"), Some(5));
        assert_eq!(header_u64(&h, "x-ratelimit-remaining-concurrent"), Some(0));
    }
    futures::future::join_all(ok.into_iter().map(drain)).await;

    // Sustained pressure from 12 clients for 5 s: slots are reused, never more than 5 at once.
    let in_flight = AtomicI64::new(0);
    let peak = AtomicI64::new(0);
    let served = AtomicUsize::new(0);
    let until = Instant::now() + Duration::from_secs(5);
    futures::future::join_all((0..12).map(|c| {
        let (fleet, in_flight, peak, served) = (&fleet, &in_flight, &peak, &served);
        async move {
            let mut i = c;
            while Instant::now() < until {
                let resp = fleet.chat(i, SECRET, &body(5, true)).await;
                i += 1;
                if resp.status() == 200 {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    drain(resp).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    assert_eq!(resp.status(), 429);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }))
    .await;
    let (peak, served) = (peak.load(Ordering::SeqCst), served.load(Ordering::SeqCst));
    println!("sustained: {served} streams served, peak {peak} in flight");
    assert!(peak <= 5, "{peak} streams in flight");
    assert!(served >= 15, "released slots are reused: {served}");

    // Everything is released once the streams are over.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fleet.proxies.iter().any(|p| p.limits().leases_held() > 0) {
        assert!(Instant::now() < deadline, "leases still held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.shutdown().await;
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_killed_proxy_frees_its_leases_within_the_lease_time() {
    const LEASE_SECS: u64 = 3;
    let mock = MockConfig {
        chunk_delay_ms: 100,
        ..MockConfig::default()
    };
    let limits = format!("lease_secs: {LEASE_SECS}");
    let fleet = Fleet::start(2, mock, &limits, &conc_key()).await;

    // The third proxy is a real process, so it can die without cleaning up.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        yaml(
            &fleet.mock.base_url(),
            &fleet.topic,
            &fleet.prefix,
            &limits,
            &conc_key(),
        ),
    )
    .unwrap();
    let mut child = Killed(
        Command::new(env!("CARGO_BIN_EXE_tollgate-proxy"))
            .arg("--config")
            .arg(&config)
            .env("TOLLGATE_PROXY_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet
        .http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "child proxy did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Five minute-long streams through the child hold all five leases.
    let mut held = Vec::new();
    for _ in 0..5 {
        let resp = fleet
            .http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(SECRET)
            .json(&body(600, true))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    let fleet = &fleet;
    let status = |i: usize| async move {
        let (s, _, json) = outcome(fleet.chat(i, SECRET, &body(1, false)).await).await;
        (s, json)
    };
    assert_eq!(status(0).await.0, 429, "all five leases are held");
    // The child renews its leases: still full after more than a lease time.
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 1)).await;
    assert_eq!(status(1).await.0, 429, "held leases are renewed");

    let _ = child.0.kill();
    let _ = child.0.wait();
    let killed = Instant::now();
    drop(held);
    for i in 0.. {
        let (s, json) = status(i).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 429, "{json}");
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE_SECS + 2),
            "leases of the killed proxy still held after {:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "leases of the killed proxy expired {:?} after the kill",
        killed.elapsed()
    );
}
