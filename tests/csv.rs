//! CSV output with DMS's defaults, parsed back and compared value by value with PostgreSQL:
//! no header, RFC 4180 quoting, NULL as an empty unquoted field and the empty string as "".

mod common;

use std::io::Read;
use std::path::Path;

use common::type_cases;
use common::*;

/// RFC 4180 fields of one CSV text; an unquoted empty field is `None` (NULL), a quoted one
/// `Some("")`. (The csv crate cannot tell the two apart.)
fn parse_csv(text: &str, delimiter: char) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' {
            quoted = true;
            was_quoted = true;
        } else if c == delimiter || c == '\n' {
            let value = if field.is_empty() && !was_quoted {
                None
            } else {
                Some(std::mem::take(&mut field))
            };
            row.push(value);
            was_quoted = false;
            if c == '\n' {
                rows.push(std::mem::take(&mut row));
            }
        } else {
            field.push(c);
        }
    }
    assert!(
        row.is_empty() && field.is_empty(),
        "the file must end with a newline"
    );
    rows
}

fn read_csv_table(out: &Path, table: &str) -> Vec<(i32, Option<String>)> {
    let dir = out.join("public").join(table);
    let mut rows = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CSV in {}", dir.display());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for r in parse_csv(&text, ',') {
            assert_eq!(r.len(), 2, "{r:?} in {}", f.display());
            let id: i32 = r[0].as_deref().unwrap().parse().unwrap();
            rows.push((id, r[1].clone()));
        }
    }
    rows
}

#[tokio::test]
async fn the_type_suite_passes_through_csv() {
    let pg = pg();
    let db = pg.fresh_db("godwit_csv_types").await;
    type_cases::seed(&db).await;
    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        "name = \"csvt\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[target]\nurl = \"file://{{out}}\"\nformat = \"csv\"\n{}",
        pg.url("godwit_csv_types"),
        type_cases::PIPELINE_EXTRA
    ));
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let out = work.out();
    let failures = type_cases::compare_text(&db, &|t| read_csv_table(&out, t)).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The NaN row of the decimal table is still a data error (skipped), not a silent value.
    let ids: Vec<i32> = read_csv_table(&out, "t_nan_decimal")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, vec![0, 2]);
}

#[tokio::test]
async fn gzip_header_delimiter_and_null_value() {
    let pg = pg();
    let db = pg.fresh_db("godwit_csv_opts").await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text);
         INSERT INTO t VALUES (1, 'x|y', NULL), (2, '', 'say \"hi\"'), (3, E'two\\nlines', 'plain');
         CREATE TABLE empty_t (id int PRIMARY KEY, a text);",
    )
    .await
    .unwrap();
    let work = Work::new();
    let pipeline = work.pipeline(&format!(
        "name = \"csvo\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[target]\nurl = \"file://{{out}}\"\nformat = \"csv\"\ncompression = \"gzip\"\ncsv_header = true\ncsv_delimiter = \"|\"\ncsv_null_value = \"\\\\N\"\n",
        pg.url("godwit_csv_opts")
    ));
    assert_ok(&work.godwit(&["run", pipeline.to_str().unwrap()], &[]));
    let file = work.out().join("public/t/LOAD00000001.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&file).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(
        text,
        "id|a|b\n1|\"x|y\"|\\N\n2|\"\"|\"say \"\"hi\"\"\"\n3|\"two\nlines\"|plain\n"
    );
    // An empty table still has its header.
    let mut empty = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(work.out().join("public/empty_t/LOAD00000001.csv.gz")).unwrap(),
    )
    .read_to_string(&mut empty)
    .unwrap();
    assert_eq!(empty, "id|a\n");
}
