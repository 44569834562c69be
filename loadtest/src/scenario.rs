//! Scenario files: what `tollgate-loadtest run` sends, how hard and for how long.
//!
//! A scenario is a YAML (or JSON) file, see `loadtest/scenarios/*.yaml`:
//!
//! ```yaml
//! name: steady-mixed
//! mode: open            # open: constant arrival rate; closed: fixed concurrency
//! rate: 200             # requests per second (open)
//! concurrency: 16       # workers (closed)
//! duration_secs: 20     # measured part
//! warmup_secs: 3        # sent before, not measured
//! stream_share: 0.3
//! max_tokens: 16
//! prompt: "Write a haiku."
//! body: { temperature: 0.2 }         # extra top-level request fields
//! models: [{ name: gpt-4o-mini, weight: 3 }, { name: gpt-4o }]
//! keys: [{ key: sk-..., weight: 1 }]
//! metadata: { team: bench }
//! ```
//!
//! Unknown keys are rejected and every error names the offending field.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A scenario file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// Invalid YAML, unknown field or wrong type; `field` is the key path.
    #[error("invalid scenario at `{field}`: {message}")]
    Parse {
        /// Key path (`models[1].weight`), `.` for the document itself.
        field: String,
        /// Parser message.
        message: String,
    },
    /// A value out of range or a missing mode-specific field.
    #[error("invalid scenario at `{field}`: {message}")]
    Invalid {
        /// Key path.
        field: String,
        /// What to fix.
        message: String,
    },
}

fn invalid(field: &str, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// How requests are issued.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Constant arrival rate, independent of responses; latency counts from
    /// each request's intended send time (no coordinated omission).
    Open,
    /// A fixed number of workers, each sending its next request when the
    /// previous one ended.
    Closed,
}

/// A model of the mix, chosen with probability proportional to `weight`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedModel {
    /// Model name sent in the body.
    pub name: String,
    /// Relative share (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

/// An API key of the mix, chosen with probability proportional to `weight`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightedKey {
    /// Sent as `Authorization: Bearer <key>`.
    pub key: String,
    /// Relative share (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
fn default_max_tokens() -> u32 {
    16
}
fn default_prompt() -> String {
    "Write a short poem about toll bridges.".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_timeout() -> f64 {
    60.0
}
fn default_max_in_flight() -> usize {
    10_000
}

/// One load scenario (see the module docs for the file format).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports and file names.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Open (arrival rate) or closed (concurrency) loop.
    pub mode: Mode,
    /// Requests per second; required for `open`.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Workers; required for `closed`.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Open loop only: requests in flight at most; when reached, sending waits
    /// (the wait still counts in latencies). Default 10000.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Measured duration, seconds.
    pub duration_secs: f64,
    /// Warm-up before the measured part, seconds (requests sent, not measured).
    #[serde(default)]
    pub warmup_secs: f64,
    /// Share of streaming requests, `0.0..=1.0`.
    #[serde(default)]
    pub stream_share: f64,
    /// `max_tokens` of every request.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Content of the single user message.
    #[serde(default = "default_prompt")]
    pub prompt: String,
    /// Extra top-level fields of every request body (cannot override
    /// `model`, `stream`, `stream_options` or `metadata`).
    #[serde(default)]
    pub body: Map<String, Value>,
    /// Set `stream_options.include_usage` on streaming requests.
    #[serde(default = "default_true")]
    pub include_usage: bool,
    /// Models to mix (at least one).
    pub models: Vec<WeightedModel>,
    /// API keys to mix; empty: no `Authorization` header.
    #[serde(default)]
    pub keys: Vec<WeightedKey>,
    /// Request `metadata` (a `run_id` entry is added per run).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Timeout of each request, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
}

/// Fields a scenario's `body` may not set.
const RESERVED_BODY_FIELDS: [&str; 4] = ["model", "stream", "stream_options", "metadata"];

