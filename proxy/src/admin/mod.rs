//! Admin API: CRUD for models, API keys, accounts, budgets and credit accounts, plus credit
//! top-ups and statements, on its own listener (docs/admin-api.md).
//!
//! Every route except `GET /admin/v1/healthz` needs `Authorization: Bearer <admin key>`
//! ([`auth`]). Writes go to the [`crate::store::ConfigStore`]; every proxy's
//! [`crate::store::ControlPlane`] picks them up. Bodies and secrets are never logged.

pub mod auth;
pub mod body;
pub mod errors;
pub mod handlers;
pub mod kinds;
pub mod paging;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::{AdminKeys, KeyConfigError};
pub use errors::AdminError;
use handlers::AdminState;

use crate::budget::admin as budget_admin;
use crate::budget::entities::{Budget, CreditAccount};
use crate::budget::ledger::Credits;
use crate::config::AdminConfig;
use crate::entities::{Account, ApiKey, Model};
use crate::store::ControlPlane;

/// Failure to start the admin API.
#[derive(Debug, thiserror::Error)]
pub enum AdminStartError {
    /// The admin key settings are unusable.
    #[error(transparent)]
    Key(#[from] KeyConfigError),
    /// The listener could not bind.
    #[error("cannot listen on {addr} (admin API): {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// IO error.
        source: std::io::Error,
    },
    /// `admin.tls` is unusable (the error names the key).
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The admin routes.
pub fn router(state: AdminState, keys: AdminKeys) -> Router {
    use handlers::{create, list, read, remove, replace};
    Router::new()
        .route("/admin/v1/models", get(list::<Model>).post(create::<Model>))
        .route(
            "/admin/v1/models/{*id}",
            get(read::<Model>)
                .put(replace::<Model>)
                .delete(remove::<Model>),
        )
        .route("/admin/v1/keys", get(list::<ApiKey>).post(create::<ApiKey>))
        .route(
            "/admin/v1/keys/{*id}",
            get(read::<ApiKey>)
                .put(replace::<ApiKey>)
                .delete(remove::<ApiKey>),
        )
        .route(
            "/admin/v1/accounts",
            get(list::<Account>).post(create::<Account>),
        )
        .route(
            "/admin/v1/accounts/{*id}",
            get(read::<Account>)
                .put(replace::<Account>)
                .delete(remove::<Account>),
        )
        .route(
            "/admin/v1/budgets",
            get(list::<Budget>).post(create::<Budget>),
        )
        .route(
            "/admin/v1/budgets/{*id}",
            get(budget_admin::read_budget)
                .put(budget_admin::replace_budget)
                .delete(budget_admin::remove_budget),
        )
        .route(
            "/admin/v1/credit-accounts",
            get(list::<CreditAccount>).post(create::<CreditAccount>),
        )
        .route(
            "/admin/v1/credit-accounts/{*id}",
            get(budget_admin::read_credit_account)
                .put(replace::<CreditAccount>)
                .delete(budget_admin::remove_credit_account),
        )
        .route(
            "/admin/v1/credit-topups",
            axum::routing::post(budget_admin::create_topup),
        )
        .route(
            "/admin/v1/credit-statements/{*id}",
            get(budget_admin::statement),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            keys,
            auth::require_admin,
        ))
        .route("/admin/v1/healthz", get(handlers::healthz))
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}

/// A running admin listener (HTTPS when `admin.tls` is set).
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// Bind `cfg.listen` and serve the admin API over `control`'s store (without the balance,
    /// status and statement routes of budgets; see [`Self::start_with`]).
    pub async fn start(cfg: &AdminConfig, control: &ControlPlane) -> Result<Self, AdminStartError> {
        Self::start_with(cfg, control, None).await
    }

    /// [`Self::start`] with the Redis balances and ClickHouse ledger of budgets and credits.
    pub async fn start_with(
        cfg: &AdminConfig,
        control: &ControlPlane,
        credits: Option<Credits>,
    ) -> Result<Self, AdminStartError> {
        let keys = AdminKeys::from_config(cfg, |k| std::env::var(k).ok())?;
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| crate::tls::acceptor_at("admin.tls", t))
            .transpose()?;
        let bind_err = |source| AdminStartError::Bind {
            addr: cfg.listen,
            source,
        };
        let listener = TcpListener::bind(cfg.listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let state = AdminState {
            store: control.store(),
            catalog: control.catalog(),
            credits,
            allowlist: cfg.allowlist.clone(),
        };
        let app = router(state, keys);
        let header_timeout =
            Duration::from_millis(crate::listener::default_header_read_timeout_ms());
        let https = tls.is_some();
        let (stop, task) = crate::listener::spawn(listener, app, header_timeout, tls);
        tracing::info!(%addr, https, "admin API listening");
        Ok(Self { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting and finish in-flight admin requests (at most 5 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
