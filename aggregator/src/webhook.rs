//! The signed payment webhook: `POST /webhooks/payments` on the aggregator's listener.
//!
//! The payment provider (or the billing service in front of it) signs every call:
//! `Tollgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`
//! (several `v1=` entries are accepted, for secret rotation). A call without that header, with
//! a wrong signature, or with a timestamp more than `budgets.webhook_tolerance_secs` away from
//! now is refused (401) and changes nothing. The body:
//!
//! ```json
//! {"type": "payment.succeeded", "payment_id": "pay_123", "account_id": "acme",
//!  "amount_usd": 25.0, "currency": "usd", "reference": "invoice 42"}
//! ```
//!
//! (`amount_nanos` instead of `amount_usd` also works; `type` defaults to
//! `payment.succeeded`, other types are acknowledged and ignored.) The payment is credited once
//! per `payment_id`: a replay answers 200 `duplicate` without crediting again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use tollgate_schemas::budgets::entities::valid_id;
use tollgate_schemas::budgets::ledger::LedgerEntry;
use tollgate_schemas::budgets::usd_to_nanos;
use tollgate_schemas::telemetry::{CREDITS_TOPUPS, CREDITS_WEBHOOK_REJECTED};

use crate::budget::{now_ms, Budgets};
use crate::credits::Topup;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "tollgate-signature";
/// The route.
pub const PATH: &str = "/webhooks/payments";
/// Largest accepted body.
const MAX_BODY: usize = 64 * 1024;

/// Webhook state.
#[derive(Clone)]
pub struct WebhookState {
    budgets: Budgets,
    secret: Option<Arc<[u8]>>,
    tolerance_secs: i64,
}

impl std::fmt::Debug for WebhookState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookState")
            .field("enabled", &self.secret.is_some())
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

/// The webhook route; without a secret it answers 404 (disabled).
pub fn router(budgets: Budgets, secret: Option<String>, tolerance_secs: u64) -> Router {
    let state = WebhookState {
        budgets,
        secret: secret.map(|s| Arc::from(s.into_bytes())),
        tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(300),
    };
    Router::new().route(PATH, post(payment)).with_state(state)
}

/// `t=<unix>,v1=<hex>` for `body` (what a sender puts in [`SIGNATURE_HEADER`]).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let sig = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map(|mut m| {
            m.update(timestamp.to_string().as_bytes());
            m.update(b".");
            m.update(body);
            hex::encode(m.finalize().into_bytes())
        })
        .unwrap_or_default();
    format!("t={timestamp},v1={sig}")
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No signature header.
    Unsigned,
    /// Malformed header or no matching signature.
    BadSignature,
    /// Timestamp outside the tolerance.
    Stale,
}

impl Rejection {
    fn label(self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale",
        }
    }
}

/// Check the signature header of `body` at `now_secs`.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), Rejection> {
    let header = header.ok_or(Rejection::Unsigned)?;
    let mut timestamp = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| Rejection::BadSignature)?),
            _ => {}
        }
    }
    let t = timestamp.ok_or(Rejection::BadSignature)?;
    if sigs.is_empty() {
        return Err(Rejection::BadSignature);
    }
    let ok = sigs.iter().any(|sig| {
        let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
            return false;
        };
        m.update(t.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        m.verify_slice(sig).is_ok()
    });
    if !ok {
        return Err(Rejection::BadSignature);
    }
    if (now_secs - t).abs() > tolerance_secs {
        return Err(Rejection::Stale);
    }
    Ok(())
}

/// The JSON body.
#[derive(Debug, Deserialize)]
struct Payment {
    #[serde(default = "succeeded", rename = "type")]
    kind: String,
    payment_id: String,
    account_id: String,
    #[serde(default)]
    amount_usd: Option<f64>,
    #[serde(default)]
    amount_nanos: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    reference: String,
}

fn succeeded() -> String {
    "payment.succeeded".into()
}

