//! `godwit inspect`: a table with CDC files shows its full load and its CDC files apart —
//! counts, each part's own schema and sample rows of both (`--rows 2` gives two of each) —
//! and its full-load file count agrees with `godwit status`'s `load files` column.

mod common;

use common::*;

/// The lines of `text` from the one starting with `start` up to the next one starting with
/// `end` (or the end).
fn section<'a>(text: &'a str, start: &str, end: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(start))
        .skip(1)
        .take_while(|l| !l.starts_with(end))
        .collect()
}

/// The rows of a pretty-printed table in `lines` (`| a | b |`, header excluded).
fn table_rows(lines: &[&str]) -> Vec<Vec<String>> {
    lines
        .iter()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn full_load_and_cdc_files_are_shown_apart_with_samples_of_both() {
    let pg = pg();
    let db = pg.fresh_db("godwit_inspect").await;
    db.batch_execute(
        "CREATE TABLE products (id int PRIMARY KEY, name text);
         INSERT INTO products SELECT i, 'loaded ' || i FROM generate_series(1, 5) i;",
    )
    .await
    .unwrap();
    let w = Work::new();
    let pipe = w.pipeline(&format!(
        "name = \"inspect\"\nmode = \"full-load-and-cdc\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.products\"]\n[target]\nurl = \"file://{{out}}\"\ncdc_max_batch_interval = \"1s\"\n",
        pg.url("godwit_inspect")
    ));
    let p = pipe.to_str().unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));
    db.batch_execute(
        "INSERT INTO products VALUES (10, 'changed 10'), (11, 'changed 11'), (12, 'changed 12');
         UPDATE products SET name = 'updated 1' WHERE id = 1;",
    )
    .await
    .unwrap();
    assert_ok(&w.godwit(&["run", p, "--once"], &[]));

    let out = w.godwit(
        &["inspect", p, "--table", "public.products", "--rows", "2"],
        &[],
    );
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("public.products: 1 full-load file (5 rows), 1 CDC file (4 rows)"),
        "{text}"
    );

    // The full load: its own schema (no CDC columns) and two of its rows.
    let schema = section(&text, "  full load schema:", "  full load sample:");
    assert_eq!(schema, ["    id: Int32", "    name: Utf8"], "{text}");
    let load = table_rows(&section(&text, "  full load sample:", "  CDC files:"));
    assert_eq!(load.len(), 2, "{text}");
    for row in &load {
        let id: i32 = row[0].parse().unwrap();
        assert_eq!(row[1], format!("loaded {id}"), "{text}");
    }

    // The CDC files: their own schema and two of their rows, in order.
    let files = section(&text, "  CDC files:", "  CDC schema:");
    assert_eq!(files.len(), 1, "{text}");
    assert!(files[0].contains("4 rows"), "{text}");
    let schema = section(&text, "  CDC schema:", "  CDC sample:");
    let names: Vec<&str> = schema
        .iter()
        .map(|l| l.trim().split(':').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Op", "id", "name", "_lsn", "_seq", "_unchanged"],
        "{text}"
    );
    let cdc = table_rows(&section(&text, "  CDC sample:", "\n"));
    assert_eq!(cdc.len(), 2, "{text}");
    assert_eq!(&cdc[0][..3], ["I", "10", "changed 10"], "{text}");
    assert_eq!(&cdc[1][..3], ["I", "11", "changed 11"], "{text}");

    // `status` counts the full-load files it recorded, under a name that says so.
    let status = assert_ok(&w.godwit(&["status", p], &[]));
    let header = status
        .lines()
        .find(|l| l.starts_with("table"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(header.contains("load files"), "{status}");
    let row = status
        .lines()
        .find(|l| l.starts_with("public.products"))
        .unwrap_or_else(|| panic!("{status}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // table, state ("CDC"), rows, bytes, load files, …
    assert_eq!(cells[1], "CDC", "{status}");
    assert_eq!(cells[2], "5", "{status}");
    assert_eq!(cells[4], "1", "{status}");
}
