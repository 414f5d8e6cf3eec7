//! What the source holds: tables (partitioned ones under their root), columns, keys, types
//! and size estimates, read from the system catalogs inside the load's snapshot.

use std::collections::HashMap;
use std::fmt;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;

use super::types::TypeInfo;

/// A table's schema-qualified name, exactly as the catalog spells it.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// The quoted SQL form, `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            escape_identifier(&self.schema),
            escape_identifier(&self.name)
        )
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub typmod: i32,
    pub ndims: i32,
    /// `format_type()`, for reports.
    pub type_name: String,
    /// The column can hold no NULL: a validated `NOT NULL` (primary-key columns have one).
    /// A partitioned root's own constraint counts, whatever its partitions add.
    pub not_null: bool,
    /// `pg_stats.n_distinct` (ANALYZE's estimate: a count when positive, minus a fraction of
    /// the rows when negative); `None` while the column was never analysed.
    pub distinct: Option<f32>,
}

impl Column {
    /// Whether Parquet dictionary encoding is worth its CPU for this column in a table of
    /// `rows` rows: not for columns ANALYZE found mostly distinct (keys, UUIDs, unique text),
    /// whose dictionary would only grow until the writer falls back to plain encoding. Unknown
    /// statistics keep the dictionary (the writer's own fallback still applies).
    pub fn dictionary_pays(&self, rows: Option<u64>) -> bool {
        let Some(d) = self.distinct else {
            return true;
        };
        let distinct = if d < 0.0 {
            match rows {
                Some(r) => f64::from(-d) * r as f64,
                None => return true,
            }
        } else {
            f64::from(d)
        };
        let rows = rows.unwrap_or(0) as f64;
        distinct <= 10_000.0 || distinct <= rows / 20.0
    }
}

/// One table (or partitioned root) of the source.
#[derive(Debug, Clone)]
pub struct Table {
    pub oid: u32,
    pub name: TableName,
    pub partitioned: bool,
    /// Row estimate (`reltuples`, summed over partitions); `None` while the table (or one of
    /// its partitions) was never analysed.
    pub estimated_rows: Option<u64>,
    /// Heap blocks now (the largest partition's for a partitioned table), from the relation
    /// size: the basis of ctid segments, found without scanning.
    pub pages: u64,
    pub columns: Vec<Column>,
    /// Primary-key column names, in key order.
    pub key: Vec<String>,
}

/// Catalog facts about every type, for resolving domains, arrays and extension types.
pub struct Types(HashMap<u32, TypeInfo>);

impl Types {
    pub fn get(&self, oid: u32) -> Option<TypeInfo> {
        self.0.get(&oid).cloned()
    }
}

/// Reads all type facts (a few hundred rows).
pub async fn load_types(client: &Client) -> Result<Types, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT oid, typname::text, typtype, typcategory, typelem, typbasetype, typtypmod FROM pg_type",
            &[],
        )
        .await?;
    let mut map = HashMap::with_capacity(rows.len());
    for r in rows {
        let kind: i8 = r.get(2);
        let category: i8 = r.get(3);
        let info = TypeInfo {
            oid: r.get(0),
            name: r.get(1),
            kind: kind as u8,
            category: category as u8,
            elem: r.get(4),
            base: r.get(5),
            base_typmod: r.get(6),
        };
        map.insert(info.oid, info);
    }
    Ok(Types(map))
}

