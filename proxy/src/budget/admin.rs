//! Admin API routes of budgets and credits (see `docs/admin-api.md`): a budget's current
//! window (spend, remaining, reset), a credit account's balance, admin top-ups, CSV
//! statements, and decision cleanup when a budget or credit account goes away.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tollgate_schemas::budgets::entities::{scope_ref, valid_id};
use tollgate_schemas::budgets::ledger::LedgerEntry;
use tollgate_schemas::budgets::window::{date_string, parse_date};
use tollgate_schemas::budgets::{
    decision::CREDITS_FIELD, nanos_to_usd_string, usd_to_nanos, Budget, CreditAccount,
    DecisionKind, Scope, Unit, Window,
};
use tollgate_schemas::telemetry::CREDITS_TOPUPS;

use super::ledger::{Balance, CreditError, Credits, Topup};
use super::statement;
use crate::admin::body::{decode, read_object};
use crate::admin::errors::AdminError;
use crate::admin::handlers::{self, AdminState};
use crate::admin::kinds::AdminEntity;

type Id = Result<Path<String>, PathRejection>;

fn id_of(path: Id) -> Result<String, AdminError> {
    let Path(id) = path.map_err(|e| AdminError::Invalid {
        param: Some("id".into()),
        message: format!("Invalid id in the URL: {e}."),
        code: "invalid_value",
    })?;
    Ok(id)
}

impl From<CreditError> for AdminError {
    fn from(e: CreditError) -> Self {
        match e {
            CreditError::NoLedger => Self::Internal(e.to_string()),
            CreditError::Redis(_) | CreditError::Ledger(_) => Self::StoreUnavailable(e.to_string()),
        }
    }
}

fn credits(st: &AdminState) -> Result<&Credits, AdminError> {
    st.credits.as_ref().ok_or_else(|| {
        AdminError::Internal(
            "budgets and credits need the Redis config store (set redis: in the proxy config)"
                .into(),
        )
    })
}

