//! What the load of one table will do: which columns, as which types, read by which COPY
//! statement — decided from the catalog and the table's settings before anything is written.

use postgres_protocol::escape::escape_identifier;

use crate::config::{NumericMode, Pipeline, TableSettings};
use crate::pg::catalog::{Table, Types};
use crate::pg::copy::{CopyColumn, CopySpec};
use crate::pg::filter::Filter;
use crate::pg::types::{self, NumericAs};

/// The plan of one table's full load.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub table: Table,
    pub settings: TableSettings,
    /// The COPY of the whole table (segments add a ctid range to it).
    pub copy: CopySpec,
    /// The SELECT's `FROM …` part and the user's filter, to build segment statements.
    from: String,
    select: String,
    filter: Option<Filter>,
    /// Parallel segments; empty when the table is read as one stream.
    pub segments: Vec<Segment>,
}

/// One parallel segment of a table: heap blocks `[start, end)` (the last one open-ended, so
/// pages added since the size was read are not missed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// 1-based, as in `SEGMENT<n>_LOAD…`.
    pub number: u32,
    pub start: u64,
    pub end: Option<u64>,
}

impl TablePlan {
    /// The columns whose values ANALYZE found mostly distinct: their Parquet chunks are
    /// written without a dictionary (see `Column::dictionary_pays`).
    pub fn plain_columns(&self) -> std::sync::Arc<[String]> {
        self.table
            .columns
            .iter()
            .filter(|c| !c.dictionary_pays(self.table.estimated_rows))
            .map(|c| c.name.clone())
            .collect()
    }

    /// `schema.table`, the table's name in state, events and logs.
    pub fn key(&self) -> String {
        self.table.name.to_string()
    }

    /// The COPY of one segment (or of the whole table).
    pub fn copy_for(&self, segment: Option<&Segment>) -> CopySpec {
        let Some(seg) = segment else {
            return self.copy.clone();
        };
        let mut conds = vec![format!("ctid >= '({},0)'::tid", seg.start)];
        if let Some(end) = seg.end {
            conds.push(format!("ctid < '({end},0)'::tid"));
        }
        if let Some(w) = &self.filter {
            conds.push(format!("({w})"));
        }
        CopySpec {
            statement: format!(
                "COPY (SELECT {} FROM {} WHERE {}) TO STDOUT (FORMAT binary)",
                self.select,
                self.from,
                conds.join(" AND ")
            ),
            ..self.copy.clone()
        }
    }
}

/// Splits `pages` heap blocks into `n` ctid ranges of about equal size. No COUNT, no NTILE:
/// the relation size is all it needs.
pub fn segments(pages: u64, n: u32) -> Vec<Segment> {
    if n <= 1 {
        return Vec::new();
    }
    let per = pages.div_ceil(n as u64).max(1);
    (0..n)
        .map(|i| Segment {
            number: i + 1,
            start: per * i as u64,
            end: (i + 1 < n).then_some(per * (i as u64 + 1)),
        })
        .collect()
}

/// Heap pages per segment below which a table is not split by default (64 MiB).
const AUTO_SEGMENT_PAGES: u64 = 8192;

/// The segments of a table whose `partitions` is not set: one per core, as long as each
/// reads at least 64 MiB of heap; a smaller table is one stream. Reading several ctid ranges
/// at once keeps both PostgreSQL and godwit busy on every core (what DuckDB's scanner does);
/// the plan is recorded with the table, so a shard or a resumed load of the same snapshot
/// uses the same segments wherever it runs.
pub fn auto_segments(pages: u64) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    (pages / AUTO_SEGMENT_PAGES).clamp(1, cores.max(1)) as u32
}

/// Plans one table. Errors are problems of the pipeline file (an excluded column that does
/// not exist, every column excluded).
pub fn plan_table(p: &Pipeline, table: Table, types_: &Types) -> Result<TablePlan, String> {
    let settings = p.table_settings(&table.name.schema, &table.name.name);
    for col in &settings.exclude_columns {
        if !table.columns.iter().any(|c| &c.name == col) {
            return Err(format!(
                "exclude_columns names column {col:?}, which {} does not have (columns: {})",
                table.name,
                table
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let numeric = match settings.numeric {
        NumericMode::Decimal => NumericAs::Decimal,
        NumericMode::Text => NumericAs::Text,
    };
    let columns: Vec<CopyColumn> = table
        .columns
        .iter()
        .filter(|c| !settings.exclude_columns.contains(&c.name))
        .map(|c| CopyColumn {
            name: c.name.clone(),
            ty: types::resolve(c.type_oid, c.typmod, c.ndims, numeric, &|o| types_.get(o)),
            not_null: c.not_null,
        })
        .collect();
    if columns.is_empty() {
        return Err(format!(
            "every column of {} is excluded; remove some from exclude_columns",
            table.name
        ));
    }
    let select = columns
        .iter()
        .map(|c| c.ty.select_expr(&escape_identifier(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    // A partitioned root reads all its partitions; a plain table reads only itself (its
    // inheritance children are tables of their own).
    let only = if table.partitioned { "" } else { "ONLY " };
    let from = format!("{only}{}", table.name.quoted());
    let filter = settings.where_clause.clone();
    let statement = format!(
        "COPY (SELECT {select} FROM {from}{}) TO STDOUT (FORMAT binary)",
        filter
            .as_ref()
            .map(|w| format!(" WHERE ({w})"))
            .unwrap_or_default()
    );
    let key_columns = table
        .key
        .iter()
        .filter_map(|k| columns.iter().position(|c| &c.name == k))
        .collect();
    Ok(TablePlan {
        segments: segments(
            table.pages,
            settings
                .partitions
                .unwrap_or_else(|| auto_segments(table.pages)),
        ),
        from,
        select,
        filter,
        copy: CopySpec {
            statement,
            columns,
            key_columns,
            batch_rows: p.load.batch_rows,
            batch_bytes: p.load.batch_bytes,
        },
        table,
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_tables_get_a_segment_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        assert_eq!(auto_segments(0), 1);
        assert_eq!(auto_segments(AUTO_SEGMENT_PAGES - 1), 1);
        assert_eq!(auto_segments(AUTO_SEGMENT_PAGES * 2), 2.min(cores));
        assert_eq!(auto_segments(u64::MAX / 2), cores);
    }

    #[test]
    fn segments_cover_every_block_once() {
        assert!(segments(100, 1).is_empty());
        let s = segments(10, 4);
        assert_eq!(s.len(), 4);
        assert_eq!((s[0].start, s[0].end), (0, Some(3)));
        assert_eq!((s[3].start, s[3].end), (9, None));
        for w in s.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start));
        }
        // An empty table still gets its segments (the last one reads anything added since).
        let s = segments(0, 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].end, None);
    }
}
