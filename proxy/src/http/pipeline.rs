//! One pipeline for every model endpoint: authenticate → parse → resolve model → forward
//! (retries, failover) → relay or translate the response → meter.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::Instrument as _;

use super::auth::authenticate;
use super::body::read_body;
use super::client_body::{ClientBody, Kind};
use super::error::ApiError;
use super::forward::{forward, Call};
use super::stream::{MeteredSse, RelayOptions};
use super::{request_id, translate, AppState};
use crate::limits::Ask;
use crate::providers::client::BodyStream;
use crate::providers::{tokens, Endpoint};
use crate::routing::{ApiKey, Catalog};
use crate::usage::{Meter, Outcome};

/// Largest accepted `max_tokens`.
pub const MAX_TOKENS_LIMIT: u64 = 1_000_000;

/// A model endpoint: every request goes through this one pipeline.
pub async fn handle(st: &AppState, req: Request, endpoint: Endpoint) -> Response {
    let rid = request_id(req.headers());
    // A debug span: at the default `info` level it costs nothing, while a span per request
    // was 4 % of the proxy's CPU (the JSON log format renders its fields when it is made).
    // The warnings a request can log name its request id themselves.
    let span = tracing::debug_span!(
        "request",
        request_id = rid.to_str().unwrap_or("unknown"),
        endpoint = endpoint.as_str()
    );
    let mut resp = match run(st, req, endpoint, &rid).instrument(span).await {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!(tollgate_schemas::telemetry::PROXY_REJECTIONS, "reason" => e.code())
                .increment(1);
            if endpoint.anthropic_client() {
                e.into_anthropic_response()
            } else {
                e.into_response()
            }
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    resp
}

const X_REQUEST_ID: axum::http::HeaderName = axum::http::HeaderName::from_static("x-request-id");

async fn run(
    st: &AppState,
    req: Request,
    endpoint: Endpoint,
    rid: &HeaderValue,
) -> Result<Response, ApiError> {
    let catalog = st.catalog.borrow().clone();
    let key = authenticate(&catalog, req.headers())?;
    let rid_str = rid.to_str().unwrap_or("unknown");
    let mut meter = Some(Meter::start(
        st.usage.clone(),
        &st.proxy_id,
        rid_str,
        &key,
        endpoint,
    ));
    let result = serve(st, &catalog, &key, req, endpoint, rid, &mut meter).await;
    if let (Err(e), Some(m)) = (&result, meter.take()) {
        m.finish(Outcome {
            status: e.status().as_u16(),
            error_type: Some(e.code().to_string()),
            ..Outcome::default()
        });
    }
    result
}

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param),
    }
}

