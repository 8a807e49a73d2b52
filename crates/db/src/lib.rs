//! The database handle every crate runs its statements through: a pool of
//! connections to PostgreSQL, either direct or through a pooler in
//! transaction mode (PgBouncer's `pool_mode = transaction`).
//!
//! A transaction pooler lends a server connection for one transaction and
//! may lend the next one to someone else. sqlx runs a statement with
//! parameters in two round trips (Parse and Describe, a Sync, then Bind and
//! Execute): outside a transaction the pooler may send the second half to
//! another server, where the statement does not exist or, worse, is someone
//! else's. So through a pooler ([`Db::pooled`]) every statement runs inside
//! a transaction: a statement run on its own gets one of its own, and
//! [`Db::begin`] opens transactions with the pooled connection's settings
//! (`SET LOCAL`, as the pooler refuses them at connect time) after
//! `DEALLOCATE ALL`, which clears what other clients prepared on the server
//! connection the pooler lent us, so names sqlx gives its statements never
//! collide. (sqlx's statement cache must be off: [`pooled_options`].)
//! Session state (LISTEN, session advisory locks) needs a direct
//! connection; the daemon takes one from `database.direct_url` or polls.

use std::ops::Deref;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgQueryResult, PgRow};
use sqlx::{AssertSqlSafe, Either, Execute, Executor, PgPool, Postgres, Transaction};

/// A pool of connections, direct or through a transaction pooler.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    /// Through a pooler: how each transaction begins.
    pooled: Option<Arc<str>>,
    /// Where connections with session state (LISTEN, migrations) come
    /// from: the pool itself when direct, the direct URL's through a
    /// pooler (none: callers poll instead).
    session: Option<PgPool>,
}

/// Connection options for connections through a transaction pooler: no
/// statement cache (a cached statement would live on one server connection
/// while the next transaction may get another).
pub fn pooled_options(options: PgConnectOptions) -> PgConnectOptions {
    options.statement_cache_capacity(0)
}

impl Db {
    /// Straight to PostgreSQL: every statement as sqlx runs it.
    pub fn direct(pool: PgPool) -> Self {
        Self {
            session: Some(pool.clone()),
            pool,
            pooled: None,
        }
    }

    /// Through a transaction pooler, `settings` applied to every
    /// transaction (names and values of run-time settings); `session` a
    /// pool of direct connections for LISTEN and migrations, if any.
    pub fn pooled(pool: PgPool, settings: &[(&str, &str)], session: Option<PgPool>) -> Self {
        let mut begin = String::from("BEGIN; DEALLOCATE ALL");
        for (name, value) in settings {
            // Names are ours (constants); values are quoted as literals.
            begin.push_str(&format!(
                "; SET LOCAL {name} = '{}'",
                value.replace('\'', "''")
            ));
        }
        Self {
            pool,
            pooled: Some(begin.into()),
            session,
        }
    }

    /// Whether statements go through a transaction pooler.
    pub fn is_pooled(&self) -> bool {
        self.pooled.is_some()
    }

    /// The pool underneath (its size and options; run statements through
    /// the `Db`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Direct connections for session state (LISTEN, migrations); `None`
    /// through a pooler with no direct URL.
    pub fn session(&self) -> Option<&PgPool> {
        self.session.as_ref()
    }

    /// A transaction (with the pooled settings through a pooler).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        match &self.pooled {
            None => self.pool.begin().await,
            Some(begin) => self.pool.begin_with(AssertSqlSafe(begin.clone())).await,
        }
    }
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Self::direct(pool)
    }
}

/// Read-only access to the pool's own methods (size, close, options).
impl Deref for Db {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

impl<'p> Executor<'p> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.is_pooled() {
            return self.pool.fetch_many(query);
        }
        let db = self.clone();
        futures::stream::once(async move {
            let mut tx = db.begin().await?;
            let items: Vec<_> = tx.fetch_many(query).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures::stream::iter(items.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.is_pooled() {
            return self.pool.fetch_optional(query);
        }
        let db = self.clone();
        Box::pin(async move {
            let mut tx = db.begin().await?;
            let row = tx.fetch_optional(query).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, Result<sqlx::postgres::PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.describe(sql)
    }
}
