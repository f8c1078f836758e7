//! The schema, and each protocol step as one SQL statement on a pooled
//! connection (or on the caller's own transaction).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, NoTls, Row};

use crate::error::{Error, InvalidKey};
use crate::model::{Claimed, Completed, Requested};

/// The longest key (and namespace), in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// The channel every notification goes to; the payload is the namespace.
pub(crate) const CHANNEL: &str = "coalescer";

/// The migrations, in order; version `i + 1` is `MIGRATIONS[i]`.
const MIGRATIONS: &[&str] = &[include_str!("sql/schema_v1.sql")];

/// The statements (`sql/`); each is one step of the protocol.
pub(crate) mod sql {
    pub(crate) const REQUEST: &str = include_str!("sql/request.sql");
    pub(crate) const CLAIM: &str = include_str!("sql/claim.sql");
    pub(crate) const COMPLETE: &str = include_str!("sql/complete.sql");
    pub(crate) const ABANDON: &str = include_str!("sql/abandon.sql");
    pub(crate) const RENEW: &str = include_str!("sql/renew.sql");
    pub(crate) const SWEEP: &str = include_str!("sql/sweep.sql");
    pub(crate) const FENCE: &str = include_str!("sql/fence.sql");
    pub(crate) const COVERED: &str = include_str!("sql/covered.sql");
}

/// A key of the advisory lock that serialises migrations (replicas that
/// start together): `hashtext('coalescer-postgres migrations')` would do as
/// well; a constant is plainer.
const MIGRATION_LOCK: i64 = 0x636f_616c_6573_6365;

/// A connection pool to the database that holds the keys.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store on the database at `url` (a libpq-style URL or key=value
    /// string), with a pool of at most `max_connections` connections. No
    /// connection is made until one is needed.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] if the URL does not parse; [`Error::Pool`] if the pool
    /// cannot be built.
    pub fn connect(url: &str, max_connections: usize) -> Result<Store, Error> {
        let config: tokio_postgres::Config = url.parse()?;
        Store::with_config(config, max_connections)
    }

    /// A store from a parsed configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Pool`] if the pool cannot be built.
    pub fn with_config(
        config: tokio_postgres::Config,
        max_connections: usize,
    ) -> Result<Store, Error> {
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .build()
            .map_err(|e| Error::Pool(e.to_string()))?;
        Ok(Store { pool, config })
    }

    /// The configuration connections are made with (the replicas' LISTEN
    /// connection is one of its own, outside the pool).
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        Ok(self.pool.get().await?)
    }

    /// Creates or upgrades the schema (`coalescer_keys`, `coalescer_seq`),
    /// in one transaction under an advisory lock, so replicas that start
    /// together migrate once. Idempotent.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] or [`Error::Pool`]; nothing was changed.
    pub async fn migrate(&self) -> Result<u32, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS coalescer_schema (version int PRIMARY KEY)")
            .await?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM coalescer_schema",
                &[],
            )
            .await?
            .try_get(0)?;
        let mut version = current;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            tx.batch_execute(migration).await?;
            version = i as i32 + 1;
            tx.execute("INSERT INTO coalescer_schema VALUES ($1)", &[&version])
                .await?;
        }
        tx.commit().await?;
        Ok(version as u32)
    }

    /// The keys of namespace `name` (a replica set's own keys: each
    /// namespace's claims see only its rows).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] for an empty name, a NUL or more than
    /// [`MAX_KEY_BYTES`] bytes.
    pub fn namespace(&self, name: &str) -> Result<Namespace, Error> {
        if name.is_empty() {
            return Err(Error::InvalidKey(InvalidKey::EmptyNamespace));
        }
        check_key(name)?;
        Ok(Namespace {
            store: self.clone(),
            name: name.to_owned(),
        })
    }
}

/// Whether `key` can be stored as it is.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidKey(InvalidKey::TooLong { len: key.len() }));
    }
    if key.contains('\0') {
        return Err(Error::InvalidKey(InvalidKey::Nul));
    }
    Ok(())
}

/// A lease as the statements take it: seconds.
fn secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

/// The rows of one namespace, and the protocol's steps on them. Each method
/// is one statement; the ones that take a `client` run on it (the caller's
/// transaction), the others on a pooled connection.
#[derive(Debug, Clone)]
pub struct Namespace {
    store: Store,
    name: String,
}

