//! Runs a [`Scenario`] against a target: open loop (constant arrival rate,
//! latency from the intended send time) or closed loop (fixed workers).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use super::recorder::{Recorder, RunSummary};
use super::report::Outcome;
use super::request::{send_at, Prepared};
use super::schedule::{pick_weighted, OpenSchedule, KEY_SALT, MODEL_SALT};
use super::{chat_completions_url, is_stream_request};
use crate::scenario::{Mode, Scenario};

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Target {
    /// Label in reports (`direct`, `proxy`, ...).
    pub label: String,
    /// Chat-completions URL.
    pub url: reqwest::Url,
}

impl Target {
    /// A target from a base URL (see [`chat_completions_url`]).
    pub fn new(label: &str, base_url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            label: label.to_owned(),
            url: chat_completions_url(base_url)?,
        })
    }
}

/// The request bodies and keys of a scenario, serialised once.
#[derive(Debug)]
pub struct Workload {
    /// Per model: `[plain, stream]` bodies.
    bodies: Vec<[Bytes; 2]>,
    model_weights: Vec<u32>,
    keys: Vec<String>,
    key_weights: Vec<u32>,
    stream_share: f64,
}

/// The JSON body of a scenario request for `model`.
pub fn scenario_body(scenario: &Scenario, model: &str, stream: bool, run_id: &str) -> Value {
    let mut body = serde_json::Map::new();
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": scenario.prompt}]),
    );
    body.insert("max_tokens".into(), json!(scenario.max_tokens));
    for (k, v) in &scenario.body {
        body.insert(k.clone(), v.clone());
    }
    body.insert("model".into(), json!(model));
    body.insert("stream".into(), json!(stream));
    if stream && scenario.include_usage {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let mut meta = scenario.metadata.clone();
    meta.insert("run_id".into(), json!(run_id));
    body.insert("metadata".into(), Value::Object(meta));
    Value::Object(body)
}

impl Workload {
    /// Serialises the bodies of every model of `scenario`, tagged with
    /// `run_id` in `metadata.run_id`.
    pub fn new(scenario: &Scenario, run_id: &str) -> anyhow::Result<Self> {
        let mut bodies = Vec::with_capacity(scenario.models.len());
        for m in &scenario.models {
            let enc = |stream| -> anyhow::Result<Bytes> {
                Ok(Bytes::from(serde_json::to_vec(&scenario_body(
                    scenario, &m.name, stream, run_id,
                ))?))
            };
            bodies.push([enc(false)?, enc(true)?]);
        }
        Ok(Self {
            bodies,
            model_weights: scenario.models.iter().map(|m| m.weight).collect(),
            keys: scenario.keys.iter().map(|k| k.key.clone()).collect(),
            key_weights: scenario.keys.iter().map(|k| k.weight).collect(),
            stream_share: scenario.stream_share,
        })
    }

    /// Request number `index` of the run.
    pub(crate) fn request(&self, index: u64) -> Prepared<'_> {
        let stream = is_stream_request(index, self.stream_share);
        let model = pick_weighted(&self.model_weights, index, MODEL_SALT);
        let key = (!self.keys.is_empty())
            .then(|| self.keys[pick_weighted(&self.key_weights, index, KEY_SALT)].as_str());
        let body = self
            .bodies
            .get(model)
            .map(|b| b[usize::from(stream)].clone())
            .unwrap_or_default();
        Prepared { key, body, stream }
    }
}

/// An HTTP client suited to a scenario (timeout, pool size, no proxy).
pub fn client_for(scenario: &Scenario) -> anyhow::Result<reqwest::Client> {
    let pool = match scenario.mode {
        Mode::Open => scenario.max_in_flight.min(4096),
        Mode::Closed => scenario.concurrency.unwrap_or(1),
    };
    reqwest::Client::builder()
        .timeout(scenario.timeout())
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(pool)
        .build()
        .context("building the HTTP client")
}

/// A part of a run: requests numbered from `first_index`, `warmup` then
/// `measured` long.
#[derive(Clone, Copy, Debug)]
pub struct Slice {
    /// Index of the first request (keeps the mixes going across slices).
    pub first_index: u64,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Measured part.
    pub measured: Duration,
}

/// Everything a slice run needs.
#[derive(Clone, Debug)]
pub struct Runner {
    /// HTTP client (keep it across slices of one side to reuse connections).
    pub client: reqwest::Client,
    /// Target.
    pub target: Target,
    /// Prepared requests.
    pub workload: Arc<Workload>,
    /// Requests in flight right now (shared by clones).
    pub in_flight: Arc<AtomicUsize>,
}

type Done = (u64, bool, Duration, Outcome);

impl Runner {
    /// A runner of `scenario` against `target`, requests tagged `run_id`.
    pub fn new(scenario: &Scenario, target: Target, run_id: &str) -> anyhow::Result<Self> {
        Ok(Self::with_client(
            client_for(scenario)?,
            target,
            Arc::new(Workload::new(scenario, run_id)?),
        ))
    }

