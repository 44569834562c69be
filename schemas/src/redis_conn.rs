//! One Redis connection type for a single server or a Redis Cluster.
//!
//! [`RedisTarget::parse`] picks the mode: a comma-separated node list
//! (`redis://10.0.0.1:7001,10.0.0.2:7001,10.0.0.3:7001`) or an explicit cluster flag
//! (`redis.cluster: true`, `limits.cluster: true`) selects the cluster; anything else is one
//! server. Nodes after the first may omit the scheme and credentials; they inherit the first
//! node's. [`RedisConn`] implements [`redis::aio::ConnectionLike`], so commands, scripts and
//! pipelines work the same way in both modes, with three cluster rules the callers follow:
//!
//! - every command and script must touch keys of one hash slot (config keys share `{cfg}`, each
//!   rate-limit entity, budget counter, decision hash and credit balance has its own tag, see
//!   [`crate::redis_keys`]);
//! - a pipeline whose commands touch several slots goes through [`RedisConn::run_pipeline`],
//!   which sends one sub-pipeline per slot on a cluster (concurrently) and reassembles the
//!   replies in order; it also loads lost scripts (`NOSCRIPT`) on every primary and retries;
//! - pub/sub goes through one node ([`RedisTarget::pubsub`]): classic `PUBLISH` is broadcast to
//!   every node of a cluster, so a subscriber on any node sees every notice.
//!
//! Connections are lazy: nothing is dialled until the first command, and both modes reconnect
//! by themselves after failures. URLs (which may hold passwords) are never logged.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Arg, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Script, Value};

/// Timeouts and retries of a connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// Longest wait to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for one answer.
    pub response_timeout: Duration,
}

/// Where Redis is: one server or the seed nodes of a cluster.
#[derive(Clone)]
pub enum RedisTarget {
    /// One server (or a primary behind a proxy).
    Single(redis::Client),
    /// A Redis Cluster, by its seed nodes (at least one).
    Cluster {
        /// Seed node URLs.
        nodes: Vec<String>,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("RedisTarget::Single"),
            Self::Cluster { nodes } => f
                .debug_struct("RedisTarget::Cluster")
                .field("nodes", &nodes.len())
                .finish(),
        }
    }
}

/// A Redis URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("redis URL is not usable: {0}")]
pub struct TargetError(pub String);

/// Split `redis://[auth@]a:1,b:2,...` into one full URL per node.
pub fn split_nodes(url: &str) -> Vec<String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("redis", url),
    };
    let auth = rest
        .split(',')
        .next()
        .and_then(|first| first.rsplit_once('@'))
        .map(|(a, _)| format!("{a}@"))
        .unwrap_or_default();
    rest.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .enumerate()
        .map(|(i, n)| {
            if n.contains("://") {
                n.to_string()
            } else if i == 0 || n.contains('@') {
                format!("{scheme}://{n}")
            } else {
                format!("{scheme}://{auth}{n}")
            }
        })
        .collect()
}

impl RedisTarget {
    /// The target of `url`; a cluster if `cluster` is set or `url` lists several nodes.
    pub fn parse(url: &str, cluster: bool) -> Result<Self, TargetError> {
        let category = |e: redis::RedisError| TargetError(e.category().to_string());
        if cluster || url.contains(',') {
            let nodes = split_nodes(url);
            if nodes.is_empty() {
                return Err(TargetError("no cluster nodes".into()));
            }
            for n in &nodes {
                redis::Client::open(n.as_str()).map_err(category)?;
            }
            Ok(Self::Cluster { nodes })
        } else {
            Ok(Self::Single(redis::Client::open(url).map_err(category)?))
        }
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// A lazy command connection.
    pub fn connect(&self, s: ConnSettings) -> RedisResult<RedisConn> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(s.connect_timeout))
                    .set_response_timeout(Some(s.response_timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                Ok(RedisConn::Single(conn))
            }
            Self::Cluster { nodes } => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(s.connect_timeout)
                    .response_timeout(s.response_timeout)
                    .retries(2)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
                    .build()?;
                Ok(RedisConn::Cluster(LazyCluster {
                    client: Arc::new(client),
                    conn: Arc::new(OnceLock::new()),
                    dialing: Arc::new(futures::lock::Mutex::new(())),
                }))
            }
        }
    }

    /// A pub/sub connection: the server, or the first cluster node that answers.
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Self::Single(client) => client.get_async_pubsub().await,
            Self::Cluster { nodes } => {
                let mut last = None;
                for n in nodes {
                    let attempt =
                        async { redis::Client::open(n.as_str())?.get_async_pubsub().await };
                    match attempt.await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::Io, "no cluster nodes"))
                }))
            }
        }
    }
}

