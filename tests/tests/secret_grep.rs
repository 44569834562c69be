//! Secrets never reach a log or an admin API response: runs the real binaries (mock upstream,
//! proxy with its admin API, aggregator) with debug logging into files, exercises virtual keys
//! (configured and generated), the admin key and provider keys, then greps every log for
//! every secret and for the prompt text.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use tollgate_e2e::{brokers, clickhouse, clickhouse_url, create_topic, unique};

const VIRTUAL_KEY: &str = "sk-grep-virtual-key-0000-aaaa";
const WRONG_KEY: &str = "sk-grep-wrong-key-0000-bbbb";
const ADMIN_KEY: &str = "adm-grep-admin-key-0000-cccc";
const WRONG_ADMIN_KEY: &str = "adm-grep-wrong-admin-0000-dddd";
const PROVIDER_KEY: &str = "sk-provider-grep-openai-0000-eeee";
const ANTHROPIC_KEY: &str = "sk-ant-provider-grep-0000-ffff";
const ADMIN_PROVIDER_KEY: &str = "sk-provider-grep-admin-0000-9999";
const PROMPT: &str = "grep-prompt-text: the quick toll fox pays twice";

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no parent directory")?;
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        bin.display()
    );
    Ok(bin)
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Spawn `bin` with debug logging, stdout and stderr into `log`.
fn spawn(bin: &str, args: &[&str], log: &Path, env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(binary(bin)?);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().with_context(|| format!("spawning {bin}"))
}

