//! `POST /v1/chat/completions`: authenticate, resolve the model, forward, relay, meter.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::stream::MeteredSse;
use super::{request_id, AppState};
use crate::providers::openai;
use crate::routing::ApiKey;
use crate::usage::{Meter, Outcome, Tokens};

const ENDPOINT: &str = "chat.completions";

/// Handler for `POST /v1/chat/completions` (JSON and SSE).
pub async fn chat_completions(State(st): State<AppState>, req: Request) -> Response {
    let rid = request_id(req.headers());
    let mut resp = match handle(&st, req, &rid).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert("x-request-id", rid);
    resp
}

fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<std::sync::Arc<ApiKey>, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::MissingKey)?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::MissingKey)?;
    st.catalog
        .key_for_secret(secret)
        .ok_or(ApiError::InvalidKey)
}

async fn handle(st: &AppState, req: Request, rid: &HeaderValue) -> Result<Response, ApiError> {
    let key = authenticate(st, req.headers())?;
    let rid_str = rid.to_str().unwrap_or("unknown");
    let mut meter = Some(Meter::start(
        st.usage.clone(),
        &st.proxy_id,
        rid_str,
        &key,
        ENDPOINT,
    ));
    let result = forward(st, req, &key, rid_str, &mut meter).await;
    if let (Err(e), Some(m)) = (&result, meter.take()) {
        m.finish(Outcome {
            status: e.status().as_u16(),
            error_type: Some(e.code().to_string()),
            ..Outcome::default()
        });
    }
    result
}

/// Read the body up to `limit`. A larger body is drained (up to 8x the limit) before the 413,
/// so that the client, still writing, can read the answer instead of a reset connection.
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let drain_cap = limit.saturating_mul(8);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > drain_cap) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let mut body = req.into_body();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::InvalidRequest {
            message: "The request body could not be read.".into(),
            param: None,
        })?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= limit {
                buf.extend_from_slice(&data);
            } else if total > drain_cap {
                return Err(ApiError::BodyTooLarge(limit));
            }
        }
    }
    if total > limit {
        return Err(ApiError::BodyTooLarge(limit));
    }
    Ok(buf.freeze())
}

async fn forward(
    st: &AppState,
    req: Request,
    key: &ApiKey,
    rid: &str,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let body = read_body(req, st.max_body_bytes).await?;
    let mut json: Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let model_name = match json.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(ApiError::InvalidRequest {
                message: "`model` is required and must be a non-empty string.".into(),
                param: Some("model"),
            })
        }
    };
    let stream = match json.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::InvalidRequest {
                message: "`stream` must be a boolean.".into(),
                param: Some("stream"),
            })
        }
    };
    if let Some(m) = meter.as_mut() {
        m.set_requested_model(&model_name);
        if let Some(Value::Object(meta)) = json.get("metadata") {
            m.set_metadata(meta);
        }
    }
    let model = st
        .catalog
        .model(&model_name)
        .ok_or_else(|| ApiError::ModelNotFound(model_name.clone()))?;
    if !key.allows(&model.name) {
        return Err(ApiError::ModelNotAllowed(model_name));
    }
    if let Some(m) = meter.as_mut() {
        m.set_model(&model, stream);
    }

    json.insert("model".into(), Value::String(model.upstream_model.clone()));
    let mut hide_usage = false;
    if stream {
        let opts = json
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = opts {
            hide_usage = o.get("include_usage") != Some(&Value::Bool(true));
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    let prompt_estimate = openai::estimate_tokens(body.len());
    let upstream_body =
        Bytes::from(serde_json::to_vec(&json).map_err(|e| ApiError::InvalidJson(e.to_string()))?);

    let sent = Instant::now();
    let upstream =
        openai::send(&st.client, &model, "/chat/completions", upstream_body, rid).await?;
    let status = upstream.status();
    let content_type = upstream.headers().get(header::CONTENT_TYPE).cloned();
    let is_sse = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if stream && status.is_success() && is_sse {
        let headers_us = sent.elapsed().as_micros() as i64;
        let Some(m) = meter.take() else {
            return Err(ApiError::UpstreamUnavailable(
                "internal: meter missing".into(),
            ));
        };
        let relay = MeteredSse::new(
            upstream.bytes_stream(),
            m,
            hide_usage,
            prompt_estimate,
            headers_us,
        );
        let mut resp = Response::new(Body::from_stream(relay));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }

    let bytes = upstream.bytes().await.map_err(openai::classify)?;
    let upstream_latency_us = sent.elapsed().as_micros() as i64;
    let tokens = if status.is_success() {
        openai::response_usage(&bytes).unwrap_or(Tokens {
            prompt: prompt_estimate,
            completion: 0,
            cached: 0,
            estimated: true,
        })
    } else {
        Tokens::default()
    };
    let error_type = (!status.is_success()).then(|| format!("upstream_{}", status.as_u16()));
    if let Some(m) = meter.take() {
        m.finish(Outcome {
            status: status.as_u16(),
            error_type,
            tokens,
            ttft_us: None,
            upstream_latency_us,
            attempts: 1,
        });
    }
    let mut resp = (
        StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
        bytes,
    )
        .into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
    );
    Ok(resp)
}
