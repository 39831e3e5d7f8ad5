//! The fleet's store in Redis: the keys, and the scripts that keep each
//! change atomic. Every call is bounded in time (a store that does not
//! answer is a store that is down, and `on_store_error` decides).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};

use crate::config::FleetConfig;
use crate::protocol::startup::CancelKey;

/// How long one call to the store may take.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// Takes a slot: `KEYS[1]` = the tenant's slots hash, `ARGV` = this
/// instance, the limit (0 = none), the prefix of instance heartbeat keys,
/// the lease in milliseconds. Instances whose heartbeat expired lose their
/// entries first. The caller is plainly alive: its own heartbeat key is
/// created if missing (before its first heartbeat, or after one was
/// late), so that nobody else prunes the slot it is taking.
const TAKE: &str = r#"
redis.call('SET', ARGV[3] .. ARGV[1], 'alive', 'PX', ARGV[4], 'NX')
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local inst = fields[i]
  if inst ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. inst) == 0 then
    redis.call('HDEL', KEYS[1], inst)
  else
    total = total + tonumber(fields[i + 1])
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"#;

/// Gives one back (removing the entry at zero).
const RELEASE: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"#;

/// Sums a tenant's live sessions across the fleet.
const COUNT: &str = r#"
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if redis.call('EXISTS', ARGV[1] .. fields[i]) == 1 then
    total = total + tonumber(fields[i + 1])
  end
end
return total
"#;

/// Raises a last-activity time, never lowers it.
const ACTIVITY: &str = r#"
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > old then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"#;

/// Applies a committed row change to a tenant's figure, if it has one
/// (a negative change to a lower bound asks for a measurement instead).
const ROW_DELTA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local delta = tonumber(ARGV[1])
if delta < 0 and redis.call('HGET', KEYS[1], 'exact') ~= '1' then
  redis.call('HSET', KEYS[1], 'wanted', '1')
  return 0
end
redis.call('HINCRBY', KEYS[1], 'rows', delta)
return 1
"#;

/// Releases the measurement lock if this instance holds it.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

fn slots_key(tenant: &str) -> String {
    format!("pgtier:slots:{tenant}")
}
const INSTANCE_PREFIX: &str = "pgtier:instance:";
const INSTANCES: &str = "pgtier:instances";
const ACTIVITY_KEY: &str = "pgtier:activity";
fn cancel_key(instance: &str) -> String {
    format!("pgtier:cancel:{instance}")
}
fn rows_key(tenant: &str) -> String {
    format!("pgtier:rows:{tenant}")
}
fn lock_key(tenant: &str) -> String {
    format!("pgtier:measuring:{tenant}")
}
fn encode_key(key: &CancelKey) -> String {
    let hex: String = key.secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{hex}", key.pid)
}
fn decode_key(text: &str) -> Option<CancelKey> {
    let (pid, hex) = text.split_once(':')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let secret = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(CancelKey {
        pid: pid.parse().ok()?,
        secret: secret.into(),
    })
}

/// What the store holds of a tenant's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRows {
    pub rows: i64,
    pub exact: bool,
    /// Unix seconds of the measurement the figure started from.
    pub measured_at: u64,
    /// Some instance asked for a prompt measurement.
    pub wanted: bool,
}

/// A connection to the fleet's Redis, reconnecting on its own.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    lease_ttl: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the fleet store did not answer in time",
        ))),
    }
}

impl Store {
    /// A store at `config.url`; connects on first use.
    pub fn new(config: &FleetConfig) -> Result<Store, RedisError> {
        let url = config.url.as_deref().unwrap_or("redis://127.0.0.1/");
        let client = redis::Client::open(url)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(Store {
            conn: client.get_connection_manager_lazy(manager)?,
            lease_ttl: config.lease_ttl,
        })
    }

