//! Redis transport: one [`Redis`] per pipeline, over a standalone server (a multiplexed
//! `ConnectionManager` that reconnects by itself) or a Redis Cluster (the crate's async cluster
//! connection, which follows the slot map, MOVED/ASK redirections and reconnects).
//!
//! [`Redis::exec`] sends a batch of commands as pipelines: commands are grouped by hash slot
//! (in cluster mode a pipeline must stay in one slot — so that the crate can send it whole again
//! to a slot's new owner on MOVED/ASK; in standalone mode slots are folded into a few lanes), each group is sent in order as pipelines of at most [`PIPELINE_COMMANDS`]
//! commands, and up to [`GROUPS_IN_FLIGHT`] groups run at once. Two commands on the same key are
//! always in the same group, so they run in input order. Results come back in input order.
//!
//! Errors become a [`RedisError`]: one sentence naming the server (password removed), Redis's
//! error code and text, and what to do, with an [`ErrorClass`] that says whether retrying helps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{Client, Cmd, ErrorKind, Pipeline, ServerError, TlsCertificates, Value};

use super::ops::Resp;
use futures_util::stream::{self, StreamExt, TryStreamExt};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Most commands in one pipeline (a larger group is sent as several pipelines, in order).
pub const PIPELINE_COMMANDS: usize = 1000;
/// Groups (slot groups in cluster mode, lanes in standalone mode) in flight at once.
pub const GROUPS_IN_FLIGHT: usize = 32;
/// Keys a `SCAN` page asks for.
const SCAN_COUNT: usize = 2000;
/// Standalone mode: slots are folded into this many lanes that run in parallel.
pub const STANDALONE_LANES: u16 = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The commands godwit's Redis sink sends (writes, the script's own calls, `check` and
/// `inspect`), for an ACL rule (see README, *Redis ACL*; a test keeps the two the same).
pub const ACL_COMMANDS: &[&str] = &[
    "HSET",
    "HGET",
    "HMGET",
    "HGETALL",
    "HDEL",
    "DEL",
    "SET",
    "GET",
    "PEXPIRE",
    "PEXPIREAT",
    "PERSIST",
    "ZADD",
    "ZREM",
    "ZRANGE",
    "SADD",
    "SREM",
    "SMEMBERS",
    "SRANDMEMBER",
    "GEOADD",
    "XADD",
    "XREVRANGE",
    "PUBLISH",
    "EVALSHA",
    "EVAL",
    "SCRIPT|LOAD",
    "SCAN",
    "TYPE",
    "PING",
    "INFO",
    "CONFIG|GET",
    "CLUSTER|SLOTS",
    "WAIT",
    "MULTI",
    "EXEC",
    "WATCH",
    "DISCARD",
    "RESTORE",
];

// ---------------------------------------------------------------- slots

/// CRC16/XMODEM (polynomial 0x1021), the checksum Redis Cluster uses for key slots.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[(((crc >> 8) as u8) ^ b) as usize]
    })
}

/// The part of `key` that decides its slot: the bytes between the first `{` and the first `}`
/// after it, when that is not empty. `None`: the whole key decides.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

/// The Redis Cluster hash slot of `key` (0..16384), with the `{hash tag}` rule.
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// How commands are grouped: by slot on a cluster (a pipeline or a script call must stay in one
/// slot there), by a few lanes of slots on a standalone server (any keys may share a call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    BySlot,
    ByLane,
}

impl Grouping {
    /// The group of a key in `slot`: commands on one key always share a group, so they run in
    /// order.
    pub fn group(self, slot: u16) -> u16 {
        match self {
            Grouping::BySlot => slot,
            Grouping::ByLane => slot % STANDALONE_LANES,
        }
    }
}

// ---------------------------------------------------------------- errors

/// What kind of failure a [`RedisError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Connection refused/reset, timeouts, LOADING, TRYAGAIN, CLUSTERDOWN, MASTERDOWN, READONLY,
    /// BUSY, MOVED/ASK: retrying (after a pause) can succeed.
    Retryable,
    /// NOAUTH, WRONGPASS: the credentials in `cache.url` are wrong.
    Auth,
    /// NOPERM: the ACL user lacks a command or key.
    Permission,
    /// The server's certificate was not accepted.
    Tls,
    /// The server does not know a command.
    UnknownCommand,
    /// NOSCRIPT: a script is not in the server's script cache (handled inside `exec`).
    NoScript,
    /// The configuration cannot work (a bad URL, an unreadable CA file).
    Config,
    /// Any other error the server returned for a command.
    Command,
}

/// A failed Redis operation, with a message for users (no password in it).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RedisError {
    message: String,
    class: ErrorClass,
    code: Option<String>,
}

