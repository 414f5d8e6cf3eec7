//! `godwit check` reports each table's replica identity and, where CDC would publish UPDATE
//! and DELETE that the source could then no longer run, the exact fix.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn check_names_tables_cdc_would_break_with_the_fix() {
    let pg = pg();
    let db = pg.fresh_db("godwit_identity").await;
    db.batch_execute(
        r#"
        CREATE TABLE with_pk (id int PRIMARY KEY, region text);
        CREATE TABLE no_key (id int, v text);
        CREATE TABLE full_ident (id int, v text);
        ALTER TABLE full_ident REPLICA IDENTITY FULL;
        CREATE TABLE by_index (code text NOT NULL, v text);
        CREATE UNIQUE INDEX by_index_code ON by_index (code);
        ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
        CREATE TABLE nothing (id int PRIMARY KEY);
        ALTER TABLE nothing REPLICA IDENTITY NOTHING;
        CREATE TABLE filtered (id int PRIMARY KEY, region text);
        CREATE TABLE inserts_only (id int, v text);
        CREATE TABLE parted (id int, at date NOT NULL) PARTITION BY RANGE (at);
        CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        ALTER TABLE parted_a ADD PRIMARY KEY (id, at);
        CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        "#,
    )
    .await
    .unwrap();
    let work = Work::new();
    let path = work.pipeline(&format!(
        "name = \"ident\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.*\"]\n[tables.\"public.filtered\"]\nwhere = \"region = 'eu'\"\n[tables.\"public.inserts_only\"]\ncdc = \"inserts-only\"\n[target]\nurl = \"file://{{out}}\"\n",
        pg.url("godwit_identity")
    ));
    let out = work.godwit(&["check", path.to_str().unwrap(), "--json"], &[]);
    // A full-load pipeline does not need replica identities: the check passes and reports them.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let table = |name: &str| -> Value {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == format!("public.{name}"))
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in the report"))
    };
    for ok in ["with_pk", "full_ident", "by_index", "inserts_only"] {
        assert_eq!(table(ok)["cdc_problem"], Value::Null, "{ok}: {}", table(ok));
    }
    assert_eq!(
        table("with_pk")["replica_identity"],
        "default (primary key id)"
    );
    assert_eq!(table("by_index")["replica_identity"], "index (code)");
    let fix = |name: &str| {
        table(name)["cdc_problem"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        fix("no_key").contains("ALTER TABLE \"public\".\"no_key\" REPLICA IDENTITY FULL"),
        "{}",
        fix("no_key")
    );
    assert!(
        fix("nothing").contains("replica identity nothing"),
        "{}",
        fix("nothing")
    );
    assert!(
        fix("filtered").contains("uses region outside its replica identity"),
        "{}",
        fix("filtered")
    );
    assert!(
        fix("parted").contains("partition public.parted_b of public.parted"),
        "{}",
        fix("parted")
    );
    assert!(
        fix("parted").contains("ALTER TABLE \"public\".\"parted_b\""),
        "{}",
        fix("parted")
    );
}
