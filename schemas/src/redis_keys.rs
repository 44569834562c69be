//! Redis key layout of the config store: the contract between proxies, the admin API and any
//! tooling that reads or writes Tollgate's configuration in Redis. The rate-limit counters
//! shared by proxies are laid out by [`limit_keys`] (see `docs/rate-limits.md`), budget
//! counters, decisions and prepaid balances by [`budget_counter`], [`budget_decisions`] and
//! [`credit_balance`] (see `docs/budgets.md`).
//!
//! Redis Cluster: every key a script touches shares one hash tag (`{cfg}`, `{k:<key id>}`,
//! `{m:<model>}`, `{b:<budget id>}`, `{<scope ref>}`, `{a:<account>}`), so each script call
//! runs on one slot; pipelines over several tags go through
//! [`crate::redis_conn::RedisConn::run_pipeline`], which splits them per slot.
//!
//! Every config key carries the hash tag `{cfg}` so that all of them live in one Redis Cluster
//! slot (scripts touch several keys at once). With the default prefix `tollgate`:
//!
//! | Key                                | Type    | Content                                          |
//! |------------------------------------|---------|--------------------------------------------------|
//! | `tollgate:{cfg}:models`            | hash    | model name → model JSON                          |
//! | `tollgate:{cfg}:keys`              | hash    | key id → API key JSON (only `secret_sha256`)     |
//! | `tollgate:{cfg}:accounts`          | hash    | account id → account JSON                        |
//! | `tollgate:{cfg}:budgets`           | hash    | budget id → budget JSON                          |
//! | `tollgate:{cfg}:credit_accounts`   | hash    | account id → credit account JSON                 |
//! | `tollgate:{cfg}:version`           | string  | integer, `INCR`ed by every write                 |
//! | `tollgate:{cfg}:seeded:models`     | set     | model names ever seeded from a config file       |
//! | `tollgate:{cfg}:seeded:keys`       | set     | key ids ever seeded from a config file           |
//! | `tollgate:{cfg}:seeded:accounts`   | set     | account ids ever seeded from a config file       |
//! | `tollgate:{cfg}:changes`           | channel | one [`Notice`] (JSON) per write                  |
//!
//! Entity JSON is the serde form of the proxy's `entities::{Model, ApiKey, Account}`; provider
//! keys (`deployments[].api_key`) are stored because proxies need them, plaintext virtual-key
//! secrets never are.
//!
//! Rules for writers: change an entity hash, `INCR` the version and `PUBLISH` a notice in one
//! script (or `MULTI`), so a reader that sees the new version also sees the change. Readers
//! treat a notice only as a hint: they re-read everything (`HGETALL` of the three hashes and
//! `GET` of the version in one `MULTI`) and also poll the version, so a lost notice delays a
//! change by at most the poll interval.
//!
//! Seeding: an entity of a config file is written only if its id is not yet in the matching
//! `seeded:*` set (`SADD`) and not yet in the hash (`HSETNX`), so admin edits and deletes
//! survive proxy restarts.

use serde::{Deserialize, Serialize};

/// The hash tag shared by all config keys.
pub const HASH_TAG: &str = "{cfg}";

/// One of the three entity hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigKind {
    /// Public models with their deployments.
    Models,
    /// Virtual API keys.
    Keys,
    /// Accounts.
    Accounts,
    /// Budgets (`tollgate_schemas::budgets::Budget`).
    Budgets,
    /// Prepaid credit accounts (`tollgate_schemas::budgets::CreditAccount`).
    CreditAccounts,
}

impl ConfigKind {
    /// All kinds, in load order.
    pub const ALL: [ConfigKind; 5] = [
        Self::Models,
        Self::Keys,
        Self::Accounts,
        Self::Budgets,
        Self::CreditAccounts,
    ];

    /// Key suffix and notice `kind` value: `models`, `keys`, `accounts`, `budgets`,
    /// `credit_accounts`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Models => "models",
            Self::Keys => "keys",
            Self::Accounts => "accounts",
            Self::Budgets => "budgets",
            Self::CreditAccounts => "credit_accounts",
        }
    }
}

