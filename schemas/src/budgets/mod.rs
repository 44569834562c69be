//! Budgets and prepaid credits: the contract between the proxy (admin API, budget gate,
//! reservations) and the aggregator (counters, decisions, alerts, top-ups).
//!
//! - [`entities`]: the [`Budget`] and [`CreditAccount`] entities as stored in the config store
//!   (JSON) and accepted by the admin API.
//! - [`window`]: UTC windows of a budget period (daily, weekly, monthly, total).
//! - [`decision`]: what the aggregator writes per scope when a budget blocks or asks for
//!   reservations, and the notice it publishes.
//! - [`ledger`]: the `credit_ledger` rows and their queries.
//! - [`scripts`]: the Lua scripts both sides run on the Redis counters (see
//!   `docs/budgets.md` and [`crate::redis_keys`] for the key layout).

pub mod decision;
pub mod entities;
pub mod ledger;
pub mod scripts;
pub mod window;

pub use decision::{Decision, DecisionKind, DecisionReason};
pub use entities::{Budget, CreditAccount, Invalid, Mode, Period, Scope, Unit};
pub use window::Window;

/// Nano-USD per USD.
pub const NANOS_PER_USD: f64 = 1e9;

/// A USD amount in nano-USD (rounded).
pub fn usd_to_nanos(usd: f64) -> i64 {
    (usd * NANOS_PER_USD).round() as i64
}

/// A nano-USD amount as a decimal USD string with 9 decimals (`-0.000001500`).
pub fn nanos_to_usd_string(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_strings_are_exact() {
        assert_eq!(nanos_to_usd_string(0), "0.000000000");
        assert_eq!(nanos_to_usd_string(1_500), "0.000001500");
        assert_eq!(nanos_to_usd_string(-12_000_000_001), "-12.000000001");
        assert_eq!(usd_to_nanos(0.05), 50_000_000);
    }
}
