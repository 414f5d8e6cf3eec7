//! The Redis transport (src/sink/redis/conn.rs) against the standalone, cluster and TLS Redis
//! that scripts/services.sh starts, and against private servers killed with -9.
//! Each test uses keys of its own prefix, so the tests can share the services.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::redis::{self as tr, KeyValue, PrivateOpts, TestRedis};
use godwit::sink::redis::{ErrorClass, Redis, Routed, hash_tag, slot};
use redis::Value;

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

/// 10,000 commands of several kinds over many slots, with reads of keys written earlier in the
/// same batch: results in input order, then every key read back.
async fn mixed(redis: &Redis, check: &mut TestRedis, prefix: &str) {
    check.delete_matching(&format!("{prefix}:*")).await;
    let n = 2000;
    let mut cmds = Vec::new();
    for i in 0..n {
        let s = format!("{prefix}:s:{i}");
        let h = format!("{prefix}:h:{i}");
        let z = format!("{prefix}:z:{}", i % 37);
        let set = format!("{prefix}:set:{{{}}}", i % 11);
        cmds.push(Routed::new(
            s.clone(),
            cmd("SET").arg(&s).arg(format!("v{i}")).clone(),
        ));
        cmds.push(Routed::new(
            h.clone(),
            cmd("HSET")
                .arg(&h)
                .arg("a")
                .arg(i)
                .arg("b")
                .arg(format!("x{i}"))
                .clone(),
        ));
        cmds.push(Routed::new(
            z.clone(),
            cmd("ZADD").arg(&z).arg(i).arg(format!("m{i}")).clone(),
        ));
        cmds.push(Routed::new(
            set.clone(),
            cmd("SADD").arg(&set).arg(i).clone(),
        ));
        cmds.push(Routed::new(s.clone(), cmd("GET").arg(&s).clone()));
    }
    assert_eq!(cmds.len(), 10_000);
    let out = redis.exec(cmds).await.expect("exec");
    assert_eq!(out.len(), 10_000);
    for i in 0..n as usize {
        let r = &out[i * 5..i * 5 + 5];
        assert_eq!(r[0], Value::Okay, "SET {i}");
        assert_eq!(r[1], Value::Int(2), "HSET {i}");
        assert_eq!(r[2], Value::Int(1), "ZADD {i}");
        assert_eq!(r[3], Value::Int(1), "SADD {i}");
        assert_eq!(
            r[4],
            Value::BulkString(format!("v{i}").into_bytes()),
            "GET {i}"
        );
    }
    // Read back through the test's own client.
    for i in [0, 1, 977, n - 1] {
        let got = check.read_key(format!("{prefix}:s:{i}").as_bytes()).await;
        assert_eq!(got.value, KeyValue::String(format!("v{i}").into_bytes()));
        assert_eq!(got.pttl, -1);
        let got = check.read_key(format!("{prefix}:h:{i}").as_bytes()).await;
        let want: BTreeMap<String, String> = [
            ("a".to_string(), i.to_string()),
            ("b".to_string(), format!("x{i}")),
        ]
        .into();
        assert_eq!(got.value, KeyValue::Hash(want));
    }
    let z = check.read_key(format!("{prefix}:z:5").as_bytes()).await;
    let want: Vec<(String, f64)> = (0..n)
        .filter(|i| i % 37 == 5)
        .map(|i| (format!("m{i}"), i as f64))
        .collect();
    assert_eq!(z.value, KeyValue::Zset(want));
    let s = check
        .read_key(format!("{prefix}:set:{{3}}").as_bytes())
        .await;
    let want = (0..n)
        .filter(|i| i % 11 == 3)
        .map(|i| i.to_string())
        .collect();
    assert_eq!(s.value, KeyValue::Set(want));
    assert_eq!(check.scan(&format!("{prefix}:s:*")).await.len(), n as usize);
    assert_eq!(
        check.scan(&format!("{prefix}:*")).await.len(),
        2 * n as usize + 37 + 11
    );
}

