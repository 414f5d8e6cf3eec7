//! The same rows read by the full load (binary COPY) and by logical decoding (pgoutput text,
//! read here with `pg_logical_slot_peek_binary_changes`) give identical Arrow values, for every
//! case of the type suite.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use common::type_cases::{self, column_by_id};
use common::*;
use godwit::pg::catalog;
use godwit::pg::replication::pgoutput::{self, Message, Value};
use godwit::pg::types::{self, ColumnBuilder, NumericAs, PgType};

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

    // Every insert the slot holds, decoded into per-table Arrow builders.
    let rows = db
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('godwit_cdc_decode', NULL, NULL,
                 'proto_version', '1', 'publication_names', 'every_table')",
            &[],
        )
        .await
        .unwrap();
    let mut relations: HashMap<u32, String> = HashMap::new();
    let mut builders: HashMap<String, Vec<ColumnBuilder>> = HashMap::new();
    let mut inserts = 0;
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
                // A value the column cannot hold skips the row, as in the full load.
                let mut probe: Vec<ColumnBuilder> =
                    cols.iter().map(|(_, t)| ColumnBuilder::new(t, 1)).collect();
                let ok = new.iter().zip(probe.iter_mut()).all(|(v, b)| match v {
                    Value::Text(t) => b.append_text(t).is_ok(),
                    _ => true,
                });
                if !ok {
                    continue;
                }
                let target = builders.entry(table.clone()).or_insert_with(|| {
                    cols.iter().map(|(_, t)| ColumnBuilder::new(t, 8)).collect()
                });
                for (v, b) in new.iter().zip(target.iter_mut()) {
                    match v {
                        Value::Null => b.append_null(),
                        Value::Text(t) => b.append_text(t).unwrap(),
                        other => panic!("{table}: unexpected value {other:?}"),
                    }
                }
            }
            _ => {}
        }
    }
    assert!(inserts > 100, "the slot held {inserts} inserts");

    let mut failures = Vec::new();
    for case in type_cases::cases() {
        let cols = &planned[case.table];
        let schema = Arc::new(Schema::new(
            cols.iter()
                .map(|(n, t)| t.arrow_field(n))
                .collect::<Vec<_>>(),
        ));
        let arrays = builders
            .get_mut(case.table)
            .unwrap_or_else(|| panic!("no inserts decoded for {}", case.table))
            .iter_mut()
            .map(|b| b.finish())
            .collect();
        let from_cdc = RecordBatch::try_new(schema, arrays).unwrap();
        let from_load = read_table(&work.out(), "public", case.table);
        let (a, b) = (column_by_id(&from_load), column_by_id(&[from_cdc]));
        if a != b {
            failures.push(format!(
                "{} ({}):\n  full load {a:?}\n  pgoutput  {b:?}",
                case.table, case.ddl_type
            ));
        }
    }
    db.batch_execute("SELECT pg_drop_replication_slot('godwit_cdc_decode')")
        .await
        .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
