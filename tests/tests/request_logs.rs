//! Logs of the proxy binary, JSON and pretty: every line logged while a request is handled
//! carries its request id (the client's `x-request-id`), and no API key or prompt text appears
//! in any line, at `debug` level for the proxy's own modules.

mod obs_support;

use std::time::Duration;

use obs_support::{ObsStack, KEYS, LIMITED_KEY, MODEL, PROMPT};

/// A key that is not configured: refused, and never logged either.
const WRONG_KEY: &str = "sk-live-wrong-key-do-not-log-7777";

/// Targets that only log while handling a request.
const REQUEST_TARGETS: [&str; 3] = [
    "tollgate_proxy::http::",
    "tollgate_proxy::providers::",
    "tollgate_proxy::limits::mod",
];

async fn send(
    stack: &ObsStack,
    key: &str,
    model: &str,
    stream: bool,
    rid: &str,
) -> anyhow::Result<u16> {
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stack.proxy_url))
        .bearer_auth(key)
        .header("x-request-id", rid)
        .json(&serde_json::json!({
            "model": model,
            "stream": stream,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": PROMPT}],
        }))
        .send()
        .await?;
    let status = resp.status().as_u16();
    anyhow::ensure!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            == Some(rid),
        "the response does not echo the request id"
    );
    let _ = resp.bytes().await?;
    Ok(status)
}

/// `(target, request id of the line)` of one log line: its span's, or its own field's (the
/// request span is at `debug`; warnings a request logs name it themselves).
fn parse_line(line: &str, format: &str) -> anyhow::Result<(String, Option<String>)> {
    if format == "json" {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON log line ({e}): {line}"))?;
        anyhow::ensure!(
            v["timestamp"].is_string() && v["level"].is_string() && v["fields"].is_object(),
            "JSON line without timestamp/level/fields: {line}"
        );
        let rid = v["span"]["request_id"]
            .as_str()
            .or(v["fields"]["request_id"].as_str())
            .map(str::to_string);
        Ok((v["target"].as_str().unwrap_or_default().to_string(), rid))
    } else {
        // `<ts>  WARN request{request_id="abc" endpoint="chat.completions"}: target: message`
        anyhow::ensure!(
            !line.contains('\x1b'),
            "colour codes in a log file: {line:?}"
        );
        let rid = line.split_once("request_id=").map(|(_, rest)| {
            rest.split([' ', '}'])
                .next()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string()
        });
        let target = line
            .split_whitespace()
            .find(|w| w.starts_with("tollgate_") && w.ends_with(':'))
            .unwrap_or_default()
            .trim_end_matches(':')
            .to_string();
        Ok((target, rid))
    }
}

async fn check(format: &str) -> anyhow::Result<()> {
    check_at(format, obs_support::DEBUG_LOG).await
}

async fn check_at(format: &str, rust_log: &str) -> anyhow::Result<()> {
    let name = format!("logs_{format}");
    let mut stack = ObsStack::start_logging(&name, format, rust_log).await?;
    let rid_failing = tollgate_e2e::unique("rid_failing");
    let rid_unreachable = tollgate_e2e::unique("rid_unreachable");
    let rid_ok = tollgate_e2e::unique("rid_ok");
    assert_eq!(
        send(&stack, KEYS[0].1, "failing-model", false, &rid_failing).await?,
        503
    );
    assert_eq!(
        send(
            &stack,
            KEYS[1].1,
            "unreachable-model",
            true,
            &rid_unreachable
        )
        .await?,
        502
    );
    assert_eq!(send(&stack, KEYS[2].1, MODEL, true, &rid_ok).await?, 200);
    assert_eq!(
        send(&stack, KEYS[3].1, MODEL, false, "rid-plain").await?,
        200
    );
    assert_eq!(
        send(&stack, WRONG_KEY, MODEL, false, "rid-wrong-key").await?,
        401
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.kill(); // flushes nothing more: every line is written as it is logged

    let log = std::fs::read_to_string(&stack.proxy_log)?;
    let agg_log = std::fs::read_to_string(&stack.aggregator_log)?;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the proxy logged nothing");

    // Request lines carry the request id.
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for line in &lines {
        let (target, rid) = parse_line(line, format)?;
        if REQUEST_TARGETS.iter().any(|t| target.starts_with(t)) {
            let rid = rid.unwrap_or_else(|| panic!("request log line without request_id: {line}"));
            *seen.entry(rid).or_default() += 1;
        }
    }
    for rid in [&rid_failing, &rid_unreachable] {
        assert!(
            seen.get(rid).copied().unwrap_or(0) >= 1,
            "no log line of request {rid}; lines by request id: {seen:?}\n{log}"
        );
    }

    // No secret and no prompt text anywhere.
    let mut secrets: Vec<&str> = KEYS.iter().map(|k| k.1).collect();
    secrets.extend([
        LIMITED_KEY,
        WRONG_KEY,
        PROMPT,
        "confidential-prompt-text",
        "dawn",
    ]);
    for (name, text) in [("proxy", &log), ("aggregator", &agg_log)] {
        for s in &secrets {
            assert!(!text.contains(s), "the {name} log contains {s:?}:\n{text}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_ids_and_no_secrets() -> anyhow::Result<()> {
    check("json").await
}

/// At the default level the request span is off; the warnings of failing requests still name
/// their request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_the_default_level_carry_request_ids() -> anyhow::Result<()> {
    check_at("json", "info").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pretty_logs_carry_request_ids_and_no_secrets() -> anyhow::Result<()> {
    check("pretty").await
}