#[tokio::test]
async fn exec_in_order_standalone() {
    let r = Redis::connect(&tr::cache(&tr::standalone_url(), false, None))
        .await
        .unwrap();
    let mut check = tr::standalone().await;
    mixed(&r, &mut check, "t-mixed-single").await;
}

#[tokio::test]
async fn exec_in_order_cluster() {
    let r = Redis::connect(&tr::cache(&tr::cluster_url(), true, None))
        .await
        .unwrap();
    let mut check = tr::cluster().await;
    mixed(&r, &mut check, "t-mixed-cluster").await;
    // The keys really are spread over the three primaries.
    for addr in tr::cluster_primaries(&tr::cluster_url()).await {
        let mut c = tr::connect_url(&format!("redis://{addr}")).await;
        let n: i64 = cmd("DBSIZE").query_async(&mut c).await.unwrap();
        assert!(n > 100, "{addr} holds {n} keys");
    }
}

#[tokio::test]
async fn exec_in_order_tls() {
    let r = Redis::connect(&tr::cache(&tr::tls_url(), false, Some(tr::ca_path())))
        .await
        .unwrap();
    let mut check = tr::tls().await;
    mixed(&r, &mut check, "t-mixed-tls").await;
}

#[tokio::test]
async fn slots_agree_with_the_cluster() {
    let mut c = tr::connect_url(&tr::cluster_url()).await;
    for key in [
        "",
        "a",
        "foo",
        "{user1}:x",
        "x{}y",
        "{}{a}",
        "a{b}c{d}",
        "é€",
        "}{z}",
        "key:12345",
    ] {
        let want: i64 = cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(i64::from(slot(key.as_bytes())), want, "slot of {key:?}");
    }
    assert_eq!(hash_tag(b"{user1}:x"), Some(&b"user1"[..]));
    assert_eq!(hash_tag(b"x{}y"), None);
}

const GUARDED_SET: &str = "local v = tonumber(redis.call('HGET', KEYS[1], '_v') or '-1') \
    if tonumber(ARGV[1]) > v then redis.call('HSET', KEYS[1], '_v', ARGV[1], 'val', ARGV[2]) return 1 end \
    return 0";

async fn noscript(r: &Redis, check: &mut TestRedis, prefix: &str) {
    check.delete_matching(&format!("{prefix}:*")).await;
    let script = r.load_script(GUARDED_SET).await.unwrap();
    let batch = |version: i64| {
        (0..200)
            .map(|i| {
                let key = format!("{prefix}:{i}");
                Routed::new(
                    key.clone(),
                    script.cmd(&[&key], &[version.to_string(), format!("v{version}-{i}")]),
                )
            })
            .collect::<Vec<_>>()
    };
    let out = r.exec(batch(1)).await.unwrap();
    assert!(out.iter().all(|v| *v == Value::Int(1)));
    check.on_primaries(cmd("SCRIPT").arg("FLUSH")).await;
    let before = check
        .on_primaries(cmd("SCRIPT").arg("EXISTS").arg(script.sha()))
        .await;
    assert!(
        before
            .iter()
            .all(|v| *v == Value::Array(vec![Value::Int(0)])),
        "{before:?}"
    );
    // NOSCRIPT is met, the script loaded again, the groups resent.
    let out = r.exec(batch(2)).await.unwrap();
    assert!(out.iter().all(|v| *v == Value::Int(1)), "{out:?}");
    // An older version is refused by the guard.
    let out = r.exec(batch(1)).await.unwrap();
    assert!(out.iter().all(|v| *v == Value::Int(0)));
    for i in [0, 57, 199] {
        let got = check.read_key(format!("{prefix}:{i}").as_bytes()).await;
        let want: BTreeMap<String, String> =
            [("_v".into(), "2".into()), ("val".into(), format!("v2-{i}"))].into();
        assert_eq!(got.value, KeyValue::Hash(want));
    }
}

