//! The SPEC §4 type table as test cases: one table per type with its edge values, how to
//! seed them, and a value-by-value comparison of what landed with what PostgreSQL returns.
#![allow(dead_code)]

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use serde_json::Value;
use tokio_postgres::Client;

/// How a column's Arrow values are compared with PostgreSQL's.
#[derive(Clone, Copy, PartialEq)]
pub enum Cmp {
    /// Rendered Arrow value == PostgreSQL's text of `expr`.
    Text,
    /// Both parsed as floats; NaN equals NaN, signs of zero must agree.
    Float,
    /// Both parsed as JSON (arrays: `array_to_json`).
    Json,
}

pub struct Case {
    pub table: &'static str,
    pub ddl_type: &'static str,
    values: &'static [&'static str],
    /// SQL giving the expected text of `v`.
    expr: &'static str,
    cmp: Cmp,
    /// The Arrow type the column must have (Display form).
    arrow: &'static str,
}

const TEXT: &str = "format('%s', v)";
const EPOCH_US: &str = "CASE WHEN v = 'infinity' THEN '9223372036854775807' WHEN v = '-infinity' THEN '-9223372036854775808' ELSE (extract(epoch from v) * 1000000)::bigint::text END";
const DAYS: &str = "CASE WHEN v = 'infinity' THEN '2147483647' WHEN v = '-infinity' THEN '-2147483648' ELSE (v - date '1970-01-01')::text END";
const ARRAY: &str = "array_to_json(v)::text";

