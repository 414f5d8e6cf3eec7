//! Redis helpers for tests: the three services `scripts/services.sh` starts (a standalone
//! server, a 3-node cluster, a TLS-only server), a private `redis-server` a test can kill -9
//! and restart, and readers that return what a key holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use godwit::config::{Cache, SecretUrl};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, TlsCertificates, Value};

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| {
        panic!("{k} is not set: run the tests through scripts/test, which starts the services")
    })
}

pub fn standalone_url() -> String {
    env("GODWIT_REDIS_URL")
}

pub fn cluster_url() -> String {
    env("GODWIT_REDIS_CLUSTER_URL")
}

pub fn tls_url() -> String {
    env("GODWIT_REDIS_TLS_URL")
}

/// The CA that signed the TLS Redis's certificate.
pub fn ca_path() -> PathBuf {
    PathBuf::from(env("GODWIT_REDIS_CA"))
}

/// A `[cache]` config for the transport (no projections).
pub fn cache(url: &str, cluster: bool, tls_ca: Option<PathBuf>) -> Cache {
    Cache {
        url: SecretUrl::new(url.to_string()),
        cluster,
        tls_ca,
        key_prefix: String::new(),
        wait_replicas: 0,
        projections: Vec::new(),
    }
}

/// A test's own client to one of the services (not the code under test).
pub enum TestRedis {
    Single(MultiplexedConnection),
    Cluster {
        conn: ClusterConnection,
        primaries: Vec<MultiplexedConnection>,
    },
}

fn tls_client(url: &str) -> Client {
    let ca = std::fs::read(ca_path()).expect("read the test CA");
    Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        },
    )
    .expect("TLS client")
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn connect_url(url: &str) -> MultiplexedConnection {
    install_crypto();
    let client = if url.starts_with("rediss://") {
        tls_client(url)
    } else {
        Client::open(url).expect("redis client")
    };
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test Redis")
}

pub async fn standalone() -> TestRedis {
    TestRedis::Single(connect_url(&standalone_url()).await)
}

pub async fn tls() -> TestRedis {
    TestRedis::Single(connect_url(&tls_url()).await)
}

pub async fn cluster() -> TestRedis {
    let seed = cluster_url();
    let conn = redis::cluster::ClusterClient::new(vec![seed.clone()])
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("connect to the test cluster");
    let mut primaries = Vec::new();
    for addr in cluster_primaries(&seed).await {
        primaries.push(connect_url(&format!("redis://{addr}")).await);
    }
    TestRedis::Cluster { conn, primaries }
}

/// `host:port` of every primary of the cluster that `seed` belongs to (CLUSTER SLOTS).
pub async fn cluster_primaries(seed: &str) -> Vec<String> {
    let mut c = connect_url(seed).await;
    let v: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut out = BTreeSet::new();
    if let Value::Array(ranges) = v {
        for r in ranges {
            if let Value::Array(parts) = r
                && let Some(Value::Array(node)) = parts.get(2)
            {
                let host = text(&node[0]);
                let Value::Int(port) = node[1] else { continue };
                out.insert(format!("{host}:{port}"));
            }
        }
    }
    out.into_iter().collect()
}

/// What a key holds, as read back with the type's own commands.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    None,
    String(Vec<u8>),
    Hash(BTreeMap<String, String>),
    /// Members with their scores, in score order.
    Zset(Vec<(String, f64)>),
    Set(BTreeSet<String>),
    /// Members with (longitude, latitude) from GEOPOS ([`TestRedis::read_geo`]).
    Geo(BTreeMap<String, (f64, f64)>),
    /// (id, fields) in stream order.
    Stream(Vec<(String, Vec<(String, String)>)>),
}

/// A key's value and its PTTL (-1: no expiry, -2: no key).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadKey {
    pub value: KeyValue,
    pub pttl: i64,
}

pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Okay => "OK".into(),
        other => format!("{other:?}"),
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Nil => Vec::new(),
        other => panic!("expected an array, got {other:?}"),
    }
}

impl TestRedis {
    /// Runs one command on the node that holds `key` (any node when the command has no key).
    pub async fn query(&mut self, cmd: &Cmd) -> Value {
        self.try_query(cmd).await.expect("test Redis command")
    }