#[tokio::test]
async fn noscript_after_script_flush_standalone() {
    let r = Redis::connect(&tr::cache(&tr::standalone_url(), false, None))
        .await
        .unwrap();
    noscript(&r, &mut tr::standalone().await, "t-noscript-single").await;
}

#[tokio::test]
async fn noscript_after_script_flush_cluster() {
    let r = Redis::connect(&tr::cache(&tr::cluster_url(), true, None))
        .await
        .unwrap();
    noscript(&r, &mut tr::cluster().await, "t-noscript-cluster").await;
}

#[tokio::test]
async fn tls_with_a_wrong_ca_is_a_certificate_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.crt");
    let ok = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "1",
        ])
        .arg("-keyout")
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .args([
            "-subj",
            "/CN=another CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let e = match Redis::connect(&tr::cache(&tr::tls_url(), false, Some(ca))).await {
        Ok(_) => panic!("a server certificate from another CA was accepted"),
        Err(e) => e,
    };
    assert_eq!(e.class(), ErrorClass::Tls, "{e}");
    assert!(!e.retryable());
    let m = e.to_string();
    assert!(m.contains(&tr::tls_url()), "{m}");
    assert!(m.contains("cache.tls_ca"), "{m}");
    assert!(m.to_lowercase().contains("certificate"), "{m}");
    assert_eq!(m.lines().count(), 1, "{m}");
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_password() {
    let mut admin = tr::standalone().await;
    admin.acl_user("t_auth", "right-secret-1", &["+@all"]).await;
    let url = tr::with_user(&tr::standalone_url(), "t_auth", "wrong-Secret-9");
    let e = match Redis::connect(&tr::cache(&url, false, None)).await {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => e,
    };
    let m = e.to_string();
    assert_eq!(e.class(), ErrorClass::Auth, "{m}");
    assert!(!e.retryable());
    assert!(!m.contains("wrong-Secret-9"), "{m}");
    assert!(!m.contains("right-secret-1"), "{m}");
    assert!(m.contains("user:password in cache.url"), "{m}");
    assert!(m.contains("t_auth:***@"), "{m}");
    // The right password works.
    let url = tr::with_user(&tr::standalone_url(), "t_auth", "right-secret-1");
    Redis::connect(&tr::cache(&url, false, None)).await.unwrap();
}

/// The README's least-privilege ACL rule, as ACL SETUSER arguments.
fn readme_acl_rules() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("ACL SETUSER godwit "))
        .expect("README has an `ACL SETUSER godwit …` line");
    line.split_whitespace()
        .filter(|w| w.starts_with('+') || w.starts_with('-'))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn acl_user_without_a_command_gets_noperm_with_the_hint() {
    for cluster in [false, true] {
        let (url, mut admin) = if cluster {
            (tr::cluster_url(), tr::cluster().await)
        } else {
            (tr::standalone_url(), tr::standalone().await)
        };
        let rules = readme_acl_rules();
        assert!(rules.iter().any(|r| r == "+hdel"), "{rules:?}");
        let mut without: Vec<&str> = rules
            .iter()
            .map(String::as_str)
            .filter(|r| *r != "+hdel")
            .collect();
        without.push("-hdel");
        admin.acl_user("t_acl", "acl-pw-1", &without).await;
        admin.delete_matching("t-acl:*").await;
        let r = Redis::connect(&tr::cache(
            &tr::with_user(&url, "t_acl", "acl-pw-1"),
            cluster,
            None,
        ))
        .await
        .expect("the README's rules are enough to connect");
        // Everything the rules allow works …
        let key = "t-acl:{k}";
        let script = r
            .load_script("return redis.call('HSET', KEYS[1], 'x', ARGV[1])")
            .await
            .unwrap();
        let ok = r
            .exec(vec![
                Routed::new(key, cmd("HSET").arg(key).arg("f").arg("1").clone()),
                Routed::new(key, script.cmd(&[key], &["2"])),
                Routed::new(
                    key,
                    cmd("PEXPIREAT").arg(key).arg(4_000_000_000_000u64).clone(),
                ),
            ])
            .await
            .unwrap();
        assert_eq!(ok[0], Value::Int(1));
        r.nodes().await.unwrap();
        // … HDEL does not.
        let e = r
            .exec(vec![Routed::new(
                key,
                cmd("HDEL").arg(key).arg("f").clone(),
            )])
            .await
            .unwrap_err();
        let m = e.to_string();
        assert_eq!(e.class(), ErrorClass::Permission, "{m}");
        assert_eq!(e.code(), Some("NOPERM"));
        assert!(m.contains("NOPERM"), "{m}");
        assert!(m.contains("hset hget hmget hgetall hdel"), "{m}");
        assert!(!m.contains("acl-pw-1"), "{m}");
        assert!(!e.retryable());
    }
}