impl RedisError {
    /// Whether sending the same commands again later can succeed.
    pub fn retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }

    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Redis's error code (`NOPERM`, `WRONGPASS`, …), when the server sent one.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    fn new(
        server: &Server,
        what: &str,
        code: Option<String>,
        text: &str,
        class: ErrorClass,
    ) -> Self {
        let text = server.scrub(text.trim().trim_end_matches('.'));
        let hint = hint(class);
        let detail = match &code {
            Some(c) if !text.starts_with(c.as_str()) => format!("{c} {text}"),
            _ => text,
        };
        RedisError {
            message: format!("Redis {}: {what} failed: {detail}; {hint}", server.shown),
            class,
            code,
        }
    }

    fn from_redis(server: &Server, what: &str, e: &::redis::RedisError) -> Self {
        if let Some(first) = e
            .clone()
            .into_server_errors()
            .and_then(|v| v.first().cloned())
        {
            return Self::from_server(server, what, &first.1);
        }
        let code = e.code().map(str::to_string);
        let text = match (e.code(), e.detail()) {
            (Some(_), Some(d)) => d.to_string(),
            // The crate's own errors read "description - Kind[: detail]"; the kind is noise.
            _ => e.to_string().replacen(&format!(" - {:?}", e.kind()), "", 1),
        };
        let class = classify(code.as_deref(), &text, Some(e));
        Self::new(server, what, code, &text, class)
    }

    fn from_server(server: &Server, what: &str, e: &ServerError) -> Self {
        let code = e.code().to_string();
        let text = e.details().unwrap_or("").to_string();
        let class = classify(Some(&code), &text, None);
        Self::new(server, what, Some(code), &text, class)
    }
}

fn classify(code: Option<&str>, text: &str, e: Option<&::redis::RedisError>) -> ErrorClass {
    let lower = text.to_ascii_lowercase();
    match code {
        Some(
            "LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "BUSY" | "MOVED"
            | "ASK",
        ) => return ErrorClass::Retryable,
        Some("NOAUTH" | "WRONGPASS") => return ErrorClass::Auth,
        Some("NOPERM") => return ErrorClass::Permission,
        Some("NOSCRIPT") => return ErrorClass::NoScript,
        Some("ERR") if lower.starts_with("unknown command") => return ErrorClass::UnknownCommand,
        Some(_) => return ErrorClass::Command,
        None => {}
    }
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return ErrorClass::Tls;
    }
    if lower.contains("wrongpass") || lower.contains("noauth") {
        return ErrorClass::Auth;
    }
    if let Some(e) = e {
        match e.kind() {
            ErrorKind::AuthenticationFailed => return ErrorClass::Auth,
            ErrorKind::InvalidClientConfig => return ErrorClass::Config,
            ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => return ErrorClass::Retryable,
            _ => {}
        }
        if e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            return ErrorClass::Retryable;
        }
    }
    ErrorClass::Command
}

fn hint(class: ErrorClass) -> String {
    match class {
        ErrorClass::Retryable => {
            "godwit retries this; if it persists, check that Redis is running and reachable".into()
        }
        ErrorClass::Auth => "check user:password in cache.url".into(),
        ErrorClass::Permission => format!(
            "the Redis ACL user needs these commands: {} (see README, Redis ACL)",
            ACL_COMMANDS.join(" ").to_ascii_lowercase()
        ),
        ErrorClass::Tls => "check that cache.tls_ca names the CA that signed the server's \
                            certificate (without tls_ca the system CAs are used) and that the \
                            URL's host is in the certificate"
            .into(),
        ErrorClass::UnknownCommand => {
            "the server does not have this command: use Redis 6.2 or later without renamed commands"
                .into()
        }
        ErrorClass::NoScript => "godwit loads the script again".into(),
        ErrorClass::Config => "check cache.url and cache.tls_ca".into(),
        ErrorClass::Command => "check the key's type and the projection that wrote it".into(),
    }
}

/// How the server is shown in messages, and the password to keep out of them.
#[derive(Clone)]
struct Server {
    shown: String,
    password: Option<String>,
}

impl Server {
    fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => text.replace(p.as_str(), "***"),
            _ => text.to_string(),
        }
    }
}

// ---------------------------------------------------------------- connection

/// One command and the slot of the key that routes it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub slot: u16,
    pub cmd: Cmd,
}

impl Routed {
    /// `cmd` routed by `key` (a command without a key: any key, e.g. `b""`).
    pub fn new(key: impl AsRef<[u8]>, cmd: Cmd) -> Self {
        Routed {
            slot: slot(key.as_ref()),
            cmd,
        }
    }
}

/// A Lua script known to a [`Redis`]: loaded on every primary at [`Redis::load_script`] and
/// again whenever a pipeline meets NOSCRIPT (a restarted or flushed server).
#[derive(Debug, Clone)]
pub struct LuaScript {
    sha: String,
    source: Arc<str>,
}

impl LuaScript {
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// `EVALSHA sha numkeys keys… args…` for a pipeline.
    pub fn cmd<K: ::redis::ToRedisArgs, A: ::redis::ToRedisArgs>(
        &self,
        keys: &[K],
        args: &[A],
    ) -> Cmd {
        let mut c = ::redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(keys.len());
        for k in keys {
            c.arg(k);
        }
        for a in args {
            c.arg(a);
        }
        c
    }
}

/// What [`Redis::nodes`] reports about one primary.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// `host:port`.
    pub address: String,
    /// `master` (or `slave` when a standalone URL names a replica).
    pub role: String,
    pub maxmemory_policy: String,
    pub used_memory: u64,
    pub redis_version: String,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection to the cache: a standalone server or a cluster.
pub struct Redis {
    conn: Conn,
    server: Server,
    /// Standalone: `host:port` of the server.
    address: String,
    scripts: Mutex<Vec<LuaScript>>,
    /// Slots written since the last [`Redis::wait_replicas`] (standalone: slot 0 stands for all).
    written: Mutex<BTreeSet<u16>>,
    /// Standalone: connections of a load's own (see [`Direct`]).
    direct: Option<Arc<Direct>>,
}

