//! Replica identity: whether publishing a table's UPDATE and DELETE is safe for the source.
//! A publication that publishes them for a table without a usable replica identity makes the
//! application's own UPDATE/DELETE fail — the one thing godwit must never do (SPEC, first
//! rule) — and so does a row filter on columns outside the identity.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::pg::catalog::{Table, TableName};
use crate::pg::filter::Filter;

/// One relation's replica identity as the catalog states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub table: TableName,
    /// `pg_class.relreplident`: `d` default, `n` nothing, `f` full, `i` index.
    pub kind: u8,
    /// The identity's columns (primary key for `d`, the index's for `i`; empty when unusable
    /// and for `f`, where every column counts).
    pub columns: Vec<String>,
}

impl Identity {
    /// Whether UPDATE/DELETE can be published for it.
    pub fn usable(&self) -> bool {
        self.kind == b'f' || !self.columns.is_empty()
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match (self.kind, self.columns.is_empty()) {
            (b'f', _) => "full".into(),
            (b'd', false) => format!("default (primary key {})", self.columns.join(", ")),
            (b'd', true) => "default, but no primary key".into(),
            (b'i', false) => format!("index ({})", self.columns.join(", ")),
            (b'i', true) => "index, but the index is gone".into(),
            _ => "nothing".into(),
        }
    }
}

/// Reads the identity of each table, and for a partitioned table of each of its partitions
/// (UPDATE/DELETE run against the partitions).
pub async fn read(
    client: &Client,
    tables: &[Table],
) -> Result<HashMap<u32, Vec<Identity>>, tokio_postgres::Error> {
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let rows = client
        .query(
            "SELECT r.oid AS root, l.oid, n.nspname::text, l.relname::text, l.relreplident,
                    ARRAY(SELECT a.attname::text
                          FROM pg_index i
                          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                          WHERE i.indrelid = l.oid
                            AND ((l.relreplident = 'd' AND i.indisprimary)
                              OR (l.relreplident = 'i' AND i.indisreplident))
                          ORDER BY array_position(i.indkey::int2[], a.attnum))
             FROM pg_class r
             JOIN pg_class l ON l.oid = r.oid AND r.relkind = 'r'
                  OR l.oid IN (SELECT relid FROM pg_partition_tree(r.oid) WHERE isleaf) AND r.relkind = 'p'
             JOIN pg_namespace n ON n.oid = l.relnamespace
             WHERE r.oid = ANY($1)
             ORDER BY 1, 2",
            &[&oids],
        )
        .await?;
    let mut out: HashMap<u32, Vec<Identity>> = HashMap::new();
    for r in rows {
        let kind: i8 = r.get(4);
        out.entry(r.get(0)).or_default().push(Identity {
            table: TableName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            kind: kind as u8,
            columns: r.get(5),
        });
    }
    Ok(out)
}

/// Why publishing this table's UPDATE and DELETE (with this row filter) would break the
/// source's writes, and the exact fix; `None` when it is safe.
pub fn problem(
    table: &Table,
    identities: &[Identity],
    row_filter: Option<&Filter>,
) -> Option<String> {
    if let Some(bad) = identities.iter().find(|i| !i.usable()) {
        let on = if bad.table == table.name {
            String::new()
        } else {
            format!(" (partition {} of {})", bad.table, table.name)
        };
        return Some(format!(
            "{}{on} has replica identity {}: publishing its UPDATE and DELETE would make those \
             statements fail on the source. Fix: ALTER TABLE {} REPLICA IDENTITY FULL; (or add a \
             primary key, or use REPLICA IDENTITY USING INDEX on a unique index), or set \
             cdc = \"inserts-only\" for this table",
            bad.table,
            bad.describe(),
            bad.table.quoted()
        ));
    }
    let filter = row_filter?;
    let used = filter.columns();
    for ident in identities.iter().filter(|i| i.kind != b'f') {
        let outside: Vec<&str> = table
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| used.contains(*c) && !ident.columns.iter().any(|k| k == c))
            .collect();
        if !outside.is_empty() {
            return Some(format!(
                "the row filter `{filter}` of {} uses {} outside its replica identity ({}): \
                 PostgreSQL would then fail UPDATE and DELETE on the source. Fix: ALTER TABLE {} \
                 REPLICA IDENTITY FULL; or filter on identity columns only",
                table.name,
                outside.join(", "),
                ident.describe(),
                ident.table.quoted()
            ));
        }
    }
    None
}