/// `2024-05-01T00:00:00Z` of a Unix ms instant.
pub fn iso(ms: i64) -> String {
    let s = ms.rem_euclid(86_400_000) / 1000;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date_string(ms),
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

fn amounts(unit: Unit, name: &str, v: i64, out: &mut serde_json::Map<String, Value>) {
    out.insert(name.to_string(), json!(v));
    if unit == Unit::Usd {
        out.insert(format!("{name}_usd"), json!(nanos_to_usd_string(v)));
    }
}

/// The current window of a budget: spend, reservations, remaining, reset time and state.
async fn status(c: &Credits, b: &Budget) -> Result<Value, AdminError> {
    let now = super::now_ms();
    let window = Window::of(b.period, now);
    let (spent, reserved) = c.counter(&b.counter_key(c.prefix(), &window)).await?;
    let decision = c.decision(&b.scope_ref(), &b.id).await?;
    let limit = b.limit();
    let state = match decision.filter(|d| d.active(now)).map(|d| d.kind) {
        Some(DecisionKind::Block) => "blocked",
        Some(DecisionKind::Reserve) => "reserving",
        None if spent >= limit => "over_limit",
        None => "ok",
    };
    let mut out = serde_json::Map::new();
    out.insert("window".into(), json!(window.label));
    out.insert("window_start".into(), json!(iso(window.start_ms)));
    out.insert("resets_at".into(), json!(window.end_ms.map(iso)));
    out.insert("unit".into(), json!(b.unit().as_str()));
    amounts(b.unit(), "limit", limit, &mut out);
    amounts(b.unit(), "spent", spent, &mut out);
    amounts(b.unit(), "reserved", reserved, &mut out);
    amounts(b.unit(), "remaining", (limit - spent).max(0), &mut out);
    out.insert(
        "used_pct".into(),
        json!((spent as f64 * 10_000.0 / limit.max(1) as f64).round() / 100.0),
    );
    out.insert("state".into(), json!(state));
    Ok(Value::Object(out))
}

/// `GET /admin/v1/budgets/{id}`: the budget plus `status` (its current window).
pub async fn read_budget(
    State(st): State<AdminState>,
    path: Id,
) -> Result<Json<Value>, AdminError> {
    let id = id_of(path)?;
    let b = st
        .store
        .get::<Budget>(&id)
        .await?
        .ok_or(AdminError::NotFound { kind: "budget", id })?;
    let mut view = b.view();
    if let (Some(c), Some(obj)) = (st.credits.as_ref(), view.as_object_mut()) {
        // The entity is readable even while the counters are not.
        let s = status(c, &b).await.unwrap_or_else(|e| {
            tracing::warn!(budget = %b.id, error = %e, "budget status unavailable");
            json!({"error": e.to_string()})
        });
        obj.insert("status".into(), s);
    }
    Ok(Json(view))
}

/// `PUT /admin/v1/budgets/{id}`: replace; a moved scope loses the old scope's decision.
pub async fn replace_budget(
    State(st): State<AdminState>,
    path: Id,
    body: Body,
) -> Result<Response, AdminError> {
    let id = id_of(path)?;
    let old = st.store.get::<Budget>(&id).await?;
    let resp = handlers::replace::<Budget>(State(st.clone()), Ok(Path(id.clone())), body).await?;
    if let (Some(old), Some(c)) = (old, st.credits.as_ref()) {
        if let Some(new) = st.store.get::<Budget>(&id).await? {
            if new.scope_ref() != old.scope_ref() {
                c.clear_decision(&old.scope_ref(), &id).await?;
            }
        }
    }
    Ok(resp)
}

/// `DELETE /admin/v1/budgets/{id}`: delete and lift its decision.
pub async fn remove_budget(State(st): State<AdminState>, path: Id) -> Result<Response, AdminError> {
    let id = id_of(path)?;
    let old = st.store.get::<Budget>(&id).await?;
    let resp = handlers::remove::<Budget>(State(st.clone()), Ok(Path(id.clone()))).await?;
    if let (Some(old), Some(c)) = (old, st.credits.as_ref()) {
        c.clear_decision(&old.scope_ref(), &id).await?;
    }
    Ok(resp)
}

fn balance_view(b: Balance, blocked: bool) -> Value {
    json!({
        "topups_nanos": b.topups_nanos,
        "used_nanos": b.used_nanos,
        "balance_nanos": b.balance_nanos,
        "balance_usd": nanos_to_usd_string(b.balance_nanos),
        "blocked": blocked,
    })
}

/// `GET /admin/v1/credit-accounts/{id}`: the account plus `balance`.
pub async fn read_credit_account(
    State(st): State<AdminState>,
    path: Id,
) -> Result<Json<Value>, AdminError> {
    let id = id_of(path)?;
    let a = st
        .store
        .get::<CreditAccount>(&id)
        .await?
        .ok_or_else(|| AdminError::NotFound {
            kind: "credit account",
            id: id.clone(),
        })?;
    let mut view = a.view();
    if let (Some(c), Some(obj)) = (st.credits.as_ref(), view.as_object_mut()) {
        let balance = c.balance(&id).await?;
        let blocked = c
            .decision(&scope_ref(Scope::Account, &id), CREDITS_FIELD)
            .await?
            .is_some();
        obj.insert("balance".into(), balance_view(balance, blocked));
    }
    Ok(Json(view))
}

/// `DELETE /admin/v1/credit-accounts/{id}`: delete and lift its block.
pub async fn remove_credit_account(
    State(st): State<AdminState>,
    path: Id,
) -> Result<Response, AdminError> {
    let id = id_of(path)?;
    let resp = handlers::remove::<CreditAccount>(State(st.clone()), Ok(Path(id.clone()))).await?;
    if let Some(c) = st.credits.as_ref() {
        c.clear_decision(&scope_ref(Scope::Account, &id), CREDITS_FIELD)
            .await?;
    }
    Ok(resp)
}

/// Body of `POST /admin/v1/credit-topups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopupBody {
    account_id: String,
    #[serde(default)]
    amount_usd: Option<f64>,
    #[serde(default)]
    amount_nanos: Option<i64>,
    #[serde(default)]
    entry_id: Option<String>,
    #[serde(default)]
    reference: String,
}

fn invalid(param: &str, message: &str) -> AdminError {
    AdminError::Invalid {
        param: Some(param.into()),
        message: message.into(),
        code: "invalid_value",
    }
}

/// Largest top-up: 10^9 USD.
const MAX_TOPUP_NANOS: i64 = 1_000_000_000 * 1_000_000_000;

