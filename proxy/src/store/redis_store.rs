//! Redis config store (layout: `tollgate_schemas::redis_keys`).
//!
//! One auto-reconnecting [`RedisConn`] for commands (a single server or a Redis Cluster: every
//! config key carries the `{cfg}` hash tag, so scripts and `MULTI` stay in one slot); pub/sub
//! uses its own connection (see [`RedisStore::subscribe`]; on a cluster, through one node). Every call is bounded by a timeout so a dead server makes
//! callers fail fast instead of hanging. The URL (which may hold a password) is never logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::PubSub;
use redis::{AsyncCommands, Script};
use tollgate_schemas::redis_keys;

use crate::redis_conn::{ConnSettings, RedisConn, RedisTarget};

use super::{ConfigKind, RawSnapshot, StoreError, WriteOp, WriteOutcome};

/// Conditional write + version bump + notice, atomically.
/// KEYS: entity hash, version. ARGV: op, id, json, channel, kind.
/// Returns the new version, -1 (create of an existing id) or -2 (missing id).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local op, id = ARGV[1], ARGV[2]
local exists = redis.call('HEXISTS', KEYS[1], id) == 1
if op == 'create' then
  if exists then return -1 end
  redis.call('HSET', KEYS[1], id, ARGV[3])
elseif op == 'replace' then
  if not exists then return -2 end
  redis.call('HSET', KEYS[1], id, ARGV[3])
elseif op == 'delete' then
  if not exists then return -2 end
  redis.call('HDEL', KEYS[1], id)
else
  return redis.error_reply('unknown op')
end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], cjson.encode({version = v, kind = ARGV[5], op = op, id = id}))
return v
",
    )
});

/// Seed one entity unless it was seeded before or exists.
/// KEYS: entity hash, version, seeded set. ARGV: id, json, channel, kind.
/// Returns the new version, or 0 when nothing was written.
static SEED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local id = ARGV[1]
if redis.call('SADD', KEYS[3], id) == 0 then return 0 end
if redis.call('HSETNX', KEYS[1], id, ARGV[2]) == 0 then return 0 end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], cjson.encode({version = v, kind = ARGV[4], op = 'seed', id = id}))
return v
",
    )
});

/// Upper bound of any single store call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Redis-backed store (cheap to clone).
#[derive(Clone)]
pub struct RedisStore {
    target: RedisTarget,
    conn: RedisConn,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("cluster", &self.target.is_cluster())
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT)),
    }
}

impl RedisStore {
    /// A store for `url` under `prefix` (a cluster if the URL lists several nodes). Does not
    /// connect: the first call does, and the connection is re-established after failures.
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        Self::with_mode(url, prefix, false)
    }

    /// Like [`RedisStore::new`]; `cluster` forces Redis Cluster mode for a single seed node.
    pub fn with_mode(url: &str, prefix: &str, cluster: bool) -> Result<Self, StoreError> {
        let target = RedisTarget::parse(url, cluster).map_err(|e| {
            StoreError::Config(format!("redis.url is not a usable redis:// URL ({})", e.0))
        })?;
        let conn = target
            .connect(ConnSettings {
                connect_timeout: Duration::from_secs(1),
                response_timeout: CALL_TIMEOUT,
            })
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self {
            target,
            conn,
            prefix: prefix.into(),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A pub/sub connection subscribed to the changes channel.
    pub async fn subscribe(&self) -> Result<PubSub, StoreError> {
        let channel = redis_keys::changes_channel(&self.prefix);
        let mut pubsub = bounded(self.target.pubsub()).await?;
        bounded(pubsub.subscribe(&channel)).await?;
        Ok(pubsub)
    }

    fn hash(&self, kind: ConfigKind) -> String {
        redis_keys::entities(&self.prefix, kind)
    }

    pub(crate) async fn get_raw(
        &self,
        kind: ConfigKind,
        id: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        bounded(conn.hget(self.hash(kind), id)).await
    }

    pub(crate) async fn exists(&self, kind: ConfigKind, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        bounded(conn.hexists(self.hash(kind), id)).await
    }

    pub(crate) async fn ids(&self, kind: ConfigKind) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        bounded(conn.hkeys(self.hash(kind))).await
    }

    pub(crate) async fn all_raw(
        &self,
        kind: ConfigKind,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut conn = self.conn.clone();
        let map: HashMap<String, String> = bounded(conn.hgetall(self.hash(kind))).await?;
        Ok(map.into_iter().collect())
    }

    pub(crate) async fn get_many(
        &self,
        kind: ConfigKind,
        ids: &[String],
    ) -> Result<Vec<Option<String>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("HMGET").arg(self.hash(kind)).arg(ids).clone();
        bounded(cmd.query_async(&mut conn)).await
    }

    pub(crate) async fn write(
        &self,
        kind: ConfigKind,
        op: WriteOp,
        id: &str,
        json: Option<&str>,
    ) -> Result<WriteOutcome, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = WRITE.prepare_invoke();
        call.key(self.hash(kind))
            .key(redis_keys::version(&self.prefix))
            .arg(op.as_str())
            .arg(id)
            .arg(json.unwrap_or(""))
            .arg(redis_keys::changes_channel(&self.prefix))
            .arg(kind.as_str());
        let v: i64 = bounded(call.invoke_async(&mut conn)).await?;
        Ok(match v {
            -1 => WriteOutcome::Exists,
            -2 => WriteOutcome::Missing,
            v => WriteOutcome::Done(u64::try_from(v).unwrap_or(0)),
        })
    }

    pub(crate) async fn seed_one(
        &self,
        kind: ConfigKind,
        id: &str,
        json: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut call = SEED.prepare_invoke();
        call.key(self.hash(kind))
            .key(redis_keys::version(&self.prefix))
            .key(redis_keys::seeded(&self.prefix, kind))
            .arg(id)
            .arg(json)
            .arg(redis_keys::changes_channel(&self.prefix))
            .arg(kind.as_str());
        let v: i64 = bounded(call.invoke_async(&mut conn)).await?;
        Ok(v > 0)
    }

    pub(crate) async fn version(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let v: Option<u64> = bounded(conn.get(redis_keys::version(&self.prefix))).await?;
        Ok(v.unwrap_or(0))
    }

    pub(crate) async fn raw_snapshot(&self) -> Result<RawSnapshot, StoreError> {
        let mut conn = self.conn.clone();
        let pipe = redis::pipe()
            .atomic()
            .hgetall(self.hash(ConfigKind::Models))
            .hgetall(self.hash(ConfigKind::Keys))
            .hgetall(self.hash(ConfigKind::Accounts))
            .get(redis_keys::version(&self.prefix))
            .clone();
        type Raw = (
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            Option<u64>,
        );
        let (models, keys, accounts, version): Raw = bounded(pipe.query_async(&mut conn)).await?;
        Ok(RawSnapshot {
            version: version.unwrap_or(0),
            models,
            keys,
            accounts,
        })
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }
}
