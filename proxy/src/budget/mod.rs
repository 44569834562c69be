//! Budgets and prepaid credits on the request path (see `docs/budgets.md`).
//!
//! The aggregator counts spend per budget window and writes a *decision* per scope into Redis
//! when a hard budget is used up (block), when it is close to its limit and reserves (reserve),
//! or when a prepaid balance reaches zero (block). [`BudgetGate::check`] looks up the decisions
//! of every scope of a request (key, team, account, model, global) through a moka cache (short
//! TTL, one Redis read per scope at a time, dropped on the aggregator's notice) and refuses a
//! blocked request with [`BudgetError`]. Under a reserve decision the request's worst-case
//! cost is reserved on the budget counter first ([`Reservation`]) and settled with the actual
//! cost when the request ends.
//!
//! While Redis is unreachable the last known decisions keep serving (fail open).

pub mod admin;
pub mod config;
pub mod entities;
pub mod error;
mod gate;
pub mod ledger;
mod notices;
mod reserve;
pub mod statement;

pub use config::BudgetConfig;
pub use error::{BudgetError, Exceeded};
pub use gate::{BudgetGate, GateStartError};
pub use reserve::Reservation;

use std::sync::Arc;

use crate::routing::Model;
use tollgate_schemas::budgets::entities::scope_ref;
use tollgate_schemas::budgets::Scope;

/// The budget scope refs of an API key: `k:<id>`, `t:<team>` (when it has a team) and
/// `a:<account>` (see [`scope_ref`]); the catalog makes them once per key.
pub fn key_scopes(key: &str, team: &str, account: &str) -> Box<[Arc<str>]> {
    let mut out: Vec<Arc<str>> = vec![scope_ref(Scope::Key, key).into()];
    if !team.is_empty() {
        out.push(scope_ref(Scope::Team, team).into());
    }
    out.push(scope_ref(Scope::Account, account).into());
    out.into_boxed_slice()
}

/// The scopes a request is accounted under, as scope refs.
#[derive(Debug, Clone, Copy)]
pub struct Scopes<'a> {
    /// The key's scopes ([`key_scopes`]).
    pub key: &'a [Arc<str>],
    /// The public model's (`m:<name>`).
    pub model: &'a Arc<str>,
}

/// The ref of the global scope.
pub const GLOBAL_SCOPE: &str = "g:*";

impl Scopes<'_> {
    /// The scope refs to look up (`k:<id>`, `t:<id>`, `a:<id>`, `m:<name>`, `g:*`).
    pub fn refs(&self) -> impl Iterator<Item = &str> {
        self.key
            .iter()
            .chain(std::iter::once(self.model))
            .map(|r| &**r)
            .chain(std::iter::once(GLOBAL_SCOPE))
    }
}

/// What a request asks of the budgets.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// Its scopes.
    pub scopes: Scopes<'a>,
    /// Its usage event id (names the reservation, which the aggregator drops when it counts
    /// the event).
    pub event_id: &'a str,
    /// Worst-case cost, nano-USD.
    pub worst_cost_nanos: i64,
    /// Worst-case tokens (prompt + completion).
    pub worst_tokens: i64,
}

/// Worst-case `(cost nano-USD, tokens)` of a request: the prompt estimate with a margin
/// (a quarter plus 16 tokens: estimates differ from provider counts) and the requested
/// completion tokens (`default_max_tokens` when the request sets none).
pub fn worst_case(
    model: &Model,
    prompt_estimate: i64,
    max_completion: Option<i64>,
    default_max_tokens: u64,
) -> (i64, i64) {
    let prompt = prompt_estimate.max(0) + prompt_estimate.max(0) / 4 + 16;
    let completion = max_completion
        .unwrap_or_else(|| i64::try_from(default_max_tokens).unwrap_or(i64::MAX))
        .max(0);
    (
        model.cost_nanos(prompt, completion, 0),
        prompt.saturating_add(completion),
    )
}

/// Run a pipeline of script calls (one sub-pipeline per hash slot on a Redis Cluster); when
/// Redis lost the scripts (NOSCRIPT), load `scripts` and run it once more. Only for pipelines
/// whose calls are safe to repeat or all use one script (a NOSCRIPT reply then means none of
/// them ran).
pub(crate) async fn run_scripts<T: redis::FromRedisValue>(
    conn: &crate::redis_conn::RedisConn,
    pipe: &redis::Pipeline,
    scripts: &[&redis::Script],
) -> redis::RedisResult<T> {
    conn.run_pipeline(pipe, scripts).await
}

/// Now, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_skip_an_empty_team() {
        let model: Arc<str> = "m:m".into();
        let key = key_scopes("k1", "", "a1");
        let s = Scopes {
            key: &key,
            model: &model,
        };
        assert_eq!(s.refs().collect::<Vec<_>>(), ["k:k1", "a:a1", "m:m", "g:*"]);
        let key = key_scopes("k1", "t", "a1");
        let s = Scopes { key: &key, ..s };
        assert_eq!(
            s.refs().collect::<Vec<_>>(),
            ["k:k1", "t:t", "a:a1", "m:m", "g:*"]
        );
        assert_eq!(scope_ref(Scope::Global, ""), GLOBAL_SCOPE);
    }
}
