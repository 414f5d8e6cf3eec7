//! A table as PostgreSQL itself returns it, each value rendered in the form `replay::render`
//! gives the Arrow value godwit should have written for it — so a replayed table can be
//! compared with the source value by value, without going through godwit's own full load (a
//! mapping bug shared by the full load and CDC could hide there).
//!
//! The rendering is done by SQL, per column type, for the types the CDC tests use; any other
//! type panics rather than compare something approximate.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::replay::RowMap;

/// The SQL expression rendering column `col` (already quoted) of type `typ` (`format_type`)
/// as Arrow's display of godwit's value for it.
fn render_expr(col: &str, typ: &str) -> String {
    let ts = |v: &str| {
        // Arrow prints a timestamp as `%Y-%m-%dT%H:%M:%S%.f`: no fraction, or 3, or 6 digits.
        format!(
            "to_char({v}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE
                 WHEN extract(microseconds FROM {v})::int8 % 1000000 = 0 THEN ''
                 WHEN extract(microseconds FROM {v})::int8 % 1000 = 0 THEN to_char({v}, '.MS')
                 ELSE to_char({v}, '.US') END"
        )
    };
    let base = typ.split('(').next().unwrap_or(typ).trim();
    match base {
        "smallint" | "integer" | "bigint" | "text" | "character varying" | "numeric" | "date"
        | "uuid" | "jsonb" | "enum" => format!("{col}::text"),
        // The value as PostgreSQL prints it, trailing blanks kept (a cast to text drops them).
        "character" => format!("CASE WHEN {col} IS NOT NULL THEN format('%s', {col}) END"),
        // Arrow prints a float in its shortest form as PostgreSQL does, but `2.0` for `2` and
        // other forms for very large or small values: outside 0.001..1e6 or integral, NULL
        // is compared instead, so such a value fails rather than compares approximately.
        "real" | "double precision" => format!(
            "CASE WHEN {col} <> trunc({col}) AND abs({col}) >= 0.001 AND abs({col}) < 1e6 THEN {col}::text END"
        ),
        "boolean" => format!("CASE WHEN {col} THEN 'true' ELSE 'false' END"),
        "timestamp without time zone" => ts(col),
        "timestamp with time zone" => ts(&format!("({col} AT TIME ZONE 'UTC')")),
        "text[]" | "integer[]" | "bigint[]" => {
            format!("'[' || array_to_string({col}, ', ', 'NULL') || ']'")
        }
        other => panic!("source::render_expr: no rendering for type {other} yet"),
    }
}

/// Every row of `table` (a name as SQL takes it, e.g. `items` or `"My Schema"."T"`), as
/// column → rendered value, `NULL` for SQL NULL.
pub async fn pg_rows(db: &Client, table: &str) -> Vec<RowMap> {
    let columns: Vec<(String, String)> = db
        .query(
            "SELECT a.attname::text,
                    CASE WHEN t.typtype = 'e' THEN 'enum' ELSE format_type(a.atttypid, a.atttypmod) END
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let select: Vec<String> = columns
        .iter()
        .map(|(name, typ)| {
            let col = postgres_protocol::escape::escape_identifier(name);
            format!("COALESCE(({}), 'NULL')", render_expr(&col, typ))
        })
        .collect();
    db.query(&format!("SELECT {} FROM {table}", select.join(", ")), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            columns
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.clone(), r.get::<_, String>(i)))
                .collect()
        })
        .collect()
}

/// The rows of `table` by their `key` columns joined with `|` (as `replay::replay_keyed`).
pub async fn pg_keyed(db: &Client, table: &str, key: &[&str]) -> BTreeMap<String, RowMap> {
    pg_rows(db, table)
        .await
        .into_iter()
        .map(|r| {
            let k = key
                .iter()
                .map(|c| r[*c].clone())
                .collect::<Vec<_>>()
                .join("|");
            (k, r)
        })
        .collect()
}

/// The rows of a keyless `table`, sorted (a multiset).
pub async fn pg_sorted(db: &Client, table: &str) -> Vec<RowMap> {
    let mut rows = pg_rows(db, table).await;
    rows.sort();
    rows
}
