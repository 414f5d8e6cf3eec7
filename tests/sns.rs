//! Events to SNS (moto): every event of a run reaches an SQS queue subscribed to the topic, with
//! the same JSON as the events file and the message attributes subscriptions filter on; a run
//! whose topic cannot take them still ends well and reports what was not delivered; `check`
//! verifies the topic.

mod common;

use std::collections::BTreeMap;

use aws_sdk_sqs::types::QueueAttributeName;
use common::{Work, assert_ok, pg};

/// moto serves SNS and SQS on the S3 endpoint.
fn aws_env() -> Vec<(&'static str, String)> {
    vec![("AWS_ENDPOINT_URL", common::s3::endpoint())]
}

/// The AWS settings of the test's own clients: moto, and the TLS provider godwit uses.
async fn aws_conf() -> aws_config::SdkConfig {
    use aws_smithy_http_client::{Builder, tls};
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(common::s3::endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await
}

async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&aws_conf().await)
}

/// A topic with a queue subscribed (raw delivery: the body is the event, the SNS message
/// attributes become the SQS message's); returns (topic ARN, queue URL).
async fn topic_with_queue(name: &str) -> (String, String) {
    let conf = aws_conf().await;
    let topic = aws_sdk_sns::Client::new(&conf)
        .create_topic()
        .name(name)
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let queue = subscribed_queue(&conf, &topic, &format!("{name}-q"), None).await;
    (topic, queue)
}

/// Every message in the queue: (body, attributes).
async fn drain(queue: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let sqs = sqs().await;
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let messages = got.messages();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            let attrs = m
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.body().unwrap_or_default().to_string(), attrs));
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

fn pipeline(db_url: &str, topic: &str, tables: usize) -> String {
    let include: Vec<String> = (0..tables).map(|i| format!("\"public.t{i}\"")).collect();
    format!(
        "name = \"snsrun\"\nmode = \"full-load\"\n[source]\nurl = \"{db_url}\"\n[tables]\ninclude = [{}]\n[target]\nurl = \"file://{{out}}\"\n[notify]\nsns_topic_arn = \"{topic}\"\n",
        include.join(", ")
    )
}

async fn tables(db_name: &str, n: usize) -> tokio_postgres::Client {
    let db = pg().fresh_db(db_name).await;
    for i in 0..n {
        db.batch_execute(&format!(
            "CREATE TABLE t{i} (id int PRIMARY KEY); INSERT INTO t{i} SELECT generate_series(1, {})",
            i + 1
        ))
        .await
        .unwrap();
    }
    db
}

#[tokio::test]
async fn every_event_reaches_the_topic_with_its_attributes() {
    let pg = pg();
    // 25 tables: a burst of table.loaded events, more than one PublishBatch.
    let _db = tables("godwit_sns", 25).await;
    let (topic, queue) = topic_with_queue("godwit-sns-events").await;
    let work = Work::new();
    let path = work.pipeline(&pipeline(&pg.url("godwit_sns"), &topic, 25));
    let env = aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let check = assert_ok(&work.godwit(&["check", path.to_str().unwrap()], &env));
    assert!(check.contains(&format!("topic {topic} exists")), "{check}");

    assert_ok(&work.godwit(&["run", path.to_str().unwrap()], &env));
    let events: Vec<serde_json::Value> =
        common::events(&work.out().join("_godwit/state/events.jsonl"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event_type"] == "table.loaded")
            .count(),
        25
    );
    let mut got = drain(&queue).await;
    assert_eq!(got.len(), events.len(), "one message per event: {got:?}");
    // Same JSON as the events file, event for event (SNS does not promise order).
    let mut want: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let mut bodies: Vec<String> = got
        .iter()
        .map(|(b, _)| {
            serde_json::from_str::<serde_json::Value>(b)
                .unwrap()
                .to_string()
        })
        .collect();
    want.sort();
    bodies.sort();
    assert_eq!(bodies, want);
    got.sort();
    for (body, attrs) in &got {
        let e: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            attrs["event_type"],
            e["event_type"].as_str().unwrap(),
            "{body}"
        );
        assert_eq!(attrs["severity"], e["severity"].as_str().unwrap(), "{body}");
        assert_eq!(attrs["pipeline"], "snsrun", "{body}");
        match e["table"].as_str() {
            Some(t) => assert_eq!(attrs.get("table").map(String::as_str), Some(t), "{body}"),
            // Task-level events carry no table attribute (SNS refuses an empty one).
            None => assert!(!attrs.contains_key("table"), "{body}: {attrs:?}"),
        }
    }
    let status = assert_ok(&work.godwit(&["status", path.to_str().unwrap(), "--json"], &[]));
    assert!(!status.contains("events_undelivered"), "{status}");
}

