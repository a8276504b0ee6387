//! Writing usage rows and spend: the one write every proxied request causes, so it goes
//! straight to sqlx with statements built once, not through sea-orm's query builder.
//!
//! Through sea-orm each row was an `ActiveModel` of cloned strings, turned into a freshly
//! built `INSERT` (its SQL text formatted again for every batch) and then into sqlx
//! arguments — about half of the request's share of database work. Here the SQL of each
//! chunk size is built once per backend and the row's fields are bound by reference.
//! The columns, their encodings and the one-transaction shape are those of
//! `entity::usage_log` as sea-orm wrote them.

use std::collections::HashMap;
use std::sync::OnceLock;

use sea_orm::sqlx::{self, Database, Encode, Executor, IntoArguments, Type};
use sea_orm::{DatabaseBackend, DatabaseConnection};

use super::{USAGE_CHUNKS, usage_chunks};
use crate::store::{StoreError, StoreResult, UsageRow};

const COLUMNS: &str = "id, request_id, key_id, team_id, user_id, model, route, prompt_tokens, \
                       completion_tokens, spend, status, http_status, started_at, duration_ms, server";
const PER_ROW: usize = 15;

/// `INSERT INTO usage_logs … VALUES (…), …` for `rows` rows, in the backend's placeholders.
fn insert_sql(postgres: bool, rows: usize) -> String {
    let mut sql = format!("INSERT INTO usage_logs ({COLUMNS}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..PER_ROW {
            if col > 0 {
                sql.push_str(", ");
            }
            if postgres {
                sql.push_str(&format!("${}", row * PER_ROW + col + 1));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// The statement for a chunk of `rows` rows (one of [`USAGE_CHUNKS`]), built on first use.
fn insert_for(postgres: bool, rows: usize) -> &'static str {
    static SQL: OnceLock<[[String; USAGE_CHUNKS.len()]; 2]> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        [false, true].map(|postgres| USAGE_CHUNKS.map(|n| insert_sql(postgres, n)))
    });
    let by_backend = &all[usize::from(postgres)];
    USAGE_CHUNKS
        .iter()
        .position(|&n| n == rows)
        .and_then(|i| by_backend.get(i))
        .map_or("", String::as_str)
}

/// The spend increment of one key (`virtual_keys`) or team (`teams`), per backend.
const SPEND_SQL: [[&str; 2]; 2] = [
    [
        "UPDATE virtual_keys SET spend = spend + ? WHERE id = ?",
        "UPDATE teams SET spend = spend + ? WHERE id = ?",
    ],
    [
        "UPDATE virtual_keys SET spend = spend + $1 WHERE id = $2",
        "UPDATE teams SET spend = spend + $1 WHERE id = $2",
    ],
];

/// As sea-orm classifies them: the pool or the connection gone is "unavailable".
fn db_error(e: sqlx::Error) -> StoreError {
    use sea_orm::{DbErr, RuntimeErr};
    let unavailable = matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    );
    let runtime = RuntimeErr::SqlxError(e.into());
    StoreError::from(if unavailable {
        DbErr::Conn(runtime)
    } else {
        DbErr::Exec(runtime)
    })
}

/// Writes `rows` and adds their spend to their keys and teams, in one transaction.
pub(super) async fn record(db: &DatabaseConnection, rows: &[UsageRow]) -> StoreResult<()> {
    let mut by_key: HashMap<&str, f64> = HashMap::new();
    let mut by_team: HashMap<&str, f64> = HashMap::new();
    for row in rows {
        if row.spend > 0.0 {
            if let Some(k) = &row.key_id {
                *by_key.entry(k).or_default() += row.spend;
            }
            if let Some(t) = &row.team_id {
                *by_team.entry(t).or_default() += row.spend;
            }
        }
    }
    match db.get_database_backend() {
        DatabaseBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            write::<sqlx::Sqlite>(
                pool.begin().await.map_err(db_error)?,
                false,
                rows,
                &by_key,
                &by_team,
            )
            .await
        }
        DatabaseBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            write::<sqlx::Postgres>(
                pool.begin().await.map_err(db_error)?,
                true,
                rows,
                &by_key,
                &by_team,
            )
            .await
        }
        other => Err(StoreError::from(sea_orm::DbErr::Custom(format!(
            "usage rows on an unsupported database ({other:?})"
        )))),
    }
}

async fn write<'c, DB>(
    mut txn: sqlx::Transaction<'c, DB>,
    postgres: bool,
    rows: &[UsageRow],
    by_key: &HashMap<&str, f64>,
    by_team: &HashMap<&str, f64>,
) -> StoreResult<()>
where
    DB: Database,
    <DB as Database>::Arguments: IntoArguments<DB>,
    for<'e> &'e mut <DB as Database>::Connection: Executor<'e, Database = DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> chrono::DateTime<chrono::Utc>: Encode<'q, DB> + Type<DB>,
{
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for chunk in usage_chunks(rows) {
        let mut query = sqlx::query::<DB>(insert_for(postgres, chunk.len()));
        for r in chunk {
            query = query
                // UUIDv7, so ids sort by time on every database.
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(r.request_id.as_str())
                .bind(r.key_id.as_deref())
                .bind(r.team_id.as_deref())
                .bind(r.user_id.as_deref())
                .bind(r.model.as_deref())
                .bind(r.route.as_str())
                .bind(count(r.prompt_tokens))
                .bind(count(r.completion_tokens))
                .bind(r.spend)
                .bind(r.status.as_str())
                .bind(i32::from(r.http_status))
                .bind(r.started_at)
                .bind(count(r.duration_ms))
                .bind(r.server.as_deref());
        }
        query.execute(&mut *txn).await.map_err(db_error)?;
    }
    // Increments in SQL, never read-modify-write: concurrent writers cannot lose updates.
    let [keys_sql, teams_sql] = SPEND_SQL[usize::from(postgres)];
    for (sql, amounts) in [(keys_sql, by_key), (teams_sql, by_team)] {
        for (id, amount) in amounts {
            sqlx::query::<DB>(sql)
                .bind(*amount)
                .bind(*id)
                .execute(&mut *txn)
                .await
                .map_err(db_error)?;
        }
    }
    txn.commit().await.map_err(db_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_have_one_placeholder_per_value() {
        assert_eq!(insert_for(false, 1).matches('?').count(), PER_ROW);
        assert_eq!(insert_for(false, 64).matches('?').count(), 64 * PER_ROW);
        let pg = insert_for(true, 16);
        assert!(pg.contains("$1,") && pg.ends_with(&format!("${})", 16 * PER_ROW)));
        assert_eq!(COLUMNS.split(',').count(), PER_ROW);
        assert_eq!(insert_for(false, 3), "", "only the chunk sizes are built");
    }
}
