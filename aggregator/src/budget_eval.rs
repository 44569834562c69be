//! The periodic side of budgets: reload the config, build missing counters from ClickHouse,
//! re-assert decisions of every current window, enforce credit blocks, and record alerts.
//!
//! Alerts: when a window's spend reaches a threshold (percent of the limit) for the first
//! time, a `budget_alerts` row is written, a warning logged, `tollgate_budget_alerts_total`
//! counted and the alert POSTed to the budget's and the aggregator's webhook URLs. The mark
//! `a:<pct>` on the counter is set after the row is stored: at least once (a repeated row
//! collapses in the table), at most once per instance in the common case.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use clickhouse::Row;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tollgate_schemas::budgets::{
    nanos_to_usd_string, scripts, Budget, DecisionKind, Mode, Unit, Window,
};
use tollgate_schemas::telemetry::BUDGET_ALERTS;

use crate::budget::{credit_call, now_ms, run_pipe, Budgets, RedisFailure};

/// The decision a budget wants at `spent` in `window` (None: none).
pub fn wanted(b: &Budget, window: &Window, spent: i64, now_ms: i64) -> Option<DecisionKind> {
    if !b.enabled || b.mode != Mode::Hard || !window.contains(now_ms) {
        return None;
    }
    let limit = b.limit();
    if spent >= limit {
        return Some(DecisionKind::Block);
    }
    match b.reserve_above_pct {
        Some(pct) if i128::from(spent) * 100 >= i128::from(limit) * i128::from(pct) => {
            Some(DecisionKind::Reserve)
        }
        _ => None,
    }
}

/// Thresholds of `b` reached at `spent`.
pub fn reached(b: &Budget, spent: i64) -> Vec<u32> {
    let limit = i128::from(b.limit());
    b.alert_thresholds
        .iter()
        .copied()
        .filter(|t| i128::from(spent) * 100 >= limit * i128::from(*t))
        .collect()
}

/// Whether `spent` reaches any threshold of `b` (an alert may be due).
pub fn crossed(b: &Budget, spent: i64) -> bool {
    b.enabled && !reached(b, spent).is_empty()
}

/// An alert check for one budget window.
#[derive(Debug, Clone)]
pub struct AlertJob {
    /// The budget.
    pub budget: Budget,
    /// Its window.
    pub window: Window,
    /// Spend seen.
    pub spent: i64,
}

/// One `budget_alerts` row (migration 0005).
#[derive(Debug, Clone, Row, Serialize)]
struct AlertRow {
    budget_id: String,
    window_start: u32,
    threshold_pct: u16,
    window_label: String,
    scope: String,
    scope_id: String,
    period: String,
    mode: String,
    unit: String,
    limit_value: i64,
    spent: i64,
    version: u64,
}

/// The background task of [`Budgets`].
pub struct Evaluator {
    budgets: Budgets,
    jobs: mpsc::Receiver<AlertJob>,
    http: reqwest::Client,
    alerted: HashSet<(String, String, u32)>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator").finish_non_exhaustive()
    }
}

impl Evaluator {
    pub(crate) fn new(budgets: Budgets, jobs: mpsc::Receiver<AlertJob>) -> Self {
        Self {
            budgets,
            jobs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            alerted: HashSet::new(),
        }
    }