/// A cluster connection established on first use (and retried until it succeeds).
#[derive(Clone)]
pub struct LazyCluster {
    client: Arc<ClusterClient>,
    conn: Arc<OnceLock<ClusterConnection>>,
    /// Held while dialling, so concurrent first calls share one connection.
    dialing: Arc<futures::lock::Mutex<()>>,
}

impl std::fmt::Debug for LazyCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyCluster")
            .field("connected", &self.conn.get().is_some())
            .finish_non_exhaustive()
    }
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let _dialing = self.dialing.lock().await;
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let c = self.client.get_async_connection().await?;
        Ok(self.conn.get_or_init(|| c).clone())
    }
}

/// A command connection to one server or a cluster (cheap to clone).
#[derive(Clone)]
pub enum RedisConn {
    /// Auto-reconnecting connection to one server.
    Single(ConnectionManager),
    /// Cluster connection (follows slot moves, reconnects to nodes).
    Cluster(LazyCluster),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConn::Single",
            Self::Cluster(_) => "RedisConn::Cluster",
        })
    }
}

impl RedisConn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Run `pipe` and parse its replies as `T`. On a cluster, a pipeline touching several hash
    /// slots is split into one sub-pipeline per slot, sent concurrently; the replies keep the
    /// pipeline's order. When a node lost the scripts (`NOSCRIPT`), `scripts` are loaded (on
    /// every primary of a cluster) and the failed (sub-)pipeline runs once more: only for
    /// pipelines whose calls are safe to repeat. Transactions (`atomic()`) are sent as they
    /// are (their keys must share a slot) and `ignore()`d commands are not supported when the
    /// pipeline is split.
    pub async fn run_pipeline<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        scripts: &[&Script],
    ) -> RedisResult<T> {
        let groups = match self {
            Self::Cluster(_) if !pipe.is_transaction() => slot_groups(pipe),
            _ => Vec::new(),
        };
        if groups.len() <= 1 {
            return self.clone().query_reloading(pipe, scripts).await;
        }
        let calls = groups.iter().map(|(_, sub)| {
            let conn = self.clone();
            async move { conn.query_reloading::<Vec<Value>>(sub, scripts).await }
        });
        let replies = futures::future::join_all(calls).await;
        let mut out = vec![Value::Nil; pipe.len()];
        for ((indices, _), reply) in groups.iter().zip(replies) {
            let values = reply?;
            if values.len() != indices.len() {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "sub-pipeline reply count mismatch",
                )));
            }
            for (i, v) in indices.iter().zip(values) {
                if let Some(slot) = out.get_mut(*i) {
                    *slot = v;
                }
            }
        }
        Ok(redis::from_redis_value(Value::Array(out))?)
    }

    /// `pipe` once; on `NOSCRIPT`, load `scripts` and run it again.
    async fn query_reloading<T: FromRedisValue>(
        mut self,
        pipe: &Pipeline,
        scripts: &[&Script],
    ) -> RedisResult<T> {
        match pipe.query_async(&mut self).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load_scripts(scripts).await?;
                pipe.query_async(&mut self).await
            }
            r => r,
        }
    }

    /// Load `scripts` on the server, or on every primary of a cluster (`SCRIPT LOAD` is
    /// routed to all of them).
    pub async fn load_scripts(&self, scripts: &[&Script]) -> RedisResult<()> {
        let mut conn = self.clone();
        for s in scripts {
            s.load_async(&mut conn).await?;
        }
        Ok(())
    }
}