/// Connections beside the shared one, on a standalone server: a load's chunks go on them as
/// commands already in the wire format ([`Resp`]), one chunk per connection at a time, from a
/// blocking thread — no command objects, and a `WATCH` holds for that chunk's transaction only
/// (the shared connection carries other writers' commands in between).
struct Direct {
    client: Client,
    idle: Mutex<Vec<::redis::Connection>>,
    server: Server,
}

const EXEC: &[u8] = b"*1\r\n$4\r\nEXEC\r\n";
const DISCARD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";

impl Direct {
    fn connect(&self) -> Result<::redis::Connection, RedisError> {
        let failed =
            |e: ::redis::RedisError| RedisError::from_redis(&self.server, "connecting", &e);
        let c = self
            .client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(failed)?;
        c.set_read_timeout(Some(RESPONSE_TIMEOUT)).map_err(failed)?;
        c.set_write_timeout(Some(RESPONSE_TIMEOUT))
            .map_err(failed)?;
        Ok(c)
    }

    /// Runs `f` on an idle connection, or a new one. A connection whose exchange failed is
    /// dropped (a new one carries no state of the old); an idle one that fails to carry it (the
    /// server closed it meanwhile, say) gets one more try on a new connection.
    fn exchange<T>(
        &self,
        f: impl Fn(&mut ::redis::Connection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let idle = self.idle.lock().expect("lock").pop();
        let pooled = idle.is_some();
        let mut c = match idle {
            Some(c) => c,
            None => self.connect()?,
        };
        let out = match f(&mut c) {
            Err(e) if pooled && e.retryable() => {
                c = self.connect()?;
                f(&mut c)
            }
            other => other,
        };
        if out.is_ok() {
            self.idle.lock().expect("lock").push(c);
        }
        out
    }

    fn sending(&self, e: ::redis::RedisError) -> RedisError {
        RedisError::from_redis(&self.server, "sending a load's commands", &e)
    }

    /// The first failed reply among `values` (command `i` of `resp`, from 0) as an error.
    fn first_error(&self, values: &[Value], resp: &Resp, what: &str) -> Result<(), RedisError> {
        match values
            .iter()
            .enumerate()
            .find(|(_, v)| matches!(v, Value::ServerError(_)))
        {
            Some((i, Value::ServerError(e))) => {
                let what = format!(
                    "command {} ({}) of {what}",
                    i + 1,
                    resp_name(&resp.bytes, i)
                );
                Err(RedisError::from_server(&self.server, &what, e))
            }
            _ => Ok(()),
        }
    }

    /// The next reply (push messages skipped).
    fn reply(&self, c: &mut ::redis::Connection) -> Result<Value, RedisError> {
        loop {
            match c.recv_response().map_err(|e| self.sending(e))? {
                Value::Push { .. } => continue,
                v => return Ok(v),
            }
        }
    }

    fn run(&self, resp: &Resp) -> Result<Vec<Value>, RedisError> {
        use ::redis::ConnectionLike;
        let values = self.exchange(|c| {
            c.req_packed_commands(&resp.bytes, 0, resp.commands)
                .map_err(|e| self.sending(e))
        })?;
        self.first_error(&values, resp, "a load's commands")?;
        Ok(values)
    }

    fn run_if_newer(
        &self,
        watch: &[Vec<u8>],
        ver: &[u8],
        resp: &Resp,
    ) -> Result<Option<usize>, RedisError> {
        self.exchange(|c| self.transaction(c, watch, ver, resp))
    }

    /// `WATCH` the keys, read them and open the transaction (`MULTI`) in one round trip; then
    /// the commands and `EXEC` when every key is below `ver`, else `DISCARD`.
    fn transaction(
        &self,
        c: &mut ::redis::Connection,
        watch: &[Vec<u8>],
        ver: &[u8],
        resp: &Resp,
    ) -> Result<Option<usize>, RedisError> {
        let mut check = Pipeline::with_capacity(2 + watch.len());
        let mut w = ::redis::cmd("WATCH");
        for k in watch {
            w.arg(k);
        }
        check.add_command(w);
        for k in watch {
            check.add_command(::redis::cmd("GET").arg(k).clone());
        }
        check.add_command(::redis::cmd("MULTI"));
        c.send_packed_command(&check.get_packed_pipeline())
            .map_err(|e| self.sending(e))?;
        let mut got = Vec::with_capacity(2 + watch.len());
        for _ in 0..2 + watch.len() {
            got.push(self.reply(c)?);
        }
        let opened = matches!(got.last(), Some(Value::Okay));
        if let Some(Value::ServerError(e)) = got.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            // (A refused MULTI opened nothing: the connection is dropped all the same.)
            return Err(RedisError::from_server(
                &self.server,
                "WATCH, GET, MULTI",
                e,
            ));
        }
        let below = opened
            && got[1..=watch.len()]
                .iter()
                .all(|v| matches!(v, Value::BulkString(b) if b.as_slice() < ver));
        if !below {
            // DISCARD ends the transaction and the WATCH.
            c.send_packed_command(DISCARD)
                .map_err(|e| self.sending(e))?;
            self.reply(c)?;
            return Ok(None);
        }
        let n = resp.commands;
        for part in [&resp.bytes[..], EXEC] {
            c.send_packed_command(part).map_err(|e| self.sending(e))?;
        }
        // A QUEUED (or an error) per command, then EXEC's answer.
        let mut queued_error = None;
        for _ in 0..n {
            if let Value::ServerError(e) = self.reply(c)?
                && queued_error.is_none()
            {
                queued_error = Some(e);
            }
        }
        let exec = self.reply(c)?;
        if let Some(e) = queued_error {
            // Refused while queued: EXEC aborted the transaction, nothing ran.
            return Err(RedisError::from_server(
                &self.server,
                "a load's transaction",
                &e,
            ));
        }
        match exec {
            Value::Nil => Ok(None),
            Value::Array(values) if values.len() == n => {
                self.first_error(&values, resp, "a load's transaction")?;
                Ok(Some(n))
            }
            Value::ServerError(e) => Err(RedisError::from_server(&self.server, "EXEC", &e)),
            _ => Err(RedisError {
                message: format!(
                    "a transaction of {n} commands to Redis {} did not answer with {n} results; \
                     this is a bug in godwit, please report it",
                    self.server.shown
                ),
                class: ErrorClass::Command,
                code: None,
            }),
        }
    }
}

