//! `tollgate-ingest-bench`: how many usage events per second the aggregator stores.
//!
//! Pre-produces N encoded events to a fresh topic, then starts an aggregator (in-process, the
//! same code as the binary) on a fresh ClickHouse database and measures until every event is
//! stored. Prints the end-to-end rate (from start, including joining the group) and the
//! steady rate (first to last insert). Run it with a release build: `make bench-aggregator`.
//! The topic is left behind (Tansu must not delete topics); the database is dropped unless
//! `--keep`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tollgate_aggregator::AggregatorConfig;
use tollgate_schemas::UsageEvent;

/// Aggregator ingest benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Events to produce and ingest.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// `batch.max_rows` of the aggregator.
    #[arg(long, default_value_t = 10_000)]
    max_rows: usize,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TOLLGATE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "TOLLGATE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse_url: String,
    /// Keep the bench database.
    #[arg(long)]
    keep: bool,
}

fn suffix() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[id.len() - 12..].to_string()
}

fn event(seq: u64) -> UsageEvent {
    let account = seq % 97;
    UsageEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        request_id: format!("bench-{seq}"),
        ts_ms: 1_763_700_000_000 + (seq as i64) * 3,
        proxy_id: "bench-proxy".into(),
        proxy_seq: seq as i64,
        api_key_id: format!("key_{account}"),
        account_id: format!("acct_{account}"),
        team_id: String::new(),
        model: ["gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet"][(seq % 3) as usize].into(),
        provider: "openai".into(),
        upstream_model: "upstream".into(),
        endpoint: "chat.completions".into(),
        stream: seq.is_multiple_of(4),
        status_code: if seq.is_multiple_of(50) { 500 } else { 200 },
        error_type: None,
        latency_us: 1_000 + (seq % 5_000) as i64,
        upstream_latency_us: 900 + (seq % 5_000) as i64,
        ttft_us: seq.is_multiple_of(4).then_some(300),
        prompt_tokens: 20 + (seq % 100) as i64,
        completion_tokens: 50 + (seq % 200) as i64,
        cached_tokens: 0,
        usage_estimated: false,
        cost_nanos: 12_345,
        attempts: 1,
        metadata: HashMap::from([("run_id".to_string(), "bench".to_string())]),
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

fn produce(brokers: &str, topic: &str, n: u64) -> anyhow::Result<f64> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "lz4")
        .create()?;
    let started = Instant::now();
    for seq in 1..=n {
        let ev = event(seq);
        let bytes = tollgate_schemas::encode(&ev)?;
        let mut record = BaseRecord::<String, Vec<u8>>::to(topic)
            .key(&ev.account_id)
            .payload(&bytes);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    if e.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
                        anyhow::bail!("produce failed: {e}");
                    }
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let id = suffix();
    let topic = format!("bench.ingest.{id}");
    let database = format!("bench_ingest_{id}");
    create_topic(&args.brokers, &topic, args.partitions).await?;
    println!(
        "producing {} events to {topic} ({} partitions)...",
        args.events, args.partitions
    );
    let (brokers, t, n) = (args.brokers.clone(), topic.clone(), args.events);
    let produce_rate = tokio::task::spawn_blocking(move || produce(&brokers, &t, n)).await??;
    println!("produced at {produce_rate:.0} events/s");

    let mut cfg = AggregatorConfig {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    cfg.kafka.brokers = args.brokers.clone();
    cfg.kafka.topic = topic.clone();
    cfg.kafka.group_id = format!("bench-{id}");
    cfg.clickhouse.url = args.clickhouse_url.clone();
    cfg.clickhouse.database = database.clone();
    cfg.batch.max_rows = args.max_rows;
    cfg.batch.max_wait_ms = 200;
    let started = Instant::now();
    let agg = tollgate_aggregator::start(cfg.clone()).await?;
    let stats = agg.stats();
    let mut first: Option<(Instant, u64)> = None;
    let deadline = started + Duration::from_secs(600);
    loop {
        let inserted = stats.inserted.load(Ordering::Relaxed);
        if inserted > 0 && first.is_none() {
            first = Some((Instant::now(), inserted));
        }
        if inserted >= args.events {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {inserted} of {} events stored",
            args.events
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = Instant::now();
    let total = done - started;
    agg.shutdown().await;

    let ch = tollgate_aggregator::sink::client(&cfg.clickhouse);
    let stored: u64 = ch
        .clone()
        .with_database(&database)
        .query("SELECT count() FROM usage_events")
        .fetch_one()
        .await
        .context("counting stored rows")?;
    anyhow::ensure!(
        stored == args.events,
        "stored {stored} rows for {} events",
        args.events
    );
    let (first_at, first_rows) = first.unwrap_or((started, 0));
    let steady = (args.events - first_rows) as f64 / (done - first_at).as_secs_f64().max(1e-9);
    println!(
        "aggregator stored {} events in {:.2}s: {:.0} events/s end to end (incl. group join), \
         {:.0} events/s steady (first to last insert, batch.max_rows {})",
        args.events,
        total.as_secs_f64(),
        args.events as f64 / total.as_secs_f64(),
        steady,
        args.max_rows
    );
    if !args.keep {
        ch.query(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute()
            .await?;
    }
    Ok(())
}
