//! Why a request is refused by a budget or an exhausted prepaid balance.

use tollgate_schemas::budgets::window::date_string;
use tollgate_schemas::budgets::{nanos_to_usd_string, Decision, DecisionReason, Unit};

/// A budget refusal (429 `budget_exceeded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The decision that refused the request.
    pub decision: Decision,
    /// Reservation mode: the counter's spend and reservations when the reservation failed.
    pub reserved: Option<(i64, i64)>,
}

/// A request the budgets do not admit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BudgetError {
    /// A hard budget is used up, its reservation does not fit, or the prepaid balance is gone.
    #[error("{}", message(.0))]
    Exceeded(Box<Exceeded>),
}

impl BudgetError {
    /// The decision behind the refusal.
    pub fn decision(&self) -> &Decision {
        match self {
            Self::Exceeded(e) => &e.decision,
        }
    }

    /// Seconds until the window resets (None: it never does, e.g. credits or `total`).
    pub fn retry_after_secs(&self, now_ms: i64) -> Option<u64> {
        let reset = self.decision().reset_at_ms?;
        Some(
            u64::try_from((reset - now_ms).max(0))
                .unwrap_or(0)
                .div_ceil(1_000)
                .max(1),
        )
    }
}

fn amount(unit: Unit, v: i64) -> String {
    match unit {
        Unit::Usd => format!("{} USD", trim_usd(&nanos_to_usd_string(v))),
        Unit::Tokens => format!("{v} tokens"),
    }
}

fn trim_usd(s: &str) -> &str {
    let t = s.trim_end_matches('0');
    t.strip_suffix('.').unwrap_or(t)
}

fn scope_name(d: &Decision) -> String {
    if d.scope_id.is_empty() {
        d.scope.as_str().to_string()
    } else {
        format!("{} `{}`", d.scope.as_str(), d.scope_id)
    }
}

fn message(e: &Exceeded) -> String {
    let d = &e.decision;
    if d.reason == DecisionReason::Credits {
        return format!(
            "The prepaid credit balance of account `{}` is used up. Top up the account to continue.",
            d.scope_id
        );
    }
    let period = d.period.map_or("", |p| p.as_str());
    let reset = match d.reset_at_ms {
        Some(ms) => format!(
            " It resets at {}T{:02}:{:02}:00Z.",
            date_string(ms),
            (ms.rem_euclid(86_400_000) / 3_600_000),
            (ms.rem_euclid(3_600_000) / 60_000)
        ),
        None => " It does not reset (total budget).".to_string(),
    };
    match e.reserved {
        Some((spent, reserved)) => format!(
            "Budget `{}` ({period}, {}) is nearly exhausted: {} spent and {} reserved by running requests of a limit of {}; this request's worst-case cost does not fit.{reset}",
            d.id,
            scope_name(d),
            amount(d.unit, spent),
            amount(d.unit, reserved),
            amount(d.unit, d.limit)
        ),
        None => format!(
            "Budget `{}` ({period}, {}) is exhausted: its limit is {}.{reset}",
            d.id,
            scope_name(d),
            amount(d.unit, d.limit)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_schemas::budgets::{DecisionKind, Period, Scope};

    #[test]
    fn messages_name_budget_scope_and_reset() {
        let d = Decision {
            kind: DecisionKind::Block,
            reason: DecisionReason::Budget,
            id: "team-daily".into(),
            scope: Scope::Team,
            scope_id: "ml".into(),
            period: Some(Period::Daily),
            unit: Unit::Usd,
            limit: 50_000_000,
            reset_at_ms: Some(1_715_817_600_000),
            counter: None,
        };
        let e = BudgetError::Exceeded(Box::new(Exceeded {
            decision: d.clone(),
            reserved: None,
        }));
        assert_eq!(
            e.to_string(),
            "Budget `team-daily` (daily, team `ml`) is exhausted: its limit is 0.05 USD. It resets at 2024-05-16T00:00:00Z."
        );
        assert_eq!(e.retry_after_secs(1_715_817_599_001), Some(1));
        let mut c = d;
        c.reason = DecisionReason::Credits;
        c.scope = Scope::Account;
        c.scope_id = "acme".into();
        c.reset_at_ms = None;
        let e = BudgetError::Exceeded(Box::new(Exceeded {
            decision: c,
            reserved: None,
        }));
        assert!(e.to_string().contains("account `acme`"));
        assert_eq!(e.retry_after_secs(0), None);
    }
}
