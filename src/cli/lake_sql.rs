//! `godwit inspect --sql duckdb|athena`: SQL that analysts run over a table's folder — a view
//! of the table's current state (its LOAD rows with the CDC rows replayed over them) and a view
//! of the raw change history. Only text is made here; `inspect.rs` gathers the facts.
//!
//! The current state is the last row per key in (`_lsn`, `_seq`) order, LOAD rows first (as
//! position -1), without keys whose last row is a `D`, without anything at or before the last
//! `T`; a column named in a `U` row's `_unchanged` takes its value from the key's latest row
//! that set it (an `I`, a LOAD row or a `U` that did not list it).

use arrow::datatypes::DataType;
use postgres_protocol::escape::escape_identifier as ident;

use crate::pg::catalog::TableName;

/// Which SQL to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Duckdb,
    Athena,
}

/// One column: its name and Arrow type (what godwit writes for it).
#[derive(Debug, Clone)]
pub struct Col {
    pub name: String,
    pub ty: DataType,
}

/// How the table's files are encoded.
#[derive(Debug, Clone)]
pub enum Encoding {
    Parquet,
    Csv {
        delimiter: char,
        null_value: String,
        header: bool,
        /// `csv` or `csv.gz`.
        ext: String,
    },
}

/// What the views of one table are built from.
#[derive(Debug, Clone)]
pub struct LakeTable {
    pub name: TableName,
    /// The table folder: an absolute local path or `s3://bucket/prefix/schema/table`, no
    /// trailing `/`.
    pub folder: String,
    pub encoding: Encoding,
    /// Table columns found in the LOAD files (Parquet: from the files; CSV: the catalog's).
    pub load_columns: Vec<Col>,
    /// Table columns found in the CDC files; `None` when there are no CDC files yet.
    pub cdc_columns: Option<Vec<Col>>,
    /// The table's columns now, in order (the current-state view's columns).
    pub columns: Vec<Col>,
    /// The key columns; `None` when unknown, empty when the table has none.
    pub key: Option<Vec<String>>,
    /// Why the key is unknown (for the comment).
    pub key_note: String,
    /// `include_op_for_full_load`.
    pub load_has_op: bool,
    /// CDC files have `Op` (not `cdc_inserts_only`).
    pub cdc_has_op: bool,
    pub timestamp_column: Option<String>,
}

/// A SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Could PostgreSQL have left this column out of an update as an unchanged TOASTed value?
/// Fixed-width types are never TOASTed.
fn toastable(t: &DataType) -> bool {
    !matches!(
        t,
        DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Date32
            | DataType::Time64(_)
            | DataType::Timestamp(_, _)
    )
}

/// The DuckDB type of an Arrow type, as a CSV of godwit can be read into it.
fn duckdb_type(t: &DataType, csv: bool) -> String {
    match t {
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Date32 => "DATE".into(),
        DataType::Time64(_) => "TIME".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        // bytea (`\x…`) and arrays (JSON) stay in the text form the CSV holds.
        DataType::Binary | DataType::List(_) if csv => "VARCHAR".into(),
        DataType::Binary => "BLOB".into(),
        DataType::List(f) => format!("{}[]", duckdb_type(f.data_type(), csv)),
        _ => "VARCHAR".into(),
    }
}

/// The Athena (Hive DDL) type of an Arrow type in a Parquet file.
fn athena_type(t: &DataType) -> String {
    match t {
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Binary => "binary".into(),
        DataType::List(f) => format!("array<{}>", athena_type(f.data_type())),
        // Athena has no time type: a Parquet TIME column is not readable there.
        _ => "string".into(),
    }
}

/// The Presto/Trino type a CSV string column is cast to in an Athena view.
fn trino_type(t: &DataType) -> Option<String> {
    Some(match t {
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Date32 => "date".into(),
        _ => return None,
    })
}

