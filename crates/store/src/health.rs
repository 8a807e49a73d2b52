//! Whether the database connection looks healthy, for the pools' acquire
//! check and for telling clients "unavailable" rather than "broken".
//!
//! Pools skip the ping before handing out a connection (it would be a
//! second round trip on every request). After Postgres restarts, though,
//! every pooled connection is dead, and each would fail one request before
//! being dropped. So the first error that looks like a lost connection
//! marks the database *suspect* for a while, and during that time the pools
//! ping each connection before handing it out ([`acquire_check`]) and drop
//! the dead ones: a restart costs clients one retried request, not one 500
//! per pooled connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::PgConnection;
use sqlx::pool::PoolConnectionMetadata;

/// How long the database stays suspect after a connection error.
const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// Milliseconds since the epoch until which connections are pinged.
static SUSPECT_UNTIL: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `e` means the database could not be reached or the connection
/// died (rather than the statement being refused): retrying on a fresh
/// connection may well succeed.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P01-03: admin/crash shutdown,
            // cannot connect now (starting up or in recovery).
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Notes an error; if it looks like a lost connection the database becomes
/// suspect. Returns [`is_unavailable`].
pub fn note(e: &sqlx::Error) -> bool {
    let unavailable = is_unavailable(e);
    if unavailable {
        SUSPECT_UNTIL.fetch_max(now_ms() + SUSPECT_FOR.as_millis() as u64, Ordering::Relaxed);
    }
    unavailable
}

/// Whether connections are being checked before use.
pub fn suspect() -> bool {
    now_ms() < SUSPECT_UNTIL.load(Ordering::Relaxed)
}

/// The pools' `before_acquire` hook: while the database is suspect, ping
/// the connection and drop it if it is dead.
pub fn acquire_check(
    conn: &mut PgConnection,
    _meta: PoolConnectionMetadata,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        if !suspect() {
            return Ok(true);
        }
        use sqlx::Connection;
        Ok(conn.ping().await.is_ok())
    })
}