impl Namespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store it is in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records a request for `key`, on its own (autocommitted): once this
    /// returns `Ok`, the request is durable and a cycle whose claim is at
    /// or above [`Requested::generation`] will cover it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] (nothing sent); [`Error::Db`] or
    /// [`Error::Pool`]: if the statement was sent, the request may or may
    /// not have been recorded, and sending it again is safe.
    pub async fn request(&self, key: &str) -> Result<Requested, Error> {
        check_key(key)?;
        let client = self.store.client().await?;
        self.request_in(&**client, key).await
    }

    /// Records a request for `key` in the caller's transaction (or on the
    /// caller's connection): it commits, and notifies the replicas, with
    /// that transaction, and a rollback leaves no trace. The row stays
    /// locked until then, so keep the transaction short.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request).
    pub async fn request_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        key: &str,
    ) -> Result<Requested, Error> {
        check_key(key)?;
        // INV-14: the request is one upsert under the row lock; durable once
        // it returns (or once the caller's transaction commits: INV-14d).
        let row = client.query_one(sql::REQUEST, &[&self.name, &key]).await?;
        Ok(Requested {
            generation: row.try_get(0)?,
            started: row.try_get(1)?,
            notified: row.try_get(2)?,
        })
    }

    /// Claims up to `limit` due keys for `owner`, each with a lease of
    /// `lease`: unowned keys with uncovered requests, and keys whose
    /// owner's lease has expired (takeovers) — `owner`'s own too, except
    /// the keys in `running`, which it is running now.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] or [`Error::Pool`]. If the statement was sent, keys
    /// may have been claimed: their leases expire and another claim takes
    /// them over.
    pub async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: usize,
        running: &[String],
    ) -> Result<Vec<Claimed>, Error> {
        let client = self.store.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // INV-16a (takeover after expiry, never of a key the claimer runs)
        // and INV-17b (only keys with an uncovered request): `claim.sql`.
        let rows = client
            .query(
                sql::CLAIM,
                &[&self.name, &owner, &secs(lease), &limit, &running],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    key: r.try_get(0)?,
                    claimed: r.try_get(1)?,
                    epoch: r.try_get(2)?,
                    previous: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Completes the cycle of `epoch` on `key`, and in the same statement
    /// goes again (if `go_on` and requests came meanwhile: a new claim and
    /// epoch, with `lease`), hands the key back (pending, not `go_on`), or
    /// lets it go idle.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] if `epoch` no longer owns the key (nothing
    /// changed); [`Error::Db`] or [`Error::Pool`].
    pub async fn complete(
        &self,
        key: &str,
        owner: &str,
        epoch: i64,
        lease: Duration,
        go_on: bool,
    ) -> Result<Completed, Error> {
        let client = self.store.client().await?;
        self.complete_in(&**client, key, owner, epoch, lease, go_on)
            .await
    }

    /// [`complete`](Self::complete) in the caller's transaction: the
    /// cycle's effects in this database commit with its completion, or
    /// neither does.
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete).
    pub async fn complete_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        key: &str,
        owner: &str,
        epoch: i64,
        lease: Duration,
        go_on: bool,
    ) -> Result<Completed, Error> {
        // INV-14a: completion and go-again or go-idle in one statement;
        // INV-15: it changes nothing unless owner and epoch still hold.
        let params: [&(dyn ToSql + Sync); 6] =
            [&self.name, &key, &owner, &epoch, &secs(lease), &go_on];
        let row = client.query_opt(sql::COMPLETE, &params).await?;
        let row = row.ok_or(Error::Fenced)?;
        completed(&row)
    }

    /// Gives the claim of `epoch` on `key` back without completing it: its
    /// requests stay uncovered and another replica is notified.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] if `epoch` no longer owns the key; [`Error::Db`]
    /// or [`Error::Pool`].
    pub async fn abandon(&self, key: &str, owner: &str, epoch: i64) -> Result<(), Error> {
        let client = self.store.client().await?;
        let row = client
            .query_opt(sql::ABANDON, &[&self.name, &key, &owner, &epoch])
            .await?;
        row.map(|_| ()).ok_or(Error::Fenced)
    }

    /// Extends `owner`'s leases on the `(key, epoch)` pairs it holds, in one
    /// statement. Returns the keys renewed; any other is fenced.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] or [`Error::Pool`].
    pub async fn renew(
        &self,
        owner: &str,
        held: &[(String, i64)],
        lease: Duration,
    ) -> Result<Vec<String>, Error> {
        let (keys, epochs): (Vec<&str>, Vec<i64>) =
            held.iter().map(|(k, e)| (k.as_str(), *e)).unzip();
        let client = self.store.client().await?;
        let rows = client
            .query(
                sql::RENEW,
                &[&self.name, &owner, &keys, &epochs, &secs(lease)],
            )
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Removes `key`'s row if it is idle (or every idle row, with `None`):
    /// how many it removed. Safe at any moment.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] or [`Error::Pool`].
    pub async fn sweep(&self, key: Option<&str>) -> Result<u64, Error> {
        let client = self.store.client().await?;
        Ok(client.execute(sql::SWEEP, &[&self.name, &key]).await?)
    }

    /// Whether a completed cycle covers the request of `generation` on
    /// `key` (on any replica).
    ///
    /// # Errors
    ///
    /// [`Error::Db`] or [`Error::Pool`].
    pub async fn covered(&self, key: &str, generation: i64) -> Result<bool, Error> {
        let client = self.store.client().await?;
        let row = client
            .query_one(sql::COVERED, &[&self.name, &key, &generation])
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Waits until a completed cycle covers the request of `generation` on
    /// `key`, polling [`covered`](Self::covered) every 10 ms at first, backing
    /// off to every 500 ms.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] or [`Error::Pool`] from a poll.
    pub async fn wait_covered(&self, key: &str, generation: i64) -> Result<(), Error> {
        let mut every = Duration::from_millis(10);
        while !self.covered(key, generation).await? {
            tokio::time::sleep(every).await;
            every = (every * 2).min(Duration::from_millis(500));
        }
        Ok(())
    }

    /// In the caller's transaction: checks that `epoch` still owns `key`,
    /// and keeps any takeover off the key until that transaction ends. So
    /// effects the transaction commits after this returns `Ok` were
    /// committed while the cycle held the key.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] if it does not; [`Error::Db`].
    pub async fn fence_in<C: GenericClient + Sync>(
        &self,
        client: &C,
        key: &str,
        owner: &str,
        epoch: i64,
    ) -> Result<(), Error> {
        // INV-15: the KEY SHARE lock keeps a takeover's claim off the row.
        let row = client
            .query_opt(sql::FENCE, &[&self.name, &key, &owner, &epoch])
            .await?;
        row.map(|_| ()).ok_or(Error::Fenced)
    }
}

fn completed(row: &Row) -> Result<Completed, Error> {
    Ok(Completed {
        claimed: row.try_get(0)?,
        epoch: row.try_get(1)?,
        pending: row.try_get(2)?,
        notified: row.try_get(3)?,
    })
}
