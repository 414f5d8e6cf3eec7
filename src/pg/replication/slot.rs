//! Slot and publication administration over an ordinary connection: what exists, its health,
//! creating the publications CDC reads and dropping what godwit created.

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::Client;

use crate::pg::catalog::TableName;
use crate::pg::filter::Filter;
use crate::pg::lsn::Lsn;

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    pub plugin: Option<String>,
    pub database: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    pub confirmed_flush: Option<Lsn>,
    /// WAL the slot holds back, in bytes.
    pub retained_bytes: Option<i64>,
    pub active: bool,
    /// The server process of the session that uses the slot.
    pub active_pid: Option<i32>,
}

impl SlotInfo {
    /// The slot lost WAL it needs: changes are gone, CDC cannot go on from it.
    pub fn lost(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
    }
}

/// The slot `name`, if it exists.
pub async fn slot_info(
    client: &Client,
    name: &str,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT plugin::text, database::text, wal_status::text, (confirmed_flush_lsn - '0/0'::pg_lsn)::int8,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, active, active_pid
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        database: r.get(1),
        wal_status: r.get(2),
        confirmed_flush: r.get::<_, Option<i64>>(3).map(|n| Lsn(n as u64)),
        retained_bytes: r.get(4),
        active: r.get(5),
        active_pid: r.get(6),
    }))
}

/// What a run following slot `name` watches: the source's WAL position, the WAL the slot
/// holds back, and when the walsender using it last took a status update from its client
/// (`pg_stat_replication.reply_time`, µs since the epoch; `None` without a session).
#[derive(Debug, Clone)]
pub struct StreamHealth {
    pub current_lsn: Lsn,
    pub retained_bytes: Option<i64>,
    pub reply_time: Option<i64>,
}

/// The slot's [`StreamHealth`], if the slot exists.
pub async fn stream_health(
    client: &Client,
    name: &str,
) -> Result<Option<StreamHealth>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "WITH w AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn)
             SELECT (w.lsn - '0/0'::pg_lsn)::int8, pg_wal_lsn_diff(w.lsn, s.restart_lsn)::int8,
                    (extract(epoch FROM r.reply_time) * 1000000)::int8
             FROM pg_replication_slots s CROSS JOIN w
             LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| StreamHealth {
        current_lsn: Lsn(r.get::<_, Option<i64>>(0).unwrap_or(0) as u64),
        retained_bytes: r.get(1),
        reply_time: r.get(2),
    }))
}

/// `max_slot_wal_keep_size` as PostgreSQL shows it (`-1` means slots may hold WAL forever).
pub async fn max_slot_wal_keep_size(client: &Client) -> Result<String, tokio_postgres::Error> {
    Ok(client
        .query_one("SHOW max_slot_wal_keep_size", &[])
        .await?
        .get(0))
}

/// The end of the WAL inserted so far: every transaction committed before this call ends
/// below it, also under `synchronous_commit = off`, where `pg_current_wal_lsn()` (the write
/// position) can lag behind commits that already returned.
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn, tokio_postgres::Error> {
    let n: i64 = client
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8",
            &[],
        )
        .await?
        .get(0);
    Ok(Lsn(n as u64))
}

/// Waits (up to `timeout`, polling with back-off) until no session uses the slot — after a
/// crash the server needs a moment to notice the old session is gone, and a stopped or cut-off
/// holder's session lasts until `wal_sender_timeout`. Returns the slot's latest state (still
/// `active` when the time ran out).
pub async fn wait_inactive(
    client: &Client,
    name: &str,
    timeout: std::time::Duration,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let until = std::time::Instant::now() + timeout;
    let mut pause = std::time::Duration::from_millis(100);
    let mut told = false;
    loop {
        let info = slot_info(client, name).await?;
        let now = std::time::Instant::now();
        match &info {
            Some(i) if i.active && now < until => {
                if !told && timeout > std::time::Duration::from_secs(5) {
                    told = true;
                    tracing::info!(
                        slot = name,
                        pid = i.active_pid,
                        wait_s = timeout.as_secs(),
                        "the slot is still used by another session (an earlier run's?); waiting for it to leave"
                    );
                }
                tokio::time::sleep(pause.min(until - now)).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            _ => return Ok(info),
        }
    }
}

/// How long a session whose client went silent (stopped, cut off) can hold a slot:
/// `wal_sender_timeout`, after which the server ends it; `None` when the timeout is off.
pub async fn wal_sender_timeout(
    client: &Client,
) -> Result<Option<std::time::Duration>, tokio_postgres::Error> {
    let shown: String = client
        .query_one("SHOW wal_sender_timeout", &[])
        .await?
        .get(0);
    Ok(parse_guc_duration(&shown).filter(|d| !d.is_zero()))
}

/// A time setting as `SHOW` prints it: `60000ms`, `10s`, `1min`, `2h`, `1d`, or a bare
/// number of milliseconds.
fn parse_guc_duration(shown: &str) -> Option<std::time::Duration> {
    let shown = shown.trim();
    let split = shown
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(shown.len());
    let (number, unit) = shown.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(n.checked_mul(ms)?))
}

