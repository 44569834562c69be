//! Legacy completions, embeddings and Azure OpenAI paths of the mock upstream.
//!
//! Token rules as for chat: prompt tokens = whitespace-separated words of `prompt` / `input`
//! (each string of an array counted; token-id arrays count one token per id); completion tokens
//! = `max_tokens` (default and cap from [`MockConfig`](super::config::MockConfig)).
//! Embeddings have 8 dimensions and honour `encoding_format: "base64"` (little-endian f32),
//! which the official OpenAI SDKs request by default.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::handlers::{sleep_or_shutdown, AppState};
use super::openai::{completion_id, error_body, unix_now, Usage};
use super::tokens::{completion_text, completion_word, count_words, plan_completion};

const DIMENSIONS: usize = 8;

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(error_body(status, message))).into_response()
}

fn injected_status(headers: &HeaderMap, model: &str) -> Option<StatusCode> {
    let from_header = headers
        .get(super::handlers::HEADER_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok());
    let from_model = model
        .strip_prefix(super::handlers::MODEL_STATUS_PREFIX)
        .and_then(|c| c.parse::<u16>().ok());
    from_header
        .or(from_model)
        .filter(|c| (400..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
}

fn text_tokens(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => count_words(s),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => count_words(s),
                Value::Number(_) => 1,
                Value::Array(ids) => ids.len() as u64,
                _ => 0,
            })
            .sum(),
        _ => 0,
    }
}

/// What every endpoint here does first: count the request, parse the JSON object body, read
/// its model and answer an injected error if one is asked for.
fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Value, String), Box<Response>> {
    state.stats.add_request();
    let Some(req) = parse(body) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
        )));
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match injected_status(headers, &model) {
        Some(status) => Err(Box::new(error(status, "mock injected error"))),
        None => Ok((req, model)),
    }
}

fn parse(body: &Bytes) -> Option<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// `POST /v1/completions` (legacy text completions, JSON and SSE).
pub(crate) async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, model) = match accept(&state, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    if req.get("prompt").is_none() {
        return error(StatusCode::BAD_REQUEST, "missing prompt");
    }
    let prompt = text_tokens(req.get("prompt"));
    let (completion, finish) = plan_completion(
        req.get("max_tokens").and_then(Value::as_u64),
        state.cfg.default_completion_tokens,
        state.cfg.max_completion_tokens,
    );
    let usage = Usage {
        prompt_tokens: prompt,
        completion_tokens: u64::from(completion),
    };
    let mut shutdown = state.shutdown.clone();
    if !sleep_or_shutdown(state.cfg.latency_ms, &mut shutdown).await {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    state.stats.add_served(stream, usage);
    let id = completion_id().replace("chatcmpl", "cmpl");
    let created = unix_now();
    if !stream {
        return Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": completion_text(completion), "index": 0, "logprobs": null,
                         "finish_reason": finish.as_str()}],
            "usage": usage.to_json(),
        }))
        .into_response();
    }
    let include_usage = req.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    let delay = state.cfg.chunk_delay_ms;
    let chunk = move |text: String, finish: Option<&str>| {
        json!({"id": id, "object": "text_completion", "created": created, "model": model,
               "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]})
    };
    let mut events: Vec<Value> = (0..completion)
        .map(|i| {
            let w = completion_word(i);
            chunk(
                if i == 0 {
                    w.to_string()
                } else {
                    format!(" {w}")
                },
                None,
            )
        })
        .collect();
    events.push(chunk(String::new(), Some(finish.as_str())));
    if include_usage {
        let mut u = chunk(String::new(), None);
        u["choices"] = json!([]);
        u["usage"] = usage.to_json();
        events.push(u);
    }
    let stream = futures::stream::unfold(
        (events.into_iter(), false),
        move |(mut it, done)| async move {
            if done {
                return None;
            }
            match it.next() {
                Some(ev) => {
                    if delay > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    }
                    Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(format!("data: {ev}\n\n"))),
                        (it, false),
                    ))
                }
                None => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), (it, true))),
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (req, model) = match accept(&state, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    let inputs: Vec<&Value> = match req.get("input") {
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_number()) => items.iter().collect(),
        Some(v @ (Value::String(_) | Value::Array(_))) => vec![v],
        _ => return error(StatusCode::BAD_REQUEST, "missing input"),
    };
    let prompt = text_tokens(req.get("input"));
    state.stats.add_served(
        false,
        Usage {
            prompt_tokens: prompt,
            completion_tokens: 0,
        },
    );
    let base64 = req.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let vector: Vec<f32> = (0..DIMENSIONS)
                .map(|d| ((i + d) as f32 * 0.1).sin())
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }))
    .into_response()
}

/// Azure query string.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct AzureQuery {
    #[serde(rename = "api-version")]
    api_version: Option<String>,
}

fn azure_check(q: &AzureQuery, headers: &HeaderMap) -> Option<Response> {
    if q.api_version.as_deref().is_none_or(str::is_empty) {
        return Some(error(
            StatusCode::NOT_FOUND,
            "Azure OpenAI requires the api-version query parameter",
        ));
    }
    if headers.get("api-key").is_none() && headers.get(header::AUTHORIZATION).is_none() {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "Azure OpenAI requires an api-key header",
        ));
    }
    None
}

/// Azure `POST /openai/deployments/{deployment}/{operation}`: the OpenAI routes behind Azure's
/// URL scheme, `api-version` query and `api-key` header.
pub(crate) async fn azure(
    State(state): State<AppState>,
    Path((_deployment, operation)): Path<(String, String)>,
    Query(q): Query<AzureQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = azure_check(&q, &headers) {
        return r;
    }
    match operation.as_str() {
        "chat" => error(StatusCode::NOT_FOUND, "use chat/completions"),
        "completions" => completions(State(state), headers, body).await,
        "embeddings" => embeddings(State(state), headers, body).await,
        _ => error(StatusCode::NOT_FOUND, "unknown Azure operation"),
    }
}

/// Azure `POST /openai/deployments/{deployment}/chat/completions`.
pub(crate) async fn azure_chat(
    State(state): State<AppState>,
    Path(_deployment): Path<String>,
    Query(q): Query<AzureQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = azure_check(&q, &headers) {
        return r;
    }
    super::handlers::chat_completions(State(state), headers, Ok(body)).await
}
