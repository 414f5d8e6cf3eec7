//! SPEC §4's replay rule, as a user would apply it: the full-load rows of a table, then its CDC
//! rows in (`_lsn`, `_seq`) order — `I` adds, `U` replaces (a column listed in `_unchanged`
//! keeps its value), `D` removes, `T` clears. Values are compared as Arrow renders them, so
//! types must match too. The replay panics where the files contradict themselves: an insert
//! of a key that exists (overlap), an update or delete of a missing row (gap), a change seen
//! twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::{parquet_files, read_parquet};

/// One row: column name → rendered value ("NULL" for null).
pub type RowMap = BTreeMap<String, String>;

/// Rendered rows of some batches.
pub fn render(batches: &[RecordBatch]) -> Vec<RowMap> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        // Zone names need chrono-tz to render; every zone here is UTC, so drop it.
        let columns: Vec<_> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(unit, Some(_)) => {
                    cast(c, &DataType::Timestamp(*unit, None)).unwrap()
                }
                _ => c.clone(),
            })
            .collect();
        let fmts: Vec<_> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                schema
                    .fields()
                    .iter()
                    .zip(&fmts)
                    .map(|(f, fmt)| (f.name().clone(), fmt.value(i).to_string()))
                    .collect(),
            );
        }
    }
    out
}

/// The full-load files (top level, `LOAD*` / `SEGMENT*`) and the CDC files (any depth) of a
/// table folder.
pub fn table_files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut load = Vec::new();
    let mut cdc = Vec::new();
    for f in parquet_files(dir) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("LOAD") || name.starts_with("SEGMENT") {
            assert_eq!(
                f.parent(),
                Some(dir),
                "load file in a subfolder: {}",
                f.display()
            );
            load.push(f);
        } else {
            cdc.push(f);
        }
    }
    (load, cdc)
}

/// The CDC rows of a table folder, sorted by (`_lsn`, `_seq`); panics on a pair seen twice.
pub fn cdc_rows(dir: &Path) -> Vec<(i64, i64, String, RowMap, Vec<String>)> {
    let (_, files) = table_files(dir);
    let mut rows = Vec::new();
    for f in files {
        for b in read_parquet(&f) {
            let lsn = b
                .column_by_name("_lsn")
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone();
            let seq = b
                .column_by_name("_seq")
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone();
            let unchanged = b
                .column_by_name("_unchanged")
                .unwrap()
                .as_list::<i32>()
                .clone();
            let rendered = render(std::slice::from_ref(&b));
            for (i, mut r) in rendered.into_iter().enumerate() {
                let op = r.remove("Op").unwrap_or_else(|| "I".into());
                r.remove("_lsn");
                r.remove("_seq");
                r.remove("_unchanged");
                let list = unchanged.value(i);
                let names: Vec<String> = list
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap().to_string())
                    .collect();
                rows.push((lsn.value(i), seq.value(i), op, r, names));
            }
        }
    }
    rows.sort_by_key(|r| (r.0, r.1));
    let mut seen = BTreeSet::new();
    for r in &rows {
        assert!(
            seen.insert((r.0, r.1)),
            "change ({}, {}) appears twice",
            r.0,
            r.1
        );
    }
    rows
}

/// Replays a keyed table (`key` columns) and returns its rows by key.
pub fn replay_keyed(dir: &Path, key: &[&str]) -> BTreeMap<String, RowMap> {
    let key_of = |r: &RowMap| {
        key.iter()
            .map(|k| r.get(*k).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("|")
    };
    let (load, _) = table_files(dir);
    let mut table = BTreeMap::new();
    for f in &load {
        for r in render(&read_parquet(f)) {
            assert!(
                table.insert(key_of(&r), r).is_none(),
                "duplicate key in the full load"
            );
        }
    }
    for (lsn, seq, op, row, unchanged) in cdc_rows(dir) {
        let k = key_of(&row);
        match op.as_str() {
            "I" => {
                let prev = table.insert(k.clone(), row);
                assert!(
                    prev.is_none(),
                    "insert of existing key {k} at ({lsn}, {seq}): overlap"
                );
            }
            "U" => {
                let Some(old) = table.get(&k) else {
                    panic!("update of missing key {k} at ({lsn}, {seq}): gap");
                };
                let mut new = row;
                for c in &unchanged {
                    new.insert(c.clone(), old.get(c).cloned().unwrap_or("NULL".into()));
                }
                table.insert(k, new);
            }
            "D" => {
                assert!(
                    table.remove(&k).is_some(),
                    "delete of missing key {k} at ({lsn}, {seq}): gap"
                );
            }
            "T" => table.clear(),
            other => panic!("unknown Op {other}"),
        }
    }
    table
}

/// Replays a table without a key (REPLICA IDENTITY FULL): rows are a multiset of values.
pub fn replay_keyless(dir: &Path) -> Vec<RowMap> {
    let (load, _) = table_files(dir);
    let mut rows: Vec<RowMap> = load.iter().flat_map(|f| render(&read_parquet(f))).collect();
    for (lsn, seq, op, row, _) in cdc_rows(dir) {
        match op.as_str() {
            "I" => rows.push(row),
            "D" => {
                let at = rows.iter().position(|r| r == &row).unwrap_or_else(|| {
                    panic!("delete of a missing row at ({lsn}, {seq}): {row:?}")
                });
                rows.remove(at);
            }
            "T" => rows.clear(),
            other => panic!("Op {other} in a keyless table"),
        }
    }
    rows.sort();
    rows
}

/// Keeps only `columns` of each row (a replayed row may carry a column dropped since, or
/// miss one added since — rendered NULL).
pub fn project(row: &RowMap, columns: &[String]) -> RowMap {
    columns
        .iter()
        .map(|c| (c.clone(), row.get(c).cloned().unwrap_or("NULL".into())))
        .collect()
}
