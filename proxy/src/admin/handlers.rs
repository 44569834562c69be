//! CRUD handlers, generic over the entity kind, and the health check.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tokio::sync::watch;

use super::body::{decode, read_object};
use super::errors::AdminError;
use super::kinds::AdminEntity;
use super::paging::{render, PageQuery};
use crate::routing::Catalog;
use crate::store::{noun, ConfigStore};

/// Response header carrying the config version after a write.
pub const VERSION_HEADER: &str = "x-tollgate-config-version";

/// Shared handler state.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The config store.
    pub store: ConfigStore,
    /// This proxy's live catalog (for the health check).
    pub catalog: watch::Receiver<Arc<Catalog>>,
    /// Balances, decisions and the ledger of budgets and credits (Redis mode only).
    pub credits: Option<crate::budget::ledger::Credits>,
    /// Allowed upstream base URLs of models.
    pub allowlist: crate::allowlist::Allowlist,
}

type Id = Result<Path<String>, PathRejection>;

fn id_of(path: Id) -> Result<String, AdminError> {
    let Path(id) = path.map_err(|e| AdminError::Invalid {
        param: Some("id".into()),
        message: format!("Invalid id in the URL: {e}."),
        code: "invalid_value",
    })?;
    Ok(id)
}

fn written(status: StatusCode, version: u64, body: Option<Value>) -> Response {
    let mut resp = match body {
        Some(v) => (status, Json(v)).into_response(),
        None => status.into_response(),
    };
    resp.headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from(version));
    resp
}

/// `GET /admin/v1/{collection}`.
pub async fn list<E: AdminEntity>(
    State(st): State<AdminState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::Invalid {
        param: None,
        message: format!("Invalid query string: {e}."),
        code: "invalid_value",
    })?;
    let q = PageQuery::parse(&query)?;
    let page = st.store.list::<E>(q.limit, q.after.as_deref()).await?;
    Ok(Json(render(&page, E::view)))
}

/// `GET /admin/v1/{collection}/{id}`.
pub async fn read<E: AdminEntity>(
    State(st): State<AdminState>,
    path: Id,
) -> Result<Json<Value>, AdminError> {
    let id = id_of(path)?;
    match st.store.get::<E>(&id).await? {
        Some(e) => Ok(Json(e.view())),
        None => Err(AdminError::NotFound {
            kind: noun(E::KIND),
            id,
        }),
    }
}

/// Validate a decoded entity and run the cross-entity checks.
async fn finish<E: AdminEntity>(
    st: &AdminState,
    e: &mut E,
    existing: Option<&E>,
) -> Result<Option<String>, AdminError> {
    let secret = e.fill(existing)?;
    e.check().map_err(AdminError::field)?;
    e.check_upstreams(&st.allowlist)?;
    e.prepare();
    e.verify(&st.store).await?;
    Ok(secret)
}

/// `POST /admin/v1/{collection}`: 201, or 409 if the id exists.
pub async fn create<E: AdminEntity>(
    State(st): State<AdminState>,
    body: Body,
) -> Result<Response, AdminError> {
    let mut e: E = decode(read_object(body).await?)?;
    let secret = finish(&st, &mut e, None).await?;
    let version = st.store.create(&e).await?;
    tracing::info!(kind = noun(E::KIND), id = e.id(), version, "admin: created");
    let mut view = e.view();
    if let (Some(s), Some(obj)) = (secret, view.as_object_mut()) {
        obj.insert("secret".into(), Value::String(s));
    }
    Ok(written(StatusCode::CREATED, version, Some(view)))
}

/// `PUT /admin/v1/{collection}/{id}`: 200, or 404 if missing. The body's id may be omitted.
pub async fn replace<E: AdminEntity>(
    State(st): State<AdminState>,
    path: Id,
    body: Body,
) -> Result<Response, AdminError> {
    let id = id_of(path)?;
    let mut map = read_object(body).await?;
    match map.get(E::ID_FIELD) {
        None => {
            map.insert(E::ID_FIELD.into(), Value::String(id.clone()));
        }
        Some(Value::String(s)) if *s == id => {}
        Some(_) => {
            return Err(AdminError::Invalid {
                param: Some(E::ID_FIELD.into()),
                message: format!(
                    "`{}` must equal the id in the URL (`{id}`). Ids cannot be changed: create a new {} and delete this one.",
                    E::ID_FIELD,
                    noun(E::KIND)
                ),
                code: "invalid_value",
            })
        }
    }
    let mut e: E = decode(map)?;
    let existing = st
        .store
        .get::<E>(&id)
        .await?
        .ok_or_else(|| AdminError::NotFound {
            kind: noun(E::KIND),
            id: id.clone(),
        })?;
    finish(&st, &mut e, Some(&existing)).await?;
    let version = st.store.replace(&e).await?;
    tracing::info!(
        kind = noun(E::KIND),
        id = e.id(),
        version,
        "admin: replaced"
    );
    Ok(written(StatusCode::OK, version, Some(e.view())))
}

/// `DELETE /admin/v1/{collection}/{id}`: 204, or 404 if missing.
pub async fn remove<E: AdminEntity>(
    State(st): State<AdminState>,
    path: Id,
) -> Result<Response, AdminError> {
    let id = id_of(path)?;
    let version = st.store.delete::<E>(&id).await?;
    tracing::info!(kind = noun(E::KIND), id, version, "admin: deleted");
    Ok(written(StatusCode::NO_CONTENT, version, None))
}

/// `GET /admin/v1/healthz` (no key needed): 200 while the store answers, else 503.
pub async fn healthz(State(st): State<AdminState>) -> Response {
    let version = st.catalog.borrow().version;
    let (status, state) = match st.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unreachable"),
    };
    let body = serde_json::json!({
        "status": state,
        "store": st.store.mode(),
        "catalog_version": version,
    });
    (status, Json(body)).into_response()
}

/// Unknown route.
pub async fn no_route(uri: Uri) -> AdminError {
    AdminError::NoRoute(uri.path().to_string())
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> AdminError {
    AdminError::MethodNotAllowed
}
