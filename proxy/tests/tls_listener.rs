//! Optional TLS on the public listener: a self-signed certificate (rcgen), a client trusting
//! it gets answers over HTTPS (HTTP/1.1 and HTTP/2), plain HTTP on the TLS port gets nothing,
//! and the request is metered as usual.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{create_topic, unique, Env, KEY};
use tollgate_loadtest::{MockConfig, MockServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();

    let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::default())
        .await
        .unwrap();
    let topic = unique("tls_t");
    create_topic(&topic).await;
    let extra = format!(
        "tls: {{cert_file: \"{}\", key_file: \"{}\"}}\n",
        cert_file.display(),
        key_file.display()
    );
    let cfg = common::config(&mock.base_url(), &mock.base_url(), &topic, &extra);
    let proxy = tollgate_proxy::start(cfg).await.unwrap();
    let addr = proxy.addr();
    let body = serde_json::json!({"model": "gpt-mock", "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}]});

    for http2 in [false, true] {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("localhost", addr);
        // ALPN: h2 when offered by the client, else HTTP/1.1.
        if !http2 {
            builder = builder.http1_only();
        }
        let https = builder.build().unwrap();
        let resp = https
            .post(format!(
                "https://localhost:{}/v1/chat/completions",
                addr.port()
            ))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.version(),
            if http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        let _ = resp.bytes().await.unwrap();
    }

    // Plain HTTP on the TLS port: no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", addr.port()))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    let env = Env {
        slow_mock: MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::default())
            .await
            .unwrap(),
        mock,
        proxy,
        topic,
        http: reqwest::Client::new(),
    };
    assert_eq!(env.events(2).await.len(), 2);
    env.proxy.shutdown().await;
}