/// Every user table and partitioned root (partitions themselves are loaded under their root),
/// filtered by `selected(schema, table)`.
pub async fn discover(
    client: &Client,
    selected: &dyn Fn(&str, &str) -> bool,
) -> Result<Vec<Table>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind = 'p',
                    leaves.rows, leaves.pages
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             CROSS JOIN LATERAL (
                 -- NULL when a table (or partition) was never analysed: reltuples is -1, or 0
                 -- with relpages 0 (analysed empty, or before PostgreSQL 14) while it has blocks.
                 SELECT CASE WHEN bool_or(l.reltuples < 0
                                          OR (l.reltuples = 0 AND l.relpages = 0 AND pg_relation_size(l.oid) > 0))
                             THEN NULL ELSE COALESCE(sum(l.reltuples), 0) END::float8 AS rows,
                        COALESCE(max(pg_relation_size(l.oid) / current_setting('block_size')::int), 0)::int8 AS pages
                 FROM pg_class l
                 WHERE l.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf)
                    OR (c.relkind = 'r' AND l.oid = c.oid)
             ) leaves
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname !~ '^pg_(toast|temp_)'
             ORDER BY 2, 3",
            &[],
        )
        .await?;
    let mut tables: Vec<Table> = rows
        .iter()
        .filter(|r| selected(r.get(1), r.get(2)))
        .map(|r| Table {
            oid: r.get(0),
            name: TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            partitioned: r.get(3),
            estimated_rows: r.get::<_, Option<f64>>(4).map(|n| n.max(0.0) as u64),
            pages: r.get::<_, i64>(5).max(0) as u64,
            columns: Vec::new(),
            key: Vec::new(),
        })
        .collect();
    if tables.is_empty() {
        return Ok(tables);
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    // PostgreSQL 18's `NOT NULL NOT VALID` sets attnotnull before old rows are checked:
    // only a validated constraint makes a column NOT NULL here.
    let columns = client
        .query(
            "SELECT a.attrelid, a.attname::text, a.atttypid, a.atttypmod, a.attndims,
                    format_type(a.atttypid, a.atttypmod),
                    a.attnotnull AND NOT EXISTS (
                        SELECT 1 FROM pg_constraint n
                        WHERE n.contype = 'n' AND n.conrelid = a.attrelid
                          AND n.conkey = ARRAY[a.attnum] AND NOT n.convalidated),
                    (SELECT s.n_distinct FROM pg_stats s
                     JOIN pg_class c ON c.relname = s.tablename
                     JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = s.schemaname
                     WHERE c.oid = a.attrelid AND s.attname = a.attname
                     ORDER BY s.inherited DESC LIMIT 1)
             FROM pg_attribute a
             WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attrelid, a.attnum",
            &[&oids],
        )
        .await?;
    let keys = client
        .query(
            "SELECT c.conrelid, a.attname::text
             FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             WHERE c.contype = 'p' AND c.conrelid = ANY($1)
             ORDER BY c.conrelid, k.ord",
            &[&oids],
        )
        .await?;
    let index: HashMap<u32, usize> = tables.iter().enumerate().map(|(i, t)| (t.oid, i)).collect();
    for r in columns {
        let t = &mut tables[index[&r.get::<_, u32>(0)]];
        t.columns.push(Column {
            name: r.get(1),
            type_oid: r.get(2),
            typmod: r.get(3),
            ndims: r.get(4),
            type_name: r.get(5),
            not_null: r.get(6),
            distinct: r.get(7),
        });
    }
    for r in keys {
        tables[index[&r.get::<_, u32>(0)]].key.push(r.get(1));
    }
    Ok(tables)
}

/// The partition fingerprint of each partitioned root in `roots`: every table below it as
/// `oid:relfilenode:xmin-of-its-pg_inherits-link`, in oid order, with the root first.
/// TRUNCATE (and VACUUM FULL, CLUSTER) gives a partition a new relfilenode; ATTACH and
/// DETACH add or remove a `pg_inherits` row (a detach-and-reattach leaves a new one), DROP
/// removes the table. Plain catalog reads (no `pg_partition_tree()`, which reads the latest
/// catalog), so inside an imported snapshot the fingerprint is the snapshot's.
pub async fn partition_fingerprints(
    client: &Client,
    roots: &[u32],
) -> Result<HashMap<u32, String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH RECURSIVE tree(root, relid, link) AS (
                 SELECT r, r, ''::text FROM unnest($1::oid[]) r
               UNION ALL
                 SELECT t.root, i.inhrelid, i.xmin::text
                 FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
             )
             SELECT t.root, string_agg(t.relid::text || ':' || c.relfilenode::text || ':' || t.link,
                                       ',' ORDER BY t.relid <> t.root, t.relid)
             FROM tree t JOIN pg_class c ON c.oid = t.relid
             GROUP BY t.root",
            &[&roots],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One table of a partition fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FingerprintEntry {
    pub oid: u32,
    pub relfilenode: u32,
    /// The xmin of its `pg_inherits` row (empty for the root).
    pub link: u32,
}

/// The entries of a fingerprint written by [`partition_fingerprints`]; `None` when `text` is
/// not one (an older state's format).
pub fn parse_fingerprint(text: &str) -> Option<Vec<FingerprintEntry>> {
    text.split(',')
        .map(|e| {
            let mut parts = e.split(':');
            let oid = parts.next()?.parse().ok()?;
            let relfilenode = parts.next()?.parse().ok()?;
            let link = match parts.next()? {
                "" => 0,
                x => x.parse().ok()?,
            };
            parts.next().is_none().then_some(FingerprintEntry {
                oid,
                relfilenode,
                link,
            })
        })
        .collect()
}

/// Names (`schema.table`) of the tables among `oids` that still exist.
pub async fn table_names(
    client: &Client,
    oids: &[u32],
) -> Result<HashMap<u32, TableName>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, n.nspname::text, c.relname::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = ANY($1)",
            &[&oids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            )
        })
        .collect())
}
