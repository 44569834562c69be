//! Private copies of stack services for fault-injection tests.
//!
//! A test that stops a broker or ClickHouse must not disturb the shared local stack, which
//! other tests use in parallel. [`PrivateService`] starts its own instance through
//! `infra/dev/stack.sh start SERVICE` with a temporary state directory and free ports, and
//! stops it when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// A service that a private instance can be started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// Tansu (Kafka API).
    Kafka,
    /// ClickHouse server.
    ClickHouse,
    /// Redis server.
    Redis,
}

impl ServiceKind {
    fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::ClickHouse => "clickhouse",
            Self::Redis => "redis",
        }
    }
}

/// A running private service; stopped on drop.
#[derive(Debug)]
pub struct PrivateService {
    kind: ServiceKind,
    state: tempfile::TempDir,
    /// Main port (Kafka listener, ClickHouse HTTP, Redis).
    pub port: u16,
    /// ClickHouse native port (unused for other kinds).
    pub tcp_port: u16,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PrivateService {
    /// Start a private instance on free ports.
    pub fn start(kind: ServiceKind) -> anyhow::Result<Self> {
        let svc = Self {
            kind,
            state: tempfile::Builder::new()
                .prefix("tollgate-private-")
                .tempdir()?,
            port: free_port()?,
            tcp_port: free_port()?,
        };
        svc.run("start")?;
        Ok(svc)
    }

    fn run(&self, action: &str) -> anyhow::Result<()> {
        let port_var = match self.kind {
            ServiceKind::Kafka => "TOLLGATE_KAFKA_PORT",
            ServiceKind::ClickHouse => "TOLLGATE_CLICKHOUSE_HTTP_PORT",
            ServiceKind::Redis => "TOLLGATE_REDIS_PORT",
        };
        let out = Command::new("bash")
            .arg(repo_root().join("infra/dev/stack.sh"))
            .arg(action)
            .arg(self.kind.name())
            .env("TOLLGATE_STATE_DIR", self.state.path())
            .env(port_var, self.port.to_string())
            .env("TOLLGATE_CLICKHOUSE_TCP_PORT", self.tcp_port.to_string())
            .output()
            .with_context(|| format!("running stack.sh {action} {}", self.kind.name()))?;
        anyhow::ensure!(
            out.status.success(),
            "stack.sh {action} {} failed:\n{}{}",
            self.kind.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Stop the service (state kept, so `resume` brings the same data back).
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run("stop")
    }

    /// Start it again after [`PrivateService::stop`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.run("start")
    }

    /// `127.0.0.1:port` (Kafka bootstrap servers).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:port` (ClickHouse HTTP URL).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }
}

impl Drop for PrivateService {
    fn drop(&mut self) {
        let _ = self.run("stop");
    }
}
