//! The README's "Running godwit" block runs as written: its shell lines are taken from
//! README.md and run by `bash` in a fresh environment (no GODWIT_* or PG* variables, godwit not
//! on PATH) in a folder laid out like the repository, against the demo database seeded by the
//! quickstart's own seed file. Every line must exit 0, and the files the run wrote must hold
//! what PostgreSQL holds.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::replay::*;
use common::source::*;
use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The first ```sh block after the "## Running godwit" heading.
fn running_godwit_block() -> String {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let section = readme
        .split("\n## Running godwit\n")
        .nth(1)
        .expect("README.md has a \"## Running godwit\" section");
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .expect("the section has a ```sh block");
    block.split("\n```").next().unwrap().to_string()
}

/// The psql the quickstart would use.
fn psql() -> PathBuf {
    let out = Command::new("bash")
        .args([
            "-c",
            "command -v psql || ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -n 1",
        ])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[tokio::test]
async fn readme_running_godwit_block_runs_as_written() {
    let block = running_godwit_block();
    for needed in [
        "eval \"$(scripts/services.sh env)\"",
        "export PATH=",
        "godwit check   pipelines/quickstart.toml",
        "--once",
        "godwit status",
        "godwit inspect",
        "godwit drop",
    ] {
        assert!(
            block.contains(needed),
            "the block lost `{needed}`:\n{block}"
        );
    }

    // The demo database, seeded by the quickstart's seed file; no slot or publication left
    // from before.
    let pg = pg();
    let admin = pg.connect("postgres").await;
    if admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = 'shop'", &[])
        .await
        .unwrap()
        .is_none()
    {
        admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    }
    admin
        .batch_execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name = 'godwit_quickstart' AND NOT active",
        )
        .await
        .unwrap();
    // A failed earlier run of this test may have left the pipeline's publication behind.
    pg.connect("shop")
        .await
        .batch_execute("DROP PUBLICATION IF EXISTS godwit_quickstart")
        .await
        .unwrap();
    let seed = Command::new(psql())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "shop", "-f"])
        .arg(Path::new(REPO).join("scripts/seed-demo.sql"))
        .output()
        .unwrap();
    assert!(seed.status.success(), "seed: {}", text(&seed));

    // A folder laid out like the repository: the same scripts, pipelines and services, the
    // test's own godwit as target/debug/godwit; output lands here, not in the repository.
    let work = Work::new();
    let root = work.path();
    std::os::unix::fs::symlink(Path::new(REPO).join("scripts"), root.join("scripts")).unwrap();
    std::os::unix::fs::symlink(Path::new(REPO).join("pipelines"), root.join("pipelines")).unwrap();
    let services = std::env::var("GODWIT_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(REPO).join(".services"));
    std::os::unix::fs::symlink(&services, root.join(".services")).unwrap();
    std::fs::create_dir(root.join("target")).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_godwit")).parent().unwrap();
    std::os::unix::fs::symlink(bin_dir, root.join("target/debug")).unwrap();

    // A fresh shell: only PATH (without godwit) and HOME.
    let path = std::env::var("PATH").unwrap_or_default();
    let path: Vec<&str> = path
        .split(':')
        .filter(|d| !Path::new(d).join("godwit").exists())
        .collect();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -e\nset -x\n{block}\n"))
        .current_dir(root)
        .env_clear()
        .env("PATH", path.join(":"))
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .output()
        .unwrap();
    let log = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the README block failed:\n{log}"
    );
    assert!(
        log.contains("+ godwit drop"),
        "the block stopped early:\n{log}"
    );

    // What landed is what PostgreSQL holds, value by value.
    let db = pg.connect("shop").await;
    let lake = root.join("godwit-out/quickstart/shop");
    let keys: [(&str, &[&str]); 4] = [
        ("customers", &["id"]),
        ("products", &["id"]),
        ("orders", &["id"]),
        ("order_items", &["order_id", "product_id"]),
    ];
    for (table, key) in keys {
        let want = pg_keyed(&db, &format!("shop.{table}"), key).await;
        assert!(
            !want.is_empty(),
            "shop.{table} is empty: the seed did not run"
        );
        let columns: Vec<String> = want.values().next().unwrap().keys().cloned().collect();
        let got: BTreeMap<String, RowMap> = replay_keyed(&lake.join(table), key)
            .into_iter()
            .map(|(k, r)| (k, project(&r, &columns)))
            .collect();
        assert_eq!(got.len(), want.len(), "shop.{table}: row count");
        for (k, w) in &want {
            assert_eq!(got.get(k), Some(w), "shop.{table}: row {k}");
        }
    }
    assert!(
        !lake.join("audit_log").exists(),
        "shop.audit_log is excluded by pipelines/quickstart.toml"
    );
    // `drop` removed the slot.
    let slot = db
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'godwit_quickstart'",
            &[],
        )
        .await
        .unwrap();
    assert!(slot.is_none(), "drop left the slot:\n{log}");
}