impl Scenario {
    /// Parses and validates a scenario from YAML (JSON is YAML too).
    pub fn from_yaml(text: &str) -> Result<Self, ScenarioError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let scenario: Scenario =
            serde_path_to_error::deserialize(de).map_err(|e| ScenarioError::Parse {
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Checks ranges and the mode-specific fields.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        match self.mode {
            Mode::Open => match self.rate {
                Some(r) if positive(r) => {}
                Some(_) => return Err(invalid("rate", "must be a positive number")),
                None => return Err(invalid("rate", "required when mode is open")),
            },
            Mode::Closed => match self.concurrency {
                Some(c) if c > 0 => {}
                Some(_) => return Err(invalid("concurrency", "must be at least 1")),
                None => return Err(invalid("concurrency", "required when mode is closed")),
            },
        }
        if self.max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be at least 1"));
        }
        if !positive(self.duration_secs) {
            return Err(invalid("duration_secs", "must be a positive number"));
        }
        if !(self.warmup_secs.is_finite() && self.warmup_secs >= 0.0) {
            return Err(invalid("warmup_secs", "must be zero or positive"));
        }
        if !(0.0..=1.0).contains(&self.stream_share) {
            return Err(invalid("stream_share", "must be within 0.0..=1.0"));
        }
        if !positive(self.timeout_secs) {
            return Err(invalid("timeout_secs", "must be a positive number"));
        }
        if self.models.is_empty() {
            return Err(invalid("models", "list at least one model"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.name.trim().is_empty() {
                return Err(invalid(&format!("models[{i}].name"), "must not be empty"));
            }
        }
        if self.models.iter().all(|m| m.weight == 0) {
            return Err(invalid("models", "at least one weight must be positive"));
        }
        if !self.keys.is_empty() && self.keys.iter().all(|k| k.weight == 0) {
            return Err(invalid("keys", "at least one weight must be positive"));
        }
        for field in RESERVED_BODY_FIELDS {
            if self.body.contains_key(field) {
                return Err(invalid(
                    &format!("body.{field}"),
                    "is set by the load generator",
                ));
            }
        }
        Ok(())
    }

    /// Measured duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }

    /// Warm-up duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }

    /// Per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_secs)
    }

    /// A one-line description of the load: `open 200 req/s` or
    /// `closed 16 workers`.
    pub fn load_label(&self) -> String {
        match self.mode {
            Mode::Open => format!("open {} req/s", self.rate.unwrap_or(0.0)),
            Mode::Closed => format!("closed {} workers", self.concurrency.unwrap_or(0)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const OK: &str = r#"
name: s
mode: open
rate: 50
duration_secs: 2
models: [{ name: m1, weight: 3 }, { name: m2 }]
keys: [{ key: k1 }]
body: { temperature: 0.5 }
"#;

    fn err(yaml: &str) -> String {
        Scenario::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn parses_with_defaults() {
        let s = Scenario::from_yaml(OK).unwrap();
        assert_eq!(s.mode, Mode::Open);
        assert_eq!(s.rate, Some(50.0));
        assert_eq!(s.models[1].weight, 1);
        assert_eq!(s.max_tokens, 16);
        assert!(s.include_usage);
        assert_eq!(s.warmup(), Duration::ZERO);
        assert_eq!(s.body["temperature"], 0.5);
        assert_eq!(s.load_label(), "open 50 req/s");
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = err(&format!("{OK}colour: red\n"));
        assert!(e.contains("colour"), "{e}");
        let e = err(&OK.replace("{ name: m2 }", "{ name: m2, wieght: 2 }"));
        assert!(e.contains("models[1]") && e.contains("wieght"), "{e}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = err(&OK.replace("weight: 3", "weight: lots"));
        assert!(e.contains("models[0].weight"), "{e}");
        let e = err(&OK.replace("mode: open", "mode: sideways"));
        assert!(e.contains("`mode`"), "{e}");
        let e = err("name: s\nmode: open\nrate: 1\nmodels: [{name: m}]\n");
        assert!(e.contains("duration_secs"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (OK.replace("rate: 50", ""), "`rate`"),
            (OK.replace("rate: 50", "rate: -1"), "`rate`"),
            (OK.replace("mode: open", "mode: closed"), "`concurrency`"),
            (
                OK.replace("mode: open", "mode: closed\nconcurrency: 0"),
                "`concurrency`",
            ),
            (
                OK.replace("duration_secs: 2", "duration_secs: 0"),
                "duration",
            ),
            (format!("{OK}stream_share: 1.5\n"), "`stream_share`"),
            (format!("{OK}warmup_secs: -1\n"), "`warmup_secs`"),
            (format!("{OK}timeout_secs: 0\n"), "`timeout_secs`"),
            (
                OK.replace(
                    "models: [{ name: m1, weight: 3 }, { name: m2 }]",
                    "models: []",
                ),
                "`models`",
            ),
            (OK.replace("name: m2", "name: ''"), "models[1].name"),
            (
                OK.replace("temperature: 0.5", "stream: true"),
                "`body.stream`",
            ),
            (
                OK.replace("{ key: k1 }", "{ key: k1, weight: 0 }"),
                "`keys`",
            ),
        ];
        for (yaml, field) in cases {
            let e = err(&yaml);
            assert!(e.contains(field), "expected {field} in: {e}");
        }
    }
}