#[tokio::test]
async fn unknown_command_and_wrong_type_are_not_retryable() {
    let r = Redis::connect(&tr::cache(&tr::standalone_url(), false, None))
        .await
        .unwrap();
    let e = r
        .exec(vec![Routed::new(
            "t-unk",
            cmd("NOSUCHCMD").arg("t-unk").clone(),
        )])
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::UnknownCommand, "{e}");
    let key = "t-wrongtype";
    let e = r
        .exec(vec![
            Routed::new(key, cmd("SET").arg(key).arg("x").clone()),
            Routed::new(key, cmd("HSET").arg(key).arg("f").arg("v").clone()),
        ])
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Command, "{e}");
    assert_eq!(e.code(), Some("WRONGTYPE"));
    assert!(e.to_string().contains("command 2 (HSET)"), "{e}");
}

#[tokio::test]
async fn kill9_mid_exec_then_exec_retrying_succeeds_after_restart() {
    let mut server = tr::private_redis(PrivateOpts { appendonly: true }).await;
    let r = Arc::new(
        Redis::connect(&tr::cache(&server.url(), false, None))
            .await
            .unwrap(),
    );
    let n = 100_000;
    let cmds: Vec<Routed> = (0..n)
        .map(|i| {
            let k = format!("k:{i}");
            Routed::new(k.clone(), cmd("SET").arg(&k).arg(i).clone())
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let (r, stop) = (r.clone(), stop.clone());
        tokio::spawn(async move {
            r.exec_retrying(cmds, -1, move || stop.load(Ordering::Relaxed))
                .await
        })
    };
    // Kill once part of the batch has landed.
    let mut watch = tr::connect_url(&server.url()).await;
    let mut seen = 0i64;
    for _ in 0..2000 {
        seen = cmd("DBSIZE").query_async(&mut watch).await.unwrap_or(0);
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(seen > 0 && seen < n, "{seen} keys before the kill");
    server.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !task.is_finished(),
        "exec_retrying gave up while the server was down"
    );
    server.restart().await;
    let out = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("exec_retrying finished after the restart")
        .unwrap()
        .expect("exec_retrying succeeded");
    assert_eq!(out.len(), n as usize);
    assert!(out.iter().all(|v| *v == Value::Okay));
    let mut check = TestRedis::Single(tr::connect_url(&server.url()).await);
    assert_eq!(check.scan("k:*").await.len(), n as usize);
    for i in [0, 4_321, n - 1] {
        let got = check.read_key(format!("k:{i}").as_bytes()).await;
        assert_eq!(got.value, KeyValue::String(i.to_string().into_bytes()));
    }
}

#[tokio::test]
async fn exec_retrying_gives_up_after_the_retries_and_on_stop() {
    let mut server = tr::private_redis(PrivateOpts::default()).await;
    let r = Redis::connect(&tr::cache(&server.url(), false, None))
        .await
        .unwrap();
    server.kill9();
    let one = || vec![Routed::new("k", cmd("SET").arg("k").arg(1).clone())];
    let t0 = std::time::Instant::now();
    let e = r.exec_retrying(one(), 2, || false).await.unwrap_err();
    assert!(e.retryable(), "{e}");
    assert!(e.to_string().contains(&server.url()), "{e}");
    // Two retries: 100 ms + 200 ms of back-off.
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    let t0 = std::time::Instant::now();
    r.exec_retrying(one(), -1, || true).await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn nodes_report_each_cluster_primary() {
    let primaries = tr::cluster_primaries(&tr::cluster_url()).await;
    assert_eq!(primaries.len(), 3);
    let policies = ["allkeys-lru", "volatile-ttl", "noeviction"];
    let mut want = BTreeMap::new();
    for (addr, policy) in primaries.iter().zip(policies) {
        let mut c = tr::connect_url(&format!("redis://{addr}")).await;
        let _: () = cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut c)
            .await
            .unwrap();
        want.insert(addr.clone(), policy.to_string());
    }
    let r = Redis::connect(&tr::cache(&tr::cluster_url(), true, None))
        .await
        .unwrap();
    let nodes = r.nodes().await.unwrap();
    let got: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.address.clone(), n.maxmemory_policy.clone()))
        .collect();
    assert_eq!(got, want);
    for n in &nodes {
        assert_eq!(n.role, "master");
        assert!(n.used_memory > 0);
        assert!(n.redis_version.starts_with(char::is_numeric), "{n:?}");
    }
}

