//! Lua sources of the budget and credit scripts (each already prefixed with the shared
//! helpers); wrap them in `redis::Script`. The comment at the top of each file documents its
//! KEYS, ARGV and reply.

macro_rules! script {
    ($(#[$doc:meta])* $name:ident = $file:literal) => {
        $(#[$doc])*
        pub const $name: &str = concat!(include_str!("lua/common.lua"), include_str!($file));
    };
}

script!(
    /// Add one stored batch of one partition to a budget counter, exactly once per offset.
    APPLY = "lua/apply.lua"
);
script!(
    /// Replace a budget counter by a recount from ClickHouse (refuses a stale recount).
    REBUILD = "lua/rebuild.lua"
);
script!(
    /// Set or clear one decision of a scope and publish a notice on change.
    DECIDE = "lua/decide.lua"
);
script!(
    /// Credits of one account: apply usage, apply a top-up, or re-evaluate the block.
    CREDIT = "lua/credit.lua"
);
script!(
    /// Replace an account's debited usage by a recount and merge the ledger's payments.
    CREDIT_REBUILD = "lua/credit_rebuild.lua"
);
script!(
    /// Reserve a request's worst-case amount on a budget counter.
    RESERVE = "lua/reserve.lua"
);
script!(
    /// Settle a reservation with the actual amount.
    SETTLE = "lua/settle.lua"
);

/// Counter hash field of a budget's spend.
pub const VALUE_FIELD: &str = "v";
/// Credit hash field of the debited usage.
pub const USED_FIELD: &str = "used";
/// Credit hash field of the sum of top-ups.
pub const TOPUP_FIELD: &str = "topup";
/// Counter hash field of the reserved total.
pub const RESERVED_FIELD: &str = "R";
/// Field set once a counter was (re)built from ClickHouse.
pub const INIT_FIELD: &str = "init";

/// Alert mark of a threshold in a counter hash: `a:<pct>`.
pub fn alert_field(pct: u32) -> String {
    format!("a:{pct}")
}