/// `POST /admin/v1/credit-topups`: credit (or, negative, correct) an account's balance once
/// per `entry_id` (generated when absent). 201 when applied, 200 for a repeated entry id.
pub async fn create_topup(
    State(st): State<AdminState>,
    body: Body,
) -> Result<Response, AdminError> {
    let req: TopupBody = decode(read_object(body).await?)?;
    let amount = match (req.amount_usd, req.amount_nanos) {
        (Some(usd), None) if usd.is_finite() => usd_to_nanos(usd),
        (None, Some(n)) => n,
        _ => {
            return Err(invalid(
                "amount_usd",
                "Set exactly one of `amount_usd` and `amount_nanos`.",
            ))
        }
    };
    if amount == 0 || amount.abs() > MAX_TOPUP_NANOS {
        return Err(invalid(
            "amount_usd",
            "The amount must be non-zero and at most 1000000000 USD (negative: a correction).",
        ));
    }
    let entry_id = req
        .entry_id
        .unwrap_or_else(|| format!("admin-{}", uuid::Uuid::now_v7()));
    if !valid_id(&entry_id) {
        return Err(invalid(
            "entry_id",
            "`entry_id` must be 1-128 characters of letters, digits, '.', '_', '-', ':' or '/'.",
        ));
    }
    if req.reference.len() > 512 {
        return Err(invalid(
            "reference",
            "`reference` is at most 512 characters.",
        ));
    }
    let c = credits(&st)?;
    let account = st
        .store
        .get::<CreditAccount>(&req.account_id)
        .await?
        .ok_or_else(|| AdminError::UnknownReference {
            param: "account_id".into(),
            message: format!(
                "`account_id`: credit account `{}` does not exist. Create it first (POST /admin/v1/credit-accounts).",
                req.account_id
            ),
        })?;
    let kind = if amount > 0 { "topup" } else { "adjustment" };
    let entry = LedgerEntry::new(
        &account.id,
        &entry_id,
        super::now_ms(),
        kind,
        "admin",
        amount,
        &req.reference,
    );
    let outcome = c.topup(&account, &entry).await;
    let result = match &outcome {
        Ok(Topup::Applied(_)) => "applied",
        Ok(Topup::Duplicate(_)) => "duplicate",
        Err(_) => "rejected",
    };
    metrics::counter!(CREDITS_TOPUPS, "source" => "admin", "result" => result).increment(1);
    let (status, balance) = match outcome? {
        Topup::Applied(b) => (StatusCode::CREATED, b),
        Topup::Duplicate(b) => (StatusCode::OK, b),
    };
    tracing::info!(account = %account.id, entry_id, amount, result, "admin: credit top-up");
    let body = json!({
        "entry_id": entry_id,
        "account_id": account.id,
        "amount_nanos": amount,
        "status": result,
        "balance": balance_view(balance, account.block_at_zero && balance.balance_nanos <= 0),
    });
    Ok((status, Json(body)).into_response())
}

/// `GET /admin/v1/credit-statements/{account id}?from=YYYY-MM-DD&to=YYYY-MM-DD`: the CSV
/// statement of `[from, to)` (defaults: the account's start, and tomorrow).
pub async fn statement(
    State(st): State<AdminState>,
    path: Id,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, AdminError> {
    let id = id_of(path)?;
    let Query(query) = query.map_err(|e| invalid("from", &format!("Invalid query: {e}.")))?;
    if let Some(k) = query.keys().find(|k| !["from", "to"].contains(&k.as_str())) {
        return Err(AdminError::Invalid {
            param: Some(k.clone()),
            message: format!("Unknown query parameter `{k}`: use `from` and `to` (YYYY-MM-DD)."),
            code: "unknown_field",
        });
    }
    let account =
        st.store
            .get::<CreditAccount>(&id)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                kind: "credit account",
                id: id.clone(),
            })?;
    let date = |name: &str, default: i64| match query.get(name) {
        None => Ok(default),
        Some(s) => parse_date(s)
            .ok_or_else(|| invalid(name, &format!("`{name}` must be a date YYYY-MM-DD (UTC)."))),
    };
    let today = Window::of(tollgate_schemas::budgets::Period::Daily, super::now_ms());
    let since_day = Window::of(tollgate_schemas::budgets::Period::Daily, account.since()).start_ms;
    let from_ms = date("from", since_day)?;
    let to_ms = date("to", today.end_ms.unwrap_or(i64::MAX))?;
    if to_ms <= from_ms {
        return Err(invalid("to", "`to` must be after `from`."));
    }
    let db = credits(&st)?.db()?;
    let csv = statement::render(
        db,
        &account.id,
        account.since(),
        statement::Period { from_ms, to_ms },
    )
    .await
    .map_err(|e| AdminError::StoreUnavailable(format!("ClickHouse: {e}")))?;
    let mut resp = csv.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let name = format!(
        "attachment; filename=\"statement-{}-{}-{}.csv\"",
        account.id.replace(['/', '"'], "_"),
        date_string(from_ms),
        date_string(to_ms)
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
