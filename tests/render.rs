//! `pg::types::render` (the Redis sink's value forms) on every case of the type suite: each
//! value, as the full load and as a CDC file carry it, rendered in text form and in JSON form
//! and compared, row by row, with what PostgreSQL itself prints for the same value.

mod common;

use std::collections::HashMap;

use arrow::array::AsArray;
use arrow::datatypes::Int32Type;
use arrow::record_batch::RecordBatch;
use common::replay::table_files;
use common::type_cases;
use common::*;
use godwit::pg::catalog;
use godwit::pg::types::render::Render;
use godwit::pg::types::{self, NumericAs, PgType};
use serde_json::Value;

/// PostgreSQL's text form of `v`: its output function's text (`format('%s', v)`), which is
/// `v::text` except that char(n) keeps its padding and inet/cidr get no `/32`; booleans as
/// `v::text` (`true`, not `t`).
fn text_expr(ddl_type: &str) -> &'static str {
    match ddl_type {
        "boolean" => "v::text",
        "money" => "v::numeric::text",
        "money[]" => "v::numeric[]::text",
        _ => "format('%s', v)",
    }
}

/// The astronomical year of a BC value, as ISO 8601 writes it (`-4712`, `0000`).
const ISO_BC_YEAR: &str = "CASE WHEN extract(year from v) = -1 THEN '0000' \
     ELSE '-' || lpad((-1 - extract(year from v)::int)::text, 4, '0') END";

/// PostgreSQL's `to_json` of the value, with godwit's documented deviations: numeric as a
/// string unless an f64 holds it exactly, bytea as base64, timestamptz with `Z`, BC years
/// in ISO 8601's astronomical form, types without a JSON form as their text form string.
fn json_expr(ddl_type: &str, arrow: &str) -> String {
    // A 1-D array of a type whose JSON form deviates from to_json: element by element.
    if let Some(elem) = ddl_type.strip_suffix("[]")
        && matches!(
            elem,
            "date" | "timestamp" | "timestamptz" | "numeric" | "bytea"
        )
    {
        let arrow = if elem == "numeric" { "Utf8" } else { "" };
        return format!(
            "(SELECT COALESCE(jsonb_agg(CASE WHEN e IS NULL THEN NULL ELSE {} END ORDER BY o), '[]') \
             FROM unnest(v) WITH ORDINALITY u(e, o))",
            scalar_json(elem, arrow, "e")
        );
    }
    scalar_json(ddl_type, arrow, "v")
}

/// The expected JSON of the scalar `v` (a column or an array element), as jsonb.
fn scalar_json(ddl_type: &str, arrow: &str, v: &str) -> String {
    let exact_numeric = |n: &str| {
        format!(
            "CASE WHEN {n}::text ~ '^-?[0-9.]+$' AND {n}::text::float8::text::numeric = {n} \
             THEN to_jsonb({n}) ELSE to_jsonb({n}::text) END"
        )
    };
    let bc_year = ISO_BC_YEAR.replace("from v", &format!("from {v}"));
    match ddl_type {
        "date" | "timestamp" | "timestamptz" => format!(
            "CASE WHEN NOT isfinite({v}) THEN to_jsonb({v}::text) ELSE to_jsonb(regexp_replace(\
             replace(to_json({v}) #>> '{{}}', '+00:00', 'Z'), '^[0-9]+(.*) BC$', ({bc_year}) || '\\1')) END"
        ),
        "bytea" => format!("to_jsonb(replace(encode({v}, 'base64'), E'\\n', ''))"),
        "money" => exact_numeric(&format!("{v}::numeric")),
        "money[]" => format!("to_jsonb({v}::numeric[])"),
        "json" | "jsonb" => format!("to_jsonb({v})"),
        _ if arrow.starts_with("List") => format!("to_json({v})"),
        _ if arrow.starts_with("Decimal128") || ddl_type.starts_with("numeric") => exact_numeric(v),
        // to_json keeps float8out's text (jsonb's numeric would print 1.8e308 in 309 digits).
        _ if arrow == "Boolean" || arrow.starts_with("Int") || arrow.starts_with("Float") => {
            format!("to_json({v})")
        }
        // Every other type: its text form, as a JSON string.
        _ => format!("to_jsonb({})", text_expr(ddl_type).replace("v", v)),
    }
}

