//! Error bodies: Anthropic `{"type":"error","error":{"type","message"}}` ⇄ OpenAI
//! `{"error":{"message","type","param","code"}}`. The HTTP status never changes.

use serde_json::{json, Value};

/// A translated error response: the unchanged status and the body in the other format.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedError {
    /// HTTP status (as received).
    pub status: u16,
    /// Error body in the client's wire format.
    pub body: Value,
}

/// Longest upstream text copied into a message when the body is not a recognised error.
const MAX_RAW_MESSAGE: usize = 500;

/// Anthropic `error.type` for an HTTP status: 400 `invalid_request_error`, 401
/// `authentication_error`, 402 `billing_error`, 403 `permission_error`, 404 `not_found_error`,
/// 408/504 `timeout_error`, 413 `request_too_large`, 429 `rate_limit_error`, 503/529
/// `overloaded_error`, other 5xx `api_error`, anything else `invalid_request_error`.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// An Anthropic-shaped error body with the type for `status` (see [`anthropic_error_type`]):
/// what `/v1/messages` answers for errors raised by the gateway itself.
pub fn anthropic_error_body(status: u16, message: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
    })
}

/// OpenAI `(type, code)` for an Anthropic error type (falling back on the status).
fn openai_kind(anthropic_type: Option<&str>, status: Option<u16>) -> (&'static str, Value) {
    let by_status = || anthropic_error_type(status.unwrap_or(500));
    match anthropic_type.unwrap_or_else(by_status) {
        "authentication_error" => ("invalid_request_error", json!("invalid_api_key")),
        "permission_error" => ("permission_error", Value::Null),
        "not_found_error" => ("invalid_request_error", json!("not_found")),
        "request_too_large" => ("invalid_request_error", json!("request_too_large")),
        "rate_limit_error" => ("requests", json!("rate_limit_exceeded")),
        "billing_error" => ("insufficient_quota", json!("insufficient_quota")),
        "overloaded_error" => ("server_error", json!("overloaded")),
        "timeout_error" => ("timeout", json!("timeout")),
        "api_error" => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    }
}

/// An OpenAI error body for an Anthropic `error` object (`{"type", "message"}`), as found in
/// error responses and in streamed `error` events.
pub(crate) fn openai_error_from_anthropic(error: &Value, status: Option<u16>) -> Value {
    let kind = error.get("type").and_then(Value::as_str);
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error");
    let (t, code) = openai_kind(kind, status);
    json!({"error": {"message": message, "type": t, "param": null, "code": code}})
}

fn raw_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return format!("upstream error (HTTP {status})");
    }
    match text.char_indices().nth(MAX_RAW_MESSAGE) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Translates an Anthropic error response (status and raw body) into an OpenAI error body.
/// A body that is not Anthropic-shaped still yields a valid OpenAI error (typed by status,
/// message from the body text).
pub fn anthropic_error_to_openai(status: u16, body: &[u8]) -> MappedError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let body = match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(err) if err.is_object() => openai_error_from_anthropic(err, Some(status)),
        _ => {
            let (t, code) = openai_kind(None, Some(status));
            json!({"error": {
                "message": raw_message(status, body),
                "type": t,
                "param": null,
                "code": code,
            }})
        }
    };
    MappedError { status, body }
}