/// `<prefix>:{cfg}`: the common stem of every config key.
pub fn stem(prefix: &str) -> String {
    format!("{prefix}:{HASH_TAG}")
}

/// The hash holding all entities of `kind`: `<prefix>:{cfg}:models|keys|accounts`.
pub fn entities(prefix: &str, kind: ConfigKind) -> String {
    format!("{}:{}", stem(prefix), kind.as_str())
}

/// The config version counter: `<prefix>:{cfg}:version`.
pub fn version(prefix: &str) -> String {
    format!("{}:version", stem(prefix))
}

/// The set of ids of `kind` seeded from a file once: `<prefix>:{cfg}:seeded:<kind>`.
pub fn seeded(prefix: &str, kind: ConfigKind) -> String {
    format!("{}:seeded:{}", stem(prefix), kind.as_str())
}

/// The pub/sub channel carrying a [`Notice`] per write: `<prefix>:{cfg}:changes`.
pub fn changes_channel(prefix: &str) -> String {
    format!("{}:changes", stem(prefix))
}

/// Every key of the layout (for tooling and tests that clean up a prefix).
pub fn all_keys(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = ConfigKind::ALL
        .iter()
        .flat_map(|k| [entities(prefix, *k), seeded(prefix, *k)])
        .collect();
    keys.push(version(prefix));
    keys
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeOp {
    /// A new entity.
    Create,
    /// An existing entity replaced.
    Replace,
    /// An entity removed.
    Delete,
    /// An entity written by file seeding.
    Seed,
}

/// The message published on [`changes_channel`] after a write, e.g.
/// `{"version":42,"kind":"models","op":"replace","id":"gpt-4o"}` (field order may vary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Config version after the write.
    pub version: u64,
    /// Which hash changed.
    pub kind: ConfigKind,
    /// What happened.
    pub op: NoticeOp,
    /// Entity id (model name, key id or account id).
    pub id: String,
}

/// Whose limits a rate-limit key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitEntity {
    /// A virtual API key (by key id).
    Key,
    /// A public model (by name).
    Model,
}

impl LimitEntity {
    /// One-letter tag used in keys: `k` or `m`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Key => "k",
            Self::Model => "m",
        }
    }
}

/// The Redis keys of one entity's rate limits. All three share the hash tag `{k:<id>}` or
/// `{m:<name>}`, so one script call per entity touches a single Redis Cluster slot while
/// different entities spread over the cluster.
///
/// | Key                          | Type       | Content                                          |
/// |------------------------------|------------|--------------------------------------------------|
/// | `<prefix>:rl:{k:<id>}:m`     | hash       | minute window: `r<bucket>`/`t<bucket>` requests and tokens per 1 s bucket, totals `R`/`T`, oldest bucket `o` |
/// | `<prefix>:rl:{k:<id>}:d`     | hash       | day window: the same per 5 min bucket            |
/// | `<prefix>:rl:{k:<id>}:c`     | sorted set | concurrency leases: lease id → expiry (ms, Redis time) |
///
/// Window hashes expire one window after their last write; the lease set after its last lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKeys {
    /// Minute window hash (rpm, tpm).
    pub minute: String,
    /// Day window hash (rpd, tpd).
    pub day: String,
    /// Concurrency lease sorted set.
    pub leases: String,
}

/// The rate-limit keys of an entity: `<prefix>:rl:{<tag>:<id>}:{m,d,c}`.
pub fn limit_keys(prefix: &str, entity: LimitEntity, id: &str) -> LimitKeys {
    let stem = format!("{prefix}:rl:{{{}:{id}}}", entity.tag());
    LimitKeys {
        minute: format!("{stem}:m"),
        day: format!("{stem}:d"),
        leases: format!("{stem}:c"),
    }
}

