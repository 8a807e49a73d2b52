//! Token buckets and concurrency slots kept in Redis, so every daemon shares
//! them: the API's per-user write limits and the providers' budgets.
//!
//! Each decision is one Lua script, atomic in Redis, with time taken from
//! the Redis server so every daemon agrees on it. When Redis cannot answer
//! (down, or slower than the timeout) the caller is told so
//! ([`Take::Unavailable`]) and decides what failing open means for it.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

/// A bucket: `burst` tokens, refilled at `per_sec`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    pub per_sec: f64,
    pub burst: u32,
}

/// What taking a token came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Take {
    /// Taken; `remaining` tokens are left and the bucket is full again in
    /// `full_ms`.
    Allowed { remaining: i64, full_ms: u64 },
    /// The bucket is empty: a token is back in `retry_ms`.
    Limited { retry_ms: u64 },
    /// Every concurrency slot is held.
    Full,
    /// Redis did not answer; why.
    Unavailable(String),
}

/// Refills the bucket KEYS[1] (ARGV[1] tokens, ARGV[2] per second) and
/// takes a token; with KEYS[2] and ARGV[3] > 0, also holds one of ARGV[3]
/// slots of the sorted set KEYS[2] as member ARGV[5] until ARGV[4] ms from
/// now (slots past their time are freed first, so a daemon that died
/// cannot hold them). A full slot set takes no token. Returns {allowed
/// (1, 0, or -1 for full), tokens left, ms until a token is back, ms until
/// the bucket is full}. With KEYS[3], a token taken is counted there (a
/// per-second counter the caller names, kept two minutes).
const TAKE: &str = r"
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2]) / 1000
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local slots = tonumber(ARGV[3] or '0')
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= slots then
    return {-1, 0, 0, 0}
  end
end
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * per_ms)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
local full_ms = math.ceil((capacity - tokens) / per_ms)
redis.call('PEXPIRE', KEYS[1], math.max(full_ms, 1000))
if allowed == 1 and slots > 0 then
  local lease = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], lease * 2)
end
if allowed == 1 and KEYS[3] then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 120)
end
local retry_ms = 0
if allowed == 0 then retry_ms = math.ceil((1 - tokens) / per_ms) end
return {allowed, math.floor(tokens), retry_ms, full_ms}
";

/// Slots held in a sorted set: `ZREM`.
const RELEASE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";

/// The keys of one provider's budget under `prefix`.
#[derive(Clone, Debug)]
pub struct BudgetKeys {
    /// The token bucket.
    pub rate: String,
    /// The sorted set of held slots.
    pub slots: String,
    prefix: String,
}

impl BudgetKeys {
    pub fn new(prefix: &str, provider: &str) -> Self {
        let base = format!("{prefix}:budget:{provider}");
        Self {
            rate: format!("{base}:rate"),
            slots: format!("{base}:slots"),
            prefix: format!("{base}:calls"),
        }
    }

    /// The counter of calls let through in the Unix second `sec`.
    pub fn calls(&self, sec: u64) -> String {
        format!("{}:{sec}", self.prefix)
    }
}

/// A budget as it stands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// Slots held now.
    pub in_flight: u64,
    /// Calls let through per second over the last ten full seconds.
    pub per_sec: f64,
}

/// Holding one of a budget's concurrency slots.
#[derive(Clone, Debug)]
pub struct Slot<'a> {
    /// How many may be held at once (0: no limit, none is held).
    pub slots: u32,
    /// A slot is freed this long after it was taken even if never released.
    pub lease: Duration,
    /// This holder's member name (unique per call).
    pub member: &'a str,
}

pub struct RedisBuckets {
    client: redis::Client,
    take: redis::Script,
    release: redis::Script,
    timeout: Duration,
    /// The shared connection, and when connecting last failed (to avoid
    /// trying on every call while Redis is down).
    conn: Mutex<(Option<MultiplexedConnection>, Option<Instant>)>,
}

