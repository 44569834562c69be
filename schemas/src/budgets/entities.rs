//! The budget and credit-account entities (JSON in the config store, bodies of the admin API).

use serde::{Deserialize, Serialize};

use super::usd_to_nanos;

/// A validation failure at a field path, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {message}")]
pub struct Invalid {
    /// Field path, e.g. `alert_thresholds[1]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What a budget counts: the requests of one key, team, account or model, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One virtual API key (`scope_id` = key id).
    Key,
    /// One team (`scope_id` = team id).
    Team,
    /// One account (`scope_id` = account id).
    Account,
    /// One public model (`scope_id` = model name).
    Model,
    /// Every request (`scope_id` empty).
    Global,
}

impl Scope {
    /// Name in JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Team => "team",
            Self::Account => "account",
            Self::Model => "model",
            Self::Global => "global",
        }
    }

    /// One-letter tag used in Redis keys: `k`, `t`, `a`, `m`, `g`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Key => "k",
            Self::Team => "t",
            Self::Account => "a",
            Self::Model => "m",
            Self::Global => "g",
        }
    }

    /// The ClickHouse `usage_events` column this scope filters on (None: global).
    pub fn column(self) -> Option<&'static str> {
        match self {
            Self::Key => Some("api_key_id"),
            Self::Team => Some("team_id"),
            Self::Account => Some("account_id"),
            Self::Model => Some("model"),
            Self::Global => None,
        }
    }
}

/// Budget period; every window is aligned to UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// 00:00 UTC to 00:00 UTC.
    Daily,
    /// Monday 00:00 UTC to the next Monday (ISO weeks).
    Weekly,
    /// The 1st 00:00 UTC to the 1st of the next month.
    Monthly,
    /// One window forever: the budget never resets.
    Total,
}

impl Period {
    /// Name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Total => "total",
        }
    }
}

/// What happens at the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Requests of the scope get 429 `budget_exceeded` until the window resets.
    #[default]
    Hard,
    /// Alerts only; never blocks.
    Warn,
}

impl Mode {
    /// Name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Warn => "warn",
        }
    }
}

/// Unit of a limit and of its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Cost; counters hold nano-USD.
    Usd,
    /// Prompt + completion tokens.
    Tokens,
}

impl Unit {
    /// Name in JSON and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usd => "usd",
            Self::Tokens => "tokens",
        }
    }
}

fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

fn yes() -> bool {
    true
}

/// A spending limit of one scope over a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Id (1-128 of letters, digits, `.`, `_`, `-`, `:`, `/`).
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// What it counts.
    pub scope: Scope,
    /// Key id, team id, account id or model name; empty for `global`.
    #[serde(default)]
    pub scope_id: String,
    /// Window length.
    pub period: Period,
    /// Limit in USD (exactly one of `limit_usd` and `limit_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_usd: Option<f64>,
    /// Limit in tokens (prompt + completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_tokens: Option<u64>,
    /// `hard` (block) or `warn` (alert only).
    #[serde(default)]
    pub mode: Mode,
    /// Percentages of the limit at which an alert is recorded (once per window each).
    #[serde(default = "default_thresholds")]
    pub alert_thresholds: Vec<u32>,
    /// Hard budgets only: from this percentage of the limit on, every request of the scope
    /// reserves its worst-case cost before it is forwarded (absent: no reservations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_above_pct: Option<u32>,
    /// Where alerts of this budget are POSTed as JSON (besides the aggregator's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_webhook_url: Option<String>,
    /// Disabled budgets count nothing and never block.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// Ids: 1-128 chars of letters, digits, `.`, `_`, `-`, `:`, `/`.
pub fn valid_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
}

fn check_id(field: &str, value: &str) -> Result<(), Invalid> {
    if valid_id(value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            "must be 1-128 characters of letters, digits, '.', '_', '-', ':' or '/'",
        ))
    }
}

/// Largest limit: 10^12 USD or 10^15 tokens.
const MAX_LIMIT_USD: f64 = 1e9;
const MAX_LIMIT_TOKENS: u64 = 1_000_000_000_000_000;

impl Budget {
    /// Unit of the limit.
    pub fn unit(&self) -> Unit {
        if self.limit_tokens.is_some() {
            Unit::Tokens
        } else {
            Unit::Usd
        }
    }