/// The commands of `pipe` grouped by the hash slot of their first key, in first-seen order:
/// `(indices in pipe, sub-pipeline)`. Commands without a key form a group of their own.
fn slot_groups(pipe: &Pipeline) -> Vec<(Vec<usize>, Pipeline)> {
    let mut groups: Vec<(Option<Slot>, Vec<usize>, Pipeline)> = Vec::new();
    for (i, cmd) in pipe.cmd_iter().enumerate() {
        let slot = routing_key(cmd).map(Slot::for_key);
        let found = slot
            .is_some()
            .then(|| groups.iter_mut().find(|(s, _, _)| *s == slot))
            .flatten();
        match found {
            Some((_, indices, sub)) => {
                indices.push(i);
                sub.add_command(cmd.clone());
            }
            None => {
                let mut sub = Pipeline::with_capacity(1);
                sub.add_command(cmd.clone());
                groups.push((slot, vec![i], sub));
            }
        }
    }
    groups.into_iter().map(|(_, i, p)| (i, p)).collect()
}

/// The key a cluster routes `cmd` by: the first key of `EVAL`/`EVALSHA` (None without keys),
/// else the first argument after the command name.
fn routing_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(s) => Some(s),
        _ => None,
    });
    let name = args.next()?;
    let scripted = [&b"EVAL"[..], b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n));
    if scripted {
        let _script = args.next()?;
        let numkeys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        if numkeys == 0 {
            return None;
        }
    }
    args.next()
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_command(cmd).await
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(lazy) => Box::pin(async move {
                let mut c = lazy.get().await?;
                c.req_packed_commands(pipeline, offset, count).await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_split_by_slot_keep_their_order() {
        let script = Script::new("return 1");
        let mut pipe = redis::pipe();
        pipe.invoke_script(script.key("p:{a}:1").arg(5));
        pipe.hget("p:{b}:x", "v");
        pipe.hget("p:{a}:2", "v");
        pipe.invoke_script(&script.prepare_invoke());
        let groups = slot_groups(&pipe);
        let indices: Vec<Vec<usize>> = groups.iter().map(|(i, _)| i.clone()).collect();
        assert_eq!(indices, vec![vec![0, 2], vec![1], vec![3]]);
        assert_eq!(groups[0].1.len(), 2);
        let first = pipe.cmd_iter().next().unwrap();
        assert_eq!(routing_key(first), Some(&b"p:{a}:1"[..]));
    }

    #[test]
    fn node_lists_inherit_scheme_and_auth() {
        assert_eq!(
            split_nodes("redis://:pw@10.0.0.1:7001, 10.0.0.2:7002,redis://x:7003"),
            vec![
                "redis://:pw@10.0.0.1:7001",
                "redis://:pw@10.0.0.2:7002",
                "redis://x:7003"
            ]
        );
        assert_eq!(split_nodes("rediss://a:1"), vec!["rediss://a:1"]);
    }

    #[test]
    fn mode_follows_flag_and_lists() {
        assert!(!RedisTarget::parse("redis://127.0.0.1:6379", false)
            .unwrap()
            .is_cluster());
        assert!(RedisTarget::parse("redis://127.0.0.1:7001", true)
            .unwrap()
            .is_cluster());
        assert!(
            RedisTarget::parse("redis://127.0.0.1:7001,127.0.0.1:7002", false)
                .unwrap()
                .is_cluster()
        );
        assert!(RedisTarget::parse("http://x", false).is_err());
    }
}
