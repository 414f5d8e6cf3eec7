//! The replication session: a slot created with an exported snapshot is a clean cut — the
//! snapshot holds exactly what was committed before, the stream exactly what came after — and
//! confirming a commit moves the slot's confirmed_flush_lsn.

mod common;

use std::time::Duration;

use common::*;
use godwit::pg::connect::Source;
use godwit::pg::lsn::Lsn;
use godwit::pg::replication::pgoutput::{self, Message, Value};
use godwit::pg::replication::session::{NewSlot, StreamEvent};

#[tokio::test]
async fn slot_snapshot_and_stream_meet_without_gap_or_overlap() {
    let pg = pg();
    let db = pg.fresh_db("godwit_repl").await;
    db.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'before' FROM generate_series(1, 100) i;
         CREATE PUBLICATION godwit_repl_pub FOR TABLE t;",
    )
    .await
    .unwrap();
    let source = Source::from_url(&pg.url("godwit_repl")).unwrap();
    let slot = NewSlot::create(
        &source.endpoint(),
        "godwit_repl_slot",
        &["godwit_repl_pub".to_string()],
        false,
    )
    .await
    .unwrap();
    // Written after the slot: in the stream, not in the snapshot.
    db.batch_execute("INSERT INTO t SELECT i, 'after' FROM generate_series(101, 150) i; UPDATE t SET v = 'changed' WHERE id = 1;")
        .await
        .unwrap();
    let worker = source.connect().await.unwrap();
    godwit::pg::import_snapshot(&worker, &slot.snapshot)
        .await
        .unwrap();
    let n: i64 = worker
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 100,
        "the snapshot holds exactly the rows before the slot"
    );
    let v1: String = worker
        .query_one("SELECT v FROM t WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v1, "before");
    worker.batch_execute("COMMIT").await.unwrap();

    let consistent = slot.consistent_point;
    let mut stream = slot.start().await.unwrap();
    let mut inserted = Vec::new();
    let mut updated = Vec::new();
    let mut last_commit = Lsn(0);
    // Until the transaction written after the slot has been streamed and committed.
    while updated.is_empty() || last_commit == Lsn(0) || inserted.len() < 50 {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the stream stalled")
            .unwrap()
            .expect("the stream ended");
        match ev {
            StreamEvent::Data { data } => match pgoutput::decode(&data).unwrap() {
                Message::Insert { new, .. } => {
                    let Value::Text(id) = new[0] else { panic!() };
                    inserted.push(std::str::from_utf8(id).unwrap().parse::<i32>().unwrap());
                }
                Message::Update { new, .. } => updated.push(match new[1] {
                    Value::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    other => format!("{other:?}"),
                }),
                _ => {}
            },
            StreamEvent::Commit { end_lsn, .. } => {
                assert!(end_lsn > consistent);
                last_commit = end_lsn;
                stream.confirm(end_lsn);
            }
            _ => {}
        }
    }
    assert_eq!(
        inserted,
        (101..=150).collect::<Vec<_>>(),
        "exactly the rows after the slot"
    );
    assert_eq!(updated, vec!["changed".to_string()]);
    stream.close(last_commit).await.unwrap();
    let confirmed: String = db
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'godwit_repl_slot'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let confirmed: Lsn = confirmed.parse().unwrap();
    assert!(
        confirmed >= last_commit,
        "confirmed {confirmed} < last commit {last_commit}"
    );
    db.batch_execute("SELECT pg_drop_replication_slot('godwit_repl_slot')")
        .await
        .unwrap();
}