#[tokio::test]
async fn nodes_and_wait_on_a_standalone_server() {
    let server = tr::private_redis(PrivateOpts::default()).await;
    let r = Redis::connect(&tr::cache(&server.url(), false, None))
        .await
        .unwrap();
    let nodes = r.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].address, format!("127.0.0.1:{}", server.port));
    assert_eq!(nodes[0].maxmemory_policy, "noeviction");
    // No writes since the last call: nothing to wait for.
    r.wait_replicas(1, Duration::from_millis(100))
        .await
        .unwrap();
    r.exec(vec![Routed::new("w", cmd("SET").arg("w").arg(1).clone())])
        .await
        .unwrap();
    // A server without replicas cannot acknowledge one.
    let e = r
        .wait_replicas(1, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("got 0 of 1 replicas"), "{e}");
    r.wait_replicas(0, Duration::from_millis(100))
        .await
        .unwrap();
}

/// Moves an empty slot from its primary to another one (both nodes told directly).
async fn assign_slot(slot: u16, from: &str, to: &str) {
    let mut to_c = tr::connect_url(&format!("redis://{to}")).await;
    let mut from_c = tr::connect_url(&format!("redis://{from}")).await;
    let to_id: String = cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut to_c)
        .await
        .unwrap();
    let _: () = cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("NODE")
        .arg(&to_id)
        .query_async(&mut to_c)
        .await
        .unwrap();
    let _: String = cmd("CLUSTER")
        .arg("BUMPEPOCH")
        .query_async(&mut to_c)
        .await
        .unwrap();
    let _: () = cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("NODE")
        .arg(&to_id)
        .query_async(&mut from_c)
        .await
        .unwrap();
}

/// The primary that answers for `key` (the others answer MOVED).
async fn owner_of(key: &str) -> String {
    for addr in tr::cluster_primaries(&tr::cluster_url()).await {
        let mut c = tr::connect_url(&format!("redis://{addr}")).await;
        if cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut c)
            .await
            .is_ok()
        {
            return addr;
        }
    }
    panic!("no primary holds {key}");
}