/// The name of command `i` (from 0) of commands in the wire format (each an array of bulk
/// strings, as [`Resp`] writes them).
fn resp_name(bytes: &[u8], i: usize) -> String {
    let mut rest = bytes;
    // One line (without its CRLF) off the front of `rest`.
    let line = |rest: &mut &[u8]| -> Option<usize> {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(&rest[1..end]).ok()?.parse().ok();
        *rest = &rest[end + 2..];
        n
    };
    for k in 0..=i {
        let Some(args) = line(&mut rest) else {
            break;
        };
        for a in 0..args {
            let Some(len) = line(&mut rest) else {
                return String::new();
            };
            if k == i && a == 0 {
                return String::from_utf8_lossy(&rest[..len.min(rest.len())]).to_ascii_uppercase();
            }
            rest = &rest[(len + 2).min(rest.len())..];
        }
    }
    String::new()
}

static CRYPTO: Once = Once::new();

/// The redis crate builds its TLS configuration with rustls' process-wide default provider; the
/// tree enables two (ring and aws-lc-rs), so rustls cannot pick one itself. godwit uses ring.
fn install_crypto_provider() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read_ca(server: &Server, path: &Path) -> Result<Vec<u8>, RedisError> {
    std::fs::read(path).map_err(|e| RedisError {
        message: format!(
            "reading cache.tls_ca {} for Redis {} failed: {e}; check the path and its permissions",
            path.display(),
            server.shown
        ),
        class: ErrorClass::Config,
        code: None,
    })
}

