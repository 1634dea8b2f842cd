//! The door between the load generator and the system under test.
//!
//! The engine only ever sees [`Connector`] (opens connections to one host) and
//! [`Connection`] (one open, pipelined connection: several requests may be in flight on
//! it at once, so its methods take `&self`). The real ringkv client plugs in by
//! implementing these two traits; [`FakeTarget`] is an in-memory implementation with
//! injectable service delay, a one-shot stall, a one-shot disconnect, a one-shot
//! failover and a "stale" mode, used by the tests. Futures are `!Send` (glommio runs one executor per thread),
//! so the traits use plain `async fn`. This module must never measure time or record
//! statistics: that belongs to the engine.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringkv::protocol::types::Consistency;

/// The result of a successful get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetOutcome {
    Found(Vec<u8>),
    NotFound,
    /// Causal mode: concurrent versions, none dropped by the store.
    Siblings(Vec<Vec<u8>>),
}

/// Why an operation failed. Kinds are counted separately in every report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpError {
    /// The server shed load (typed `Overloaded` reply).
    Overloaded,
    /// The server or the client gave up waiting for replicas or for the reply.
    Timeout,
    /// Not enough replicas alive for the requested consistency, or the host is down.
    Unavailable(String),
    /// The connection broke; the engine reconnects it.
    Disconnected(String),
    /// Anything else (bad request, internal error, protocol error).
    Other(String),
}

/// The error kinds as a closed set, used as counters' index and in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    Overloaded,
    Timeout,
    Unavailable,
    Disconnected,
    Other,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Overloaded,
        ErrorKind::Timeout,
        ErrorKind::Unavailable,
        ErrorKind::Disconnected,
        ErrorKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Other => "other",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl OpError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpError::Overloaded => ErrorKind::Overloaded,
            OpError::Timeout => ErrorKind::Timeout,
            OpError::Unavailable(_) => ErrorKind::Unavailable,
            OpError::Disconnected(_) => ErrorKind::Disconnected,
            OpError::Other(_) => ErrorKind::Other,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Overloaded => write!(f, "overloaded"),
            OpError::Timeout => write!(f, "timeout"),
            OpError::Unavailable(why) => write!(f, "unavailable: {why}"),
            OpError::Disconnected(why) => write!(f, "disconnected: {why}"),
            OpError::Other(why) => write!(f, "error: {why}"),
        }
    }
}

impl std::error::Error for OpError {}

/// What every connection is opened with: the request consistency and the auth token
/// (accepted now and passed on; the server's auth comes later).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    pub consistency: Option<Consistency>,
    pub token: Option<String>,
    /// How long one attempt of a request waits for its reply before it is moved to
    /// the next node of its plan (None: no limit).
    pub attempt_timeout: Option<std::time::Duration>,
}

/// One open connection. Several calls may be in flight at once (pipelining); the
/// implementation matches replies to requests.
#[expect(
    async_fn_in_trait,
    reason = "glommio futures are !Send by design; no Send bound is wanted"
)]
pub trait Connection {
    async fn get(&self, key: &[u8]) -> Result<GetOutcome, OpError>;
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), OpError>;

    /// Requests this connection moved to another node after a connection failure
    /// since the last call (each move once; the engine sums them). An op that failed
    /// over and then succeeded is a success; its latency includes the failed attempt.
    fn take_failovers(&self) -> u64 {
        0
    }
}

/// Opens connections. One clone is moved to each executor thread, hence `Send`.
#[expect(
    async_fn_in_trait,
    reason = "glommio futures are !Send by design; no Send bound is wanted"
)]
pub trait Connector: Clone + Send + 'static {
    type Conn: Connection + 'static;
    async fn connect(&self, host: &str, options: &ConnectOptions) -> Result<Self::Conn, OpError>;
}

/// Settings of the in-memory fake.
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// Service time added to every operation (a glommio sleep; zero means no sleep).
    pub delay: Duration,
    /// Stale mode: a get returns the value *before* the latest put of that key, when
    /// there is one. Used to prove the verifier catches stale reads.
    pub stale: bool,
}

/// One-shot fault: fires on the operation with this global index (0-based, all
/// connections counted together).
#[derive(Clone, Copy, Debug)]
struct OneShot {
    at_op: u64,
    stall: Duration,
}

#[derive(Default)]
struct Versions {
    current: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
}

struct FakeShared {
    config: FakeConfig,
    map: Mutex<HashMap<Vec<u8>, Versions>>,
    ops: AtomicU64,
    stall: Mutex<Option<OneShot>>,
    disconnect_at_op: Mutex<Option<u64>>,
    failover_at_op: Mutex<Option<u64>>,
    connects: AtomicU64,
    refuse_connections: AtomicBool,
    last_options: Mutex<Option<ConnectOptions>>,
}

/// In-memory target shared by all connections and threads (a `Mutex` map: it is a test
/// double, not a benchmark peer).
#[derive(Clone)]
pub struct FakeTarget {
    shared: Arc<FakeShared>,
}