#[tokio::test]
async fn cluster_pipeline_follows_a_moved_slot() {
    // A slot none of the other tests in this file write to (nor slot 0, where keyless PINGs go).
    let mut used: std::collections::BTreeSet<u16> = [0].into();
    for i in 0..2000 {
        for kind in ["s", "h"] {
            used.insert(slot(format!("t-mixed-cluster:{kind}:{i}").as_bytes()));
        }
    }
    for i in 0..37 {
        used.insert(slot(format!("t-mixed-cluster:z:{i}").as_bytes()));
    }
    for i in 0..11 {
        used.insert(slot(i.to_string().as_bytes()));
    }
    for i in 0..200 {
        used.insert(slot(format!("t-noscript-cluster:{i}").as_bytes()));
    }
    used.insert(slot(b"k"));
    let tag = (0..)
        .map(|n| format!("t-moved-{n}"))
        .find(|t| !used.contains(&slot(t.as_bytes())))
        .unwrap();
    let s = slot(tag.as_bytes());
    let key = format!("{{{tag}}}:k");
    let a = owner_of(&key).await;
    let b = tr::cluster_primaries(&tr::cluster_url())
        .await
        .into_iter()
        .find(|x| *x != a)
        .unwrap();
    let r = Redis::connect(&tr::cache(&tr::cluster_url(), true, None))
        .await
        .unwrap();
    let mut on_a = tr::connect_url(&format!("redis://{a}")).await;
    let _: i64 = cmd("DEL").arg(&key).query_async(&mut on_a).await.unwrap();
    r.exec(vec![Routed::new(key.clone(), cmd("GET").arg(&key).clone())])
        .await
        .unwrap();
    // The transport still routes slot s to a; a now answers MOVED to b.
    assign_slot(s, &a, &b).await;
    let result = r
        .exec(vec![
            Routed::new(key.clone(), cmd("SET").arg(&key).arg("2").clone()),
            Routed::new(key.clone(), cmd("GET").arg(&key).clone()),
        ])
        .await;
    let mut on_b = tr::connect_url(&format!("redis://{b}")).await;
    let on_b_value: Option<String> = cmd("GET").arg(&key).query_async(&mut on_b).await.unwrap();
    // Put the slot back before asserting.
    let _: i64 = cmd("DEL").arg(&key).query_async(&mut on_b).await.unwrap();
    assign_slot(s, &b, &a).await;
    let out = result.expect("exec follows MOVED");
    assert_eq!(out, vec![Value::Okay, Value::BulkString(b"2".to_vec())]);
    assert_eq!(on_b_value.as_deref(), Some("2"));
}

#[tokio::test]
async fn read_key_reads_every_type() {
    let server = tr::private_redis(PrivateOpts::default()).await;
    let r = Redis::connect(&tr::cache(&server.url(), false, None))
        .await
        .unwrap();
    let c = |parts: &[&str]| {
        let mut x = cmd(parts[0]);
        for p in &parts[1..] {
            x.arg(*p);
        }
        Routed::new(parts[1], x)
    };
    r.exec(vec![
        c(&["SET", "str", "v", "PX", "100000"]),
        c(&["GEOADD", "geo", "13.361389", "38.115556", "palermo"]),
        c(&["XADD", "st", "1-1", "a", "1", "b", "2"]),
        c(&["XADD", "st", "2-1", "a", "3"]),
    ])
    .await
    .unwrap();
    let mut check = TestRedis::Single(tr::connect_url(&server.url()).await);
    let s = check.read_key(b"str").await;
    assert_eq!(s.value, KeyValue::String(b"v".to_vec()));
    assert!(s.pttl > 90_000 && s.pttl <= 100_000, "{}", s.pttl);
    let KeyValue::Geo(g) = check.read_geo(b"geo").await else {
        unreachable!()
    };
    let (lon, lat) = g["palermo"];
    assert!(
        (lon - 13.361389).abs() < 1e-5 && (lat - 38.115556).abs() < 1e-5,
        "{g:?}"
    );
    assert!(matches!(
        check.read_key(b"geo").await.value,
        KeyValue::Zset(_)
    ));
    let st = check.read_key(b"st").await;
    assert_eq!(
        st.value,
        KeyValue::Stream(vec![
            (
                "1-1".into(),
                vec![("a".into(), "1".into()), ("b".into(), "2".into())]
            ),
            ("2-1".into(), vec![("a".into(), "3".into())]),
        ])
    );
    assert_eq!(
        check.read_key(b"nothing").await,
        tr::ReadKey {
            value: KeyValue::None,
            pttl: -2
        }
    );
}