async fn wait_ready(url: &str, log: &Path) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!("not ready at {url}; log:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then wait (so the logs are complete).
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn chat(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    model: &str,
    stream: bool,
) -> anyhow::Result<u16> {
    let resp = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "stream": stream, "max_tokens": 8,
            "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let _ = resp.bytes().await?;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_prompt_reaches_any_log() -> anyhow::Result<()> {
    let topic = unique("t_grep");
    let database = unique("tg_grep");
    create_topic(&topic, 2).await?;
    tollgate_schemas::migrate::run(&clickhouse(), &database).await?;
    let dir = tempfile::Builder::new()
        .prefix("tollgate-grep-")
        .tempdir()?;
    let (mport, pport, aport, gport) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let mock = format!("http://127.0.0.1:{mport}");
    let proxy = format!("http://127.0.0.1:{pport}");
    let admin = format!("http://127.0.0.1:{aport}/admin/v1");
    let proxy_yaml = format!(
        r#"
listen: 127.0.0.1:{pport}
shutdown_grace_secs: 2
admin: {{ listen: "127.0.0.1:{aport}", key_env: TOLLGATE_GREP_ADMIN_KEY }}
models:
  - name: grep-openai
    deployments:
      - {{ base_url: "{mock}/v1", upstream_model: mock-upstream, api_key: {PROVIDER_KEY} }}
  - name: grep-claude
    deployments:
      - {{ provider: anthropic, base_url: "{mock}", upstream_model: claude-up, api_key: {ANTHROPIC_KEY} }}
api_keys:
  - {{ id: key_grep, secret: {VIRTUAL_KEY}, account_id: acct_grep }}
kafka:
  idempotence: false
  brokers: "{brokers}"
  topic: {topic}
  spool: {{ dir: "{spool}" }}
"#,
        brokers = brokers(),
        spool = dir.path().join("spool").display(),
    );
    let agg_yaml = format!(
        r#"
listen: 127.0.0.1:{gport}
kafka: {{ brokers: "{brokers}", topic: {topic}, group_id: {group} }}
clickhouse: {{ url: "{ch}", database: {database} }}
batch: {{ max_rows: 50, max_wait_ms: 200 }}
"#,
        brokers = brokers(),
        group = unique("g_grep"),
        ch = clickhouse_url(),
    );
    let (pcfg, acfg) = (dir.path().join("proxy.yaml"), dir.path().join("agg.yaml"));
    std::fs::write(&pcfg, proxy_yaml)?;
    std::fs::write(&acfg, agg_yaml)?;
    let logs: Vec<PathBuf> = ["mock.log", "proxy.log", "aggregator.log"]
        .iter()
        .map(|n| dir.path().join(n))
        .collect();
    let mut children = Children(Vec::new());
    children.0.push(spawn(
        "tollgate-mock",
        &["--listen", &format!("127.0.0.1:{mport}")],
        &logs[0],
        &[],
    )?);
    let pcfg_s = pcfg.display().to_string();
    children.0.push(spawn(
        "tollgate-proxy",
        &["--config", &pcfg_s],
        &logs[1],
        &[("TOLLGATE_GREP_ADMIN_KEY", ADMIN_KEY)],
    )?);
    let acfg_s = acfg.display().to_string();
    children.0.push(spawn(
        "tollgate-aggregator",
        &["--config", &acfg_s, "run"],
        &logs[2],
        &[],
    )?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", mport))
        .await
        .is_err()
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "mock not up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_ready(&format!("{proxy}/healthz"), &logs[1]).await?;
    wait_ready(&format!("http://127.0.0.1:{gport}/readyz"), &logs[2]).await?;

    let http = reqwest::Client::new();
    let mut expected_rows = 0u64;
    // Configured virtual key, both providers, streamed and not.
    for (model, stream) in [
        ("grep-openai", false),
        ("grep-openai", true),
        ("grep-claude", false),
        ("grep-claude", true),
    ] {
        assert_eq!(chat(&http, &proxy, VIRTUAL_KEY, model, stream).await?, 200);
        expected_rows += 1;
    }
    // A wrong key: refused (no event).
    assert_eq!(
        chat(&http, &proxy, WRONG_KEY, "grep-openai", false).await?,
        401
    );

    // Admin: wrong key refused; a model with a provider key; a generated virtual key.
    let resp = http
        .get(format!("{admin}/models"))
        .bearer_auth(WRONG_ADMIN_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    let mut admin_bodies = Vec::new();
    let resp = http
        .post(format!("{admin}/models"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "grep-admin-model", "deployments": [
            {"base_url": format!("{mock}/v1"), "api_key": ADMIN_PROVIDER_KEY}]}))
        .send()
        .await?;
    assert_eq!(resp.status(), 201);
    admin_bodies.push(resp.text().await?);
    let resp = http
        .post(format!("{admin}/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"id": "key_grep_gen", "account_id": "acct_grep"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await?;
    let generated = created["secret"]
        .as_str()
        .context("no generated secret")?
        .to_string();
    for path in [
        "models",
        "models/grep-openai",
        "models/grep-admin-model",
        "keys",
        "keys/key_grep",
        "keys/key_grep_gen",
    ] {
        let resp = http
            .get(format!("{admin}/{path}"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await?;
        assert_eq!(resp.status(), 200, "{path}");
        admin_bodies.push(resp.text().await?);
    }
    // The generated key and the admin-created model serve once the catalog has them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = chat(&http, &proxy, &generated, "grep-admin-model", false).await?;
        if s == 200 {
            expected_rows += 1;
            break;
        }
        // Refused before the key is known (401: no event); a 404 is metered.
        if s != 401 {
            expected_rows += 1;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "status {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything metered reaches ClickHouse, then stop the processes (flushing their logs).
    let db = clickhouse().with_database(&database);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: u64 = db
            .query("SELECT count() FROM usage_events")
            .fetch_one()
            .await?;
        if n >= expected_rows {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{n} of {expected_rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in children.0.iter_mut().rev() {
        terminate(c);
    }

    // Admin responses never carry provider keys or key secrets/hashes.
    let provider_keys = [PROVIDER_KEY, ANTHROPIC_KEY, ADMIN_PROVIDER_KEY];
    for body in &admin_bodies {
        for s in provider_keys
            .iter()
            .chain([&VIRTUAL_KEY, &generated.as_str()])
        {
            assert!(!body.contains(s), "admin response carries a secret: {body}");
        }
    }
    // No log line carries any secret, its SHA-256, or the prompt.
    let mut secrets: Vec<String> = [
        VIRTUAL_KEY,
        WRONG_KEY,
        ADMIN_KEY,
        WRONG_ADMIN_KEY,
        PROVIDER_KEY,
        ANTHROPIC_KEY,
        ADMIN_PROVIDER_KEY,
        &generated,
        PROMPT,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let hashes: Vec<String> = secrets[..8]
        .iter()
        .map(|s| {
            tollgate_proxy::routing::hash_secret(s)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        })
        .collect();
    secrets.extend(hashes);
    let mut total_lines = 0;
    for log in &logs {
        let text = std::fs::read_to_string(log)?;
        total_lines += text.lines().count();
        for s in &secrets {
            if let Some(line) = text.lines().find(|l| l.contains(s.as_str())) {
                panic!("{} logs a secret ({s}): {line}", log.display());
            }
        }
    }
    assert!(
        total_lines > 10,
        "the logs are (nearly) empty: {total_lines} lines"
    );
    Ok(())
}
