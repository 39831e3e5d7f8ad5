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
/// the lease in milliseconds, and the sessions of the tenant this instance
/// holds already. Instances whose heartbeat expired lose their entries
/// first. The caller is plainly alive: its own heartbeat key is created if
/// missing (before its first heartbeat, or after one was late), so that
/// nobody else prunes the slot it is taking.
///
/// The caller's own share counts as the larger of its entry and what it
/// says it holds: a store that restarted empty (or lost the entry) since
/// the caller's last heartbeat would otherwise give it its whole cap
/// again on top of the sessions it still has.
const TAKE: &str = r#"
redis.call('SET', ARGV[3] .. ARGV[1], 'alive', 'PX', ARGV[4], 'NX')
local own = tonumber(ARGV[5])
local total = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local inst = fields[i]
  if inst == ARGV[1] then
    own = math.max(own, tonumber(fields[i + 1]))
  elseif redis.call('EXISTS', ARGV[3] .. inst) == 0 then
    redis.call('HDEL', KEYS[1], inst)
  else
    total = total + tonumber(fields[i + 1])
  end
end
local limit = tonumber(ARGV[2])
if limit > 0 and total + own >= limit then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], own + 1)
return 1
"#;

/// Gives one back (removing the entry at zero).
const RELEASE: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"#;

/// Sums each tenant's live sessions across the fleet: `KEYS` = the
/// tenants' slots hashes, `ARGV[1]` = the prefix of instance heartbeat
/// keys; one total per key, in order (one round trip for a whole list).
const COUNT: &str = r#"
local alive = {}
local out = {}
for k = 1, #KEYS do
  local total = 0
  local fields = redis.call('HGETALL', KEYS[k])
  for i = 1, #fields, 2 do
    local inst = fields[i]
    if alive[inst] == nil then
      alive[inst] = redis.call('EXISTS', ARGV[1] .. inst) == 1
    end
    if alive[inst] then
      total = total + tonumber(fields[i + 1])
    end
  end
  out[k] = total
end
return out
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
/// A random value set once per store lifetime: when it changes, the store
/// lost its data (a restart, a flush, a failover to an empty replica) and
/// what only this instance knows (its cancel keys) is written again.
const EPOCH_KEY: &str = "pgtier:epoch";
/// The API's suspensions: a hash of tenant → JSON record, and a counter
/// bumped with every change, so that an instance reads the hash only when
/// it changed (one GET per heartbeat otherwise).
const SUSPENDED_KEY: &str = "pgtier:suspended";
const SUSPENDED_VERSION: &str = "pgtier:suspended:version";
/// The most tenants counted by one call of [`COUNT`] (a script holds the
/// store for as long as it runs).
const COUNT_BATCH: usize = 2_000;
/// The most cancel keys written by one command when re-asserting them.
const CANCEL_BATCH: usize = 1_000;
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