#[tokio::test]
async fn a_topic_that_cannot_take_events_neither_fails_the_run_nor_hides_them() {
    let pg = pg();
    let _db = tables("godwit_sns_missing", 2).await;
    let topic = "arn:aws:sns:us-east-1:123456789012:godwit-no-such-topic";
    let work = Work::new();
    let path = work.pipeline(&pipeline(&pg.url("godwit_sns_missing"), topic, 2));
    let env = aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let check = work.godwit(&["check", path.to_str().unwrap()], &env);
    let text = common::text(&check);
    assert_eq!(check.status.code(), Some(2), "{text}");
    assert!(text.contains("godwit-no-such-topic"), "{text}");

    let started = std::time::Instant::now();
    let run = work.godwit(
        &["run", path.to_str().unwrap(), "--log-format", "json"],
        &env,
    );
    let log = assert_ok(&run);
    // The data path did not wait for SNS beyond the grace at the end.
    assert!(started.elapsed() < std::time::Duration::from_secs(40));
    let events = common::events(&work.out().join("_godwit/state/events.jsonl"));
    assert_eq!(events.len(), 6, "every event is in the file: {events:?}");
    assert!(
        log.contains("events could not be delivered to SNS"),
        "{log}"
    );
    let status = assert_ok(&work.godwit(&["status", path.to_str().unwrap()], &[]));
    assert!(
        status.contains("events not delivered to SNS by the end of the run: 6 (task.started@"),
        "{status}"
    );
}

