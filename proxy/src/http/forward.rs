//! Sending a request to a model's deployments: weighted choice within priority tiers,
//! failover on 5xx / 429 / timeouts / connection errors, bounded retries with backoff, and
//! per-deployment cooldown after repeated failures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::ApiError;
use super::translate;
use super::AppState;
use crate::providers::client::UpstreamBody;
use crate::providers::{self, Endpoint, Route};
use crate::routing::{attempt_order, Deployment, Model};

/// The upstream response that will be relayed.
#[derive(Debug)]
pub struct Forwarded {
    /// The response (success, or the last failure when every attempt failed with a status).
    pub response: http::Response<UpstreamBody>,
    /// When the attempt that answered must have finished, body included (`timeouts.total_ms`).
    pub deadline: tokio::time::Instant,
    /// Deployment that answered.
    pub deployment: Arc<Deployment>,
    /// Wire route used.
    pub route: Route,
    /// Attempts made.
    pub attempts: i32,
    /// Time from the first attempt until these response headers, µs.
    pub headers_us: i64,
}

/// What one call needs to know.
#[derive(Debug)]
pub struct Call<'a> {
    /// Public model.
    pub model: &'a Model,
    /// Client endpoint.
    pub endpoint: Endpoint,
    /// The client's body.
    pub body: &'a super::client_body::ClientBody,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Request id.
    pub request_id: &'a str,
    /// Request id as the header sent upstream.
    pub request_id_header: &'a http::HeaderValue,
    /// Client's `anthropic-version`, passed on to Anthropic upstreams.
    pub anthropic_version: Option<&'a str>,
}

fn retryable_status(status: http::StatusCode) -> bool {
    status.as_u16() == 429 || status.is_server_error()
}

/// The provider refused the deployment's credentials (its key, or what that key may do).
fn refused_credentials(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403)
}

/// Try deployments until one answers. `on_attempt` is told each deployment tried.
pub async fn forward(
    st: &AppState,
    call: &Call<'_>,
    mut on_attempt: impl FnMut(&Deployment),
) -> Result<Forwarded, (ApiError, i32)> {
    let model = call.model;
    let order = attempt_order(model, &st.health, rand::random::<f64>);
    let started = Instant::now();
    let mut attempts = 0i32;
    let mut last_error: Option<ApiError> = None;
    let mut unsupported: Option<&'static str> = None;
    let routable: Vec<(Arc<Deployment>, Route)> = order
        .into_iter()
        .filter_map(|d| match providers::route(call.endpoint, d.provider) {
            Ok(r) => Some((d, r)),
            Err(why) => {
                unsupported = Some(why);
                None
            }
        })
        .collect();
    if routable.is_empty() {
        let reason = unsupported.unwrap_or("no deployment");
        return Err((
            ApiError::EndpointNotSupported {
                model: model.name.clone(),
                reason,
            },
            0,
        ));
    }
    let max = model.retry.max_attempts.max(1) as usize;
    let timeouts = model.timeouts;
    let client = st.clients.get(timeouts.connect_ms).map_err(|e| (e, 0))?;
    for i in 0..max {
        let (deployment, route) = &routable[i % routable.len()];
        if i > 0 {
            let backoff = model.retry.backoff_ms.saturating_mul(1 << (i - 1).min(10));
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        attempts += 1;
        on_attempt(deployment);
        let body: Bytes =
            translate::request_body(*route, call, deployment).map_err(|e| (e, attempts))?;
        let req = providers::upstream_request(
            deployment,
            call.endpoint,
            *route,
            body,
            call.request_id_header,
            call.anthropic_version,
        )
        .map_err(|e| (e, attempts))?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeouts.total_ms);
        let first_byte = Duration::from_millis(timeouts.first_byte_ms.min(timeouts.total_ms));
        let last = i + 1 == max;
        match tokio::time::timeout(first_byte, client.send(req, &deployment.target.origin)).await {
            Ok(Ok(resp)) if refused_credentials(resp.status()) => {
                // The deployment's provider key is wrong or revoked: try another deployment,
                // and never show the client the provider's answer about a key it did not send.
                st.health.failure(deployment, &model.retry);
                let status = resp.status().as_u16();
                tracing::error!(request_id = call.request_id, deployment = %deployment.key, status, attempt = attempts, "upstream refused the deployment's credentials");
                last_error = Some(ApiError::UpstreamAuthFailed(status));
            }
            Ok(Ok(resp)) if retryable_status(resp.status()) => {
                st.health.failure(deployment, &model.retry);
                tracing::warn!(request_id = call.request_id, deployment = %deployment.key, status = resp.status().as_u16(), attempt = attempts, "upstream failed");
                if last {
                    return Ok(Forwarded {
                        response: resp,
                        deadline,
                        deployment: deployment.clone(),
                        route: *route,
                        attempts,
                        headers_us: started.elapsed().as_micros() as i64,
                    });
                }
            }
            Ok(Ok(resp)) => {
                if resp.status().is_success() {
                    st.health.success(deployment);
                }
                return Ok(Forwarded {
                    response: resp,
                    deadline,
                    deployment: deployment.clone(),
                    route: *route,
                    attempts,
                    headers_us: started.elapsed().as_micros() as i64,
                });
            }
            Ok(Err(e)) => {
                st.health.failure(deployment, &model.retry);
                tracing::warn!(request_id = call.request_id, deployment = %deployment.key, error = %e, attempt = attempts, "upstream unreachable");
                last_error = Some(e);
            }
            Err(_) => {
                st.health.failure(deployment, &model.retry);
                tracing::warn!(request_id = call.request_id, deployment = %deployment.key, attempt = attempts, "upstream first-byte timeout");
                last_error = Some(ApiError::UpstreamTimeout);
            }
        }
    }
    Err((
        last_error.unwrap_or(ApiError::UpstreamUnavailable("no attempt made".into())),
        attempts,
    ))
}