impl RedisBuckets {
    /// `timeout`: how long one call may take before it counts as Redis
    /// being unavailable (connecting may take four times as long).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            take: redis::Script::new(TAKE),
            release: redis::Script::new(RELEASE),
            timeout,
            conn: Mutex::new((None, None)),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = &guard.0 {
            return Ok(c.clone());
        }
        if guard
            .1
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return Err("Redis was unreachable less than a second ago".into());
        }
        let connect = self.client.get_multiplexed_async_connection();
        let result = match tokio::time::timeout(self.timeout * 4, connect).await {
            Ok(Ok(c)) => {
                *guard = (Some(c.clone()), None);
                return Ok(c);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connecting to Redis timed out".into(),
        };
        guard.1 = Some(Instant::now());
        Err(result)
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = (None, Some(Instant::now()));
    }

    /// Is Redis answering?
    pub async fn ping(&self) -> bool {
        let Ok(mut c) = self.connection().await else {
            return false;
        };
        let ping = redis::cmd("PING");
        let answer = ping.query_async::<String>(&mut c);
        matches!(
            tokio::time::timeout(self.timeout * 4, answer).await,
            Ok(Ok(_))
        )
    }

    /// Takes a token from the bucket `key`.
    pub async fn take(&self, key: &str, limit: Limit) -> Take {
        let mut invocation = self.take.key(key);
        invocation.arg(limit.burst).arg(limit.per_sec);
        self.run_take(invocation).await
    }

    /// Takes a token from a provider's budget: its bucket, one of its
    /// slots (none held when `slot.slots` is 0: no limit) and a count in
    /// the calls of the Unix second `now_sec`.
    pub async fn take_budget(
        &self,
        keys: &BudgetKeys,
        limit: Limit,
        slot: &Slot<'_>,
        now_sec: u64,
    ) -> Take {
        let mut invocation = self.take.key(&keys.rate);
        invocation
            .key(&keys.slots)
            .key(keys.calls(now_sec))
            .arg(limit.burst)
            .arg(limit.per_sec)
            .arg(slot.slots)
            .arg(u64::try_from(slot.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(slot.member);
        self.run_take(invocation).await
    }

    async fn run_take(&self, invocation: redis::ScriptInvocation<'_>) -> Take {
        let mut c = match self.connection().await {
            Ok(c) => c,
            Err(why) => return Take::Unavailable(why),
        };
        let call = invocation.invoke_async::<(i64, i64, i64, i64)>(&mut c);
        let ms = |v: i64| u64::try_from(v).unwrap_or(0);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((1, remaining, _, full_ms))) => Take::Allowed {
                remaining,
                full_ms: ms(full_ms),
            },
            Ok(Ok((-1, ..))) => Take::Full,
            Ok(Ok((_, _, retry_ms, _))) => Take::Limited {
                retry_ms: ms(retry_ms).max(1),
            },
            Ok(Err(e)) => {
                self.forget_connection().await;
                Take::Unavailable(e.to_string())
            }
            Err(_) => Take::Unavailable("the bucket script timed out".into()),
        }
    }

    /// How a budget stands: slots held, and calls per second over the ten
    /// full seconds before `now_sec` (Unix seconds).
    pub async fn usage(&self, keys: &BudgetKeys, now_sec: u64) -> Result<Usage, String> {
        let mut c = self.connection().await?;
        let counters: Vec<String> = (1..=10).map(|ago| keys.calls(now_sec - ago)).collect();
        let mut pipe = redis::pipe();
        pipe.zcard(&keys.slots).mget(&counters);
        let call = pipe.query_async::<(u64, Vec<Option<u64>>)>(&mut c);
        match tokio::time::timeout(self.timeout * 4, call).await {
            Ok(Ok((in_flight, calls))) => Ok(Usage {
                in_flight,
                per_sec: calls.iter().map(|n| n.unwrap_or(0)).sum::<u64>() as f64 / 10.0,
            }),
            Ok(Err(e)) => {
                self.forget_connection().await;
                Err(e.to_string())
            }
            Err(_) => Err("reading the budget timed out".into()),
        }
    }

    /// Frees a slot taken with [`take`](Self::take). Best effort: a slot
    /// that cannot be freed now is freed when its lease runs out.
    pub async fn release(&self, key: &str, member: &str) {
        let Ok(mut c) = self.connection().await else {
            return;
        };
        let mut invocation = self.release.key(key);
        invocation.arg(member);
        let call = invocation.invoke_async::<i64>(&mut c);
        if !matches!(tokio::time::timeout(self.timeout, call).await, Ok(Ok(_))) {
            self.forget_connection().await;
        }
    }
}
