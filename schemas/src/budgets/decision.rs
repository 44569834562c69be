//! Decisions: what the aggregator writes per scope for the proxies to enforce.
//!
//! Each scope (`k:<key>`, `t:<team>`, `a:<account>`, `m:<model>`, `g:*`) has one Redis hash
//! ([`crate::redis_keys::budget_decisions`]): field = budget id (or [`CREDITS_FIELD`]), value =
//! a [`Decision`] as JSON. A field whose `reset_at_ms` has passed is void (the hash expires at
//! its latest window end; stale fields are removed by the aggregator). Every change publishes
//! the scope ref on [`crate::redis_keys::budget_notices`], and proxies drop their cached copy.

use serde::{Deserialize, Serialize};

use super::{Period, Scope, Unit};

/// Field of an account's decision hash holding the credit block.
pub const CREDITS_FIELD: &str = "credits";

/// Block, or admit only with a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Refuse every request of the scope with 429 `budget_exceeded`.
    Block,
    /// Admit a request only if its worst-case cost can be reserved on `counter`.
    Reserve,
}

/// What the decision comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionReason {
    /// A hard budget.
    Budget,
    /// A prepaid balance at or below zero.
    Credits,
}

/// One decision (stable while its window lasts: spend is not part of it, so re-asserting it
/// does not publish a notice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Block or reserve.
    pub kind: DecisionKind,
    /// Budget or credits.
    pub reason: DecisionReason,
    /// Budget id (account id for credits).
    pub id: String,
    /// Scope blocked.
    pub scope: Scope,
    /// Its id (empty for global).
    pub scope_id: String,
    /// Period (None for credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Period>,
    /// Unit of `limit` (usd: nano-USD).
    pub unit: Unit,
    /// The limit in counter units (0 for credits).
    pub limit: i64,
    /// When the window ends (None: never, e.g. `total` budgets and credits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at_ms: Option<i64>,
    /// The counter key reservations go to (reserve decisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<String>,
}

impl Decision {
    /// Whether the decision still holds at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        self.reset_at_ms.is_none_or(|r| r > now_ms)
    }

    /// The block of a prepaid account whose balance is at or below zero.
    pub fn credits(account_id: &str) -> Self {
        Self {
            kind: DecisionKind::Block,
            reason: DecisionReason::Credits,
            id: account_id.to_string(),
            scope: Scope::Account,
            scope_id: account_id.to_string(),
            period: None,
            unit: Unit::Usd,
            limit: 0,
            reset_at_ms: None,
            counter: None,
        }
    }

    /// JSON for the decision hash.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_round_trip_and_expire() {
        let d = Decision {
            kind: DecisionKind::Block,
            reason: DecisionReason::Budget,
            id: "b1".into(),
            scope: Scope::Key,
            scope_id: "k1".into(),
            period: Some(Period::Daily),
            unit: Unit::Usd,
            limit: 50_000_000,
            reset_at_ms: Some(1_000),
            counter: None,
        };
        let back: Decision = serde_json::from_str(&d.to_json()).unwrap();
        assert_eq!(back, d);
        assert!(d.active(999) && !d.active(1_000));
    }
}
