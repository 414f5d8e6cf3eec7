//! `godwit inspect PIPELINE [--table schema.table] [--sql duckdb|athena]`: what landed in the
//! target — per table its full-load files and its CDC files apart, each with rows, bytes,
//! schema and a few sample rows, read back from the files; or, with `--sql`, views over them
//! (made by `lake_sql.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::util::pretty::pretty_format_batches;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::lake_sql::{self, Col, Dialect, Encoding, LakeTable};
use crate::config::{Format, Pipeline, TargetUrl};
use crate::error::Error;
use crate::sink::files::layout;
use crate::sink::files::{ObjectInfo, ObjectStore};
use crate::task::target_store;

/// One table folder's objects, by kind.
#[derive(Default)]
struct Folder {
    /// `<schema>/<table>/` as the layout writes it.
    prefix: String,
    load: Vec<ObjectInfo>,
    cdc: Vec<ObjectInfo>,
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

pub async fn execute(
    path: &str,
    table: Option<&str>,
    sample_rows: usize,
    sql: Option<Dialect>,
) -> Result<i32, Error> {
    let p = super::load_pipeline(path).await?;
    let store = target_store(&p).await?;
    let objects = store
        .list("")
        .await
        .map_err(|e| Error::Runtime(format!("listing {}: {e}", store.describe())))?;
    let mut by_table: BTreeMap<String, Folder> = BTreeMap::new();
    for o in objects {
        let mut parts = o.key.splitn(3, '/');
        let (Some(schema), Some(name), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let known = [".parquet", ".csv", ".csv.gz"];
        if schema == "_godwit"
            || !known.iter().any(|x| o.key.ends_with(x))
            || !layout::in_table_folder(rest)
        {
            continue;
        }
        let folder = by_table.entry(format!("{schema}.{name}")).or_default();
        folder.prefix = format!("{schema}/{name}/");
        if layout::is_load_file(file_name(&o.key)) {
            folder.load.push(o);
        } else if layout::parse_cdc_file(file_name(&o.key)).is_some() {
            folder.cdc.push(o);
        }
    }
    for f in by_table.values_mut() {
        // CDC files in the order they were written (the name starts with the time), whatever
        // date folder holds them.
        f.cdc
            .sort_by(|a, b| file_name(&a.key).cmp(file_name(&b.key)));
    }
    if let Some(t) = table {
        by_table.retain(|k, _| k == t);
        if by_table.is_empty() && p.cache.is_none() {
            outln!("nothing landed for {t} in {}", store.describe())?;
            return Ok(0);
        }
    }
    if let Some(dialect) = sql {
        return print_sql(&p, store.as_ref(), &by_table, dialect).await;
    }
    outln!("target {}", store.describe())?;
    for (name, folder) in &by_table {
        let load = read_part(store.as_ref(), &folder.load).await?;
        let cdc = read_part(store.as_ref(), &folder.cdc).await?;
        outln!(
            "\n{name}: {} full-load file{} ({} row{}), {} CDC file{} ({} row{}), {} bytes",
            folder.load.len(),
            plural(folder.load.len()),
            load.rows,
            plural(load.rows as usize),
            folder.cdc.len(),
            plural(folder.cdc.len()),
            cdc.rows,
            plural(cdc.rows as usize),
            load.bytes + cdc.bytes
        )?;
        show_part("full load", &load, sample_rows)?;
        if !folder.cdc.is_empty() {
            show_part("CDC", &cdc, sample_rows)?;
        }
    }
    if let Some(cache) = &p.cache {
        outln!()?;
        for line in crate::sink::redis::inspect::describe(cache, table, sample_rows).await? {
            outln!("{line}")?;
        }
    }
    Ok(0)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The files of one part (full load or CDC) of a table, read back.
#[derive(Default)]
struct Part {
    lines: Vec<String>,
    rows: i64,
    bytes: u64,
    /// Parquet: the schema and the first sample rows (from files of that schema, in order).
    schema: Option<SchemaRef>,
    sample: Vec<RecordBatch>,
    /// CSV: the first lines of text.
    csv_lines: Vec<String>,
    /// Parquet files whose schema differs from the first one's.
    other_schemas: usize,
}

async fn read_part(store: &dyn ObjectStore, objects: &[ObjectInfo]) -> Result<Part, Error> {
    let mut part = Part::default();
    for o in objects {
        part.bytes += o.size;
        let data = store
            .get(&o.key)
            .await
            .map_err(|e| Error::Runtime(format!("reading {}: {e}", o.key)))?;
        if !o.key.ends_with(".parquet") {
            let text = csv_text(&o.key, &data)?;
            // Rows, not lines: a quoted value may hold line breaks.
            let rows = text.matches('\n').count() as i64;
            part.rows += rows;
            part.lines
                .push(format!("    {}  ~{} lines  {} bytes", o.key, rows, o.size));
            let room = 20usize.saturating_sub(part.csv_lines.len());
            part.csv_lines.extend(text.lines().take(room).map(|l| {
                match l.char_indices().nth(4 * SHOWN_CHARS) {
                    Some((at, _)) => format!("{}…", &l[..at]),
                    None => l.to_string(),
                }
            }));
            continue;
        }
        let reader = SerializedFileReader::new(data.clone())
            .map_err(|e| Error::Runtime(format!("{}: not a Parquet file: {e}", o.key)))?;
        let rows = reader.metadata().file_metadata().num_rows();
        part.rows += rows;
        part.lines
            .push(format!("    {}  {} rows  {} bytes", o.key, rows, o.size));
        let builder = ParquetRecordBatchReaderBuilder::try_new(data)
            .map_err(|e| Error::Runtime(format!("{}: {e}", o.key)))?;
        let schema = builder.schema().clone();
        match &part.schema {
            None => part.schema = Some(schema),
            Some(s) if s.fields() != schema.fields() => {
                part.other_schemas += 1;
                continue;
            }
            Some(_) => {}
        }
        let have: usize = part.sample.iter().map(|b| b.num_rows()).sum();
        if have >= 20 || rows == 0 {
            continue;
        }
        let reader = builder
            .with_batch_size(20)
            .build()
            .map_err(|e| Error::Runtime(format!("{}: {e}", o.key)))?;
        if let Some(batch) = reader.into_iter().next() {
            let batch = batch.map_err(|e| Error::Runtime(format!("{}: {e}", o.key)))?;
            part.sample.push(batch);
        }
    }
    Ok(part)
}

fn show_part(what: &str, part: &Part, sample_rows: usize) -> Result<(), Error> {
    outln!("  {what} files:")?;
    for l in &part.lines {
        outln!("{l}")?;
    }
    if let Some(schema) = &part.schema {
        outln!("  {what} schema:")?;
        for f in schema.fields() {
            outln!("    {}: {}", f.name(), f.data_type())?;
        }
        if part.other_schemas > 0 {
            outln!(
                "    ({} file{} with another schema: columns were added or dropped)",
                part.other_schemas,
                plural(part.other_schemas)
            )?;
        }
    }
    if !part.csv_lines.is_empty() {
        outln!("  {what} sample:")?;
        for line in part.csv_lines.iter().take(sample_rows) {
            outln!("    {line}")?;
        }
    }
    if sample_rows > 0 && !part.sample.is_empty() {
        let mut left = sample_rows;
        let mut batches = Vec::new();
        for b in &part.sample {
            if left == 0 {
                break;
            }
            let n = b.num_rows().min(left);
            batches.push(b.slice(0, n));
            left -= n;
        }
        let text = batches
            .iter()
            .map(displayable)
            .collect::<Result<Vec<_>, _>>()
            .and_then(|b| pretty_format_batches(&b));
        match text {
            Ok(text) => outln!("  {what} sample:\n{text}")?,
            Err(e) => outln!("  {what} sample: cannot be shown: {e}")?,
        }
    }
    Ok(())
}

/// Longest text shown of one sample value.
const SHOWN_CHARS: usize = 60;

/// The batch with `UTC` timestamps given as the `+00:00` offset, which Arrow's pretty printer
/// can show without a time-zone database, and long texts cut to [`SHOWN_CHARS`] (with `…`).
fn displayable(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, Some(_)) => {
                let t = DataType::Timestamp(*unit, Some("+00:00".into()));
                columns.push(arrow::compute::cast(column, &t)?);
                fields.push(Field::new(field.name(), t, true));
            }
            DataType::Utf8 => {
                let cut: arrow::array::StringArray = column
                    .as_string::<i32>()
                    .iter()
                    .map(|v| {
                        v.map(|v| match v.char_indices().nth(SHOWN_CHARS) {
                            Some((at, _)) => format!("{}…", &v[..at]),
                            None => v.to_string(),
                        })
                    })
                    .collect();
                columns.push(Arc::new(cut));
                fields.push(field.as_ref().clone());
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// A CSV object's text (gunzipped for `.csv.gz`).
fn csv_text(key: &str, data: &bytes::Bytes) -> Result<String, Error> {
    use std::io::Read;
    let mut text = String::new();
    let result = if key.ends_with(".gz") {
        flate2::read::GzDecoder::new(&data[..]).read_to_string(&mut text)
    } else {
        (&data[..]).read_to_string(&mut text)
    };
    result.map_err(|e| Error::Runtime(format!("{key}: {e}")))?;
    Ok(text)
}

// ------------------------------------------------------------------------- --sql

/// What the source's catalog says about a table: its written columns and its key.
struct Known {
    columns: Vec<Col>,
    key: Vec<String>,
}

/// The selected tables' columns and keys by table folder (`<schema>/<table>/`), or why they
/// cannot be known (the source is not reachable).
async fn catalog(
    p: &Pipeline,
) -> Result<BTreeMap<String, (crate::pg::catalog::TableName, Known)>, String> {
    use crate::pg::catalog;
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        crate::task::connect_source(p),
    );
    let client = match connect.await {
        Err(_) => return Err("the source did not answer within 10 s".into()),
        Ok(Err(e)) => return Err(format!("the source cannot be read: {e}")),
        Ok(Ok((_, client))) => client,
    };
    let read = |e: tokio_postgres::Error| format!("the source's catalog cannot be read: {e}");
    let types = catalog::load_types(&client).await.map_err(read)?;
    let tables = catalog::discover(&client, &|s, t| p.tables.selects(s, t))
        .await
        .map_err(read)?;
    let mut known = BTreeMap::new();
    for t in tables {
        let name = t.name.clone();
        let Ok(plan) = crate::task::plan::plan_table(p, t, &types) else {
            continue;
        };
        let columns = plan
            .copy
            .columns
            .iter()
            .map(|c| Col {
                name: c.name.clone(),
                ty: c.ty.arrow_type(),
            })
            .collect();
        known.insert(
            layout::table_prefix(&name),
            (
                name,
                Known {
                    columns,
                    key: plan.table.key.clone(),
                },
            ),
        );
    }
    Ok(known)
}

/// Table columns of a file schema (without `Op`, the timestamp column and `_lsn`, `_seq`,
/// `_unchanged`, which godwit adds).
async fn file_columns(
    store: &dyn ObjectStore,
    object: &ObjectInfo,
    p: &Pipeline,
    cdc: bool,
) -> Result<Vec<Col>, Error> {
    let data = store
        .get(&object.key)
        .await
        .map_err(|e| Error::Runtime(format!("reading {}: {e}", object.key)))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| Error::Runtime(format!("{}: not a Parquet file: {e}", object.key)))?;
    let fields = builder.schema().fields().clone();
    let mut fields: Vec<_> = fields.iter().collect();
    let has_op = if cdc {
        !p.target.cdc_inserts_only
    } else {
        p.target.include_op_for_full_load
    };
    let skip_front = has_op as usize + p.target.timestamp_column.is_some() as usize;
    let skip_back = if cdc { 3 } else { 0 };
    if fields.len() < skip_front + skip_back {
        return Ok(Vec::new());
    }
    fields.drain(..skip_front);
    fields.truncate(fields.len() - skip_back);
    Ok(fields
        .into_iter()
        .map(|f| Col {
            name: f.name().clone(),
            ty: f.data_type().clone(),
        })
        .collect())
}

/// The table folder as DuckDB and Athena name it.
fn folder_url(p: &Pipeline, prefix: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    match &p.target.url {
        TargetUrl::File(dir) => {
            let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| {
                std::env::current_dir()
                    .map(|d| d.join(dir))
                    .unwrap_or(dir.clone())
            });
            format!("{}/{prefix}", abs.display())
        }
        TargetUrl::S3 {
            bucket,
            prefix: base,
        } if base.is_empty() => {
            format!("s3://{bucket}/{prefix}")
        }
        TargetUrl::S3 {
            bucket,
            prefix: base,
        } => {
            format!("s3://{bucket}/{}/{prefix}", base.trim_end_matches('/'))
        }
        TargetUrl::None => prefix.to_string(),
    }
}

async fn print_sql(
    p: &Pipeline,
    store: &dyn ObjectStore,
    by_table: &BTreeMap<String, Folder>,
    dialect: Dialect,
) -> Result<i32, Error> {
    let known = catalog(p).await;
    let mut tables = Vec::new();
    let mut skipped = Vec::new();
    for (shown, folder) in by_table {
        let entry = known.as_ref().ok().and_then(|k| k.get(&folder.prefix));
        let (name, key, key_note) = match (&known, entry) {
            (_, Some((name, k))) => (name.clone(), Some(k.key.clone()), String::new()),
            (Err(why), None) => (fallback_name(&folder.prefix), None, why.clone()),
            (Ok(_), None) => (
                fallback_name(&folder.prefix),
                None,
                "the pipeline does not select it now".into(),
            ),
        };
        let csv = p.target.format == Format::Csv;
        let encoding = if csv {
            Encoding::Csv {
                delimiter: p.target.csv_delimiter,
                null_value: p.target.csv_null_value.clone(),
                header: p.target.csv_header,
                ext: if p.target.compression == crate::config::Compression::Gzip {
                    "csv.gz".into()
                } else {
                    "csv".into()
                },
            }
        } else {
            Encoding::Parquet
        };
        let (load_columns, cdc_columns, columns) = if csv {
            // CSV files have no types (and by default no header): the catalog names them.
            let Some((_, k)) = entry else {
                skipped.push(format!(
                    "-- {shown}: no views: CSV files need the column names and types from the source, and {}",
                    match &known {
                        Err(why) => why.clone(),
                        Ok(_) => "the pipeline does not select it now".into(),
                    }
                ));
                continue;
            };
            let cdc = (!folder.cdc.is_empty()).then(|| k.columns.clone());
            (k.columns.clone(), cdc, k.columns.clone())
        } else {
            let Some(first_load) = folder.load.first() else {
                skipped.push(format!("-- {shown}: no views: it has no full-load file"));
                continue;
            };
            let load = file_columns(store, first_load, p, false).await?;
            let cdc = match folder.cdc.last() {
                Some(newest) => Some(file_columns(store, newest, p, true).await?),
                None => None,
            };
            let columns = match entry {
                Some((_, k)) => k.columns.clone(),
                None => {
                    let mut all = load.clone();
                    for c in cdc.iter().flatten() {
                        if !all.iter().any(|a| a.name == c.name) {
                            all.push(c.clone());
                        }
                    }
                    all
                }
            };
            (load, cdc, columns)
        };
        if folder.load.is_empty() {
            skipped.push(format!("-- {shown}: no views: it has no full-load file"));
            continue;
        }
        tables.push(LakeTable {
            name,
            folder: folder_url(p, &folder.prefix),
            encoding,
            load_columns,
            cdc_columns,
            columns,
            key,
            key_note,
            load_has_op: p.target.include_op_for_full_load,
            cdc_has_op: !p.target.cdc_inserts_only,
            timestamp_column: p.target.timestamp_column.clone(),
        });
    }
    let setup = s3_setup(p, dialect);
    out!("{}", lake_sql::render(&tables, dialect, &setup))?;
    for s in skipped {
        outln!("{s}")?;
    }
    Ok(0)
}

/// A table's name from its folder (the layout's escapes undone).
fn fallback_name(prefix: &str) -> crate::pg::catalog::TableName {
    let unescape = |s: &str| {
        let s = s
            .strip_prefix("%2E")
            .map(|r| format!(".{r}"))
            .unwrap_or(s.into());
        let s = if s == "%5Fgodwit" {
            "_godwit".into()
        } else {
            s
        };
        s.replace("%2F", "/").replace("%25", "%")
    };
    let mut parts = prefix.trim_end_matches('/').splitn(2, '/');
    let schema = parts.next().unwrap_or_default();
    let table = parts.next().unwrap_or_default();
    crate::pg::catalog::TableName::new(unescape(schema), unescape(table))
}

/// DuckDB statements that let it read the S3 target (httpfs and a secret from the usual AWS
/// credential chain, with the target's endpoint).
fn s3_setup(p: &Pipeline, dialect: Dialect) -> Vec<String> {
    if dialect != Dialect::Duckdb || !matches!(p.target.url, TargetUrl::S3 { .. }) {
        return Vec::new();
    }
    let mut lines = vec!["INSTALL httpfs;".to_string(), "LOAD httpfs;".to_string()];
    let endpoint = p.target.endpoint.clone().or_else(|| {
        std::env::var("AWS_ENDPOINT_URL")
            .ok()
            .filter(|e| !e.is_empty())
    });
    let mut secret =
        "CREATE OR REPLACE SECRET godwit_s3 (TYPE s3, PROVIDER credential_chain".to_string();
    if let Some(e) = endpoint {
        let ssl = !e.starts_with("http://");
        let host = e
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        secret.push_str(&format!(
            ", ENDPOINT '{}', URL_STYLE 'path', USE_SSL {ssl}",
            host.replace('\'', "''")
        ));
    }
    secret.push_str(");");
    lines.push(secret);
    lines
}