/// Translates an OpenAI error response (status and raw body) into an Anthropic error body.
/// The type follows the OpenAI `code`/`type` when it is telling (`invalid_api_key`,
/// `rate_limit_exceeded`, `insufficient_quota`, `context_length_exceeded`), else the status
/// ([`anthropic_error_type`]).
pub fn openai_error_to_anthropic(status: u16, body: &[u8]) -> MappedError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let message = match err {
        Some(Value::String(s)) => s.clone(),
        Some(e) => match e.get("message").and_then(Value::as_str) {
            Some(m) => m.to_owned(),
            None => raw_message(status, body),
        },
        None => raw_message(status, body),
    };
    let field = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str);
    let kind = match (field("code"), field("type")) {
        (Some("invalid_api_key"), _) => "authentication_error",
        (Some("rate_limit_exceeded"), _) | (_, Some("requests" | "tokens")) => "rate_limit_error",
        (Some("insufficient_quota"), _) | (_, Some("insufficient_quota")) => "billing_error",
        (Some("context_length_exceeded"), _) => "invalid_request_error",
        _ => anthropic_error_type(status),
    };
    MappedError {
        status,
        body: json!({"type": "error", "error": {"type": kind, "message": message}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_errors_become_openai_errors() {
        let cases: &[(u16, &str, &str, Value)] = &[
            (
                400,
                "invalid_request_error",
                "invalid_request_error",
                Value::Null,
            ),
            (
                401,
                "authentication_error",
                "invalid_request_error",
                json!("invalid_api_key"),
            ),
            (403, "permission_error", "permission_error", Value::Null),
            (
                404,
                "not_found_error",
                "invalid_request_error",
                json!("not_found"),
            ),
            (
                413,
                "request_too_large",
                "invalid_request_error",
                json!("request_too_large"),
            ),
            (
                429,
                "rate_limit_error",
                "requests",
                json!("rate_limit_exceeded"),
            ),
            (500, "api_error", "server_error", Value::Null),
            (529, "overloaded_error", "server_error", json!("overloaded")),
            (504, "timeout_error", "timeout", json!("timeout")),
        ];
        for (status, atype, otype, code) in cases {
            let body = json!({"type": "error", "error": {"type": atype, "message": "m"}});
            let m = anthropic_error_to_openai(*status, body.to_string().as_bytes());
            assert_eq!(m.status, *status);
            assert_eq!(
                m.body,
                json!({"error": {"message": "m", "type": otype, "param": null, "code": code}}),
                "{atype}"
            );
        }
    }

    #[test]
    fn unrecognised_bodies_are_typed_by_status() {
        let m = anthropic_error_to_openai(502, b"<html>Bad Gateway</html>");
        assert_eq!(m.status, 502);
        assert_eq!(m.body["error"]["type"], "server_error");
        assert_eq!(m.body["error"]["message"], "<html>Bad Gateway</html>");
        let m = anthropic_error_to_openai(429, b"");
        assert_eq!(m.body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(m.body["error"]["message"], "upstream error (HTTP 429)");
        let long = "x".repeat(2000);
        let m = openai_error_to_anthropic(500, long.as_bytes());
        let msg = m.body["error"]["message"].as_str().unwrap();
        assert_eq!(msg.chars().count(), MAX_RAW_MESSAGE + 1);
        assert_eq!(m.body["error"]["type"], "api_error");
    }

    #[test]
    fn openai_errors_become_anthropic_errors() {
        let cases: &[(u16, Value, &str)] = &[
            (
                400,
                json!({"type": "invalid_request_error", "code": null}),
                "invalid_request_error",
            ),
            (
                401,
                json!({"type": "invalid_request_error", "code": "invalid_api_key"}),
                "authentication_error",
            ),
            (403, json!({"type": "permission_error"}), "permission_error"),
            (
                404,
                json!({"type": "invalid_request_error", "code": "model_not_found"}),
                "not_found_error",
            ),
            (
                429,
                json!({"type": "requests", "code": "rate_limit_exceeded"}),
                "rate_limit_error",
            ),
            (
                429,
                json!({"type": "insufficient_quota", "code": "insufficient_quota"}),
                "billing_error",
            ),
            (502, json!({"type": "api_error"}), "api_error"),
            (503, json!({"type": "server_error"}), "overloaded_error"),
            (504, json!({"type": "api_error"}), "timeout_error"),
        ];
        for (status, err, atype) in cases {
            let mut err = err.clone();
            err["message"] = json!("boom");
            let body = json!({ "error": err });
            let m = openai_error_to_anthropic(*status, body.to_string().as_bytes());
            assert_eq!(m.status, *status);
            assert_eq!(
                m.body,
                json!({"type": "error", "error": {"type": atype, "message": "boom"}}),
                "{status} {err}"
            );
        }
        assert_eq!(
            anthropic_error_body(529, "busy"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
    }
}