/// Edge values beyond the type suite: float exponent thresholds, BC and expanded years with
/// time zone, array quoting, arrays of booleans, dates, timestamps, json and numeric text.
const EXTRA: &[(&str, &str, &[&str])] = &[
    (
        "r_float8",
        "double precision",
        &[
            "1e-05",
            "1.5e-05",
            "0.0001",
            "0.00015",
            "1e14",
            "1e15",
            "123456789012345.6",
            "1e20",
            "-1.5e-300",
            "0.1::float8 + 0.2",
            "2.5",
        ],
    ),
    (
        "r_float4",
        "real",
        &[
            "1e6", "123456", "1234567", "1e-05", "0.0001", "1.5e-05", "0.1", "-99999.5",
        ],
    ),
    (
        "r_tstz",
        "timestamptz",
        &[
            "'4713-01-01 00:00:00.25+00 BC'",
            "'0001-01-01 00:00+00 BC'",
            "'0001-12-31 23:59:59.999999+00 BC'",
            "'10000-01-01 12:00+00'",
            "'1969-12-31 23:59:59.5+00'",
        ],
    ),
    (
        "r_date",
        "date",
        &[
            "'0001-01-01 BC'",
            "'0001-01-01'",
            "'0999-02-28'",
            "'2000-02-29'",
        ],
    ),
    (
        "r_text_arr",
        "text[]",
        &[
            "ARRAY['a\"b', 'c\\d', 'NULL', 'null', ' lead', 'x,y', '{', '}', '', E'new\nline', E'tab\there', 'plain', 'ü']",
            "ARRAY[NULL]::text[]",
        ],
    ),
    ("r_bool_arr", "boolean[][]", &["'{{t,f},{NULL,t}}'"]),
    (
        "r_date_arr",
        "date[]",
        &["'{2024-01-01,\"4713-01-01 BC\",infinity,-infinity,NULL}'"],
    ),
    (
        "r_ts_arr",
        "timestamp[]",
        &["'{\"2024-01-01 12:00:00.5\",NULL,\"0044-03-15 12:00 BC\",infinity}'"],
    ),
    (
        "r_tstz_arr",
        "timestamptz[]",
        &["'{\"2024-01-01 12:00:00.5+00\",NULL}'"],
    ),
    ("r_time_arr", "time[]", &["'{00:00:00.5,24:00,NULL}'"]),
    (
        "r_jsonb_arr",
        "jsonb[]",
        &["ARRAY['{\"a\": 1}'::jsonb, NULL, '[1, \"x y\"]', 'null']"],
    ),
    (
        "r_numeric_arr",
        "numeric[]",
        &["'{1.5,NaN,123456789012345678901234567890,-0.000001,NULL,Infinity}'"],
    ),
    (
        "r_float_arr",
        "real[]",
        &["'{1e-05,NaN,-Infinity,1e6,NULL}'"],
    ),
    ("r_money", "money", &["'92233720368547758.07'", "'-0.01'"]),
];

/// (id → (text form, JSON form)) of one table's rows.
type Rendered = HashMap<i32, (Option<String>, Value)>;

fn render_rows(batches: &[RecordBatch], column: &str, t: &PgType, ops: bool) -> Rendered {
    let mut out = HashMap::new();
    for b in batches {
        let schema = b.schema();
        let (vi, field) = schema.column_with_name(column).unwrap();
        let render = Render::with_type(field, t);
        let ids = b.column_by_name("id").unwrap().as_primitive::<Int32Type>();
        let values = b.column(vi).as_ref();
        let op = ops.then(|| b.column_by_name("Op").unwrap().as_string::<i32>());
        for i in 0..b.num_rows() {
            if op.is_some_and(|o| o.value(i) != "I") {
                continue;
            }
            let mut text = Vec::new();
            let text = render
                .text(values, i, &mut text)
                .then(|| String::from_utf8(text).expect("text form is UTF-8"));
            let mut json = Vec::new();
            render.json(values, i, &mut json);
            let json: Value = serde_json::from_slice(&json).unwrap_or_else(|e| {
                panic!("invalid JSON {:?}: {e}", String::from_utf8_lossy(&json))
            });
            assert!(out.insert(ids.value(i), (text, json)).is_none());
        }
    }
    out
}

fn short(s: &str) -> String {
    if s.len() > 100 {
        format!("{}… ({} bytes)", &s[..s.floor_char_boundary(80)], s.len())
    } else {
        s.to_string()
    }
}