    pub async fn try_query(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            TestRedis::Single(c) => cmd.query_async(c).await,
            TestRedis::Cluster { conn, .. } => cmd.query_async(conn).await,
        }
    }

    /// Runs `cmd` on every primary.
    pub async fn on_primaries(&mut self, cmd: &Cmd) -> Vec<Value> {
        let mut out = Vec::new();
        match self {
            TestRedis::Single(c) => out.push(cmd.query_async(c).await.unwrap()),
            TestRedis::Cluster { primaries, .. } => {
                for c in primaries {
                    out.push(cmd.query_async(c).await.unwrap());
                }
            }
        }
        out
    }

    /// FLUSHALL on every primary.
    pub async fn flush_all(&mut self) {
        self.on_primaries(&redis::cmd("FLUSHALL")).await;
    }

    /// Every key matching `pattern` on every primary, sorted.
    pub async fn scan(&mut self, pattern: &str) -> Vec<Vec<u8>> {
        let mut keys = BTreeSet::new();
        let conns: Vec<MultiplexedConnection> = match self {
            TestRedis::Single(c) => vec![c.clone()],
            TestRedis::Cluster { primaries, .. } => primaries.clone(),
        };
        for mut c in conns {
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                keys.extend(batch);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        keys.into_iter().collect()
    }

    /// Deletes every key matching `pattern` (a test's own keys, left by an earlier run).
    pub async fn delete_matching(&mut self, pattern: &str) {
        for k in self.scan(pattern).await {
            self.query(redis::cmd("DEL").arg(&k)).await;
        }
    }

    /// The key's type, value and PTTL.
    pub async fn read_key(&mut self, key: &[u8]) -> ReadKey {
        let kind = text(&self.query(redis::cmd("TYPE").arg(key)).await);
        let pttl = match self.query(redis::cmd("PTTL").arg(key)).await {
            Value::Int(i) => i,
            other => panic!("PTTL gave {other:?}"),
        };
        let value = match kind.as_str() {
            "none" => KeyValue::None,
            "string" => match self.query(redis::cmd("GET").arg(key)).await {
                Value::BulkString(b) => KeyValue::String(b),
                other => panic!("GET gave {other:?}"),
            },
            "hash" => {
                let v = items(self.query(redis::cmd("HGETALL").arg(key)).await);
                KeyValue::Hash(v.chunks(2).map(|p| (text(&p[0]), text(&p[1]))).collect())
            }
            "set" => {
                let v = items(self.query(redis::cmd("SMEMBERS").arg(key)).await);
                KeyValue::Set(v.iter().map(text).collect())
            }
            "zset" => {
                let v = items(
                    self.query(
                        redis::cmd("ZRANGE")
                            .arg(key)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES"),
                    )
                    .await,
                );
                // RESP2: flat member, score; RESP3: [member, score] pairs.
                let flat: Vec<Value> = v
                    .into_iter()
                    .flat_map(|x| match x {
                        Value::Array(p) => p,
                        x => vec![x],
                    })
                    .collect();
                KeyValue::Zset(
                    flat.chunks(2)
                        .map(|p| (text(&p[0]), text(&p[1]).parse().unwrap()))
                        .collect(),
                )
            }
            "stream" => {
                let v = items(
                    self.query(redis::cmd("XRANGE").arg(key).arg("-").arg("+"))
                        .await,
                );
                KeyValue::Stream(
                    v.into_iter()
                        .map(|e| {
                            let e = items(e);
                            let fields = items(e[1].clone());
                            (
                                text(&e[0]),
                                fields
                                    .chunks(2)
                                    .map(|p| (text(&p[0]), text(&p[1])))
                                    .collect(),
                            )
                        })
                        .collect(),
                )
            }
            other => panic!("read_key: type {other} is not handled"),
        };
        ReadKey { value, pttl }
    }

    /// A geo set (a sorted set to Redis, so [`TestRedis::read_key`] shows it as a zset): every
    /// member's (longitude, latitude) from GEOPOS.
    pub async fn read_geo(&mut self, key: &[u8]) -> KeyValue {
        let members: Vec<String> = items(
            self.query(redis::cmd("ZRANGE").arg(key).arg(0).arg(-1))
                .await,
        )
        .iter()
        .map(text)
        .collect();
        if members.is_empty() {
            return KeyValue::Geo(BTreeMap::new());
        }
        let mut cmd = redis::cmd("GEOPOS");
        cmd.arg(key);
        for m in &members {
            cmd.arg(m);
        }
        let pos = items(self.query(&cmd).await);
        let mut out = BTreeMap::new();
        for (m, p) in members.into_iter().zip(pos) {
            let xy = items(p);
            out.insert(
                m,
                (text(&xy[0]).parse().unwrap(), text(&xy[1]).parse().unwrap()),
            );
        }
        KeyValue::Geo(out)
    }

    /// Creates (or resets) an ACL user on every primary: `on >password ~* &*` and `rules`
    /// (e.g. `["+get", "+set"]`).
    pub async fn acl_user(&mut self, name: &str, password: &str, rules: &[&str]) {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*");
        for r in rules {
            cmd.arg(*r);
        }
        self.on_primaries(&cmd).await;
    }
}

/// `url` with `user:password@` put in.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    format!("{scheme}://{user}:{password}@{rest}")
}

// ---------------------------------------------------------------- a private server

/// Options for [`private_redis`].
#[derive(Default, Clone)]
pub struct PrivateOpts {
    /// `appendonly yes` with `appendfsync always`: what was acknowledged survives kill -9.
    pub appendonly: bool,
}

/// A `redis-server` of the test's own, on a free port in a temporary folder; killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    opts: PrivateOpts,
    child: Option<Child>,
}

pub async fn private_redis(opts: PrivateOpts) -> PrivateRedis {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut r = PrivateRedis {
        port,
        dir: tempfile::tempdir().unwrap(),
        opts,
        child: None,
    };
    r.start().await;
    r
}

impl PrivateRedis {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("");
        if self.opts.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = Client::open(self.url())
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again with the same folder and port (kill9 first).
    pub async fn restart(&mut self) {
        self.kill9();
        self.start().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}