/// An Athena object name for the table: lower case letters, digits and `_` (what Athena's
/// catalog accepts), so it needs no quoting in Hive DDL or in Presto SQL.
fn athena_name(t: &TableName, suffix: &str) -> String {
    let raw = format!("{}_{}{suffix}", t.schema, t.name).to_lowercase();
    raw.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The SQL of every table, for one dialect. `preamble` lines (S3 set-up) come first.
pub fn render(tables: &[LakeTable], dialect: Dialect, s3_setup: &[String]) -> String {
    let mut out = String::new();
    match dialect {
        Dialect::Duckdb => {
            out.push_str("-- godwit: DuckDB views over the target's files (run with duckdb).\n");
            out.push_str(
                "-- <schema>.<table>: the table as it is now; <schema>.<table>_history: every row of its files.\n",
            );
            out.push_str("-- The views name the file patterns that had files now: run `godwit inspect --sql duckdb` again after new kinds of files appear.\n");
        }
        Dialect::Athena => {
            out.push_str("-- godwit: Athena tables and views over the target's files (untested against Athena itself).\n");
            out.push_str("-- Run each statement in the database you want them in.\n");
        }
    }
    for l in s3_setup {
        out.push_str(l);
        out.push('\n');
    }
    for t in tables {
        out.push('\n');
        match dialect {
            Dialect::Duckdb => duckdb_table(t, &mut out),
            Dialect::Athena => athena_table(t, &mut out),
        }
    }
    out
}

/// The key and why the current view cannot be made, if it cannot.
fn current_key(t: &LakeTable) -> Result<&[String], String> {
    match &t.key {
        None => Err(format!("the key of {} is unknown ({})", t.name, t.key_note)),
        Some(k) if k.is_empty() => Err(format!(
            "{} has no primary key: its rows cannot be matched to their changes",
            t.name
        )),
        Some(k) => match k.iter().find(|c| !t.columns.iter().any(|x| &x.name == *c)) {
            Some(c) => Err(format!(
                "key column {c} of {} is not written (exclude_columns)",
                t.name
            )),
            None => Ok(k),
        },
    }
}

/// The row source of the current-state view, with columns `Op`, `_lsn`, `_seq`,
/// `_unchanged` (a list of names) and the table's columns: LOAD rows as `I` at -1, then the
/// CDC rows. `parts` are the dialect's (load source, CDC source) expressions for a `FROM`.
fn changes_sql(
    t: &LakeTable,
    dialect: Dialect,
    load_from: &str,
    cdc_from: Option<&str>,
    value: &dyn Fn(&Col) -> String,
) -> String {
    let empty_list = match dialect {
        Dialect::Duckdb => "CAST([] AS VARCHAR[])",
        Dialect::Athena => "CAST(ARRAY[] AS array(varchar))",
    };
    let cols = |present: &[Col]| -> String {
        t.columns
            .iter()
            .map(|c| {
                if present.iter().any(|p| p.name == c.name) {
                    format!("{} AS {}", value(c), ident(&c.name))
                } else {
                    format!("NULL AS {}", ident(&c.name))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sql = format!(
        "    SELECT 'I' AS \"Op\", CAST(-1 AS BIGINT) AS \"_lsn\", CAST(-1 AS BIGINT) AS \"_seq\", {empty_list} AS \"_unchanged\", {}\n    FROM {load_from}",
        cols(&t.load_columns)
    );
    if let (Some(from), Some(cdc_cols)) = (cdc_from, &t.cdc_columns) {
        let op = if t.cdc_has_op { "\"Op\"" } else { "'I'" };
        let unchanged = match (&t.encoding, dialect) {
            (Encoding::Parquet, _) => "\"_unchanged\"".to_string(),
            (Encoding::Csv { .. }, Dialect::Duckdb) => {
                "CAST(from_json(\"_unchanged\", '[\"VARCHAR\"]') AS VARCHAR[])".into()
            }
            (Encoding::Csv { .. }, Dialect::Athena) => {
                "CAST(json_parse(\"_unchanged\") AS array(varchar))".into()
            }
        };
        let (lsn, seq) = match (&t.encoding, dialect) {
            (Encoding::Csv { .. }, Dialect::Athena) => (
                "CAST(\"_lsn\" AS bigint)".to_string(),
                "CAST(\"_seq\" AS bigint)".to_string(),
            ),
            _ => ("\"_lsn\"".into(), "\"_seq\"".into()),
        };
        sql.push_str(&format!(
            "\n    UNION ALL\n    SELECT {op} AS \"Op\", {lsn} AS \"_lsn\", {seq} AS \"_seq\", {unchanged} AS \"_unchanged\", {}\n    FROM {from}",
            cols(cdc_cols)
        ));
    }
    sql
}

/// `WITH … SELECT` of the current state over `changes`.
fn current_sql(t: &LakeTable, key: &[String], dialect: Dialect, changes: &str) -> String {
    let contains = |col: &str| match dialect {
        Dialect::Duckdb => format!(
            "coalesce(list_contains(\"_unchanged\", {}), false)",
            lit(col)
        ),
        Dialect::Athena => format!("coalesce(contains(\"_unchanged\", {}), false)", lit(col)),
    };
    let keys = key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
    let order = "\"_lsn\", \"_seq\"";
    let mut groups = Vec::new();
    let mut values = Vec::new();
    for (i, c) in t.columns.iter().enumerate() {
        let name = ident(&c.name);
        if key.contains(&c.name) {
            values.push(name);
        } else if toastable(&c.ty) {
            let g = ident(&format!("__godwit_g{i}"));
            groups.push(format!(
                ",\n        count(CASE WHEN \"Op\" <> 'U' OR NOT {} THEN 1 END) OVER (PARTITION BY {keys} ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS {g}",
                contains(&c.name)
            ));
            values.push(format!(
                "first_value({name}) OVER (PARTITION BY {keys}, {g} ORDER BY {order}) AS {name}"
            ));
        } else {
            values.push(name);
        }
    }
    let out_cols = t
        .columns
        .iter()
        .map(|c| ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH changes AS (\n{changes}\n),\n\
         last_truncate AS (\n    SELECT \"_lsn\" AS t_lsn, \"_seq\" AS t_seq FROM changes WHERE \"Op\" = 'T' ORDER BY \"_lsn\" DESC, \"_seq\" DESC LIMIT 1\n),\n\
         live AS (\n    SELECT c.* FROM changes c LEFT JOIN last_truncate t ON TRUE\n    WHERE c.\"Op\" <> 'T' AND (t.t_lsn IS NULL OR c.\"_lsn\" > t.t_lsn OR (c.\"_lsn\" = t.t_lsn AND c.\"_seq\" > t.t_seq))\n),\n\
         grouped AS (\n    SELECT *{}\n    FROM live\n),\n\
         resolved AS (\n    SELECT \"Op\", {},\n        row_number() OVER (PARTITION BY {keys} ORDER BY \"_lsn\" DESC, \"_seq\" DESC) AS \"__godwit_rn\"\n    FROM grouped\n)\n\
         SELECT {out_cols} FROM resolved WHERE \"__godwit_rn\" = 1 AND \"Op\" <> 'D'",
        groups.concat(),
        values.join(",\n        "),
    )
}

fn duckdb_table(t: &LakeTable, out: &mut String) {
    let schema = ident(&t.name.schema);
    let view = format!("{schema}.{}", ident(&t.name.name));
    let history = format!("{schema}.{}", ident(&format!("{}_history", t.name.name)));
    out.push_str(&format!(
        "-- {}\nCREATE SCHEMA IF NOT EXISTS {schema};\n",
        t.name
    ));
    let (load_from, cdc_from, history_sql) = match &t.encoding {
        Encoding::Parquet => {
            let opts = "union_by_name = true, hive_partitioning = false";
            let load = lit(&format!("{}/*LOAD*.parquet", t.folder));
            let cdc = lit(&format!("{}/**/[0-9]*.parquet", t.folder));
            let load_from = format!("read_parquet([{load}], {opts})");
            let cdc_from = t
                .cdc_columns
                .as_ref()
                .map(|_| format!("read_parquet([{cdc}], {opts})"));
            let all = if cdc_from.is_some() {
                format!("[{load}, {cdc}]")
            } else {
                format!("[{load}]")
            };
            (
                load_from,
                cdc_from,
                format!("SELECT * FROM read_parquet({all}, {opts})"),
            )
        }
        Encoding::Csv {
            delimiter,
            null_value,
            header,
            ext,
        } => {
            let mut load_cols = Vec::new();
            if t.load_has_op {
                load_cols.push(("Op".to_string(), "VARCHAR".to_string()));
            }
            if let Some(ts) = &t.timestamp_column {
                load_cols.push((ts.clone(), "TIMESTAMPTZ".into()));
            }
            let typed = |cols: &[Col]| -> Vec<(String, String)> {
                cols.iter()
                    .map(|c| (c.name.clone(), duckdb_type(&c.ty, true)))
                    .collect()
            };
            load_cols.extend(typed(&t.load_columns));
            let mut cdc_cols = Vec::new();
            if t.cdc_has_op {
                cdc_cols.push(("Op".to_string(), "VARCHAR".to_string()));
            }
            if let Some(ts) = &t.timestamp_column {
                cdc_cols.push((ts.clone(), "TIMESTAMPTZ".into()));
            }
            cdc_cols.extend(typed(t.cdc_columns.as_deref().unwrap_or(&[])));
            cdc_cols.push(("_lsn".into(), "BIGINT".into()));
            cdc_cols.push(("_seq".into(), "BIGINT".into()));
            cdc_cols.push(("_unchanged".into(), "VARCHAR".into()));
            let read = |glob: String, cols: &[(String, String)]| {
                let columns = cols
                    .iter()
                    .map(|(n, ty)| format!("{}: {}", lit(n), lit(ty)))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "read_csv({}, columns = {{{columns}}}, delim = {}, quote = '\"', escape = '\"', header = {header}, nullstr = {}, allow_quoted_nulls = false, auto_detect = false, hive_partitioning = false)",
                    lit(&glob),
                    lit(&delimiter.to_string()),
                    lit(null_value)
                )
            };
            let load_from = read(format!("{}/*LOAD*.{ext}", t.folder), &load_cols);
            let cdc_from = t
                .cdc_columns
                .as_ref()
                .map(|_| read(format!("{}/**/[0-9]*.{ext}", t.folder), &cdc_cols));
            let history = match &cdc_from {
                Some(c) => {
                    format!("SELECT * FROM {load_from}\nUNION ALL BY NAME\nSELECT * FROM {c}")
                }
                None => format!("SELECT * FROM {load_from}"),
            };
            (load_from, cdc_from, history)
        }
    };
    if t.cdc_columns.is_none() {
        out.push_str("-- no CDC files yet: the views read the full load only.\n");
    }
    out.push_str(&format!(
        "CREATE OR REPLACE VIEW {history} AS\n{history_sql};\n"
    ));
    match current_key(t) {
        Err(why) => out.push_str(&format!(
            "-- no current-state view: {why}; only {history} is made.\n"
        )),
        Ok(key) => {
            let changes = changes_sql(t, Dialect::Duckdb, &load_from, cdc_from.as_deref(), &|c| {
                ident(&c.name)
            });
            out.push_str(&format!(
                "CREATE OR REPLACE VIEW {view} AS\n{};\n",
                current_sql(t, key, Dialect::Duckdb, &changes)
            ));
        }
    }
}

/// Regular expressions on `"$path"` that pick LOAD files and CDC files out of the table folder
/// (Athena reads every file below a table's location).
const LOAD_PATH: &str = "/(SEGMENT[0-9]+_)?LOAD[0-9A-F]{8}\\.[a-z.]+$";
const CDC_PATH: &str = "/[0-9]{8}-[0-9]{9}-[0-9A-F]{16}-[0-9A-F]{16}\\.[a-z.]+$";

fn athena_table(t: &LakeTable, out: &mut String) {
    let load_table = athena_name(&t.name, "_load");
    let cdc_table = athena_name(&t.name, "_cdc");
    let view = athena_name(&t.name, "");
    let history = athena_name(&t.name, "_history");
    let location = lit(&format!("{}/", t.folder));
    out.push_str(&format!("-- {}\n", t.name));
    if !t.folder.starts_with("s3://") {
        out.push_str("-- Athena reads S3 only: this target is a local folder, so these statements show the shape but cannot run as they are.\n");
    }
    let csv = matches!(t.encoding, Encoding::Csv { .. });
    let col_type = |c: &Col| {
        if csv {
            "string".to_string()
        } else {
            athena_type(&c.ty)
        }
    };
    let mut load_cols = Vec::new();
    if t.load_has_op {
        load_cols.push(("Op".to_string(), "string".to_string()));
    }
    if let Some(ts) = &t.timestamp_column {
        load_cols.push((ts.clone(), if csv { "string" } else { "timestamp" }.into()));
    }
    load_cols.extend(t.load_columns.iter().map(|c| (c.name.clone(), col_type(c))));
    let mut cdc_cols = Vec::new();
    if t.cdc_has_op {
        cdc_cols.push(("Op".to_string(), "string".to_string()));
    }
    if let Some(ts) = &t.timestamp_column {
        cdc_cols.push((ts.clone(), if csv { "string" } else { "timestamp" }.into()));
    }
    if let Some(c) = &t.cdc_columns {
        cdc_cols.extend(c.iter().map(|c| (c.name.clone(), col_type(c))));
    }
    cdc_cols.push(("_lsn".into(), if csv { "string" } else { "bigint" }.into()));
    cdc_cols.push(("_seq".into(), if csv { "string" } else { "bigint" }.into()));
    cdc_cols.push((
        "_unchanged".into(),
        if csv { "string" } else { "array<string>" }.into(),
    ));
    // Hive DDL quotes names with backticks.
    let ddl_cols = |cols: &[(String, String)]| {
        cols.iter()
            .map(|(n, ty)| format!("  `{}` {ty}", n.replace('`', "``")))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let storage = match &t.encoding {
        Encoding::Parquet => "STORED AS PARQUET".to_string(),
        Encoding::Csv { delimiter, .. } => format!(
            "ROW FORMAT SERDE 'org.apache.hadoop.hive.serde2.OpenCSVSerde'\nWITH SERDEPROPERTIES ('separatorChar' = {}, 'quoteChar' = '\"', 'escapeChar' = '\"')\nSTORED AS TEXTFILE",
            lit(&delimiter.to_string())
        ),
    };
    let header_prop = match &t.encoding {
        Encoding::Csv { header: true, .. } => "\nTBLPROPERTIES ('skip.header.line.count' = '1')",
        _ => "",
    };
    out.push_str(&format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS `{load_table}` (\n{}\n)\n{storage}\nLOCATION {location}{header_prop};\n",
        ddl_cols(&load_cols)
    ));
    if t.cdc_columns.is_some() {
        out.push_str(&format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS `{cdc_table}` (\n{}\n)\n{storage}\nLOCATION {location}{header_prop};\n",
            ddl_cols(&cdc_cols)
        ));
    } else {
        out.push_str("-- no CDC files yet: the views read the full load only.\n");
    }
    let load_from = format!(
        "{load_table} WHERE regexp_like(\"$path\", {})",
        lit(LOAD_PATH)
    );
    let cdc_from = t.cdc_columns.as_ref().map(|_| {
        format!(
            "{cdc_table} WHERE regexp_like(\"$path\", {})",
            lit(CDC_PATH)
        )
    });
    let null_value = match &t.encoding {
        Encoding::Csv { null_value, .. } => null_value.clone(),
        Encoding::Parquet => String::new(),
    };
    // CSV columns are strings: the value (NULL for the null marker) cast to its type where
    // Presto can read PostgreSQL's text form; otherwise the text itself.
    let value = |c: &Col| -> String {
        let name = ident(&c.name);
        if !csv {
            return name;
        }
        let v = format!("NULLIF({name}, {})", lit(&null_value));
        match trino_type(&c.ty) {
            Some(_) if matches!(c.ty, DataType::Boolean) => {
                format!("CASE WHEN {v} IS NULL THEN NULL ELSE {v} IN ('t', 'true') END")
            }
            Some(ty) => format!("CAST({v} AS {ty})"),
            None => v,
        }
    };
    let history_sql = match &cdc_from {
        Some(c) => {
            let all: Vec<String> = cdc_cols.iter().map(|(n, _)| ident(n)).collect();
            let load_sel: Vec<String> = cdc_cols
                .iter()
                .map(|(n, _)| {
                    if load_cols.iter().any(|(l, _)| l == n) {
                        ident(n)
                    } else {
                        format!("NULL AS {}", ident(n))
                    }
                })
                .collect();
            format!(
                "SELECT {} FROM {load_from}\nUNION ALL\nSELECT {} FROM {c}",
                load_sel.join(", "),
                all.join(", ")
            )
        }
        None => format!("SELECT * FROM {load_from}"),
    };
    out.push_str(&format!(
        "CREATE OR REPLACE VIEW {history} AS\n{history_sql};\n"
    ));
    match current_key(t) {
        Err(why) => out.push_str(&format!(
            "-- no current-state view: {why}; only {history} is made.\n"
        )),
        Ok(key) => {
            let changes = changes_sql(t, Dialect::Athena, &load_from, cdc_from.as_deref(), &value);
            out.push_str(&format!(
                "CREATE OR REPLACE VIEW {view} AS\n{};\n",
                current_sql(t, key, Dialect::Athena, &changes)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LakeTable {
        let col = |n: &str, ty| Col { name: n.into(), ty };
        let cols = vec![
            col("id", DataType::Int64),
            col("my \"note\"", DataType::Utf8),
        ];
        LakeTable {
            name: TableName::new("My Schema", "t.x"),
            folder: "/tmp/out/My Schema/t.x".into(),
            encoding: Encoding::Parquet,
            load_columns: cols.clone(),
            cdc_columns: Some(cols.clone()),
            columns: cols,
            key: Some(vec!["id".into()]),
            key_note: String::new(),
            load_has_op: false,
            cdc_has_op: true,
            timestamp_column: None,
        }
    }

    #[test]
    fn names_are_quoted_and_toastable_columns_carried() {
        let sql = render(&[table()], Dialect::Duckdb, &[]);
        assert!(
            sql.contains("CREATE OR REPLACE VIEW \"My Schema\".\"t.x\" AS"),
            "{sql}"
        );
        assert!(sql.contains("\"My Schema\".\"t.x_history\""), "{sql}");
        assert!(
            sql.contains("list_contains(\"_unchanged\", 'my \"note\"')"),
            "{sql}"
        );
        assert!(sql.contains("first_value(\"my \"\"note\"\"\")"), "{sql}");
        // The key is never carried over.
        assert!(!sql.contains("first_value(\"id\")"), "{sql}");
    }

    #[test]
    fn a_keyless_table_gets_the_history_only() {
        let mut t = table();
        t.key = Some(Vec::new());
        let sql = render(&[t.clone()], Dialect::Duckdb, &[]);
        assert!(sql.contains("has no primary key"), "{sql}");
        assert_eq!(sql.matches("CREATE OR REPLACE VIEW").count(), 1, "{sql}");
        t.key = None;
        t.key_note = "the source is not reachable".into();
        let sql = render(&[t], Dialect::Athena, &[]);
        assert!(
            sql.contains("is unknown (the source is not reachable)"),
            "{sql}"
        );
        assert!(sql.contains("VIEW my_schema_t_x_history AS"), "{sql}");
        assert!(
            sql.contains("CREATE EXTERNAL TABLE IF NOT EXISTS `my_schema_t_x_cdc`"),
            "{sql}"
        );
    }
}
