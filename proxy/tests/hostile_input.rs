//! Hostile input on every public endpoint and the admin API: each case gets the right 4xx and
//! a clear message, the server never panics or hangs, slow or oversized headers are cut off,
//! CR/LF in `x-request-id` is never echoed, and every authenticated request on a model
//! endpoint produces exactly one usage event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{create_topic, unique, Env, KEY, LIMITED_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_loadtest::{MockConfig, MockServer};

const ADMIN_KEY: &str = "admin-key-hostile-0001";

async fn env_with_admin() -> Env {
    let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::default())
        .await
        .unwrap();
    let slow_mock = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::default())
        .await
        .unwrap();
    let topic = unique("hostile_t");
    create_topic(&topic).await;
    let admin_hash = hex::encode(tollgate_proxy::routing::hash_secret(ADMIN_KEY));
    let extra = format!(
        "admin: {{listen: \"127.0.0.1:0\", key_sha256: {admin_hash}}}\nheader_read_timeout_ms: 1500\nupstream_allowlist: [\"http://127.0.0.1:*\"]\n"
    );
    let cfg = common::config(&mock.base_url(), &slow_mock.base_url(), &topic, &extra);
    let proxy = tollgate_proxy::start(cfg).await.unwrap();
    Env {
        mock,
        slow_mock,
        proxy,
        topic,
        http: reqwest::Client::new(),
    }
}

/// One row of the table.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    key: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Substring of the error message.
    message: &'static str,
}

fn case(
    name: &'static str,
    path: &'static str,
    key: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    message: &'static str,
) -> Case {
    Case {
        name,
        method: "POST",
        path,
        key,
        body: body.into(),
        status,
        message,
    }
}