/// Drops the slot (once no session uses it: a session that just ended may take a moment to
/// leave it).
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    wait_inactive(client, name, std::time::Duration::from_secs(10)).await?;
    let n = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(n > 0)
}

/// Whether publication `name` exists.
pub async fn publication_exists(
    client: &Client,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some())
}

/// One table of a publication, with its row filter.
pub struct Published<'a> {
    pub table: &'a TableName,
    pub row_filter: Option<&'a Filter>,
}

impl Published<'_> {
    /// `"schema"."table"` with ` WHERE (filter)` when it has one.
    fn sql(&self) -> String {
        match self.row_filter {
            Some(f) => format!("{} WHERE ({f})", self.table.quoted()),
            None => self.table.quoted(),
        }
    }
}

/// A publication to create: its name, its tables, and whether it publishes INSERT alone (for
/// tables without a usable replica identity).
pub struct NewPublication<'a> {
    pub name: &'a str,
    pub tables: &'a [Published<'a>],
    pub inserts_only: bool,
}

/// Creates `publications` (tables published under partitioned roots) in one transaction: all
/// of them or none. Each statement carries user text (row filters), so each goes alone
/// through the extended protocol. On failure, the publication that failed and why.
pub async fn create_publications(
    client: &Client,
    publications: &[NewPublication<'_>],
) -> Result<(), (String, tokio_postgres::Error)> {
    if publications.is_empty() {
        return Ok(());
    }
    let first = publications[0].name.to_string();
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| (first.clone(), e))?;
    for p in publications {
        let list: Vec<String> = p.tables.iter().map(Published::sql).collect();
        let publish = if p.inserts_only {
            "insert"
        } else {
            "insert, update, delete, truncate"
        };
        let statement = format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = {}, publish_via_partition_root = true)",
            escape_identifier(p.name),
            list.join(", "),
            escape_literal(publish)
        );
        if let Err(e) = client.execute(statement.as_str(), &[]).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err((p.name.to_string(), e));
        }
    }
    client.batch_execute("COMMIT").await.map_err(|e| (first, e))
}

/// The tables `publications` publish (partitioned tables under their root).
pub async fn published_tables(
    client: &Client,
    publications: &[String],
) -> Result<Vec<TableName>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT DISTINCT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = ANY($1)",
            &[&publications],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect())
}

/// Adds a table to a publication (one statement, extended protocol: it carries the filter).
pub async fn add_table(
    client: &Client,
    publication: &str,
    table: &Published<'_>,
) -> Result<(), tokio_postgres::Error> {
    let statement = format!(
        "ALTER PUBLICATION {} ADD TABLE {}",
        escape_identifier(publication),
        table.sql()
    );
    client.execute(statement.as_str(), &[]).await.map(|_| ())
}

/// Drops a publication if it exists.
pub async fn drop_publication(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    let statement = format!("DROP PUBLICATION IF EXISTS {}", escape_identifier(name));
    client.execute(statement.as_str(), &[]).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_settings_as_show_prints_them() {
        let ms = |n| Some(std::time::Duration::from_millis(n));
        assert_eq!(parse_guc_duration("1min"), ms(60_000));
        assert_eq!(parse_guc_duration("10s"), ms(10_000));
        assert_eq!(parse_guc_duration("1500ms"), ms(1500));
        assert_eq!(parse_guc_duration("2h"), ms(7_200_000));
        assert_eq!(parse_guc_duration("0"), ms(0));
        assert_eq!(parse_guc_duration("soon"), None);
    }
}