#[tokio::test]
async fn every_type_renders_as_postgresql_prints_it_from_load_and_cdc_files() {
    let pg = pg();
    let admin = pg.connect("postgres").await;
    admin
        .batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = 'godwit_render'",
        )
        .await
        .unwrap();
    let db = pg.fresh_db("godwit_render").await;
    type_cases::seed(&db).await;
    let mut sql = String::from("SET lc_monetary = 'C';");
    for (table, ddl_type, values) in EXTRA {
        sql.push_str(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v {ddl_type});"
        ));
        for (i, v) in values.iter().enumerate() {
            sql.push_str(&format!("INSERT INTO {table} VALUES ({i}, {v});"));
        }
    }
    db.batch_execute(&sql).await.unwrap();

    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        "name = \"render\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[target]\nurl = \"file://{{out}}\"\n{}",
        pg.url("godwit_render"),
        type_cases::PIPELINE_EXTRA
    ));
    let p = pipeline.to_str().unwrap();
    assert_ok(&work.godwit(&["run", p, "--once"], &[]));

    // Every row again, through the slot: deleted and inserted with the same values.
    let cases: Vec<(&str, &str)> = type_cases::cases()
        .iter()
        .map(|c| (c.table, c.ddl_type))
        .chain(EXTRA.iter().map(|(t, d, _)| (*t, *d)))
        .collect();
    let mut sql = String::new();
    for (t, _) in &cases {
        sql.push_str(&format!(
            "CREATE TEMP TABLE copy_{t} AS SELECT * FROM {t}; DELETE FROM {t}; INSERT INTO {t} SELECT * FROM copy_{t};"
        ));
    }
    db.batch_execute(&sql).await.unwrap();
    assert_ok(&work.godwit(&["run", p, "--once"], &[]));

    // Column types as godwit plans them (numeric kept as text is a JSON number where exact).
    let catalog_types = catalog::load_types(&db).await.unwrap();
    let tables = catalog::discover(&db, &|s, _| s == "public").await.unwrap();
    let mut planned: HashMap<String, PgType> = HashMap::new();
    for t in &tables {
        let numeric = if t.name.name == "t_nan_text" {
            NumericAs::Text
        } else {
            NumericAs::Decimal
        };
        for c in t.columns.iter().filter(|c| c.name == "v") {
            let ty = types::resolve(c.type_oid, c.typmod, c.ndims, numeric, &|o| {
                catalog_types.get(o)
            });
            planned.insert(t.name.name.clone(), ty);
        }
    }

    let mut failures = Vec::new();
    let mut compared = 0;
    for &(table, ddl_type) in &cases {
        let dir = work.out().join("public").join(table);
        let (load, cdc) = table_files(&dir);
        let t = &planned[table];
        let load: Vec<RecordBatch> = load.iter().flat_map(|f| read_parquet(f)).collect();
        let cdc: Vec<RecordBatch> = cdc.iter().flat_map(|f| read_parquet(f)).collect();
        let from_load = render_rows(&load, "v", t, false);
        let from_cdc = render_rows(&cdc, "v", t, true);

        let query = format!(
            "SELECT id, CASE WHEN v IS NULL THEN NULL ELSE {} END, \
             CASE WHEN v IS NULL THEN NULL ELSE ({})::text END FROM {} ORDER BY id",
            text_expr(ddl_type),
            json_expr(ddl_type, &arrow_name(&load)),
            table
        );
        let rows = db
            .query(&query, &[])
            .await
            .unwrap_or_else(|e| panic!("{}: {query}: {e}", table));
        if rows.len() != from_load.len() || rows.len() != from_cdc.len() {
            failures.push(format!(
                "{}: {} rows in PostgreSQL, {} in the load, {} inserts in CDC files",
                table,
                rows.len(),
                from_load.len(),
                from_cdc.len()
            ));
            continue;
        }
        for row in rows {
            let id: i32 = row.get(0);
            let text: Option<String> = row.get(1);
            let json: Option<String> = row.get(2);
            let json: Value = json
                .map(|j| serde_json::from_str(&j).unwrap())
                .unwrap_or(Value::Null);
            for (from, got) in [("load", &from_load[&id]), ("cdc", &from_cdc[&id])] {
                compared += 1;
                if got.0 != text {
                    failures.push(format!(
                        "{} ({}) id {id} text from {from}: PostgreSQL {:?}, godwit {:?}",
                        table,
                        ddl_type,
                        text.as_deref().map(short),
                        got.0.as_deref().map(short)
                    ));
                }
                if got.1 != json {
                    failures.push(format!(
                        "{} ({}) id {id} JSON from {from}: PostgreSQL {}, godwit {}",
                        table,
                        ddl_type,
                        short(&json.to_string()),
                        short(&got.1.to_string())
                    ));
                }
            }
        }
    }
    assert_ok(&work.godwit(&["drop", p, "--yes"], &[]));
    assert!(compared > 200, "only {compared} values compared");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The Arrow type of the table's value column, as `type_cases` names it.
fn arrow_name(batches: &[RecordBatch]) -> String {
    batches[0]
        .schema()
        .field_with_name("v")
        .unwrap()
        .data_type()
        .to_string()
}