    /// The limit in counter units (nano-USD or tokens).
    pub fn limit(&self) -> i64 {
        match (self.limit_usd, self.limit_tokens) {
            (_, Some(t)) => i64::try_from(t).unwrap_or(i64::MAX),
            (Some(usd), None) => usd_to_nanos(usd),
            (None, None) => 0,
        }
    }

    /// `amount` of a request in this budget's unit.
    pub fn amount(&self, cost_nanos: i64, tokens: i64) -> i64 {
        match self.unit() {
            Unit::Usd => cost_nanos,
            Unit::Tokens => tokens,
        }
    }

    /// Whether a request of these ids falls in the scope.
    pub fn matches(&self, key: &str, team: &str, account: &str, model: &str) -> bool {
        match self.scope {
            Scope::Key => self.scope_id == key,
            Scope::Team => !team.is_empty() && self.scope_id == team,
            Scope::Account => self.scope_id == account,
            Scope::Model => self.scope_id == model,
            Scope::Global => true,
        }
    }

    /// The scope as a cache and notice id: `k:<key id>`, `g:*`, ...
    pub fn scope_ref(&self) -> String {
        scope_ref(self.scope, &self.scope_id)
    }

    /// The Redis key of this budget's counter in `window`.
    pub fn counter_key(&self, prefix: &str, window: &super::Window) -> String {
        crate::redis_keys::budget_counter(
            prefix,
            &self.id,
            self.unit().as_str(),
            self.scope.tag(),
            &self.scope_id,
            &window.label,
        )
    }

    /// Expiry of a window's counter: a week after the window ends (0: never, `total`).
    pub fn counter_expiry_ms(window: &super::Window) -> i64 {
        window.end_ms.map_or(0, |e| e + 7 * 86_400_000)
    }

    /// The decision this budget writes for `window` (`kind` block or reserve).
    pub fn decision(
        &self,
        prefix: &str,
        window: &super::Window,
        kind: super::DecisionKind,
    ) -> super::Decision {
        super::Decision {
            kind,
            reason: super::DecisionReason::Budget,
            id: self.id.clone(),
            scope: self.scope,
            scope_id: self.scope_id.clone(),
            period: Some(self.period),
            unit: self.unit(),
            limit: self.limit(),
            reset_at_ms: window.end_ms,
            counter: (kind == super::DecisionKind::Reserve)
                .then(|| self.counter_key(prefix, window)),
        }
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("id", &self.id)?;
        if self.name.len() > 256 {
            return Err(invalid("name", "at most 256 characters"));
        }
        match self.scope {
            Scope::Global if !self.scope_id.is_empty() => {
                return Err(invalid(
                    "scope_id",
                    "must be empty (or absent) for the global scope",
                ))
            }
            Scope::Global => {}
            _ => check_id("scope_id", &self.scope_id).map_err(|mut e| {
                e.message = format!(
                    "{} (the {} id this budget counts)",
                    e.message,
                    self.scope.as_str()
                );
                e
            })?,
        }
        match (self.limit_usd, self.limit_tokens) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    "limit_usd",
                    "set exactly one of limit_usd and limit_tokens",
                ))
            }
            (Some(usd), None) if !(usd.is_finite() && usd > 0.0 && usd <= MAX_LIMIT_USD) => {
                return Err(invalid(
                    "limit_usd",
                    "must be a number above 0 and at most 1000000000",
                ))
            }
            (Some(usd), None) if usd_to_nanos(usd) < 1 => {
                return Err(invalid("limit_usd", "must be at least 0.000000001"))
            }
            (None, Some(t)) if t == 0 || t > MAX_LIMIT_TOKENS => {
                return Err(invalid("limit_tokens", "must be between 1 and 10^15"))
            }
            _ => {}
        }
        if self.alert_thresholds.len() > 10 {
            return Err(invalid("alert_thresholds", "at most 10 thresholds"));
        }
        for (i, t) in self.alert_thresholds.iter().enumerate() {
            if !(1..=1000).contains(t) {
                return Err(invalid(
                    format!("alert_thresholds[{i}]"),
                    "must be a percentage between 1 and 1000",
                ));
            }
            if self.alert_thresholds[..i].contains(t) {
                return Err(invalid(
                    format!("alert_thresholds[{i}]"),
                    "duplicate threshold",
                ));
            }
        }
        if self.mode == Mode::Warn && self.alert_thresholds.is_empty() {
            return Err(invalid(
                "alert_thresholds",
                "a warn budget needs at least one threshold (it only alerts)",
            ));
        }
        if let Some(p) = self.reserve_above_pct {
            if self.mode == Mode::Warn {
                return Err(invalid(
                    "reserve_above_pct",
                    "only hard budgets reserve (warn budgets never block)",
                ));
            }
            if p > 100 {
                return Err(invalid(
                    "reserve_above_pct",
                    "must be a percentage between 0 and 100",
                ));
            }
        }
        if let Some(url) = &self.alert_webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() > 2048
                || url.contains(char::is_whitespace)
            {
                return Err(invalid(
                    "alert_webhook_url",
                    "must be an http:// or https:// URL without spaces",
                ));
            }
        }
        Ok(())
    }
}