    /// A runner sharing a client and a workload with others.
    pub fn with_client(client: reqwest::Client, target: Target, workload: Arc<Workload>) -> Self {
        Self {
            client,
            target,
            workload,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Sends request `index`, measured from `start`, counting it in flight.
    async fn send(&self, index: u64, start: Instant) -> Outcome {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let req = self.workload.request(index);
        let o = send_at(&self.client, &self.target.url, req, start).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        o
    }

    /// Runs all of `scenario` (warm-up, then the measured part).
    pub async fn run(
        &self,
        scenario: &Scenario,
        run_id: &str,
        bar: &ProgressBar,
    ) -> anyhow::Result<RunSummary> {
        let mut rec = Recorder::new(
            &scenario.name,
            &self.target.label,
            &scenario.load_label(),
            run_id,
        )?;
        let slice = Slice {
            first_index: 0,
            warmup: scenario.warmup(),
            measured: scenario.duration(),
        };
        self.run_slice(scenario, slice, &mut rec, bar).await?;
        Ok(rec.summary())
    }

    /// Runs one slice of `scenario`, recording into `rec`; returns the index
    /// after the last request sent. `bar` (possibly hidden) advances by the
    /// slice's milliseconds.
    pub async fn run_slice(
        &self,
        scenario: &Scenario,
        slice: Slice,
        rec: &mut Recorder,
        bar: &ProgressBar,
    ) -> anyhow::Result<u64> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
        let start = Instant::now();
        let dispatcher = match scenario.mode {
            Mode::Open => {
                let rate = scenario.rate.context("open mode without rate")?;
                tokio::spawn(open_loop(
                    self.clone(),
                    OpenSchedule::new(rate, slice.warmup, slice.measured),
                    slice.first_index,
                    scenario.max_in_flight,
                    start,
                    tx,
                ))
            }
            Mode::Closed => {
                let workers = scenario
                    .concurrency
                    .context("closed mode without concurrency")?;
                tokio::spawn(closed_loop(self.clone(), workers, slice, start, tx))
            }
        };
        let base = bar.position();
        let total_ms = (slice.warmup + slice.measured).as_millis() as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some((_, true, _, o)) => rec.record_warmup(&o),
                    Some((_, false, at, o)) => rec.record(o, at),
                    None => break,
                },
                _ = tick.tick() => {
                    let ms = (start.elapsed().as_millis() as u64).min(total_ms);
                    bar.set_position(base + ms);
                    let (ok, err) = rec.ok_so_far();
                    bar.set_message(format!("{} ok {ok} err {err}", self.target.label));
                }
            }
        }
        bar.set_position(base + total_ms);
        rec.add_measured(slice.measured);
        dispatcher.await.context("dispatcher task failed")
    }
}

async fn open_loop(
    runner: Runner,
    schedule: OpenSchedule,
    first: u64,
    max_in_flight: usize,
    start: Instant,
    tx: mpsc::UnboundedSender<Done>,
) -> u64 {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let measured_start = schedule.measured_start();
    for k in 0..schedule.total() {
        let offset = schedule.offset(k);
        let intended = start + offset;
        tokio::time::sleep_until(tokio::time::Instant::from_std(intended)).await;
        // Latency counts from the send when the request leaves on schedule (the timer wakes
        // up to ~1 ms late: the load generator's lag, not the target's), and from the
        // intended time when the in-flight cap held it back (the target was too slow: no
        // coordinated omission).
        let (permit, from) = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => (p, Instant::now()),
            Err(_) => match Arc::clone(&permits).acquire_owned().await {
                Ok(p) => (p, intended),
                Err(_) => break,
            },
        };
        let (runner, tx) = (runner.clone(), tx.clone());
        let warmup = schedule.is_warmup(k);
        tokio::spawn(async move {
            let o = runner.send(first + k, from).await;
            drop(permit);
            let at = offset.saturating_sub(measured_start);
            let _ = tx.send((first + k, warmup, at, o));
        });
    }
    first + schedule.total()
}

async fn closed_loop(
    runner: Runner,
    workers: usize,
    slice: Slice,
    start: Instant,
    tx: mpsc::UnboundedSender<Done>,
) -> u64 {
    let next = Arc::new(AtomicU64::new(slice.first_index));
    let measured_start = start + slice.warmup;
    let end = measured_start + slice.measured;
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (runner, tx, next) = (runner.clone(), tx.clone(), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let o = runner.send(i, now).await;
                let warmup = now < measured_start;
                let at = now.saturating_duration_since(measured_start);
                if tx.send((i, warmup, at, o)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    for t in tasks {
        let _ = t.await;
    }
    next.load(Ordering::Relaxed)
}

/// Runs a whole scenario against one target and summarises it.
pub async fn run_scenario(
    scenario: &Scenario,
    target: Target,
    run_id: &str,
    bar: &ProgressBar,
) -> anyhow::Result<RunSummary> {
    Runner::new(scenario, target, run_id)?
        .run(scenario, run_id, bar)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_mix_and_run_id() {
        let s = Scenario::from_yaml(
            "name: t\nmode: closed\nconcurrency: 2\nduration_secs: 1\nstream_share: 0.5\n\
             models: [{name: a, weight: 1}, {name: b, weight: 1}]\n\
             keys: [{key: k1}, {key: k2, weight: 3}]\n\
             metadata: {team: qa}\nbody: {temperature: 0}\n",
        )
        .unwrap();
        let body = scenario_body(&s, "a", true, "run-1");
        assert_eq!(body["metadata"]["run_id"], "run-1");
        assert_eq!(body["metadata"]["team"], "qa");
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["temperature"], 0);
        assert_eq!(body["model"], "a");

        let w = Workload::new(&s, "run-1").unwrap();
        let reqs: Vec<_> = (0..400).map(|i| w.request(i)).collect();
        let streams = reqs.iter().filter(|r| r.stream).count();
        assert_eq!(streams, 200);
        let k2 = reqs.iter().filter(|r| r.key == Some("k2")).count();
        assert!((280..=320).contains(&k2), "{k2}");
        let to_b = reqs
            .iter()
            .filter(|r| {
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["stream"], r.stream);
                v["model"] == "b"
            })
            .count();
        assert!((180..=220).contains(&to_b), "{to_b}");
    }
}
