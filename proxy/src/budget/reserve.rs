//! Reservation mode: near its limit, a hard budget admits a request only if the request's
//! worst-case amount fits next to the spend and the other reservations; the reservation is
//! settled with the actual amount when the request ends and dropped by the aggregator once it
//! counted the request's usage event. So spend cannot pass the limit (beyond estimation error).

use std::sync::{Arc, LazyLock};

use redis::Script;
use tollgate_schemas::budgets::{scripts, Decision, Unit};
use tollgate_schemas::telemetry::BUDGET_RESERVATIONS;

use super::error::{BudgetError, Exceeded};
use super::gate::Inner;
use super::Ask;

static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::RESERVE));
static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::SETTLE));

/// One budget counter holding part of a request's reservation.
#[derive(Debug, Clone)]
struct Hold {
    counter: String,
    unit: Unit,
}

/// The reservations of one request (settle it when the request ends; dropping it releases
/// the reservations as if nothing was spent).
pub struct Reservation {
    inner: Arc<Inner>,
    event_id: String,
    holds: Vec<Hold>,
    done: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("event_id", &self.event_id)
            .field("holds", &self.holds)
            .finish()
    }
}

impl Reservation {
    /// Replace the worst case by the request's actual cost and tokens (in the background).
    pub fn settle(mut self, cost_nanos: i64, tokens: i64) {
        self.done = true;
        let holds = std::mem::take(&mut self.holds);
        spawn_settle(
            Arc::clone(&self.inner),
            self.event_id.clone(),
            holds,
            cost_nanos,
            tokens,
        );
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done && !self.holds.is_empty() {
            let holds = std::mem::take(&mut self.holds);
            spawn_settle(Arc::clone(&self.inner), self.event_id.clone(), holds, 0, 0);
        }
    }
}

fn spawn_settle(inner: Arc<Inner>, event_id: String, holds: Vec<Hold>, cost: i64, tokens: i64) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let pending = inner.cfg.pending_ttl_ms;
        let mut pipe = redis::pipe();
        for h in &holds {
            let actual = match h.unit {
                Unit::Usd => cost,
                Unit::Tokens => tokens,
            };
            let mut inv = SETTLE.key(&h.counter);
            inv.arg(&event_id).arg(actual).arg(pending);
            pipe.invoke_script(&inv);
        }
        let scripts = [&*SETTLE];
        let call = super::run_scripts::<Vec<i64>>(&inner.conn, &pipe, &scripts);
        match tokio::time::timeout(inner.timeout() * 4, call).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => inner.trip("settle", &e),
            Err(_) => inner.trip("settle", &"timed out"),
        }
    });
}

/// Reserve `ask`'s worst case on the counter of every reserve decision, all or none.
pub(super) async fn reserve(
    inner: &Arc<Inner>,
    ask: &Ask<'_>,
    decisions: Vec<Decision>,
) -> Result<Option<Reservation>, BudgetError> {
    if !inner.available() {
        metrics::counter!(BUDGET_RESERVATIONS, "result" => "error").increment(1);
        return Ok(None);
    }
    let mut pipe = redis::pipe();
    let mut asked = Vec::new();
    for d in &decisions {
        let Some(counter) = &d.counter else {
            continue;
        };
        let amount = match d.unit {
            Unit::Usd => ask.worst_cost_nanos,
            Unit::Tokens => ask.worst_tokens,
        };
        let expire = d.reset_at_ms.map_or(0, |r| r + 7 * 86_400_000);
        let mut inv = RESERVE.key(counter);
        inv.arg(ask.event_id)
            .arg(amount)
            .arg(d.limit)
            .arg(inner.cfg.reservation_ttl_ms)
            .arg(expire);
        pipe.invoke_script(&inv);
        asked.push(d);
    }
    if asked.is_empty() {
        return Ok(None);
    }
    let scripts = [&*RESERVE];
    let call = super::run_scripts(&inner.conn, &pipe, &scripts);
    let replies: Vec<(i64, String, String)> =
        match tokio::time::timeout(inner.timeout(), call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                inner.trip("reserve", &e);
                metrics::counter!(BUDGET_RESERVATIONS, "result" => "error").increment(1);
                return Ok(None);
            }
            Err(_) => {
                inner.trip("reserve", &"timed out");
                metrics::counter!(BUDGET_RESERVATIONS, "result" => "error").increment(1);
                return Ok(None);
            }
        };
    let mut reservation = Reservation {
        inner: Arc::clone(inner),
        event_id: ask.event_id.to_string(),
        holds: Vec::new(),
        done: false,
    };
    let mut denied = None;
    for (d, (ok, spent, reserved)) in asked.iter().zip(replies) {
        if ok == 1 {
            reservation.holds.push(Hold {
                counter: d.counter.clone().unwrap_or_default(),
                unit: d.unit,
            });
        } else if denied.is_none() {
            denied = Some(Exceeded {
                decision: (*d).clone(),
                reserved: Some((spent.parse().unwrap_or(0), reserved.parse().unwrap_or(0))),
            });
        }
    }
    match denied {
        // Dropping `reservation` releases what was granted.
        Some(e) => {
            metrics::counter!(BUDGET_RESERVATIONS, "result" => "denied").increment(1);
            Err(BudgetError::Exceeded(Box::new(e)))
        }
        None => {
            metrics::counter!(BUDGET_RESERVATIONS, "result" => "granted").increment(1);
            Ok(Some(reservation))
        }
    }
}