impl Redis {
    /// Connects (checking the connection with the handshake the crate does: AUTH, SELECT).
    pub async fn connect(cache: &crate::config::Cache) -> Result<Redis, RedisError> {
        install_crypto_provider();
        let url = cache.url.expose();
        let parsed = url::Url::parse(url).ok();
        let server = Server {
            shown: cache.url.redacted(),
            password: parsed
                .as_ref()
                .and_then(|u| u.password())
                .map(percent_decode),
        };
        let address = parsed
            .as_ref()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or("127.0.0.1"),
                    u.port().unwrap_or(6379)
                )
            })
            .unwrap_or_default();
        let certs = match &cache.tls_ca {
            Some(p) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(read_ca(&server, p)?),
            }),
            None => None,
        };
        let mut direct = None;
        let conn = if cache.cluster {
            let mut b = ClusterClientBuilder::new(vec![url])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT);
            if let Some(c) = certs {
                b = b.certs(c);
            }
            let client = b
                .build()
                .map_err(|e| RedisError::from_redis(&server, "connecting", &e))?;
            let c = client
                .get_async_connection()
                .await
                .map_err(|e| RedisError::from_redis(&server, "connecting", &e))?;
            Conn::Cluster(c)
        } else {
            let client = match certs {
                Some(c) => Client::build_with_tls(url, c),
                None => Client::open(url),
            }
            .map_err(|e| RedisError::from_redis(&server, "connecting", &e))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2);
            let c = ConnectionManager::new_with_config(client.clone(), config)
                .await
                .map_err(|e| RedisError::from_redis(&server, "connecting", &e))?;
            direct = Some(Arc::new(Direct {
                client,
                idle: Mutex::new(Vec::new()),
                server: server.clone(),
            }));
            Conn::Single(c)
        };
        let redis = Redis {
            conn,
            server,
            address,
            scripts: Mutex::new(Vec::new()),
            written: Mutex::new(BTreeSet::new()),
            direct,
        };
        // A first round trip: a wrong password or a refused ACL shows here, not mid-load.
        redis
            .exec(vec![Routed::new(Vec::new(), ::redis::cmd("PING"))])
            .await?;
        redis.written.lock().expect("lock").clear();
        Ok(redis)
    }

    /// How this server's commands are grouped.
    pub fn grouping(&self) -> Grouping {
        match self.conn {
            Conn::Cluster(_) => Grouping::BySlot,
            Conn::Single(_) => Grouping::ByLane,
        }
    }

    /// The server as shown in messages (URL without password).
    pub fn shown(&self) -> &str {
        &self.server.shown
    }

    /// Runs the commands pipelined and returns their results in input order. Commands are
    /// grouped by hash slot (cluster) or by lanes of slots (standalone); commands on one key run in
    /// input order. A group that meets NOSCRIPT gets every known script loaded again and is sent
    /// again whole (the sink's commands are idempotent). Any command error fails the whole call
    /// with the first error in input order.
    pub async fn exec(&self, cmds: Vec<Routed>) -> Result<Vec<Value>, RedisError> {
        self.send(&self.prepare(cmds)).await
    }

    /// The commands grouped and packed into pipelines, once for every attempt to send them.
    fn prepare(&self, cmds: Vec<Routed>) -> Prepared {
        let n = cmds.len();
        let grouping = self.grouping();
        // Per group: input positions, the first command's slot (routes the group), pipelines.
        let mut groups: BTreeMap<u16, PreparedGroup> = BTreeMap::new();
        // The slots written to matter on a cluster only (`WAIT` goes to their primaries).
        let cluster = grouping == Grouping::BySlot;
        let mut slots = BTreeSet::new();
        for (i, r) in cmds.into_iter().enumerate() {
            if cluster {
                slots.insert(r.slot);
            }
            let g = groups
                .entry(grouping.group(r.slot))
                .or_insert_with(|| PreparedGroup {
                    idx: Vec::new(),
                    slot: r.slot,
                    pipes: Vec::new(),
                });
            if g.idx.len().is_multiple_of(PIPELINE_COMMANDS) {
                let mut p = ::redis::Pipeline::with_capacity(PIPELINE_COMMANDS.min(n - i));
                p.ignore_errors();
                g.pipes.push(p);
            }
            g.idx.push(i);
            g.pipes.last_mut().expect("a pipeline").add_command(r.cmd);
        }
        let groups = groups.into_values().collect();
        Prepared { n, slots, groups }
    }

    /// Sends prepared commands; see [`Redis::exec`].
    async fn send(&self, prepared: &Prepared) -> Result<Vec<Value>, RedisError> {
        let n = prepared.n;
        if n == 0 {
            return Ok(Vec::new());
        }
        {
            let mut w = self.written.lock().expect("lock");
            match self.conn {
                Conn::Cluster(_) => w.extend(prepared.slots.iter().copied()),
                Conn::Single(_) => {
                    w.insert(0);
                }
            }
        }
        let results: Vec<(usize, Vec<Value>)> = stream::iter(0..prepared.groups.len())
            .map(|k| async move {
                let values = self.run_group(&prepared.groups[k]).await?;
                Ok::<_, RedisError>((k, values))
            })
            .buffer_unordered(GROUPS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut out: Vec<Option<Value>> = vec![None; n];
        for (k, values) in results {
            for (&i, v) in prepared.groups[k].idx.iter().zip(values) {
                out[i] = Some(v);
            }
        }
        // The first failed command in input order decides the error.
        let mut values = Vec::with_capacity(n);
        for (i, v) in out.into_iter().enumerate() {
            match v {
                Some(Value::ServerError(e)) => {
                    let what = format!("command {} ({})", i + 1, prepared.name_of(i));
                    return Err(RedisError::from_server(&self.server, &what, &e));
                }
                Some(v) => values.push(v),
                None => {
                    return Err(RedisError {
                        message: format!(
                            "a pipeline to Redis {} returned fewer results than commands; \
                             this is a bug in godwit, please report it",
                            self.server.shown
                        ),
                        class: ErrorClass::Command,
                        code: None,
                    });
                }
            }
        }
        Ok(values)
    }

    /// One group, its pipelines in order; NOSCRIPT: load the scripts again and resend the group
    /// (once per call).
    async fn run_group(&self, g: &PreparedGroup) -> Result<Vec<Value>, RedisError> {
        let mut reloaded = false;
        'again: loop {
            let mut values = Vec::with_capacity(g.idx.len());
            for p in &g.pipes {
                let got = self.send_pipeline(p, g.slot).await?;
                let noscript = got
                    .iter()
                    .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"));
                if noscript && !reloaded {
                    reloaded = true;
                    self.reload_scripts().await?;
                    continue 'again;
                }
                values.extend(got);
            }
            return Ok(values);
        }
    }

    async fn send_pipeline(&self, p: &Pipeline, slot: u16) -> Result<Vec<Value>, RedisError> {
        let count = p.len();
        let result = match &self.conn {
            Conn::Single(c) => {
                let mut c = c.clone();
                c.send_packed_commands(p, 0, count).await
            }
            Conn::Cluster(c) => {
                let mut c = c.clone();
                c.route_pipeline(
                    p.clone(),
                    0,
                    count,
                    SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master)),
                )
                .await
            }
        };
        let values =
            result.map_err(|e| RedisError::from_redis(&self.server, "sending commands", &e))?;
        if values.len() != count {
            return Err(RedisError {
                message: format!(
                    "a pipeline of {count} commands to Redis {} returned {} results; \
                     this is a bug in godwit, please report it",
                    self.server.shown,
                    values.len()
                ),
                class: ErrorClass::Command,
                code: None,
            });
        }
        Ok(values)
    }

    /// Whether commands in the wire format can be sent ([`Redis::exec_resp`],
    /// [`Redis::exec_if_newer`]): a standalone server.
    pub fn direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Sends `resp` on a connection of its own (see [`Direct`]); the replies in order. A failed
    /// command fails the call with the first error. Not retried.
    pub async fn exec_resp(&self, resp: Resp) -> Result<Vec<Value>, RedisError> {
        // (Not counted for `wait_replicas`: a `WAIT` covers the writes of its own connection,
        // and a load does not wait for replicas.)
        let direct = self.direct_or_bug()?;
        tokio::task::spawn_blocking(move || direct.run(&resp))
            .await
            .unwrap_or_else(|e| Err(Self::crashed(e)))
    }

    /// Runs `resp` as one transaction (`MULTI` … `EXEC`) on a connection of its own if every
    /// key of `watch` holds a version below `ver`, checked and kept so by `WATCH`: `Ok(None)`
    /// when one is absent or not below, or changed before the transaction ran — then nothing
    /// was written; otherwise how many commands ran. Not retried: the caller falls back to
    /// other writes.
    pub async fn exec_if_newer(
        &self,
        watch: Vec<Vec<u8>>,
        ver: [u8; 32],
        resp: Resp,
    ) -> Result<Option<usize>, RedisError> {
        let direct = self.direct_or_bug()?;
        tokio::task::spawn_blocking(move || direct.run_if_newer(&watch, &ver, &resp))
            .await
            .unwrap_or_else(|e| Err(Self::crashed(e)))
    }

    fn direct_or_bug(&self) -> Result<Arc<Direct>, RedisError> {
        self.direct.clone().ok_or_else(|| RedisError {
            message: "commands in the wire format need a standalone server; this is a bug in \
                      godwit, please report it"
                .into(),
            class: ErrorClass::Command,
            code: None,
        })
    }

    fn crashed(e: tokio::task::JoinError) -> RedisError {
        RedisError {
            message: format!("a thread sending a load's commands crashed: {e}"),
            class: ErrorClass::Command,
            code: None,
        }
    }

    /// [`Redis::exec`], retrying retryable failures: waits [`retry_delay`] (100 ms doubling to
    /// 5 s) between attempts, logs each retry at warn with the error, and gives up after
    /// `retries` retries (`-1`: never; `[errors] recoverable_retries`) or when `stop()` is true.
    /// The whole batch is sent again: the sink's commands are idempotent (version-guarded).
    pub async fn exec_retrying(
        &self,
        cmds: Vec<Routed>,
        retries: i64,
        stop: impl Fn() -> bool,
    ) -> Result<Vec<Value>, RedisError> {
        let prepared = self.prepare(cmds);
        let mut attempt: u32 = 0;
        loop {
            match self.send(&prepared).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let exhausted = retries >= 0 && i64::from(attempt) >= retries;
                    if !e.retryable() || exhausted || stop() {
                        return Err(e);
                    }
                    let delay = retry_delay(attempt);
                    attempt += 1;
                    tracing::warn!(
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        error = %e,
                        "Redis write failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    if stop() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Loads a Lua script on every primary (SCRIPT LOAD) and remembers it, so that a NOSCRIPT
    /// in a pipeline (a restarted or flushed server) loads it again.
    pub async fn load_script(&self, source: &str) -> Result<LuaScript, RedisError> {
        let script = LuaScript {
            sha: ::redis::Script::new(source).get_hash().to_string(),
            source: Arc::from(source),
        };
        self.load_on_primaries(std::slice::from_ref(&script))
            .await?;
        let mut s = self.scripts.lock().expect("lock");
        if !s.iter().any(|x| x.sha == script.sha) {
            s.push(script.clone());
        }
        Ok(script)
    }

    async fn reload_scripts(&self) -> Result<(), RedisError> {
        let scripts = self.scripts.lock().expect("lock").clone();
        self.load_on_primaries(&scripts).await
    }

    async fn load_on_primaries(&self, scripts: &[LuaScript]) -> Result<(), RedisError> {
        if scripts.is_empty() {
            return Ok(());
        }
        for target in self.primaries().await? {
            let mut p = ::redis::pipe();
            for s in scripts {
                p.cmd("SCRIPT").arg("LOAD").arg(&*s.source);
            }
            self.on_node(&target, p, scripts.len(), "loading a Lua script")
                .await?;
        }
        Ok(())
    }

    /// Every node answers PING (cluster: replicas too); then per primary its address, role,
    /// maxmemory-policy, used_memory and redis_version.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RedisError> {
        let mut out = Vec::new();
        let targets = self.primaries().await?;
        if let Conn::Cluster(_) = &self.conn {
            for addr in self.cluster_nodes().await?.1 {
                let mut p = ::redis::pipe();
                p.cmd("PING");
                self.on_node(&Target::Address(addr), p, 1, "PING").await?;
            }
        }
        for t in targets {
            let mut p = ::redis::pipe();
            p.cmd("PING");
            p.cmd("INFO").arg("server").arg("memory").arg("replication");
            p.cmd("CONFIG").arg("GET").arg("maxmemory-policy");
            let v = self.on_node(&t, p, 3, "reading the server's INFO").await?;
            let info = match &v[1] {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::VerbatimString { text, .. } => text.clone(),
                Value::SimpleString(s) => s.clone(),
                _ => String::new(),
            };
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            let policy = config_value(&v[2]).unwrap_or_default();
            out.push(NodeInfo {
                address: match &t {
                    Target::Address(a) => a.clone(),
                    Target::Single => self.address.clone(),
                },
                role: field("role"),
                maxmemory_policy: policy,
                used_memory: field("used_memory").parse().unwrap_or(0),
                redis_version: field("redis_version"),
            });
        }
        Ok(out)
    }

    /// Every key matching `pattern` (SCAN, on every primary of a cluster). Keys written while
    /// it runs may or may not be in the answer.
    pub async fn scan(&self, pattern: &[u8]) -> Result<Vec<Vec<u8>>, RedisError> {
        self.scan_up_to(pattern, usize::MAX).await
    }

    /// [`Redis::scan`], stopping once `limit` keys are found.
    pub async fn scan_up_to(
        &self,
        pattern: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, RedisError> {
        let mut keys = Vec::new();
        let mut scanner = self.scanner(pattern).await?;
        while keys.len() < limit
            && let Some(page) = scanner.next_page().await?
        {
            keys.extend(page);
        }
        Ok(keys)
    }

    /// The keys matching `pattern` page by page (SCAN on each primary in turn), so that a caller
    /// can act on a large keyspace without holding it.
    pub async fn scanner(&self, pattern: &[u8]) -> Result<Scanner<'_>, RedisError> {
        Ok(Scanner {
            redis: self,
            pattern: pattern.to_vec(),
            targets: self.primaries().await?,
            cursor: None,
        })
    }

    /// `WAIT n timeout` on every primary written to since the last call; fails when a primary
    /// has fewer than `n` replicas acknowledging in time. `n == 0`: nothing to do.
    pub async fn wait_replicas(&self, n: u32, timeout: Duration) -> Result<(), RedisError> {
        let written = std::mem::take(&mut *self.written.lock().expect("lock"));
        if n == 0 || written.is_empty() {
            return Ok(());
        }
        let targets: Vec<(Target, u16)> = match &self.conn {
            Conn::Single(_) => vec![(Target::Single, 0)],
            Conn::Cluster(_) => {
                let (ranges, _) = self.cluster_nodes().await?;
                let mut by_node: BTreeMap<String, u16> = BTreeMap::new();
                for s in &written {
                    if let Some((_, _, a)) = ranges.iter().find(|(lo, hi, _)| lo <= s && s <= hi) {
                        by_node.entry(a.clone()).or_insert(*s);
                    }
                }
                by_node
                    .into_iter()
                    .map(|(a, s)| (Target::Address(a), s))
                    .collect()
            }
        };
        for (t, _) in targets {
            let mut p = ::redis::pipe();
            p.cmd("WAIT").arg(n).arg(timeout.as_millis() as u64);
            let v = self.on_node(&t, p, 1, "WAIT for replicas").await?;
            let acked = match v.first() {
                Some(Value::Int(k)) => *k,
                _ => 0,
            };
            if acked < i64::from(n) {
                let node = match &t {
                    Target::Address(a) => a.clone(),
                    Target::Single => self.address.clone(),
                };
                return Err(RedisError {
                    message: format!(
                        "WAIT on Redis {} (node {node}) got {acked} of {n} replicas within {} ms; \
                         godwit retries this; check the replicas' link, or lower cache.wait_replicas",
                        self.server.shown,
                        timeout.as_millis()
                    ),
                    class: ErrorClass::Retryable,
                    code: None,
                });
            }
        }
        Ok(())
    }

    /// Primaries: the one server, or each cluster primary's address.
    async fn primaries(&self) -> Result<Vec<Target>, RedisError> {
        match &self.conn {
            Conn::Single(_) => Ok(vec![Target::Single]),
            Conn::Cluster(_) => {
                let (ranges, _) = self.cluster_nodes().await?;
                let set: BTreeSet<String> = ranges.into_iter().map(|(_, _, a)| a).collect();
                Ok(set.into_iter().map(Target::Address).collect())
            }
        }
    }

    /// The slot ranges of each primary (one entry per primary; standalone: one with every slot).
    pub async fn primary_slot_ranges(&self) -> Result<Vec<Vec<(u16, u16)>>, RedisError> {
        if let Conn::Single(_) = self.conn {
            return Ok(vec![vec![(0, SLOTS - 1)]]);
        }
        let (ranges, _) = self.cluster_nodes().await?;
        let mut by_node: BTreeMap<String, Vec<(u16, u16)>> = BTreeMap::new();
        for (lo, hi, addr) in ranges {
            by_node.entry(addr).or_default().push((lo, hi));
        }
        Ok(by_node.into_values().collect())
    }

    /// CLUSTER SLOTS: (first slot, last slot, primary address) and every node's address.
    async fn cluster_nodes(&self) -> Result<(Vec<(u16, u16, String)>, Vec<String>), RedisError> {
        let Conn::Cluster(c) = &self.conn else {
            return Ok((Vec::new(), Vec::new()));
        };
        let v = c
            .clone()
            .route_command(
                ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(|e| RedisError::from_redis(&self.server, "CLUSTER SLOTS", &e))?;
        let mut ranges = Vec::new();
        let mut all = BTreeSet::new();
        if let Value::Array(items) = v {
            for it in items {
                let Value::Array(parts) = it else { continue };
                let (Some(Value::Int(lo)), Some(Value::Int(hi))) = (parts.first(), parts.get(1))
                else {
                    continue;
                };
                for (k, node) in parts.iter().skip(2).enumerate() {
                    let Value::Array(n) = node else { continue };
                    let host = match n.first() {
                        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                        Some(Value::SimpleString(s)) => s.clone(),
                        _ => continue,
                    };
                    let Some(Value::Int(port)) = n.get(1) else {
                        continue;
                    };
                    let addr = format!("{host}:{port}");
                    if k == 0 {
                        ranges.push((*lo as u16, *hi as u16, addr.clone()));
                    }
                    all.insert(addr);
                }
            }
        }
        Ok((ranges, all.into_iter().collect()))
    }

    async fn on_node(
        &self,
        t: &Target,
        mut p: Pipeline,
        count: usize,
        what: &str,
    ) -> Result<Vec<Value>, RedisError> {
        p.ignore_errors();
        let r = match (&self.conn, t) {
            (Conn::Single(c), _) => c.clone().send_packed_commands(&p, 0, count).await,
            (Conn::Cluster(c), Target::Address(a)) => {
                let (host, port) = a.rsplit_once(':').unwrap_or((a.as_str(), "6379"));
                c.clone()
                    .route_pipeline(
                        p,
                        0,
                        count,
                        SingleNodeRoutingInfo::ByAddress {
                            host: host.to_string(),
                            port: port.parse().unwrap_or(6379),
                        },
                    )
                    .await
            }
            (Conn::Cluster(c), Target::Single) => {
                c.clone()
                    .route_pipeline(p, 0, count, SingleNodeRoutingInfo::Random)
                    .await
            }
        };
        let values = r.map_err(|e| RedisError::from_redis(&self.server, what, &e))?;
        for v in &values {
            if let Value::ServerError(e) = v {
                return Err(RedisError::from_server(&self.server, what, e));
            }
        }
        Ok(values)
    }
}

enum Target {
    Single,
    Address(String),
}

/// Commands grouped and packed into pipelines: see [`Redis::exec`].
struct Prepared {
    n: usize,
    /// The slots written to (for `WAIT`).
    slots: BTreeSet<u16>,
    groups: Vec<PreparedGroup>,
}

/// One group: the input positions of its commands, the slot that routes it, its pipelines.
struct PreparedGroup {
    idx: Vec<usize>,
    slot: u16,
    pipes: Vec<Pipeline>,
}

impl Prepared {
    /// The name of input command `i` (for messages).
    fn name_of(&self, i: usize) -> String {
        for g in &self.groups {
            if let Some(pos) = g.idx.iter().position(|&j| j == i) {
                return g
                    .pipes
                    .iter()
                    .flat_map(|p| p.cmd_iter())
                    .nth(pos)
                    .map(cmd_name)
                    .unwrap_or_default();
            }
        }
        String::new()
    }
}

/// Pages of keys matching a pattern: see [`Redis::scanner`].
pub struct Scanner<'a> {
    redis: &'a Redis,
    pattern: Vec<u8>,
    /// The primaries not finished yet, the current one last.
    targets: Vec<Target>,
    /// The cursor on the current primary (`None`: not started).
    cursor: Option<Vec<u8>>,
}

impl Scanner<'_> {
    /// The next page of keys (possibly empty), `None` once every primary is done.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Vec<u8>>>, RedisError> {
        let Some(t) = self.targets.last() else {
            return Ok(None);
        };
        let mut p = ::redis::pipe();
        p.cmd("SCAN")
            .arg(self.cursor.as_deref().unwrap_or(b"0"))
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let v = self.redis.on_node(t, p, 1, "SCAN").await?;
        let mut keys = Vec::new();
        let mut next = b"0".to_vec();
        if let Some(Value::Array(reply)) = v.into_iter().next() {
            let mut reply = reply.into_iter();
            next = match reply.next() {
                Some(Value::BulkString(c)) => c,
                Some(Value::SimpleString(c)) => c.into_bytes(),
                _ => b"0".to_vec(),
            };
            if let Some(Value::Array(found)) = reply.next() {
                keys.extend(found.into_iter().filter_map(|k| match k {
                    Value::BulkString(b) => Some(b),
                    _ => None,
                }));
            }
        }
        if next == b"0" {
            self.targets.pop();
            self.cursor = None;
        } else {
            self.cursor = Some(next);
        }
        Ok(Some(keys))
    }
}