    /// Evaluate every `eval_interval_ms` (and at once when the config store announces a
    /// change) and handle alert checks until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.budgets.inner.cfg.eval_interval_ms);
        let mut next = tokio::time::Instant::now();
        let changed = Arc::new(Notify::new());
        let watcher = tokio::spawn(watch_changes(
            self.budgets.clone(),
            Arc::clone(&changed),
            stop.clone(),
        ));
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = changed.notified() => {
                    if let Err(e) = self.tick().await {
                        self.budgets.failed("load", &e);
                    }
                }
                job = self.jobs.recv() => match job {
                    Some(job) => self.alert(job).await,
                    None => return,
                },
                _ = tokio::time::sleep_until(next) => {
                    if let Err(e) = self.tick().await {
                        self.budgets.failed("load", &e);
                    }
                    next = tokio::time::Instant::now() + every;
                }
            }
        }
        watcher.abort();
    }

    /// One round: reload, build counters, decisions, credit blocks, alerts. A pending full
    /// rebuild (after a failed counter update) stays pending until a round completes it.
    pub async fn tick(&mut self) -> Result<(), RedisFailure> {
        let rebuild_all = self.budgets.inner.dirty.swap(false, Ordering::Relaxed);
        let result = self.round(rebuild_all).await;
        if rebuild_all && !matches!(result, Ok(true)) {
            self.budgets.inner.dirty.store(true, Ordering::Relaxed);
        }
        result.map(|_| ())
    }

    /// One round; true when every counter due for a rebuild was rebuilt.
    async fn round(&mut self, rebuild_all: bool) -> Result<bool, RedisFailure> {
        let b = self.budgets.clone();
        let b = &b;
        if let Some(old) = b.reload().await? {
            b.clear_removed(&old).await?;
        }
        let loaded = b.loaded();
        let now = now_ms();
        let p = b.prefix().to_string();
        // Budgets: the current window of each.
        let windows: Vec<(Budget, Window, String)> = loaded
            .budgets
            .iter()
            .map(|bu| {
                let w = Window::of(bu.period, now);
                let key = bu.counter_key(&p, &w);
                (bu.clone(), w, key)
            })
            .collect();
        let mut pipe = redis::pipe();
        for (_, _, key) in &windows {
            pipe.cmd("HMGET")
                .arg(key)
                .arg(scripts::VALUE_FIELD)
                .arg(scripts::INIT_FIELD);
        }
        let states: Vec<(Option<i64>, Option<String>)> = if windows.is_empty() {
            Vec::new()
        } else {
            run_pipe(&b.inner.conn, &pipe).await?
        };
        let mut jobs = Vec::new();
        let mut complete = true;
        for ((bu, w, key), (value, init)) in windows.into_iter().zip(states) {
            let mut value = value.unwrap_or(0);
            if bu.enabled && (rebuild_all || init.is_none()) {
                match crate::budget_rebuild::rebuild_budget(b, &bu, &w, &key).await {
                    Ok(Some(v)) => value = v,
                    Ok(None) | Err(_) => complete = false,
                }
            }
            jobs.push((bu, w, value));
        }
        b.decide_many(&jobs, true).await?;
        b.forget_old_windows(&jobs);
        for (bu, w, v) in jobs {
            if crossed(&bu, v) {
                self.alert(AlertJob {
                    budget: bu,
                    window: w,
                    spent: v,
                })
                .await;
            }
        }
        // Credits: build missing balances, then enforce the block at zero.
        let accounts: Vec<_> = loaded.credits.values().cloned().collect();
        if !accounts.is_empty() {
            let mut pipe = redis::pipe();
            for c in &accounts {
                pipe.cmd("HMGET")
                    .arg(tollgate_schemas::redis_keys::credit_balance(&p, &c.id))
                    .arg(scripts::INIT_FIELD)
                    .arg("since");
            }
            let inits: Vec<(Option<String>, Option<i64>)> = run_pipe(&b.inner.conn, &pipe).await?;
            let mut pipe = redis::pipe();
            for (c, (init, since)) in accounts.iter().zip(inits) {
                // A new account, or one whose start moved (recreated, edited): recount.
                let moved = since != Some(c.since());
                if (rebuild_all || init.is_none() || moved)
                    && !matches!(crate::budget_rebuild::rebuild_credit(b, c).await, Ok(true))
                {
                    complete = false;
                }
                pipe.invoke_script(&credit_call(&p, c, "eval"));
            }
            let _: Vec<redis::Value> = run_pipe(&b.inner.conn, &pipe).await?;
        }
        Ok(complete)
    }

    /// Record the alerts of `job` not recorded yet.
    async fn alert(&mut self, job: AlertJob) {
        let b = &job.budget;
        let due: Vec<u32> = reached(b, job.spent)
            .into_iter()
            .filter(|t| {
                !self
                    .alerted
                    .contains(&(b.id.clone(), job.window.label.clone(), *t))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let key = b.counter_key(self.budgets.prefix(), &job.window);
        let mut pipe = redis::pipe();
        for t in &due {
            pipe.cmd("HGET").arg(&key).arg(scripts::alert_field(*t));
        }
        let marks: Vec<Option<String>> = match run_pipe(&self.budgets.inner.conn, &pipe).await {
            Ok(m) => m,
            Err(e) => {
                self.budgets.failed("read", &e);
                return;
            }
        };
        for (t, mark) in due.into_iter().zip(marks) {
            let id = (b.id.clone(), job.window.label.clone(), t);
            if mark.is_some() {
                self.alerted.insert(id);
                continue;
            }
            if let Err(e) = self.record(&job, t).await {
                tracing::warn!(budget = %b.id, threshold = t, error = %e, "cannot record budget alert; retrying later");
                continue;
            }
            let mut conn = self.budgets.inner.conn.clone();
            let cmd = redis::cmd("HSET")
                .arg(&key)
                .arg(scripts::alert_field(t))
                .arg(now_ms())
                .clone();
            let set = cmd.query_async::<i64>(&mut conn);
            match tokio::time::timeout(crate::budget::REDIS_TIMEOUT, set).await {
                Ok(Ok(_)) => {
                    self.alerted.insert(id);
                }
                Ok(Err(e)) => self.budgets.failed("decide", &RedisFailure::Redis(e)),
                Err(_) => self.budgets.failed(
                    "decide",
                    &RedisFailure::Timeout(crate::budget::REDIS_TIMEOUT),
                ),
            }
        }
        if self.alerted.len() > 100_000 {
            self.alerted.clear();
        }
    }

    /// Store the alert row, log, count and POST it.
    async fn record(&self, job: &AlertJob, threshold: u32) -> Result<(), clickhouse::error::Error> {
        let b = &job.budget;
        let row = AlertRow {
            budget_id: b.id.clone(),
            window_start: job.window.start_secs(),
            threshold_pct: u16::try_from(threshold).unwrap_or(u16::MAX),
            window_label: job.window.label.clone(),
            scope: b.scope.as_str().into(),
            scope_id: b.scope_id.clone(),
            period: b.period.as_str().into(),
            mode: b.mode.as_str().into(),
            unit: b.unit().as_str().into(),
            limit_value: b.limit(),
            spent: job.spent,
            version: u64::try_from(now_ms()).unwrap_or(0),
        };
        let db = &self.budgets.inner.db;
        crate::budget::clickhouse_bounded(async {
            let mut insert = db.insert::<AlertRow>("budget_alerts").await?;
            insert.write(&row).await?;
            insert.end().await
        })
        .await?;
        metrics::counter!(BUDGET_ALERTS, "mode" => b.mode.as_str()).increment(1);
        tracing::warn!(
            budget = %b.id,
            scope = b.scope.as_str(),
            scope_id = %b.scope_id,
            window = %job.window.label,
            threshold_pct = threshold,
            spent = job.spent,
            limit = b.limit(),
            mode = b.mode.as_str(),
            "budget alert: threshold reached"
        );
        let urls: Vec<String> = [
            b.alert_webhook_url.clone(),
            self.budgets.inner.cfg.alert_webhook_url.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !urls.is_empty() {
            let body = payload(b, &job.window, threshold, job.spent);
            for url in urls {
                let http = self.http.clone();
                let body = body.clone();
                let id = b.id.clone();
                tokio::spawn(async move {
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            tracing::warn!(budget = %id, status = r.status().as_u16(), "alert webhook refused the alert")
                        }
                        Err(e) => {
                            tracing::warn!(budget = %id, error = %e, "alert webhook unreachable")
                        }
                    }
                });
            }
        }
        Ok(())
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Wake the evaluator on every config-store notice (a budget or credit account changed).
async fn watch_changes(budgets: Budgets, changed: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let channel = tollgate_schemas::redis_keys::changes_channel(budgets.prefix());
    loop {
        let sub = async {
            let mut pubsub = budgets.inner.target.pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let sub = tokio::select! {
            _ = stopped(&mut stop) => return,
            s = tokio::time::timeout(Duration::from_secs(2), sub) => s,
        };
        if let Ok(Ok(mut pubsub)) = sub {
            let mut messages = pubsub.on_message();
            loop {
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    m = messages.next() => match m {
                        Some(_) => changed.notify_one(),
                        None => break,
                    },
                }
            }
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The JSON POSTed to alert webhooks.
pub fn payload(b: &Budget, w: &Window, threshold: u32, spent: i64) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "budget.threshold_reached",
        "budget_id": b.id,
        "name": b.name,
        "scope": b.scope.as_str(),
        "scope_id": b.scope_id,
        "period": b.period.as_str(),
        "mode": b.mode.as_str(),
        "unit": b.unit().as_str(),
        "window": w.label,
        "window_start_ms": w.start_ms,
        "resets_at_ms": w.end_ms,
        "threshold_pct": threshold,
        "limit": b.limit(),
        "spent": spent,
    });
    if b.unit() == Unit::Usd {
        v["limit_usd"] = nanos_to_usd_string(b.limit()).into();
        v["spent_usd"] = nanos_to_usd_string(spent).into();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_schemas::budgets::Period;

    fn budget(json: &str) -> Budget {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn decisions_follow_mode_limit_and_reservation() {
        let now = now_ms();
        let w = Window::of(Period::Daily, now);
        let hard = budget(
            r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_tokens":100,"reserve_above_pct":80}"#,
        );
        assert_eq!(wanted(&hard, &w, 79, now), None);
        assert_eq!(wanted(&hard, &w, 80, now), Some(DecisionKind::Reserve));
        assert_eq!(wanted(&hard, &w, 100, now), Some(DecisionKind::Block));
        let past = Window::of(Period::Daily, now - 2 * 86_400_000);
        assert_eq!(wanted(&hard, &past, 1_000, now), None);
        let warn = budget(
            r#"{"id":"b","scope":"key","scope_id":"k","period":"daily","limit_tokens":100,"mode":"warn","alert_thresholds":[80]}"#,
        );
        assert_eq!(wanted(&warn, &w, 1_000, now), None);
        assert_eq!(reached(&warn, 79), Vec::<u32>::new());
        assert_eq!(reached(&warn, 80), vec![80]);
        assert!(crossed(&warn, 200));
        assert_eq!(reached(&hard, 60), vec![50]);
        let p = payload(&hard, &w, 50, 60);
        assert_eq!(p["threshold_pct"], 50);
        assert!(p.get("limit_usd").is_none());
    }
}
