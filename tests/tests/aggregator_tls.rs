//! Optional TLS on the aggregator's listener (`tls: {cert_file, key_file}`): with a
//! self-signed certificate (rcgen) `/healthz`, `/readyz` and `/metrics` answer over HTTPS
//! (HTTP/1.1 and HTTP/2) and plain HTTP on that port gets nothing; an unreadable certificate
//! fails the load and the start, naming the config key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use tollgate_aggregator::AggregatorConfig;
use tollgate_e2e::{brokers, clickhouse_url, create_topic, init_tracing, unique};

/// A self-signed certificate for `localhost`, its files written to `dir`.
fn self_signed(dir: &Path) -> (rcgen::CertifiedKey, AggregatorConfig) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let yaml = format!(
        "listen: \"127.0.0.1:0\"\ntls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        cert_file.display(),
        key_file.display()
    );
    let cfg: AggregatorConfig = load_yaml(&yaml);
    (cert, cfg)
}

fn load_yaml(yaml: &str) -> AggregatorConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aggregator.yaml");
    std::fs::write(&path, yaml).unwrap();
    AggregatorConfig::load(Some(&path)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer_over_https_only() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (cert, mut cfg) = self_signed(dir.path());
    let topic = unique("t_agg_tls");
    create_topic(&topic, 1).await.unwrap();
    cfg.kafka.brokers = brokers();
    cfg.kafka.topic = topic;
    cfg.kafka.group_id = unique("g_agg_tls");
    cfg.clickhouse.url = clickhouse_url();
    cfg.clickhouse.database = unique("tg_agg_tls");
    let agg = tollgate_aggregator::start(cfg).await.unwrap();
    let addr = agg.local_addr();
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());

    for http2 in [false, true] {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("localhost", addr);
        if !http2 {
            builder = builder.http1_only();
        }
        let https = builder.build().unwrap();
        let health = https.get(url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_eq!(
            health.version(),
            if http2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            }
        );
        assert_eq!(health.text().await.unwrap(), "ok\n");
        let metrics = https.get(url("/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        assert!(text.contains("tollgate_aggregator_"), "{text}");
    }

    // `/readyz` is served too (ready once the consume loop has joined the group).
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = https.get(url("/readyz")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert_eq!(ready.status(), 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            ready.text().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Plain HTTP on the TLS port: no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    agg.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_fails_load_and_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let yaml = format!(
        "tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        missing.display(),
        dir.path().join("key.pem").display()
    );
    let path = dir.path().join("aggregator.yaml");
    std::fs::write(&path, yaml).unwrap();
    let err = AggregatorConfig::load(Some(&path)).unwrap_err().to_string();
    assert!(err.contains("`tls.cert_file`"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    // `start` without `load` (no validation) fails before binding or consuming.
    let (_, mut cfg) = self_signed(dir.path());
    cfg.tls.as_mut().unwrap().cert_file = missing.clone();
    cfg.kafka.brokers = "127.0.0.1:9".into();
    cfg.clickhouse.migrate = false;
    cfg.clickhouse.url = "http://127.0.0.1:9".into();
    let err = tollgate_aggregator::start(cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls.cert_file: cannot read"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