/// Field checks shared by every endpoint; the provider checks the rest. Returns the model
/// name and whether a stream was asked for.
pub fn check_fields(body: &ClientBody, endpoint: Endpoint) -> Result<(String, bool), ApiError> {
    let required_model = || {
        invalid(
            "`model` is required: a string of 1-256 characters.",
            "model",
        )
    };
    let model = match body.field("model") {
        None => return Err(required_model()),
        Some(m) if m.kind() != Kind::String => {
            return Err(invalid("`model` must be a string.", "model"))
        }
        Some(m) => m
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or_else(required_model)?
            .into_owned(),
    };
    let stream = match body.field("stream") {
        None => false,
        Some(v) if v.kind() == Kind::Null => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid("`stream` must be a boolean.", "stream"))?,
    };
    if stream && !endpoint.can_stream() {
        return Err(invalid(
            "This endpoint does not support `stream`.",
            "stream",
        ));
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        match body.field(field) {
            None => {}
            Some(v) if v.kind() == Kind::Null => {}
            Some(v)
                if v.as_u64()
                    .is_some_and(|v| (1..=MAX_TOKENS_LIMIT).contains(&v)) => {}
            Some(_) => {
                return Err(ApiError::InvalidRequest {
                    message: format!(
                        "`{field}` must be an integer between 1 and {MAX_TOKENS_LIMIT}."
                    ),
                    param: Some(field),
                })
            }
        }
    }
    let (required, message) = match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages => {
            ("messages", "`messages` is required: a non-empty array.")
        }
        Endpoint::Completions => ("prompt", "`prompt` is required: a string or an array."),
        Endpoint::Embeddings => ("input", "`input` is required: a string or an array."),
    };
    let ok = match required {
        "messages" => body.has_messages(),
        _ => matches!(body.kind_of(required), Some(Kind::String | Kind::Array)),
    };
    if !ok {
        return Err(invalid(message, required));
    }
    Ok((model, stream))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    st: &AppState,
    catalog: &Catalog,
    key: &ApiKey,
    req: Request,
    endpoint: Endpoint,
    rid_header: &HeaderValue,
    meter: &mut Option<Meter>,
) -> Result<Response, ApiError> {
    let anthropic_version = req
        .headers()
        .get("anthropic-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = ClientBody::parse(read_body(req, st.max_body_bytes).await?)?;
    let (model_name, stream) = check_fields(&body, endpoint)?;
    if let Some(m) = meter.as_mut() {
        m.set_requested_model(&model_name);
        m.set_metadata(body.metadata(
            crate::usage::METADATA_MAX_ENTRIES,
            crate::usage::METADATA_MAX_KEY,
            crate::usage::METADATA_MAX_VALUE,
        ));
    }
    let model = catalog
        .model(&model_name)
        .ok_or_else(|| ApiError::ModelNotFound(model_name.clone()))?;
    if !key.allows(&model.name) {
        return Err(ApiError::ModelNotAllowed(model_name));
    }
    if let Some(m) = meter.as_mut() {
        m.set_model(&model, stream);
    }
    let prompt_estimate = body.prompt_estimate();
    let requested = requested_completion(&body);
    if let Some(m) = meter.as_mut() {
        let event_id = m.event_id().to_string();
        let reservation = st
            .budgets
            .check_request(key, &model, prompt_estimate, requested, &event_id)
            .await?;
        m.set_reservation(reservation);
    }
    let admission = st
        .limits
        .acquire(&Ask {
            key,
            model: &model,
            prompt_tokens: prompt_estimate,
            max_completion_tokens: requested,
        })
        .await?;
    let rate_headers = admission.headers;
    if let Some(m) = meter.as_mut() {
        m.set_permit(admission.permit);
        // A client that leaves once the request is upstream is metered for its worst case
        // (as budgets reserve it): the provider bills the call all the same.
        m.set_fallback_tokens(crate::usage::Tokens {
            prompt: prompt_estimate,
            completion: requested.unwrap_or(0),
            cached: 0,
            estimated: true,
        });
    }

    let call = Call {
        model: &model,
        endpoint,
        body: &body,
        stream,
        request_id: rid_header.to_str().unwrap_or("unknown"),
        request_id_header: rid_header,
        anthropic_version: anthropic_version.as_deref(),
    };
    let fwd = match forward(st, &call, |d| {
        if let Some(m) = meter.as_mut() {
            m.set_deployment(d);
        }
    })
    .await
    {
        Ok(f) => f,
        Err((e, attempts)) => {
            if let Some(m) = meter.take() {
                m.finish(Outcome {
                    status: e.status().as_u16(),
                    error_type: Some(e.code().to_string()),
                    attempts,
                    ..Outcome::default()
                });
            }
            return Err(e);
        }
    };
    let status = fwd.response.status();
    let content_type = fwd.response.headers().get(header::CONTENT_TYPE).cloned();
    let is_sse = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));

    if stream && status.is_success() && is_sse {
        let Some(m) = meter.take() else {
            return Err(ApiError::UpstreamUnavailable(
                "internal: meter missing".into(),
            ));
        };
        let stages = translate::stream_stages(fwd.route, &call, &fwd.deployment, &model.name);
        let body = BodyStream::new(fwd.response.into_body(), fwd.deadline);
        let relay = MeteredSse::new(
            body,
            m,
            RelayOptions {
                format: stages.format,
                pre: stages.pre,
                post: stages.post,
                hide_usage: stages.hide_usage,
                rename_model: stages.rename_model,
                prompt_estimate,
                upstream_headers_us: fwd.headers_us,
                attempts: fwd.attempts,
            },
        );
        let mut resp = Response::new(Body::from_stream(relay));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        rate_headers.apply(h);
        return Ok(resp);
    }

    let body_started = std::time::Instant::now();
    let bytes = BodyStream::new(fwd.response.into_body(), fwd.deadline)
        .collect()
        .await?;
    // Waiting for the headers, then for the body: not the proxy's own time before the call.
    let upstream_latency_us = fwd.headers_us + body_started.elapsed().as_micros() as i64;
    let translated = translate::response_body(fwd.route, &call, status, &bytes, &model.name);
    // The provider answered (and bills) but the proxy cannot read the answer: a 502 to the
    // client, metered with the prompt estimate.
    let status = if translated.untranslatable {
        http::StatusCode::BAD_GATEWAY
    } else {
        status
    };
    let tokens = if translated.untranslatable {
        crate::usage::Tokens {
            prompt: prompt_estimate,
            completion: 0,
            cached: 0,
            estimated: true,
        }
    } else if status.is_success() {
        translated.usage.unwrap_or_else(|| crate::usage::Tokens {
            prompt: prompt_estimate,
            completion: tokens::count(&translated.output_text(endpoint)),
            cached: 0,
            estimated: true,
        })
    } else {
        crate::usage::Tokens::default()
    };
    let error_type = if translated.untranslatable {
        Some("upstream_untranslatable".to_owned())
    } else {
        (!status.is_success()).then(|| format!("upstream_{}", status.as_u16()))
    };
    if let Some(m) = meter.take() {
        m.finish(Outcome {
            status: status.as_u16(),
            error_type,
            tokens,
            ttft_us: None,
            upstream_latency_us,
            attempts: fwd.attempts,
        });
    }
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = (status, translated.bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        if translated.changed {
            HeaderValue::from_static("application/json")
        } else {
            content_type.unwrap_or_else(|| HeaderValue::from_static("application/json"))
        },
    );
    rate_headers.apply(resp.headers_mut());
    Ok(resp)
}

/// The completion budget the client set (`max_completion_tokens`, else `max_tokens`).
fn requested_completion(body: &ClientBody) -> Option<i64> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| body.field(f).and_then(|v| v.as_u64()))
        .and_then(|v| i64::try_from(v).ok())
}

/// `GET /v1/models`: the models the calling key may use, in OpenAI's list format.
pub async fn list_models(st: &AppState, req: Request) -> Response {
    let rid = request_id(req.headers());
    let catalog: Arc<Catalog> = st.catalog.borrow().clone();
    let mut resp = match authenticate(&catalog, req.headers()) {
        Ok(key) => {
            let data: Vec<Value> = catalog
                .model_names()
                .into_iter()
                .filter(|m| key.allows(m))
                .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "tollgate"}))
                .collect();
            axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    resp
}
