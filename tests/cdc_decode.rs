//! The same rows read by the full load (binary COPY) and by logical decoding (pgoutput text,
//! read here with `pg_logical_slot_peek_binary_changes`) give identical Arrow values, for every
//! case of the type suite. The pgoutput rows go through the production CDC row builder
//! (`batch::changes::Builder`), bad rows among good ones included.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::type_cases::{self, column_by_id};
use common::*;
use godwit::batch::changes::{Builder, Layout, Op, Row};
use godwit::pg::catalog;
use godwit::pg::replication::pgoutput::{self, Message, Value};
use godwit::pg::types::{self, NumericAs, PgType};
use godwit::state::Mark;

#[tokio::test]
async fn full_load_and_pgoutput_give_identical_values() {
    let pg = pg();
    let db = pg.fresh_db("godwit_cdc_decode").await;
    // pgoutput's values are produced by the decoding session's output functions.
    for sql in [
        "SET bytea_output = 'hex'",
        "SET lc_monetary = 'C'",
        "CREATE PUBLICATION every_table FOR ALL TABLES",
        "SELECT pg_create_logical_replication_slot('godwit_cdc_decode', 'pgoutput')",
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    type_cases::seed(&db).await;

    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        "name = \"decode\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[target]\nurl = \"file://{{out}}\"\n{}",
        pg.url("godwit_cdc_decode"),
        type_cases::PIPELINE_EXTRA
    ));
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));

    // Column types as godwit plans them.
    let types_ = catalog::load_types(&db).await.unwrap();
    let tables = catalog::discover(&db, &|s, _| s == "public").await.unwrap();
    let mut planned: HashMap<String, Vec<(String, PgType)>> = HashMap::new();
    for t in &tables {
        let numeric = if t.name.name == "t_nan_text" {
            NumericAs::Text
        } else {
            NumericAs::Decimal
        };
        planned.insert(
            t.name.name.clone(),
            t.columns
                .iter()
                .map(|c| {
                    let ty =
                        types::resolve(c.type_oid, c.typmod, c.ndims, numeric, &|o| types_.get(o));
                    (c.name.clone(), ty)
                })
                .collect(),
        );
    }

    // The private cluster commits asynchronously, and the slot shows only flushed WAL: wait
    // until the WAL is flushed past every insert. (A synchronous commit of a transaction that
    // wrote nothing, as `SELECT txid_current()`, does not flush: CI once saw none of the last
    // tables' rows.)
    wait_wal_flushed(&db).await;
    // Every insert the slot holds, appended by the CDC row builder of its table.
    let rows = db
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('godwit_cdc_decode', NULL, NULL,
                 'proto_version', '1', 'publication_names', 'every_table')",
            &[],
        )
        .await
        .unwrap();
    let mut relations: HashMap<u32, String> = HashMap::new();
    let mut builders: HashMap<String, Builder> = HashMap::new();
    let mut inserts = 0;
    let mut skipped: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        let data: Vec<u8> = row.get(0);
        match pgoutput::decode(&data).unwrap() {
            Message::Relation(r) => {
                relations.insert(r.oid, r.name.clone());
            }
            Message::Insert { relation, new } => {
                inserts += 1;
                let table = &relations[&relation];
                let cols = &planned[table];
                let builder = builders.entry(table.clone()).or_insert_with(|| {
                    let layout = Layout::new(
                        0,
                        cols.clone(),
                        (0..cols.len()).map(Some).collect(),
                        false,
                        None,
                    );
                    Builder::new(Arc::new(layout.with_key(&["id".to_string()])), 8)
                });
                assert!(
                    new.iter()
                        .all(|v| matches!(v, Value::Null | Value::Text(_))),
                    "{table}: unexpected values {new:?}"
                );
                let row = Row {
                    op: Op::Insert,
                    commit_time: 0,
                    mark: Mark {
                        lsn: 0,
                        seq: inserts,
                    },
                    values: &new,
                    old: None,
                };
                // A value the column cannot hold skips the row, as in the full load.
                if builder.append(&row).is_err() {
                    *skipped.entry(table.clone()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    assert!(inserts > 100, "the slot held {inserts} inserts");
    // The bad row between two good ones: a NaN in a decimal (also inside a 1-D and a 2-D
    // array, after good elements), a 2-D value in a 1-D column.
    let bad_row_tables = [
        ("t_nan_decimal", "numeric(10,2)"),
        ("t_nan_array", "numeric(10,2)[]"),
        ("t_nan_grid", "numeric(10,2)[][]"),
        ("t_arr_shape", "int[]"),
    ];
    for (table, _) in bad_row_tables {
        assert_eq!(skipped.get(table), Some(&1), "{table}: {skipped:?}");
    }
    assert_eq!(skipped.values().sum::<usize>(), 4, "{skipped:?}");

    let mut failures = Vec::new();
    let names = type_cases::cases()
        .into_iter()
        .map(|c| (c.table, c.ddl_type));
    for (table, ddl_type) in names.chain(bad_row_tables) {
        let from_cdc = builders
            .get_mut(table)
            .unwrap_or_else(|| panic!("no inserts decoded for {table}"))
            .finish()
            .unwrap();
        // The table's own columns (the CDC ones after them are not part of the load).
        let from_cdc = from_cdc.project(&[0, 1]).unwrap();
        let from_load = read_table(&work.out(), "public", table);
        let (a, b) = (column_by_id(&from_load), column_by_id(&[from_cdc]));
        if a != b {
            failures.push(format!(
                "{table} ({ddl_type}):\n  full load {a:?}\n  pgoutput  {b:?}"
            ));
        }
    }
    db.batch_execute("SELECT pg_drop_replication_slot('godwit_cdc_decode')")
        .await
        .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