impl FakeTarget {
    pub fn new(config: FakeConfig) -> Self {
        FakeTarget {
            shared: Arc::new(FakeShared {
                config,
                map: Mutex::new(HashMap::new()),
                ops: AtomicU64::new(0),
                stall: Mutex::new(None),
                disconnect_at_op: Mutex::new(None),
                failover_at_op: Mutex::new(None),
                connects: AtomicU64::new(0),
                refuse_connections: AtomicBool::new(false),
                last_options: Mutex::new(None),
            }),
        }
    }

    /// The operation with global index `at_op` takes `stall` longer (once).
    pub fn inject_stall(&self, at_op: u64, stall: Duration) {
        *lock(&self.shared.stall) = Some(OneShot { at_op, stall });
    }

    /// The operation with global index `at_op` fails with `Disconnected` and breaks its
    /// connection: every later call on that connection fails until it is reopened.
    pub fn inject_disconnect(&self, at_op: u64) {
        *lock(&self.shared.disconnect_at_op) = Some(at_op);
    }

    /// The operation with global index `at_op` succeeds as a real connection does after
    /// failing over to another node: the connection reports one failover.
    pub fn inject_failover(&self, at_op: u64) {
        *lock(&self.shared.failover_at_op) = Some(at_op);
    }

    /// Make `connect` fail (as if nothing listened on the port).
    pub fn refuse_connections(&self, refuse: bool) {
        self.shared
            .refuse_connections
            .store(refuse, Ordering::SeqCst);
    }

    /// Successful connects so far (reconnects included).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::SeqCst)
    }

    /// Operations started so far.
    pub fn ops(&self) -> u64 {
        self.shared.ops.load(Ordering::SeqCst)
    }

    /// Options of the most recent connect (to check flags are passed through).
    pub fn last_options(&self) -> Option<ConnectOptions> {
        lock(&self.shared.last_options).clone()
    }

    /// Current value of a key, for tests.
    pub fn value_of(&self, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.shared.map)
            .get(key)
            .and_then(|v| v.current.clone())
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub struct FakeConnection {
    shared: Arc<FakeShared>,
    broken: std::cell::Cell<bool>,
    failovers: std::cell::Cell<u64>,
}

impl FakeConnection {
    /// Count the op, apply one-shot faults, sleep the service delay.
    async fn begin(&self) -> Result<(), OpError> {
        if self.broken.get() {
            return Err(OpError::Disconnected("fake connection closed".into()));
        }
        let index = self.shared.ops.fetch_add(1, Ordering::SeqCst);
        {
            let mut disconnect = lock(&self.shared.disconnect_at_op);
            if *disconnect == Some(index) {
                *disconnect = None;
                self.broken.set(true);
                return Err(OpError::Disconnected("injected disconnect".into()));
            }
        }
        {
            let mut failover = lock(&self.shared.failover_at_op);
            if *failover == Some(index) {
                *failover = None;
                self.failovers.set(self.failovers.get() + 1);
            }
        }
        let mut wait = self.shared.config.delay;
        {
            let mut stall = lock(&self.shared.stall);
            if let Some(s) = *stall {
                if s.at_op == index {
                    wait += s.stall;
                    *stall = None;
                }
            }
        }
        if wait.is_zero() {
            // Behave like a real connection: give other tasks a turn.
            futures_lite::future::yield_now().await;
        } else {
            glommio::timer::sleep(wait).await;
        }
        Ok(())
    }
}

impl Connection for FakeConnection {
    async fn get(&self, key: &[u8]) -> Result<GetOutcome, OpError> {
        self.begin().await?;
        let map = lock(&self.shared.map);
        let found = map.get(key).and_then(|v| {
            if self.shared.config.stale && v.previous.is_some() {
                v.previous.clone()
            } else {
                v.current.clone()
            }
        });
        Ok(match found {
            Some(value) => GetOutcome::Found(value),
            None => GetOutcome::NotFound,
        })
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        self.begin().await?;
        let mut map = lock(&self.shared.map);
        let versions = map.entry(key.to_vec()).or_default();
        versions.previous = versions.current.replace(value.to_vec());
        Ok(())
    }

    fn take_failovers(&self) -> u64 {
        self.failovers.replace(0)
    }
}

impl Connector for FakeTarget {
    type Conn = FakeConnection;

    async fn connect(
        &self,
        host: &str,
        options: &ConnectOptions,
    ) -> Result<FakeConnection, OpError> {
        if self.shared.refuse_connections.load(Ordering::SeqCst) {
            return Err(OpError::Unavailable(format!(
                "{host}: connection refused (fake)"
            )));
        }
        self.shared.connects.fetch_add(1, Ordering::SeqCst);
        *lock(&self.shared.last_options) = Some(options.clone());
        Ok(FakeConnection {
            shared: Arc::clone(&self.shared),
            broken: std::cell::Cell::new(false),
            failovers: std::cell::Cell::new(0),
        })
    }
}