/// The Redis key of a budget's counter for one window:
/// `<prefix>:budget:{b:<budget id>}:<unit>:<scope tag>:<scope id>:<window label>`.
///
/// All windows of a budget share the hash tag `{b:<id>}`; unit and scope are part of the key,
/// so changing them starts a fresh counter (rebuilt from ClickHouse by the aggregator).
///
/// | Field            | Content                                                           |
/// |------------------|-------------------------------------------------------------------|
/// | `v`              | spend in the window: nano-USD or tokens                            |
/// | `o:<partition>`  | last Kafka offset of the partition counted (replays are skipped)   |
/// | `init`           | `1` once the counter was built from ClickHouse                     |
/// | `a:<pct>`        | the alert of this threshold was recorded                           |
/// | `R`, `px`        | reserved total; next purge of expired reservations (Redis ms)      |
/// | `r:<event id>`   | a proxy's reservation: `amount\|expiry ms`                         |
///
/// The key expires a week after the window ends (`total` windows never expire).
pub fn budget_counter(
    prefix: &str,
    budget_id: &str,
    unit: &str,
    scope_tag: &str,
    scope_id: &str,
    window_label: &str,
) -> String {
    format!("{prefix}:budget:{{b:{budget_id}}}:{unit}:{scope_tag}:{scope_id}:{window_label}")
}

/// The decisions of one scope (hash: budget id or `credits` → decision JSON):
/// `<prefix>:budget:decisions:{<scope ref>}` where the scope ref is `k:<key id>`, `t:<team>`,
/// `a:<account>`, `m:<model>` or `g:*`. An account's decisions share the hash tag of its
/// [`credit_balance`] key, so the credit script updates both atomically.
pub fn budget_decisions(prefix: &str, scope_ref: &str) -> String {
    format!("{prefix}:budget:decisions:{{{scope_ref}}}")
}

/// The prepaid balance of an account (hash: `topup`, `used`, `o:<partition>`,
/// `p:<payment id>` → amount, `init`): `<prefix>:credits:{a:<account id>}`.
pub fn credit_balance(prefix: &str, account_id: &str) -> String {
    format!("{prefix}:credits:{{a:{account_id}}}")
}

/// The channel on which every decision change publishes the scope ref it concerns:
/// `<prefix>:budget:notices`.
pub fn budget_notices(prefix: &str) -> String {
    format!("{prefix}:budget:notices")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_keys_share_the_hash_tag() {
        let keys = all_keys("tg");
        assert_eq!(keys.len(), 11);
        for k in keys.iter().chain([&changes_channel("tg")]) {
            assert!(k.starts_with("tg:{cfg}:"), "{k}");
        }
        assert_eq!(entities("tg", ConfigKind::Keys), "tg:{cfg}:keys");
        assert_eq!(seeded("tg", ConfigKind::Models), "tg:{cfg}:seeded:models");
        assert_eq!(version("tg"), "tg:{cfg}:version");
    }

    #[test]
    fn limit_keys_of_one_entity_share_a_hash_tag() {
        let k = limit_keys("tg", LimitEntity::Key, "my-app");
        assert_eq!(k.minute, "tg:rl:{k:my-app}:m");
        assert_eq!(k.day, "tg:rl:{k:my-app}:d");
        assert_eq!(k.leases, "tg:rl:{k:my-app}:c");
        let m = limit_keys("tg", LimitEntity::Model, "gpt-4o");
        assert_eq!(m.minute, "tg:rl:{m:gpt-4o}:m");
    }

    #[test]
    fn notice_round_trips_as_json() {
        let n: Notice =
            serde_json::from_str(r#"{"op":"delete","id":"m/1","version":7,"kind":"accounts"}"#)
                .unwrap();
        assert_eq!(n.kind, ConfigKind::Accounts);
        assert_eq!(n.op, NoticeOp::Delete);
        assert_eq!(n.version, 7);
    }

    #[test]
    fn budget_keys_share_slots_where_scripts_need_it() {
        assert_eq!(
            budget_counter("tg", "b1", "usd", "k", "my-key", "d20240501"),
            "tg:budget:{b:b1}:usd:k:my-key:d20240501"
        );
        assert_eq!(
            budget_decisions("tg", "a:acct-1"),
            "tg:budget:decisions:{a:acct-1}"
        );
        assert_eq!(credit_balance("tg", "acct-1"), "tg:credits:{a:acct-1}");
        assert_eq!(budget_notices("tg"), "tg:budget:notices");
    }
}
