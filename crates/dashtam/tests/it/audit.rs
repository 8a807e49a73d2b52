//! The audit trail is append-only, enforced by the database itself.

use sqlx::PgPool;

const MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[sqlx::test(migrator = "MIGRATIONS")]
async fn audit_records_refuse_update_delete_and_truncate(pool: PgPool) {
    sqlx::query(
        "INSERT INTO audit_records (action, phase, outcome, actor, resource_type, resource_id)
         VALUES ('sync_attempted', 'attempt', 'attempted', 'system:test', 'connection', 'c1')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for stmt in [
        "UPDATE audit_records SET outcome = 'succeeded'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
    ] {
        let err = sqlx::query(stmt).execute(&pool).await.unwrap_err();
        let db = err.as_database_error().expect("a database error");
        assert!(
            db.message().contains("append-only"),
            "{stmt}: {}",
            db.message()
        );
        assert_eq!(db.code().as_deref(), Some("42501"), "{stmt}");
    }
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_records WHERE outcome = 'attempted'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 1);
}