/// Subscribes a new queue `name` to `topic` with raw delivery and, when given, `filter` as
/// its FilterPolicy (set after subscribing, with SetSubscriptionAttributes); returns the queue
/// URL. Messages of an earlier run of the test are purged.
async fn subscribed_queue(
    conf: &aws_config::SdkConfig,
    topic: &str,
    name: &str,
    filter: Option<&str>,
) -> String {
    let sns = aws_sdk_sns::Client::new(conf);
    let sqs = aws_sdk_sqs::Client::new(conf);
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let _ = sqs.purge_queue().queue_url(&queue).send().await;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let sub = sns
        .subscribe()
        .topic_arn(topic)
        .protocol("sqs")
        .endpoint(arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap()
        .subscription_arn()
        .unwrap()
        .to_string();
    let Some(filter) = filter else {
        return queue;
    };
    sns.set_subscription_attributes()
        .subscription_arn(&sub)
        .attribute_name("FilterPolicy")
        .attribute_value(filter)
        .send()
        .await
        .unwrap();
    let attrs = sns
        .get_subscription_attributes()
        .subscription_arn(&sub)
        .send()
        .await
        .unwrap();
    assert_eq!(
        attrs
            .attributes()
            .and_then(|a| a.get("FilterPolicy"))
            .map(String::as_str),
        Some(filter)
    );
    queue
}

#[tokio::test]
async fn a_subscription_filtered_on_table_error_gets_exactly_the_table_errors() {
    let pg = pg();
    let db = tables("godwit_sns_filter", 2).await;
    // A NaN fits numeric(10,2) in PostgreSQL but not a decimal column: a data error, which
    // `[errors] data = "suspend-table"` turns into a table error.
    db.batch_execute(
        "CREATE TABLE bad (id int PRIMARY KEY, amount numeric(10,2));
         INSERT INTO bad VALUES (1, 1.50), (2, 'NaN'), (3, 2.25);",
    )
    .await
    .unwrap();
    let (topic, all) = topic_with_queue("godwit-sns-filter").await;
    let conf = aws_conf().await;
    let errors = subscribed_queue(
        &conf,
        &topic,
        "godwit-sns-filter-errors",
        Some(r#"{"event_type": ["table.error"]}"#),
    )
    .await;
    let work = Work::new();
    let path = work.pipeline(&format!(
        "name = \"snsfilter\"\nmode = \"full-load\"\n[source]\nurl = \"{}\"\n[tables]\ninclude = [\"public.t0\", \"public.t1\", \"public.bad\"]\n[target]\nurl = \"file://{{out}}\"\n[notify]\nsns_topic_arn = \"{topic}\"\n[errors]\ndata = \"suspend-table\"\n",
        pg.url("godwit_sns_filter")
    ));
    let env = aws_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = work.godwit(&["run", path.to_str().unwrap()], &env);
    assert_eq!(
        run.status.code(),
        Some(3),
        "a table in error: {}",
        common::text(&run)
    );

    let events = common::events(&work.out().join("_godwit/state/events.jsonl"));
    let want: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event_type"] == "table.error")
        .collect();
    assert_eq!(want.len(), 1, "{events:?}");
    assert_eq!(want[0]["table"], "public.bad");
    let got = drain(&errors).await;
    assert_eq!(got.len(), 1, "only table.error passes the filter: {got:?}");
    let (body, attrs) = &got[0];
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        *want[0]
    );
    let expected: BTreeMap<String, String> = [
        ("event_type", "table.error"),
        ("severity", "error"),
        ("pipeline", "snsfilter"),
        ("table", "public.bad"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(*attrs, expected);
    // The unfiltered subscription got every event: the filter, not the publisher, chose.
    assert_eq!(drain(&all).await.len(), events.len());
}

/// A moto_server of the test's own (SNS and SQS only; the pipeline writes to a local folder),
/// on a free port: it can be stopped (SIGSTOP) without touching the shared one. Killed on drop,
/// after a SIGCONT.
struct PrivateMoto {
    child: std::process::Child,
    url: String,
}

impl PrivateMoto {
    fn start() -> PrivateMoto {
        let python = std::env::var("GODWIT_PYTHON")
            .expect("GODWIT_PYTHON (the moto venv's python) is set by scripts/services.sh");
        let bin = std::path::Path::new(&python).with_file_name("moto_server");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = PrivateMoto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "moto_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        moto
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    async fn conf(&self) -> aws_config::SdkConfig {
        use aws_smithy_http_client::{Builder, tls};
        let http = Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .endpoint_url(&self.url)
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message of a queue on `conf`'s endpoint: the bodies.
async fn bodies(conf: &aws_config::SdkConfig, queue: &str) -> Vec<serde_json::Value> {
    let sqs = aws_sdk_sqs::Client::new(conf);
    let mut out = Vec::new();
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            return out;
        }
        for m in got.messages() {
            out.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn sns_stopped_during_a_run_delays_its_end_by_the_grace_at_most() {
    let pg = pg();
    let _db = tables("godwit_sns_stopped", 2).await;
    let moto = PrivateMoto::start();
    let conf = moto.conf().await;
    let sns = aws_sdk_sns::Client::new(&conf);
    let mut topics = Vec::new();
    for name in ["godwit-stopped-a", "godwit-stopped-b"] {
        let topic = sns
            .create_topic()
            .name(name)
            .send()
            .await
            .unwrap()
            .topic_arn()
            .unwrap()
            .to_string();
        let queue = subscribed_queue(
            &conf,
            &topic,
            &format!("{name}-q"),
            Some(r#"{"pipeline": ["snsrun"]}"#),
        )
        .await;
        topics.push((topic, queue));
    }
    let env = [("AWS_ENDPOINT_URL", moto.url.as_str())];

    // 1. SNS stopped for the whole run: the run ends within the grace, every event is in the
    //    file and reported undelivered (log and status).
    let work = Work::new();
    let path = work.pipeline(&pipeline(&pg.url("godwit_sns_stopped"), &topics[0].0, 2));
    moto.signal("-STOP");
    let started = std::time::Instant::now();
    let run = work.godwit(
        &["run", path.to_str().unwrap(), "--log-format", "json"],
        &env,
    );
    let took = started.elapsed();
    let log = common::assert_ok(&run);
    assert!(
        took >= std::time::Duration::from_secs(9) && took < std::time::Duration::from_secs(25),
        "the end waited for the 10 s grace, and no longer: {took:?}"
    );
    let events = common::events(&work.out().join("_godwit/state/events.jsonl"));
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "task.started",
            "full_load.started",
            "table.loaded",
            "table.loaded",
            "full_load.completed",
            "task.stopped"
        ]
    );
    assert!(
        log.contains("6 events could not be delivered to SNS"),
        "{log}"
    );
    // moto accepts the connection and never answers: the call in flight is cut off at the
    // end of the grace (before, such a call held the end of the run for as long as it hung).
    assert!(
        log.contains("SNS did not answer before the end of the run's grace period"),
        "the reason is logged: {log}"
    );
    let status = common::assert_ok(&work.godwit(&["status", path.to_str().unwrap()], &[]));
    assert!(
        status.contains("events not delivered to SNS by the end of the run: 6 (task.started@"),
        "{status}"
    );

    // 2. SNS comes back inside the grace: everything reaches the topic, nothing is reported.
    let work = Work::new();
    let path = work.pipeline(&pipeline(&pg.url("godwit_sns_stopped"), &topics[1].0, 2));
    let events_file = work.out().join("_godwit/state/events.jsonl");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_godwit"))
        .current_dir(work.path())
        .args(["run", path.to_str().unwrap()])
        .env("AWS_ENDPOINT_URL", &moto.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&events_file)
        .unwrap_or_default()
        .contains("task.stopped")
    {
        assert!(std::time::Instant::now() < until, "the run did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The run is in its grace period now.
    std::thread::sleep(std::time::Duration::from_secs(2));
    moto.signal("-CONT");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let events = common::events(&events_file);
    assert_eq!(events.len(), 6);
    let mut want: Vec<String> = events.iter().map(|e| e.to_string()).collect();
    let mut got: Vec<String> = bodies(&conf, &topics[1].1)
        .await
        .iter()
        .map(|e| e.to_string())
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "every event reached SNS once moto answered");
    let status =
        common::assert_ok(&work.godwit(&["status", path.to_str().unwrap(), "--json"], &[]));
    assert!(!status.contains("events_undelivered"), "{status}");
}