pub fn cases() -> Vec<Case> {
    let c = |table, ddl_type, values, expr, cmp, arrow| Case {
        table,
        ddl_type,
        values,
        expr,
        cmp,
        arrow,
    };
    vec![
        c(
            "t_int2",
            "smallint",
            &["0", "-32768", "32767", "NULL"],
            TEXT,
            Cmp::Text,
            "Int16",
        ),
        c(
            "t_int4",
            "integer",
            &["0", "-2147483648", "2147483647", "NULL"],
            TEXT,
            Cmp::Text,
            "Int32",
        ),
        c(
            "t_int8",
            "bigint",
            &["0", "-9223372036854775808", "9223372036854775807", "NULL"],
            TEXT,
            Cmp::Text,
            "Int64",
        ),
        c(
            "t_float4",
            "real",
            &[
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "3.4028235e38",
                "1.4e-45",
                "'-0'",
                "1.5",
                "NULL",
            ],
            TEXT,
            Cmp::Float,
            "Float32",
        ),
        c(
            "t_float8",
            "double precision",
            &[
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "1.7976931348623157e308",
                "5e-324",
                "'-0'",
                "0.1",
                "NULL",
            ],
            TEXT,
            Cmp::Float,
            "Float64",
        ),
        c(
            "t_dec",
            "numeric(10,2)",
            &["0", "12345678.91", "-0.01", "-99999999.99", "0.5", "NULL"],
            TEXT,
            Cmp::Text,
            "Decimal128(10, 2)",
        ),
        c(
            "t_dec38",
            "numeric(38,0)",
            &[
                "99999999999999999999999999999999999999",
                "-99999999999999999999999999999999999999",
                "1",
            ],
            TEXT,
            Cmp::Text,
            "Decimal128(38, 0)",
        ),
        c(
            "t_dec38s",
            "numeric(38,38)",
            &[
                "0.99999999999999999999999999999999999999",
                "-0.00000000000000000000000000000000000001",
                "0",
            ],
            TEXT,
            Cmp::Text,
            "Decimal128(38, 38)",
        ),
        c(
            "t_dec38m",
            "numeric(38,10)",
            &[
                "1234567890123456789012345678.0123456789",
                "-0.0000000001",
                "10000",
            ],
            TEXT,
            Cmp::Text,
            "Decimal128(38, 10)",
        ),
        c(
            "t_numeric",
            "numeric",
            &[
                "'NaN'",
                "'Infinity'",
                "'-Infinity'",
                "1e100",
                "0.000001",
                "-12.5000",
                "NULL",
            ],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_dec_big",
            "numeric(50,5)",
            &["123456789012345678901234567890123456789012345.12345", "-1"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_nan_text",
            "numeric(10,2)",
            &["'NaN'", "1.5", "NULL"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_money",
            "money",
            &["12.34", "-1", "0", "NULL"],
            "v::numeric::text",
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_bool",
            "boolean",
            &["true", "false", "NULL"],
            "v::text",
            Cmp::Text,
            "Boolean",
        ),
        c(
            "t_text",
            "text",
            &[
                "''",
                "'plain'",
                "'日本語 ✓ émoji 🎉 \"quoted\" back\\slash'",
                "E'tab\\tnew\\nline'",
                "NULL",
                "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 31250) i)",
            ],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_varchar",
            "varchar(10)",
            &["'abc'", "''", "'ünï'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_char",
            "char(5)",
            &["'ab'", "'abcde'", "''"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_name",
            "name",
            &["'pg_name'", "''"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_enum",
            "mood",
            &["'sad'", "'happy 😀'", "NULL"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_bytea",
            "bytea",
            &[
                "'\\x'",
                "'\\x00'",
                "'\\x00ff00'",
                "NULL",
                "decode(repeat('00ff', 5000), 'hex')",
            ],
            "encode(v, 'hex')",
            Cmp::Text,
            "Binary",
        ),
        c(
            "t_date",
            "date",
            &[
                "'infinity'",
                "'-infinity'",
                "'1900-01-01'",
                "'1970-01-01'",
                "'2200-12-31'",
                "'4713-01-01 BC'",
                "NULL",
            ],
            DAYS,
            Cmp::Text,
            "Date32",
        ),
        c(
            "t_time",
            "time",
            &["'00:00'", "'23:59:59.999999'", "'24:00:00'", "'12:34:56.5'"],
            "(extract(epoch from v) * 1000000)::bigint::text",
            Cmp::Text,
            "Time64(µs)",
        ),
        c(
            "t_ts",
            "timestamp",
            &[
                "'infinity'",
                "'-infinity'",
                "'1900-01-01 00:00:00.000001'",
                "'1969-12-31 23:59:59.999999'",
                "'2100-03-01 12:00'",
                "'10000-01-01 00:00'",
                "'4713-01-01 00:00 BC'",
                "NULL",
            ],
            EPOCH_US,
            Cmp::Text,
            "Timestamp(µs)",
        ),
        c(
            "t_tstz",
            "timestamptz",
            &[
                "'infinity'",
                "'-infinity'",
                "'1900-01-01 00:00:00+05'",
                "'2024-06-01 12:00:00.123456+02'",
                "'2150-01-01 00:00Z'",
                "NULL",
            ],
            EPOCH_US,
            Cmp::Text,
            "Timestamp(µs, \"UTC\")",
        ),
        c(
            "t_interval",
            "interval",
            &["'1 year 2 months 3 days 04:05:06.789'", "'-1 day'", "'0'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_timetz",
            "timetz",
            &["'12:00:00+02'", "'23:59:59.5-08'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_inet",
            "inet",
            &[
                "'192.168.0.1/24'",
                "'192.168.0.1'",
                "'::1'",
                "'2001:db8::1/64'",
                "'::ffff:1.2.3.4'",
                "'::1.2.3.4'",
                "'1:0:2:0:0:0:0:3'",
            ],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_inet_arr",
            "inet[]",
            &["'{10.1.2.3,NULL,::1/64}'"],
            ARRAY,
            Cmp::Json,
            "List(Utf8)",
        ),
        c(
            "t_cidr",
            "cidr",
            &["'10.0.0.0/8'", "'192.168.1.7/32'", "'2001:db8::/32'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_macaddr",
            "macaddr",
            &["'08:00:2b:01:02:03'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_uuid",
            "uuid",
            &[
                "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
                "'00000000-0000-0000-0000-000000000000'",
                "NULL",
            ],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c("t_xml", "xml", &["'<a>b</a>'"], TEXT, Cmp::Text, "Utf8"),
        c("t_bit", "bit(4)", &["B'1010'"], TEXT, Cmp::Text, "Utf8"),
        c(
            "t_varbit",
            "bit varying",
            &["B'101'", "B''"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_range",
            "int4range",
            &["'[1,5)'", "'empty'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c("t_point", "point", &["'(1.5,-2)'"], TEXT, Cmp::Text, "Utf8"),
        c(
            "t_box",
            "box",
            &["'((0,0),(1,1))'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_json",
            "json",
            &[
                "'{\"a\": [1, 2.50, null]}'",
                "'[]'",
                "'\"ü\"'",
                "'null'",
                "NULL",
            ],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_jsonb",
            "jsonb",
            &["'{\"b\":1,\"a\":\"ü\"}'", "'[1, 2.50]'", "'{}'", "NULL"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_tsvector",
            "tsvector",
            &["'a fat cat'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_pg_lsn",
            "pg_lsn",
            &["'16/B374D848'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_domain_int",
            "posint",
            &["1", "2147483647", "NULL"],
            TEXT,
            Cmp::Text,
            "Int32",
        ),
        c(
            "t_domain_dec",
            "price",
            &["12.345", "-1"],
            TEXT,
            Cmp::Text,
            "Decimal128(8, 3)",
        ),
        c(
            "t_domain_text",
            "email",
            &["'a@b.c'"],
            TEXT,
            Cmp::Text,
            "Utf8",
        ),
        c(
            "t_int_arr",
            "integer[]",
            &["'{1,NULL,3}'", "'{}'", "'{NULL}'", "NULL"],
            ARRAY,
            Cmp::Json,
            "List(Int32)",
        ),
        c(
            "t_int8_arr2",
            "bigint[][]",
            &[
                "'{{1,2},{3,NULL}}'",
                "'{}'",
                "'{{9223372036854775807}}'",
                "NULL",
            ],
            ARRAY,
            Cmp::Json,
            "List(List(Int64))",
        ),
        c(
            "t_text_arr",
            "text[]",
            &["'{\"a\",\"\",NULL,\"ü é\",\"{}\"}'", "'{}'"],
            ARRAY,
            Cmp::Json,
            "List(Utf8)",
        ),
        c(
            "t_varchar_arr2",
            "varchar(5)[][]",
            &["'{{a,b},{c,d}}'"],
            ARRAY,
            Cmp::Json,
            "List(List(Utf8))",
        ),
        c(
            "t_dec_arr",
            "numeric(10,2)[]",
            &["'{1.50,NULL,-2.25}'"],
            ARRAY,
            Cmp::Json,
            "List(Decimal128(10, 2))",
        ),
        c(
            "t_bool_arr",
            "boolean[]",
            &["'{true,false,NULL}'"],
            ARRAY,
            Cmp::Json,
            "List(Boolean)",
        ),
        c(
            "t_float_arr",
            "double precision[]",
            &["'{1.5,-0.25,NULL}'"],
            ARRAY,
            Cmp::Json,
            "List(Float64)",
        ),
        c(
            "t_uuid_arr",
            "uuid[]",
            &["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'"],
            ARRAY,
            Cmp::Json,
            "List(Utf8)",
        ),
        c(
            "t_interval_arr",
            "interval[]",
            &["'{1 day,NULL,-2 hours}'"],
            ARRAY,
            Cmp::Json,
            "List(Utf8)",
        ),
        c(
            "t_bytea_arr",
            "bytea[]",
            &["ARRAY['\\x00ff'::bytea, NULL, '\\x'::bytea]"],
            ARRAY,
            Cmp::Json,
            "List(Binary)",
        ),
        c(
            "t_money_arr",
            "money[]",
            &["'{1.25,-3}'"],
            "array_to_json(v::numeric[]::text[])::text",
            Cmp::Json,
            "List(Utf8)",
        ),
    ]
}

pub const SETUP: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy 😀');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN price AS numeric(8,3);
CREATE DOMAIN email AS text;
";

/// Creates every case table (and the data-error tables) in `db`.
pub async fn seed(db: &Client) {
    db.batch_execute(SETUP).await.unwrap();
    for case in cases() {
        let mut sql = format!(
            "CREATE TABLE {} (id int PRIMARY KEY, v {});",
            case.table, case.ddl_type
        );
        for (i, v) in case.values.iter().enumerate() {
            sql.push_str(&format!("INSERT INTO {} VALUES ({i}, {v});", case.table));
        }
        db.batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", case.table));
    }
    // A NaN where a decimal is declared is a data error: the row is skipped and counted.
    db.batch_execute(
        "CREATE TABLE t_nan_decimal (id int PRIMARY KEY, v numeric(10,2));
         INSERT INTO t_nan_decimal VALUES (0, 1.25), (1, 'NaN'), (2, NULL);
         CREATE TABLE t_arr_shape (id int PRIMARY KEY, v int[]);
         INSERT INTO t_arr_shape VALUES (0, '{1}'), (1, '{{1,2},{3,4}}'), (2, '{}');
         CREATE TABLE t_nan_array (id int PRIMARY KEY, v numeric(10,2)[]);
         INSERT INTO t_nan_array VALUES (0, '{1.25}'), (1, '{2.50,NaN}'), (2, '{3.75,NULL}');
         CREATE TABLE t_nan_grid (id int PRIMARY KEY, v numeric(10,2)[][]);
         INSERT INTO t_nan_grid VALUES (0, '{{1.00,2.00}}'), (1, '{{1.00},{NaN}}'), (2, '{{3.00},{4.00}}');",
    )
    .await
    .unwrap();
}

/// The per-table settings every run of the suite needs.
pub const PIPELINE_EXTRA: &str = r#"[tables."public.t_nan_text"]
numeric = "text"
[load]
batch_rows = 3
"#;

/// Compares every case table as read back by `read` (table → Parquet batches) with what
/// PostgreSQL returns, Arrow types included; returns the mismatches.
pub async fn compare(db: &Client, read: &dyn Fn(&str) -> Vec<RecordBatch>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases() {
        let batches = read(case.table);
        let arrow_type = batches[0].schema().field(1).data_type().to_string();
        if arrow_type != case.arrow {
            failures.push(format!(
                "{} ({}): Arrow type {arrow_type}, expected {}",
                case.table, case.ddl_type, case.arrow
            ));
        }
        compare_rows(
            db,
            &case,
            case.expr,
            case.cmp,
            &column_by_id(&batches),
            &mut failures,
        )
        .await;
    }
    failures
}

/// One row of a case table as text: (id, value; `None` for NULL).
pub type TextRow = (i32, Option<String>);

/// Compares every case table as text rows (id, value) — how CSV files carry them: scalars in
/// PostgreSQL's text form, arrays as JSON.
pub async fn compare_text(db: &Client, read: &dyn Fn(&str) -> Vec<TextRow>) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases() {
        let (expr, cmp) = if case.expr == ARRAY || case.expr.contains("numeric") {
            (case.expr, case.cmp)
        } else {
            (TEXT, case.cmp)
        };
        let mut got = read(case.table);
        got.sort_by_key(|(id, _)| *id);
        compare_rows(db, &case, expr, cmp, &got, &mut failures).await;
    }
    failures
}

async fn compare_rows(
    db: &Client,
    case: &Case,
    expr: &str,
    cmp: Cmp,
    got: &[(i32, Option<String>)],
    failures: &mut Vec<String>,
) {
    let rows = db
        .query(
            &format!(
                "SELECT id, CASE WHEN v IS NULL THEN NULL ELSE ({expr})::text END FROM {} ORDER BY id",
                case.table
            ),
            &[],
        )
        .await
        .unwrap();
    if rows.len() != got.len() {
        failures.push(format!(
            "{}: {} rows in PostgreSQL, {} in the output",
            case.table,
            rows.len(),
            got.len()
        ));
        return;
    }
    for (row, (id, actual)) in rows.iter().zip(got) {
        let pg_id: i32 = row.get(0);
        let expected: Option<String> = row.get(1);
        if pg_id != *id {
            failures.push(format!("{}: id {pg_id} vs {id}", case.table));
            continue;
        }
        if !same(cmp, expected.as_deref(), actual.as_deref()) {
            failures.push(format!(
                "{} ({}) id {id}: PostgreSQL {:?}, output {:?}",
                case.table,
                case.ddl_type,
                expected.map(short),
                actual.clone().map(short)
            ));
        }
    }
}

fn short(s: String) -> String {
    if s.len() > 80 {
        format!(
            "{}… ({} bytes)",
            &s[..s.char_indices().nth(60).map(|(i, _)| i).unwrap_or(60)],
            s.len()
        )
    } else {
        s
    }
}

fn same(cmp: Cmp, expected: Option<&str>, actual: Option<&str>) -> bool {
    match (expected, actual) {
        (None, None) => true,
        (Some(e), Some(a)) => match cmp {
            Cmp::Text => e == a,
            Cmp::Float => {
                let (e, a): (f64, f64) = (e.parse().unwrap(), a.parse().unwrap());
                (e.is_nan() && a.is_nan())
                    || (e == a && e.is_sign_negative() == a.is_sign_negative())
            }
            Cmp::Json => {
                serde_json::from_str::<Value>(e).unwrap()
                    == serde_json::from_str::<Value>(a).unwrap()
            }
        },
        _ => false,
    }
}

/// (id, rendered v) for every row, sorted by id.
pub fn column_by_id(batches: &[RecordBatch]) -> Vec<(i32, Option<String>)> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column(0).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            out.push((ids.value(i), render(b.column(1), i)));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    out
}

/// The value at `i` as text comparable with the case's SQL expression.
pub fn render(a: &ArrayRef, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::Float32 => {
            let f = a.as_primitive::<Float32Type>().value(i);
            if f.is_nan() {
                "NaN".into()
            } else {
                format!("{f:?}")
            }
        }
        DataType::Float64 => {
            let f = a.as_primitive::<Float64Type>().value(i);
            if f.is_nan() {
                "NaN".into()
            } else {
                format!("{f:?}")
            }
        }
        DataType::Boolean => a.as_boolean().value(i).to_string(),
        DataType::Decimal128(_, _) => a.as_primitive::<Decimal128Type>().value_as_string(i),
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::Binary => hex(a.as_binary::<i32>().value(i)),
        DataType::Date32 => a.as_primitive::<Date32Type>().value(i).to_string(),
        DataType::Time64(TimeUnit::Microsecond) => a
            .as_primitive::<Time64MicrosecondType>()
            .value(i)
            .to_string(),
        DataType::Timestamp(TimeUnit::Microsecond, _) => a
            .as_primitive::<TimestampMicrosecondType>()
            .value(i)
            .to_string(),
        DataType::List(_) => json(a, i).to_string(),
        other => panic!("no renderer for {other}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A list value as the JSON `array_to_json` would give.
fn json(a: &ArrayRef, i: usize) -> Value {
    if a.is_null(i) {
        return Value::Null;
    }
    match a.data_type() {
        DataType::List(_) => {
            let list = a.as_list::<i32>();
            let values = list.value(i);
            Value::Array((0..values.len()).map(|j| json(&values, j)).collect())
        }
        DataType::Utf8 => Value::String(a.as_string::<i32>().value(i).to_string()),
        DataType::Boolean => Value::Bool(a.as_boolean().value(i)),
        DataType::Binary => Value::String(format!("\\x{}", hex(a.as_binary::<i32>().value(i)))),
        DataType::Float64 => serde_json::json!(a.as_primitive::<Float64Type>().value(i)),
        _ => serde_json::from_str(&render(a, i).unwrap()).unwrap(),
    }
}
