//! Where the events file lands when the pipeline does not name one: beside a local state
//! (`<state dir>/events.jsonl`), never in the working directory, and the run's closing log
//! line names it.

mod common;

use common::*;

#[tokio::test]
async fn events_default_beside_the_local_state_not_in_the_working_directory() {
    let pg = pg();
    let db = pg.fresh_db("godwit_events_file").await;
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, label text);
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 37) g;",
    )
    .await
    .unwrap();
    let expected: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);

    // The working directory is one folder, the target another (not below it).
    let cwd = Work::new();
    let lake = tempfile::tempdir().unwrap();
    let target = lake.path().join("lake");
    let pipeline = cwd.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "name = \"evfile\"\nmode = \"full-load\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.items\"]\n[target]\nurl = \"file://{}\"\n",
            pg.url("godwit_events_file"),
            target.display()
        ),
    )
    .unwrap();

    let out = cwd.godwit(
        &["run", pipeline.to_str().unwrap(), "--log-format", "json"],
        &[],
    );
    let log = assert_ok(&out);

    let beside_state = target.join("_godwit/state/events.jsonl");
    assert!(
        beside_state.is_file(),
        "no events file at {}; log:\n{log}",
        beside_state.display()
    );
    assert!(
        target.join("_godwit/state/task.json").is_file(),
        "the events file is not beside the state"
    );
    assert!(
        !cwd.path().join("godwit-out").exists(),
        "the run wrote into the working directory: {:?}",
        std::fs::read_dir(cwd.path().join("godwit-out"))
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );

    // The file holds this run's events; the loaded row count is PostgreSQL's own count.
    let ev = events(&beside_state);
    let types: Vec<&str> = ev
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"task.started"), "{types:?}");
    let loaded: Vec<_> = ev
        .iter()
        .filter(|e| e["event_type"] == "table.loaded")
        .collect();
    assert_eq!(loaded.len(), 1, "{types:?}");
    assert_eq!(loaded[0]["table"], "public.items");
    assert_eq!(loaded[0]["details"]["rows"].as_i64(), Some(expected));

    // One closing info line names the file.
    let path_text = beside_state.display().to_string();
    let closing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("events are in") && l.contains(&path_text))
        .collect();
    assert_eq!(closing.len(), 1, "closing line missing or repeated:\n{log}");
    assert!(closing[0].contains("INFO"), "{}", closing[0]);
}