/// A scope as a cache and notice id: `<tag>:<id>` (`g:*` for global).
pub fn scope_ref(scope: Scope, id: &str) -> String {
    if scope == Scope::Global {
        "g:*".to_string()
    } else {
        format!("{}:{id}", scope.tag())
    }
}

/// A prepaid account: usage debits its balance; at or below zero the account is blocked like
/// a hard budget until a top-up. The balance itself lives in Redis and the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditAccount {
    /// The account id (as in keys and usage events).
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Block the account's requests while the balance is at or below zero.
    #[serde(default = "yes")]
    pub block_at_zero: bool,
    /// Usage from this instant on (Unix ms) debits the balance; set when created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
}

impl CreditAccount {
    /// Check every field.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("id", &self.id)?;
        if self.name.len() > 256 {
            return Err(invalid("name", "at most 256 characters"));
        }
        if self.since_ms.is_some_and(|s| s < 0) {
            return Err(invalid("since_ms", "must be a Unix time in ms (>= 0)"));
        }
        Ok(())
    }

    /// Start of the debited usage (Unix ms; 0 when unset).
    pub fn since(&self) -> i64 {
        self.since_ms.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(json: &str) -> Budget {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_units() {
        let b =
            budget(r#"{"id":"b","scope":"key","scope_id":"k1","period":"daily","limit_usd":0.05}"#);
        b.validate().unwrap();
        assert_eq!(b.mode, Mode::Hard);
        assert_eq!(b.alert_thresholds, vec![50, 80, 100]);
        assert_eq!((b.unit(), b.limit()), (Unit::Usd, 50_000_000));
        assert!(b.matches("k1", "", "a", "m"));
        assert!(!b.matches("k2", "", "a", "m"));
        assert_eq!(b.scope_ref(), "k:k1");
        let t = budget(r#"{"id":"b","scope":"global","period":"total","limit_tokens":1000}"#);
        t.validate().unwrap();
        assert_eq!(
            (t.unit(), t.limit(), t.amount(5, 7)),
            (Unit::Tokens, 1000, 7)
        );
        assert_eq!(t.scope_ref(), "g:*");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"id":"b","scope":"key","period":"daily","limit_usd":1}"#,
                "scope_id",
            ),
            (
                r#"{"id":"b","scope":"global","scope_id":"x","period":"daily","limit_usd":1}"#,
                "scope_id",
            ),
            (
                r#"{"id":"b","scope":"key","scope_id":"k","period":"daily"}"#,
                "limit_usd",
            ),
            (
                r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_usd":-1}"#,
                "limit_usd",
            ),
            (
                r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_tokens":0}"#,
                "limit_tokens",
            ),
            (
                r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_usd":1,"alert_thresholds":[50,50]}"#,
                "alert_thresholds[1]",
            ),
            (
                r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_usd":1,"mode":"warn","alert_thresholds":[]}"#,
                "alert_thresholds",
            ),
            (
                r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_usd":1,"mode":"warn","reserve_above_pct":50}"#,
                "reserve_above_pct",
            ),
            (
                r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_usd":1,"alert_webhook_url":"ftp://x"}"#,
                "alert_webhook_url",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(budget(json).validate().unwrap_err().field, field, "{json}");
        }
        assert!(serde_json::from_str::<Budget>(
            r#"{"id":"b","scope":"key","period":"daily","limt_usd":1}"#
        )
        .is_err());
    }

    #[test]
    fn credit_accounts_validate() {
        let c: CreditAccount = serde_json::from_str(r#"{"id":"acct-1"}"#).unwrap();
        c.validate().unwrap();
        assert!(c.block_at_zero);
        let c: CreditAccount = serde_json::from_str(r#"{"id":"bad id"}"#).unwrap();
        assert_eq!(c.validate().unwrap_err().field, "id");
    }
}
