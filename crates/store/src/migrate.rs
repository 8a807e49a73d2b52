//! Schema migrations (the `migrations/` folder at the repository root,
//! embedded at compile time) and the check that `serve` runs at start-up.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Applies every pending migration.
pub async fn run(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// How the database's schema compares to this binary's migrations.
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaStatus {
    Current,
    /// Migrations this binary has that the database has not applied.
    Behind { pending: Vec<i64> },
    /// The database has migrations this binary does not know (a newer
    /// release migrated it).
    Ahead { unknown: Vec<i64> },
}

pub async fn status(pool: &PgPool) -> Result<SchemaStatus, sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let pending: Vec<i64> = known.iter().copied().filter(|v| !applied.contains(v)).collect();
    if !pending.is_empty() {
        return Ok(SchemaStatus::Behind { pending });
    }
    let unknown: Vec<i64> = applied.iter().copied().filter(|v| !known.contains(v)).collect();
    if !unknown.is_empty() {
        return Ok(SchemaStatus::Ahead { unknown });
    }
    Ok(SchemaStatus::Current)
}
