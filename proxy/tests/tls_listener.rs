//! Optional TLS on the public and admin listeners: a self-signed certificate (rcgen), a client
//! trusting it gets answers over HTTPS (HTTP/1.1 and HTTP/2), plain HTTP on the TLS port gets
//! nothing, the request is metered as usual, and an unreadable certificate fails the start
//! naming its config key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{create_topic, unique, Env, KEY};
use tollgate_loadtest::{MockConfig, MockServer};

const ADMIN_KEY: &str = "admin-key-for-tls-tests-0001";

/// A self-signed certificate for `localhost` written to `dir` as `cert.pem` / `key.pem`.
fn self_signed(dir: &Path) -> (rcgen::CertifiedKey, PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    (cert, cert_file, key_file)
}

/// `admin:` on a free port with TLS from the given files.
fn admin_extra(cert_file: &Path, key_file: &Path) -> String {
    format!(
        "admin: {{listen: \"127.0.0.1:0\", key_sha256: {hash}, \
         tls: {{cert_file: \"{}\", key_file: \"{}\"}}}}\n",
        cert_file.display(),
        key_file.display(),
        hash = hex::encode(tollgate_proxy::routing::hash_secret(ADMIN_KEY)),
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_file, key_file) = self_signed(dir.path());
    let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::default())
        .await
        .unwrap();
    let topic = unique("tls_admin_t");
    create_topic(&topic).await;
    let extra = admin_extra(&cert_file, &key_file);
    let cfg = common::config(&mock.base_url(), &mock.base_url(), &topic, &extra);
    let proxy = tollgate_proxy::start(cfg).await.unwrap();
    let admin = proxy.admin_addr().unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", admin)
        .build()
        .unwrap();
    let url = |path: &str| format!("https://localhost:{}{path}", admin.port());

    let health = https.get(url("/admin/v1/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let models = https
        .get(url("/admin/v1/models"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let body = models.text().await.unwrap();
    assert!(body.contains("gpt-mock"), "{body}");
    // The admin key is still required over TLS.
    let anonymous = https.get(url("/admin/v1/models")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // Plain HTTP on the admin port: no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{admin}/admin/v1/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // The public listener has no `tls:` and stays plain HTTP.
    let public = reqwest::get(format!("{}/healthz", proxy.base_url()))
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_admin_certificate_fails_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert_file, key_file) = self_signed(dir.path());
    let topic = unique("tls_admin_bad");
    let extra = admin_extra(&cert_file, &key_file);
    let mut cfg = common::config("http://127.0.0.1:9", "http://127.0.0.1:9", &topic, &extra);
    let missing = dir.path().join("missing.pem");
    if let Some(a) = cfg.admin.as_mut() {
        a.tls.as_mut().unwrap().cert_file = missing.clone();
    }

    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("`admin.tls.cert_file`"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let err = tollgate_proxy::start(cfg).await.unwrap_err().to_string();
    assert!(err.contains("admin.tls.cert_file: cannot read"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