/// What the store holds of a tenant's rows and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRows {
    /// With `exact`; None when only the size is measured (no row limit).
    pub rows: Option<(i64, bool)>,
    /// The database's size at the last measurement.
    pub bytes: Option<u64>,
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

    /// Takes a slot of `tenant` for `instance`, which holds `held` of its
    /// sessions already, if the fleet holds fewer than `limit` (0 = no
    /// limit).
    pub async fn take(
        &self,
        instance: &str,
        tenant: &str,
        limit: u32,
        held: u32,
    ) -> Result<bool, RedisError> {
        let mut conn = self.conn.clone();
        let taken: i64 = bounded(
            Script::new(TAKE)
                .key(slots_key(tenant))
                .arg(instance)
                .arg(limit)
                .arg(INSTANCE_PREFIX)
                .arg(self.lease_ttl.as_millis() as u64)
                .arg(held)
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

    /// Writes `instance`'s count of `tenant`'s sessions (0 removes its
    /// entry).
    pub async fn assert_count(
        &self,
        instance: &str,
        tenant: &str,
        n: u32,
    ) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let _: i64 = if n > 0 {
            bounded(conn.hset(slots_key(tenant), instance, n)).await?
        } else {
            bounded(conn.hdel(slots_key(tenant), instance)).await?
        };
        Ok(())
    }

    /// Sessions of `tenant` across the live instances.
    pub async fn fleet_connections(&self, tenant: &str) -> Result<u32, RedisError> {
        let counts = self.fleet_connections_of(&[tenant.to_owned()]).await?;
        Ok(counts.first().copied().unwrap_or(0))
    }

    /// Sessions of each of `tenants` across the live instances, in order:
    /// one round trip per [`COUNT_BATCH`] tenants, not one per tenant.
    pub async fn fleet_connections_of(&self, tenants: &[String]) -> Result<Vec<u32>, RedisError> {
        let mut out = Vec::with_capacity(tenants.len());
        let script = Script::new(COUNT);
        for chunk in tenants.chunks(COUNT_BATCH) {
            let mut call = script.prepare_invoke();
            for tenant in chunk {
                call.key(slots_key(tenant));
            }
            call.arg(INSTANCE_PREFIX);
            let mut conn = self.conn.clone();
            let counts: Vec<i64> = bounded(call.invoke_async(&mut conn)).await?;
            if counts.len() != chunk.len() {
                return Err(RedisError::from((
                    redis::ErrorKind::Parse,
                    "the fleet store answered a count per tenant, not",
                    format!("{} for {}", counts.len(), chunk.len()),
                )));
            }
            out.extend(
                counts
                    .into_iter()
                    .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            );
        }
        Ok(out)
    }

    /// This instance is alive (for `lease_ttl`) and holds `counts` sessions
    /// per tenant (its own share, asserted absolutely so that a restarted
    /// store is whole again; a count of 0 removes its entry); its cancel
    /// keys live as long as it does. `about` is what `/fleet` shows of it.
    /// Returns the store's epoch, which changes when the store lost its
    /// data.
    pub async fn heartbeat(
        &self,
        instance: &str,
        about: &str,
        counts: &[(String, u32)],
    ) -> Result<String, RedisError> {
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
            if *n > 0 {
                pipe.hset(slots_key(tenant), instance, *n).ignore();
            } else {
                pipe.hdel(slots_key(tenant), instance).ignore();
            }
        }
        // Cancel keys outlive the instance by a few heartbeats at most.
        pipe.cmd("PEXPIRE")
            .arg(cancel_key(instance))
            .arg(ttl * 3)
            .ignore();
        pipe.cmd("SET")
            .arg(EPOCH_KEY)
            .arg(format!("{:016x}", rand::random::<u64>()))
            .arg("NX")
            .ignore();
        pipe.cmd("GET").arg(EPOCH_KEY);
        let mut conn = self.conn.clone();
        let (epoch,): (Option<String>,) = bounded(pipe.query_async(&mut conn)).await?;
        Ok(epoch.unwrap_or_default())
    }

    /// Writes every cancel key of this instance's live sessions again
    /// (after the store lost them), in batches of [`CANCEL_BATCH`].
    pub async fn assert_cancels(
        &self,
        instance: &str,
        keys: &[(CancelKey, CancelKey)],
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.sadd(INSTANCES, instance).ignore();
        for chunk in keys.chunks(CANCEL_BATCH) {
            let mut hset = redis::cmd("HSET");
            hset.arg(cancel_key(instance));
            for (client, cluster) in chunk {
                hset.arg(encode_key(client)).arg(encode_key(cluster));
            }
            pipe.add_command(hset).ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(cancel_key(instance))
            .arg(self.lease_ttl.as_millis() as u64 * 3)
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

    /// Publishes a measurement (rows with their exactness, when counted;
    /// the size in bytes) and releases the lock.
    pub async fn publish_rows(
        &self,
        instance: &str,
        tenant: &str,
        rows: Option<(i64, bool)>,
        bytes: u64,
        measured_at: u64,
    ) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        let hset = pipe.cmd("HSET").arg(rows_key(tenant));
        if let Some((rows, exact)) = rows {
            hset.arg("rows")
                .arg(rows)
                .arg("exact")
                .arg(if exact { "1" } else { "0" });
        }
        hset.arg("bytes")
            .arg(bytes)
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
                .arg("bytes")
                .query_async(&mut conn),
        )
        .await?;
        let get = |i: usize| fields.get(i).cloned().flatten();
        let rows = get(0)
            .and_then(|r| r.parse().ok())
            .map(|rows| (rows, get(1).as_deref() == Some("1")));
        let bytes = get(4).and_then(|b| b.parse().ok());
        if rows.is_none() && bytes.is_none() {
            return Ok(None);
        }
        Ok(Some(StoredRows {
            rows,
            bytes,
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

    /// Records a suspension (`record` is its JSON) for every instance.
    pub async fn suspend(&self, tenant: &str, record: &str) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(SUSPENDED_KEY, tenant, record)
            .ignore()
            .incr(SUSPENDED_VERSION, 1)
            .ignore();
        let mut conn = self.conn.clone();
        bounded(pipe.query_async(&mut conn)).await
    }

    /// Lifts an API suspension for every instance.
    pub async fn resume(&self, tenant: &str) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(SUSPENDED_KEY, tenant)
            .ignore()
            .incr(SUSPENDED_VERSION, 1)
            .ignore();
        let mut conn = self.conn.clone();
        bounded(pipe.query_async(&mut conn)).await
    }

    /// The suspensions' version: `None` when the store has never had one,
    /// or lost its data.
    pub async fn suspensions_version(&self) -> Result<Option<i64>, RedisError> {
        let mut conn = self.conn.clone();
        bounded(conn.get(SUSPENDED_VERSION)).await
    }

    /// Every suspension with the version it is of (read together).
    pub async fn suspensions(&self) -> Result<(Option<i64>, Vec<(String, String)>), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic().get(SUSPENDED_VERSION).hgetall(SUSPENDED_KEY);
        let mut conn = self.conn.clone();
        bounded(pipe.query_async(&mut conn)).await
    }

    /// Writes `records` back into a store that lost them, keeping any
    /// written meanwhile.
    pub async fn restore_suspensions(
        &self,
        records: &[(String, String)],
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (tenant, record) in records {
            pipe.hset_nx(SUSPENDED_KEY, tenant, record).ignore();
        }
        pipe.incr(SUSPENDED_VERSION, 1).ignore();
        let mut conn = self.conn.clone();
        bounded(pipe.query_async(&mut conn)).await
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