#[rustfmt::skip]
fn public_cases() -> Vec<Case> {
    const CHAT: &str = "/v1/chat/completions";
    let k = Some(KEY);
    let mut deep = "[".repeat(10_000);
    deep.push_str(&"]".repeat(10_000));
    let deep = format!(r#"{{"model":"gpt-mock","messages":{deep}}}"#);
    let mut bad_utf8 = br#"{"model":"gpt-mock","messages":[{"role":"user","content":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bad_utf8.extend_from_slice(br#""}]}"#);
    let huge = format!(
        r#"{{"model":"gpt-mock","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(200_000)
    );
    let msg = r#""messages":[{"role":"user","content":"hi"}]"#;
    vec![
        case("invalid JSON", CHAT, k, r#"{"model":"#, 400, "could not parse the JSON"),
        case("empty body", CHAT, k, "", 400, "could not parse the JSON"),
        case("not an object", CHAT, k, "[1,2]", 400, "JSON object"),
        case("invalid UTF-8", CHAT, k, bad_utf8, 400, "could not parse the JSON"),
        case("deep nesting", CHAT, k, deep, 400, "could not parse the JSON"),
        case("model wrong type", CHAT, k, format!(r#"{{"model":42,{msg}}}"#), 400, "`model` must be a string"),
        case("model missing", CHAT, k, format!("{{{msg}}}"), 400, "`model` is required"),
        case("model too long", CHAT, k, format!(r#"{{"model":"{}",{msg}}}"#, "m".repeat(300)), 400, "`model` is required"),
        case("unknown model", CHAT, k, format!(r#"{{"model":"no-such-model",{msg}}}"#), 404, "does not exist"),
        case("model not allowed", CHAT, Some(LIMITED_KEY), format!(r#"{{"model":"claude-mock",{msg}}}"#), 403, "not allowed"),
        case("messages wrong type", CHAT, k, r#"{"model":"gpt-mock","messages":"hi"}"#, 400, "`messages` is required"),
        case("messages empty", CHAT, k, r#"{"model":"gpt-mock","messages":[]}"#, 400, "`messages` is required"),
        case("stream wrong type", CHAT, k, format!(r#"{{"model":"gpt-mock","stream":"yes",{msg}}}"#), 400, "`stream` must be a boolean"),
        case("max_tokens negative", CHAT, k, format!(r#"{{"model":"gpt-mock","max_tokens":-1,{msg}}}"#), 400, "`max_tokens` must be an integer"),
        case("max_tokens zero", CHAT, k, format!(r#"{{"model":"gpt-mock","max_tokens":0,{msg}}}"#), 400, "`max_tokens` must be an integer"),
        case("max_tokens absurd", CHAT, k, format!(r#"{{"model":"gpt-mock","max_tokens":1e300,{msg}}}"#), 400, "`max_tokens` must be an integer"),
        case("max_tokens huge int", CHAT, k, format!(r#"{{"model":"gpt-mock","max_tokens":18446744073709551615,{msg}}}"#), 400, "`max_tokens` must be an integer"),
        case("max_tokens string", CHAT, k, format!(r#"{{"model":"gpt-mock","max_tokens":"10",{msg}}}"#), 400, "`max_tokens` must be an integer"),
        case("max_completion_tokens float", CHAT, k, format!(r#"{{"model":"gpt-mock","max_completion_tokens":1.5,{msg}}}"#), 400, "`max_completion_tokens` must be an integer"),
        case("huge body", CHAT, k, huge, 413, "larger than the limit"),
        case("completions prompt wrong type", "/v1/completions", k, r#"{"model":"gpt-mock","prompt":7}"#, 400, "`prompt` is required"),
        case("embeddings input missing", "/v1/embeddings", k, r#"{"model":"embed-mock"}"#, 400, "`input` is required"),
        case("embeddings stream", "/v1/embeddings", k, r#"{"model":"embed-mock","input":"x","stream":true}"#, 400, "does not support `stream`"),
        case("messages invalid JSON", "/v1/messages", k, "{nope", 400, "could not parse the JSON"),
        case("messages max_tokens negative", "/v1/messages", k, format!(r#"{{"model":"claude-mock","max_tokens":-5,{msg}}}"#), 400, "`max_tokens` must be an integer"),
        case("no key", CHAT, None, format!(r#"{{"model":"gpt-mock",{msg}}}"#), 401, "didn't provide an API key"),
        case("wrong key", CHAT, Some("sk-wrong"), format!(r#"{{"model":"gpt-mock",{msg}}}"#), 401, "Incorrect API key"),
        case("disabled key", CHAT, Some("sk-proxy-test-disabled"), format!(r#"{{"model":"gpt-mock",{msg}}}"#), 401, "disabled"),
        Case { method: "GET", ..case("wrong method", CHAT, k, "", 405, "") },
        case("unknown path", "/v1/nope", k, "{}", 404, "Unknown path"),
        case("path traversal", "/v1/../admin/v1/keys", k, "{}", 404, "Unknown path"),
    ]
}

#[rustfmt::skip]
fn admin_cases() -> Vec<Case> {
    let k = Some(ADMIN_KEY);
    let mut bad_utf8 = br#"{"name":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xc3, 0x28, 0xff]);
    bad_utf8.extend_from_slice(br#"","base_url":"http://127.0.0.1:1/v1"}"#);
    vec![
        case("admin invalid JSON", "/admin/v1/models", k, "{", 400, "not valid JSON"),
        case("admin invalid UTF-8", "/admin/v1/models", k, bad_utf8, 400, "not valid JSON"),
        case("admin wrong type", "/admin/v1/models", k, r#"{"name":5}"#, 400, ""),
        case("admin unknown field", "/admin/v1/keys", k, r#"{"id":"x","account_id":"a","bogus":1}"#, 400, "bogus"),
        case("admin huge body", "/admin/v1/models", k, format!(r#"{{"name":"{}"}}"#, "n".repeat(3 << 20)), 413, "larger than the limit"),
        case("admin no key", "/admin/v1/models", None, "{}", 401, "didn't provide the admin key"),
        case("admin wrong key", "/admin/v1/models", Some("nope"), "{}", 401, "Incorrect admin key"),
        Case { method: "GET", ..case("admin unknown id", "/admin/v1/models/nope", k, "", 404, "does not exist") },
        case("admin unknown route", "/admin/v1/nope", k, "{}", 404, "Unknown admin API route"),
        Case { method: "PATCH", ..case("admin wrong method", "/admin/v1/models", k, "{}", 405, "Method not allowed") },
        case("admin upstream not allowed", "/admin/v1/models", k, r#"{"name":"evil","base_url":"http://169.254.169.254/v1"}"#, 400, "`deployments[0].base_url`"),
        case("admin upstream userinfo trick", "/admin/v1/models", k, r#"{"name":"evil2","deployments":[{"base_url":"http://127.0.0.1:80@169.254.169.254/v1"}]}"#, 400, "upstream_allowlist"),
    ]
}

async fn run_case(http: &reqwest::Client, base: &str, c: &Case) {
    let method = reqwest::Method::from_bytes(c.method.as_bytes()).unwrap();
    let mut req = http
        .request(method, format!("{base}{}", c.path))
        .header("content-type", "application/json")
        .body(c.body.clone());
    if let Some(k) = c.key {
        req = req.bearer_auth(k);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, c.status, "{}: {text}", c.name);
    if !c.message.is_empty() {
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", c.name));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(c.message),
            "{}: message {message:?} lacks {:?}",
            c.name,
            c.message
        );
    }
}

/// Whether `c` passes authentication on a model endpoint (so it must be metered).
fn metered(c: &Case) -> bool {
    let model_path = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
    ]
    .contains(&c.path);
    model_path && c.method == "POST" && matches!(c.key, Some(k) if k == KEY || k == LIMITED_KEY)
}

/// Send raw bytes, return everything the server answers until it closes (or 10 s pass).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_4xx_and_every_accepted_request_is_metered() {
    let env = env_with_admin().await;
    let admin_base = format!("http://{}", env.proxy.admin_addr().unwrap());
    let mut expected_events = 0;
    for c in public_cases() {
        run_case(&env.http, &env.proxy.base_url(), &c).await;
        expected_events += usize::from(metered(&c));
    }
    for c in admin_cases() {
        run_case(&env.http, &admin_base, &c).await;
    }
    // A valid request still works afterwards (the server survived), and is metered.
    let ok = env
        .post(
            "/v1/chat/completions",
            KEY,
            serde_json::json!({"model": "gpt-mock", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(ok.status(), 200);
    expected_events += 1;
    let events = env.events(expected_events).await;
    assert_eq!(events.len(), expected_events);
    assert_eq!(events.iter().filter(|e| e.status_code == 200).count(), 1);
    env.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_huge_and_injected_headers_are_refused() {
    let env = env_with_admin().await;
    let addr = env.proxy.addr();

    // Slowloris: one header byte every 300 ms; the 1.5 s header read timeout drops it.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if tcp.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(
        closed,
        "slow client still connected after {:?}",
        started.elapsed()
    );

    // Huge headers: 431 or a closed connection, never a hang.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1 << 20)
    );
    let answer = raw(addr, big.as_bytes()).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "huge header answered {:?}",
        &answer[..answer.len().min(200)]
    );
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = raw(
        addr,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "many headers answered {:?}",
        &answer[..answer.len().min(200)]
    );

    // Header injection: bare CR/LF or control bytes in x-request-id are never echoed.
    for injected in [
        &b"abc\rSet-Cookie: evil=1"[..],
        &b"abc\nSet-Cookie: evil=1"[..],
        &b"abc\x00Set-Cookie: evil=1"[..],
        &b"abc Set-Cookie: evil=1"[..],
    ] {
        let mut req =
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
                .to_vec();
        req.extend_from_slice(KEY.as_bytes());
        req.extend_from_slice(b"\r\nX-Request-Id: ");
        req.extend_from_slice(injected);
        req.extend_from_slice(b"\r\n\r\n");
        let answer = raw(addr, &req).await;
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(!head.contains("evil"), "injected header echoed: {head}");
        assert!(
            !head.contains("set-cookie"),
            "injected header echoed: {head}"
        );
    }

    // Invalid UTF-8 in the Authorization header: 401, not a panic.
    let mut req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\nAuthorization: Bearer \xff\xfe\r\n\r\n{}".to_vec();
    req.shrink_to_fit();
    let answer = raw(addr, &req).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // The server is still healthy.
    let ok = env.http.get(env.url("/healthz")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    env.proxy.shutdown().await;
}