pub(crate) fn config_value(v: &Value) -> Option<String> {
    let s = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match v {
        Value::Array(a) => a.get(1).and_then(s),
        Value::Map(m) => m.first().and_then(|(_, v)| s(v)),
        _ => None,
    }
}

fn cmd_name(c: &Cmd) -> String {
    c.args_iter()
        .next()
        .and_then(|a| match a {
            ::redis::Arg::Simple(b) => Some(String::from_utf8_lossy(b).to_ascii_uppercase()),
            _ => None,
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pause before retry `attempt` (0-based): 100 ms, doubling, at most 5 s.
pub fn retry_delay(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms.min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_acl_rule_allows_exactly_these_commands() {
        let readme = include_str!("../../../README.md");
        let line = readme
            .lines()
            .find(|l| l.starts_with("ACL SETUSER godwit "))
            .expect("README has an `ACL SETUSER godwit …` line");
        let allowed: Vec<String> = line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix('+'))
            .map(str::to_ascii_uppercase)
            .collect();
        assert_eq!(allowed, ACL_COMMANDS);
    }

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{}x"), crc16(b"{}x") % SLOTS);
        assert_eq!(hash_tag(b"a{b}c{d}"), Some(&b"b"[..]));
        assert_eq!(hash_tag(b"a{}c{d}"), None);
        assert_eq!(hash_tag(b"a{bc"), None);
        assert_eq!(hash_tag(b"}{x}"), Some(&b"x"[..]));
    }

    #[test]
    fn delays() {
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(5), Duration::from_millis(3200));
        assert_eq!(retry_delay(6), Duration::from_secs(5));
        assert_eq!(retry_delay(60), Duration::from_secs(5));
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
    }
}