    /// Takes a slot of `tenant` for `instance` if the fleet holds fewer
    /// than `limit` (0 = no limit).
    pub async fn take(&self, instance: &str, tenant: &str, limit: u32) -> Result<bool, RedisError> {
        let mut conn = self.conn.clone();
        let taken: i64 = bounded(
            Script::new(TAKE)
                .key(slots_key(tenant))
                .arg(instance)
                .arg(limit)
                .arg(INSTANCE_PREFIX)
                .arg(self.lease_ttl.as_millis() as u64)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(taken == 1)
    }

    pub async fn release(&self, instance: &str, tenant: &str) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            Script::new(RELEASE)
                .key(slots_key(tenant))
                .arg(instance)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Sessions of `tenant` across the live instances.
    pub async fn fleet_connections(&self, tenant: &str) -> Result<u32, RedisError> {
        let mut conn = self.conn.clone();
        let n: i64 = bounded(
            Script::new(COUNT)
                .key(slots_key(tenant))
                .arg(INSTANCE_PREFIX)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(n.max(0) as u32)
    }

    /// This instance is alive (for `lease_ttl`), holds `counts` sessions
    /// per tenant (its own share, asserted absolutely so that a restarted
    /// store is whole again) and none of `gone`'s; its cancel keys live as
    /// long as it does. `about` is what `/fleet` shows of it.
    pub async fn heartbeat(
        &self,
        instance: &str,
        about: &str,
        counts: &[(String, u32)],
        gone: &[String],
    ) -> Result<(), RedisError> {
        let ttl = self.lease_ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{INSTANCE_PREFIX}{instance}"))
            .arg(about)
            .arg("PX")
            .arg(ttl)
            .ignore();
        pipe.sadd(INSTANCES, instance).ignore();
        for (tenant, n) in counts {
            pipe.hset(slots_key(tenant), instance, *n).ignore();
        }
        for tenant in gone {
            pipe.hdel(slots_key(tenant), instance).ignore();
        }
        // Cancel keys outlive the instance by a few heartbeats at most.
        pipe.cmd("PEXPIRE")
            .arg(cancel_key(instance))
            .arg(ttl * 3)
            .ignore();
        let mut conn = self.conn.clone();
        bounded(pipe.query_async::<()>(&mut conn)).await
    }

    /// Live instances and what each said of itself.
    pub async fn instances(&self) -> Result<Vec<(String, String)>, RedisError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = bounded(conn.smembers(INSTANCES)).await?;
        let mut out = Vec::new();
        for id in ids {
            let about: Option<String> = bounded(conn.get(format!("{INSTANCE_PREFIX}{id}"))).await?;
            match about {
                Some(about) => out.push((id, about)),
                None => {
                    let _: i64 = bounded(conn.srem(INSTANCES, &id)).await?;
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub async fn add_cancel(
        &self,
        instance: &str,
        client: &CancelKey,
        cluster: &CancelKey,
    ) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        // Listed here too, so that a key issued before this instance's
        // first heartbeat is found by the others.
        pipe.sadd(INSTANCES, instance).ignore();
        pipe.hset(
            cancel_key(instance),
            encode_key(client),
            encode_key(cluster),
        )
        .ignore()
        .cmd("PEXPIRE")
        .arg(cancel_key(instance))
        .arg(self.lease_ttl.as_millis() as u64 * 3)
        .ignore();
        bounded(pipe.query_async::<()>(&mut conn)).await
    }

    pub async fn del_cancel(&self, instance: &str, client: &CancelKey) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(conn.hdel(cancel_key(instance), encode_key(client))).await?;
        Ok(())
    }

    /// The cluster key behind `client`, whichever live instance issued it.
    pub async fn lookup_cancel(&self, client: &CancelKey) -> Result<Option<CancelKey>, RedisError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = bounded(conn.smembers(INSTANCES)).await?;
        let field = encode_key(client);
        for id in ids {
            let found: Option<String> = bounded(conn.hget(cancel_key(&id), &field)).await?;
            if let Some(cluster) = found.as_deref().and_then(decode_key) {
                return Ok(Some(cluster));
            }
        }
        Ok(None)
    }

    /// Takes the right to measure `tenant` for a while; false if another
    /// instance has it.
    pub async fn lock_measurement(&self, instance: &str, tenant: &str) -> Result<bool, RedisError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = bounded(
            redis::cmd("SET")
                .arg(lock_key(tenant))
                .arg(instance)
                .arg("NX")
                .arg("PX")
                .arg(120_000u64)
                .query_async(&mut conn),
        )
        .await?;
        Ok(set.is_some())
    }

    /// Publishes a measurement and releases the lock.
    pub async fn publish_rows(
        &self,
        instance: &str,
        tenant: &str,
        rows: i64,
        exact: bool,
        measured_at: u64,
    ) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(rows_key(tenant))
            .arg("rows")
            .arg(rows)
            .arg("exact")
            .arg(if exact { "1" } else { "0" })
            .arg("at")
            .arg(measured_at)
            .arg("wanted")
            .arg("0")
            .ignore();
        bounded(pipe.query_async::<()>(&mut conn)).await?;
        self.unlock(instance, tenant).await
    }

    pub async fn unlock(&self, instance: &str, tenant: &str) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            Script::new(UNLOCK)
                .key(lock_key(tenant))
                .arg(instance)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    pub async fn row_delta(&self, tenant: &str, delta: i64) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            Script::new(ROW_DELTA)
                .key(rows_key(tenant))
                .arg(delta)
                .invoke_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// What the fleet knows of `tenant`'s rows.
    pub async fn rows(&self, tenant: &str) -> Result<Option<StoredRows>, RedisError> {
        let mut conn = self.conn.clone();
        let fields: Vec<Option<String>> = bounded(
            redis::cmd("HMGET")
                .arg(rows_key(tenant))
                .arg("rows")
                .arg("exact")
                .arg("at")
                .arg("wanted")
                .query_async(&mut conn),
        )
        .await?;
        let get = |i: usize| fields.get(i).cloned().flatten();
        let Some(rows) = get(0).and_then(|r| r.parse().ok()) else {
            return Ok(None);
        };
        Ok(Some(StoredRows {
            rows,
            exact: get(1).as_deref() == Some("1"),
            measured_at: get(2).and_then(|a| a.parse().ok()).unwrap_or(0),
            wanted: get(3).as_deref() == Some("1"),
        }))
    }

    /// Raises tenants' last activity in the fleet's record.
    pub async fn push_activity(&self, activity: &[(String, u64)]) -> Result<(), RedisError> {
        if activity.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let script = Script::new(ACTIVITY);
        for (tenant, at) in activity {
            let _: i64 = bounded(
                script
                    .key(ACTIVITY_KEY)
                    .arg(tenant)
                    .arg(*at)
                    .invoke_async(&mut conn),
            )
            .await?;
        }
        Ok(())
    }

    /// Every tenant's last activity as the fleet knows it.
    pub async fn activity(&self) -> Result<Vec<(String, u64)>, RedisError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, u64)> = bounded(conn.hgetall(ACTIVITY_KEY)).await?;
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_keys_round_trip_through_their_text() {
        for secret in [vec![0, 0, 0, 7], vec![0xab; 32]] {
            let key = CancelKey {
                pid: -42,
                secret: secret.into(),
            };
            assert_eq!(decode_key(&encode_key(&key)), Some(key));
        }
        assert_eq!(decode_key("12:abc"), None);
        assert_eq!(decode_key("x:ab"), None);
        assert_eq!(decode_key("no colon"), None);
    }
}