fn answer(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn reject(status: StatusCode, reason: &'static str, message: &str) -> Response {
    metrics::counter!(CREDITS_WEBHOOK_REJECTED, "reason" => reason).increment(1);
    metrics::counter!(CREDITS_TOPUPS, "source" => "webhook", "result" => "rejected").increment(1);
    tracing::warn!(reason, "payment webhook refused");
    answer(status, reason, message)
}

async fn payment(State(st): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &st.secret else {
        metrics::counter!(CREDITS_WEBHOOK_REJECTED, "reason" => "disabled").increment(1);
        return answer(
            StatusCode::NOT_FOUND,
            "disabled",
            "The payment webhook is disabled: set budgets.webhook_secret_env on the aggregator.",
        );
    };
    if body.len() > MAX_BODY {
        return reject(StatusCode::PAYLOAD_TOO_LARGE, "invalid", "Body too large.");
    }
    let header = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(r) = verify(secret, header, &body, now_ms() / 1000, st.tolerance_secs) {
        let message = match r {
            Rejection::Unsigned => "Missing Tollgate-Signature header.",
            Rejection::BadSignature => "The signature does not match the body.",
            Rejection::Stale => "The signature's timestamp is outside the accepted window.",
        };
        return reject(StatusCode::UNAUTHORIZED, r.label(), message);
    }
    let p: Payment = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Invalid payment JSON: {e}."),
            )
        }
    };
    if p.kind != "payment.succeeded" {
        return (StatusCode::OK, Json(json!({"status": "ignored"}))).into_response();
    }
    let amount = match (p.amount_usd, p.amount_nanos) {
        (Some(usd), None) if usd.is_finite() => usd_to_nanos(usd),
        (None, Some(n)) => n,
        _ => {
            return reject(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Set exactly one of amount_usd and amount_nanos.",
            )
        }
    };
    let currency_ok = p
        .currency
        .as_deref()
        .is_none_or(|c| c.eq_ignore_ascii_case("usd"));
    if amount <= 0 || !currency_ok || !valid_id(&p.payment_id) || !valid_id(&p.account_id) {
        return reject(
            StatusCode::BAD_REQUEST,
            "invalid",
            "A payment needs a positive USD amount and valid payment_id and account_id.",
        );
    }
    let account = match st.budgets.credit_account(&p.account_id).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            return reject(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_account",
                "No credit account with this account_id.",
            )
        }
        Err(e) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &format!("Try again later ({e})."),
            )
        }
    };
    let reference: String = p.reference.chars().take(512).collect();
    let entry = LedgerEntry::new(
        &account.id,
        &p.payment_id,
        now_ms(),
        "topup",
        "webhook",
        amount,
        &reference,
    );
    match st.budgets.topup(&account, &entry).await {
        Ok(Topup::Applied { balance_nanos }) => {
            metrics::counter!(CREDITS_TOPUPS, "source" => "webhook", "result" => "applied")
                .increment(1);
            tracing::info!(account = %account.id, payment_id = %p.payment_id, amount, balance_nanos, "payment credited");
            (
                StatusCode::OK,
                Json(json!({"status": "applied", "balance_nanos": balance_nanos})),
            )
                .into_response()
        }
        Ok(Topup::Duplicate { balance_nanos }) => {
            metrics::counter!(CREDITS_TOPUPS, "source" => "webhook", "result" => "duplicate")
                .increment(1);
            tracing::info!(account = %account.id, payment_id = %p.payment_id, "payment already credited");
            (
                StatusCode::OK,
                Json(json!({"status": "duplicate", "balance_nanos": balance_nanos})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::warn!(account = %account.id, error = %e, "payment not credited; the sender should retry");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The payment could not be recorded now; retry later.",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_exact_body_secret_and_time() {
        let body = br#"{"payment_id":"p1"}"#;
        let now = 1_700_000_000;
        let header = sign(b"secret", now, body);
        assert_eq!(
            verify(b"secret", Some(&header), body, now + 10, 300),
            Ok(())
        );
        assert_eq!(
            verify(b"secret", None, body, now, 300),
            Err(Rejection::Unsigned)
        );
        assert_eq!(
            verify(b"other", Some(&header), body, now, 300),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(
                b"secret",
                Some(&header),
                br#"{"payment_id":"p2"}"#,
                now,
                300
            ),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(b"secret", Some(&header), body, now + 301, 300),
            Err(Rejection::Stale)
        );
        assert_eq!(
            verify(b"secret", Some("t=1,v1=zz"), body, 1, 300),
            Err(Rejection::BadSignature)
        );
        let rotated = format!("{header},v1={}", "00".repeat(32));
        assert_eq!(verify(b"secret", Some(&rotated), body, now, 300), Ok(()));
    }
}
