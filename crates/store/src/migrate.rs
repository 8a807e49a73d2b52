//! Schema migrations (the `migrations/` folder at the repository root,
//! embedded at compile time) and the check that `serve` runs at start-up.

use dashtam_db::Db;
use sqlx::migrate::Migrator;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Applies every pending migration, on a direct connection (sqlx holds a
/// session advisory lock while it migrates: not through a transaction
/// pooler).
pub async fn run(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// How the database's schema compares to this binary's migrations.
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaStatus {
    Current,
    /// Migrations this binary has that the database has not applied.
    Behind {
        pending: Vec<i64>,
    },
    /// The database has migrations this binary does not know (a newer
    /// release migrated it).
    Ahead {
        unknown: Vec<i64>,
    },
}

pub async fn status(pool: &Db) -> Result<SchemaStatus, sqlx::Error> {
    let exists = sqlx::query_file_scalar!("queries/migrations_table_exists.sql")
        .fetch_one(pool)
        .await?;
    let applied: Vec<i64> = if exists {
        sqlx::query_file_scalar!("queries/applied_migrations.sql")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let known: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let pending: Vec<i64> = known
        .iter()
        .copied()
        .filter(|v| !applied.contains(v))
        .collect();
    if !pending.is_empty() {
        return Ok(SchemaStatus::Behind { pending });
    }
    let unknown: Vec<i64> = applied
        .iter()
        .copied()
        .filter(|v| !known.contains(v))
        .collect();
    if !unknown.is_empty() {
        return Ok(SchemaStatus::Ahead { unknown });
    }
    Ok(SchemaStatus::Current)
}

/// Creates the database named in `url` if it does not exist (connecting to
/// the server's `postgres` database to do so).
pub async fn ensure_database(url: &str) -> Result<bool, sqlx::Error> {
    use sqlx::ConnectOptions;
    use sqlx::postgres::PgConnectOptions;

    let target: PgConnectOptions = url.parse()?;
    let name = target.get_database().unwrap_or("postgres").to_owned();
    let mut admin = target.clone().database("postgres").connect().await?;
    let exists = sqlx::query_file_scalar!("queries/database_exists.sql", name)
        .fetch_one(&mut admin)
        .await?;
    if exists {
        return Ok(false);
    }
    // The name is quoted as an identifier (embedded quotes doubled).
    let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut admin)
        .await
    {
        Ok(_) => Ok(true),
        // Someone else created it in the meantime.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Drops and re-creates the database named in `url` (benchmarks only).
pub async fn recreate_database(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::ConnectOptions;
    use sqlx::postgres::PgConnectOptions;

    let target: PgConnectOptions = url.parse()?;
    let name = target.get_database().unwrap_or("postgres").to_owned();
    if matches!(name.as_str(), "postgres" | "template0" | "template1") {
        return Err(sqlx::Error::Configuration(
            format!("refusing to drop the {name:?} database; name a scratch database").into(),
        ));
    }
    let mut admin = target.clone().database("postgres").connect().await?;
    let quoted = name.replace('"', "\"\"");
    // The name is quoted as an identifier (embedded quotes doubled).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
        .execute(&mut admin)
        .await?;
    Ok(())
}
