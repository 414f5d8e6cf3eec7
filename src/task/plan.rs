//! What the load of one table will do: which columns, as which types, read by which COPY
//! statement — decided from the catalog and the table's settings before anything is written.

use postgres_protocol::escape::escape_identifier;

use crate::config::{NumericMode, Pipeline, TableSettings};
use crate::pg::catalog::{Table, Types};
use crate::pg::copy::CopySpec;
use crate::pg::types::{self, NumericAs, PgType};

/// The plan of one table's full load.
#[derive(Debug, Clone)]
pub struct TablePlan {
    pub table: Table,
    pub settings: TableSettings,
    pub copy: CopySpec,
}

impl TablePlan {
    /// `schema.table`, the table's name in state, events and logs.
    pub fn key(&self) -> String {
        self.table.name.to_string()
    }
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
    let columns: Vec<(String, PgType)> = table
        .columns
        .iter()
        .filter(|c| !settings.exclude_columns.contains(&c.name))
        .map(|c| {
            let t = types::resolve(c.type_oid, c.typmod, c.ndims, numeric, &|o| types_.get(o));
            (c.name.clone(), t)
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
        .map(|(name, t)| t.select_expr(&escape_identifier(name)))
        .collect::<Vec<_>>()
        .join(", ");
    // A partitioned root reads all its partitions; a plain table reads only itself (its
    // inheritance children are tables of their own).
    let only = if table.partitioned { "" } else { "ONLY " };
    let filter = settings
        .where_clause
        .as_ref()
        .map(|w| format!(" WHERE ({w})"))
        .unwrap_or_default();
    let statement = format!(
        "COPY (SELECT {select} FROM {only}{}{filter}) TO STDOUT (FORMAT binary)",
        table.name.quoted()
    );
    let key_columns = table
        .key
        .iter()
        .filter_map(|k| columns.iter().position(|(name, _)| name == k))
        .collect();
    Ok(TablePlan {
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
