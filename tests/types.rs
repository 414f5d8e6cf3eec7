//! Every row of the SPEC §4 type table, with its edge values, loaded by the real binary from
//! the real PostgreSQL, read back from Parquet and compared value by value with what
//! PostgreSQL returns for the same rows.

mod common;

use common::type_cases::{self, column_by_id};
use common::*;
use serde_json::Value;

#[tokio::test]
async fn every_type_round_trips_value_by_value() {
    let pg = pg();
    let db = pg.fresh_db("godwit_types").await;
    type_cases::seed(&db).await;

    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        r#"
name = "types"
mode = "full-load"
[source]
url = "{}"
[tables]
include = ["public.*"]
[target]
url = "file://{{out}}"
{}"#,
        pg.url("godwit_types"),
        type_cases::PIPELINE_EXTRA
    ));
    let out = work.godwit(&["run", pipeline.to_str().unwrap()], &[]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");

    let out_dir = work.out();
    let failures = type_cases::compare(&db, &|t| read_table(&out_dir, "public", t)).await;
    let ids = |table: &str| -> Vec<i32> {
        column_by_id(&read_table(&work.out(), "public", table))
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    };
    assert_eq!(ids("t_nan_decimal"), vec![0, 2], "the NaN row is skipped");
    assert_eq!(
        ids("t_arr_shape"),
        vec![0, 2],
        "the 2-D value in a 1-D column is skipped"
    );
    assert!(
        log.contains("NaN cannot be stored in a decimal column"),
        "{log}"
    );
    assert!(
        log.contains("id=1"),
        "the data error names the row's key: {log}"
    );
    let status = work.godwit(&["status", pipeline.to_str().unwrap(), "--json"], &[]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["tables"]["public.t_nan_decimal"]["data_errors"], 1);
    assert_eq!(
        status["tables"]["public.t_nan_decimal"]["full_load_rows"],
        2
    );

    // JSON columns carry Parquet's JSON logical type.
    let json_file = parquet_files(&work.out().join("public/t_jsonb"))[0].clone();
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&json_file).unwrap())
            .unwrap();
    let descr = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .schema_descr()
        .column(1);
    assert_eq!(
        descr.logical_type_ref(),
        Some(&parquet::basic::LogicalType::Json)
    );

    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
