//! Helpers shared by the `budget_*` tests: the admin API, chat requests with their cost,
//! Redis counters, waits.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tollgate_e2e::{TestStack, ADMIN_KEY, INPUT_PER_MTOK, OUTPUT_PER_MTOK, TEST_MODEL};

/// Admin API client of a budget stack.
#[derive(Debug, Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    /// For `stack`'s admin listener.
    pub fn new(stack: &TestStack) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: stack.admin_url(),
        }
    }

    /// Send JSON; status and JSON body (Null when empty or not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .timeout(Duration::from_secs(15));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// POST, expecting `want`.
    pub async fn post(&self, path: &str, body: Value, want: u16) -> anyhow::Result<Value> {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await?;
        anyhow::ensure!(status == want, "POST {path}: {status} {v}");
        Ok(v)
    }

    /// GET JSON (200).
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {v}");
        Ok(v)
    }

    /// GET text (200).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 200, "GET {path}: {}", resp.status());
        Ok(resp.text().await?)
    }
}

/// One chat completion through the proxy.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// Headers.
    pub headers: HeaderMap,
    /// Cost from the reported usage, nano-USD (0 without usage).
    pub cost_nanos: i64,
    /// When it was sent.
    pub sent: Instant,
    /// When the answer arrived.
    pub done: Instant,
}

impl Reply {
    /// `error.code` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Nano-USD of `usage` at the test prices.
pub fn cost_of(usage: &Value) -> i64 {
    let p = usage["prompt_tokens"].as_i64().unwrap_or(0);
    let c = usage["completion_tokens"].as_i64().unwrap_or(0);
    (p as f64 * INPUT_PER_MTOK * 1_000.0 + c as f64 * OUTPUT_PER_MTOK * 1_000.0).round() as i64
}

/// Send one chat completion with `key`.
pub async fn chat(
    http: &reqwest::Client,
    stack: &TestStack,
    key: &str,
    max_tokens: u64,
) -> anyhow::Result<Reply> {
    let sent = Instant::now();
    let resp = http
        .post(format!("{}/v1/chat/completions", stack.proxy.base_url()))
        .bearer_auth(key)
        .json(&json!({
            "model": TEST_MODEL,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "tell me a short story about a toll gate"}],
        }))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let cost_nanos = if status == 200 {
        cost_of(&body["usage"])
    } else {
        0
    };
    Ok(Reply {
        status,
        body,
        headers,
        cost_nanos,
        sent,
        done: Instant::now(),
    })
}

/// A Redis connection to the local stack.
pub async fn redis() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(tollgate_e2e::redis_url())?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// A hash field as i64 (0 when absent).
pub async fn hget(key: &str, field: &str) -> anyhow::Result<i64> {
    let mut conn = redis().await?;
    let v: Option<i64> = redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut conn)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Poll `check` every 100 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until `usage_events` stops growing (no new row for 1.5 s); returns the count.
pub async fn wait_rows_settled(stack: &TestStack, timeout: Duration) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = stack.row_count().await?;
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = stack.row_count().await?;
        if n != last {
            last = n;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= Duration::from_millis(1_500) {
            return Ok(n);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "rows never settled");
    }
}

/// Sum of `cost_nanos` of `usage_events` where `column = value`.
pub async fn stored_cost(stack: &TestStack, column: &str, value: &str) -> anyhow::Result<i64> {
    Ok(stack
        .db()
        .query(&format!(
            "SELECT sum(cost_nanos) FROM usage_events WHERE {column} = ?"
        ))
        .bind(value)
        .fetch_one::<i64>()
        .await?)
}

/// Steady load with `key` from `workers` concurrent loops until one gets a 429 (or
/// `deadline`); every reply in completion order.
pub async fn load_until_refused(
    stack: &TestStack,
    key: &str,
    workers: usize,
    max_tokens: u64,
    deadline: Duration,
) -> anyhow::Result<Vec<Reply>> {
    let http = reqwest::Client::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let until = Instant::now() + deadline;
    let runs = (0..workers).map(|_| {
        let http = http.clone();
        let stop = stop.clone();
        async move {
            let mut out = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let r = chat(&http, stack, key, max_tokens).await?;
                if r.status == 429 {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                out.push(r);
            }
            Ok::<_, anyhow::Error>(out)
        }
    });
    let mut all: Vec<Reply> = futures::future::try_join_all(runs)
        .await?
        .into_iter()
        .flatten()
        .collect();
    all.sort_by_key(|r| r.done);
    Ok(all)
}

/// The Redis key of `budget`'s counter in the current window.
pub fn counter_key(stack: &TestStack, budget: &tollgate_schemas::budgets::Budget) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let w = tollgate_schemas::budgets::Window::of(budget.period, now);
    budget.counter_key(stack.redis_prefix.as_deref().unwrap_or(""), &w)
}

/// Create a budget through the admin API and wait until the aggregator built its counter.
pub async fn create_budget(
    stack: &TestStack,
    admin: &Admin,
    body: Value,
) -> anyhow::Result<tollgate_schemas::budgets::Budget> {
    let created = admin.post("/admin/v1/budgets", body, 201).await?;
    let budget: tollgate_schemas::budgets::Budget = serde_json::from_value(created)?;
    let key = counter_key(stack, &budget);
    wait_until("budget counter built", Duration::from_secs(15), || async {
        Ok(hget(&key, "init").await? == 1)
    })
    .await?;
    Ok(budget)
}
