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
    let sns = aws_sdk_sns::Client::new(&aws_conf().await);
    let topic = sns
        .create_topic()
        .name(name)
        .send()
        .await
        .unwrap()
        .topic_arn()
        .unwrap()
        .to_string();
    let sqs = sqs().await;
    let queue = sqs
        .create_queue()
        .queue_name(format!("{name}-q"))
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    // Messages of an earlier run of this test go.
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
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();
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
