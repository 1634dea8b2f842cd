//! The engine: runs a workload against a [`Connector`] and measures it.
//!
//! One glommio `LocalExecutor` per thread (`--threads`), each owning its share of the
//! connections (connection `j` belongs to executor `j % threads` and talks to host
//! `j % hosts`), each connection with `--pipeline` request loops ("slots") in flight.
//! Phases, separated by rendezvous of all executors: connect, load (`--load N` keys
//! written, unmeasured), run (warmup, then measured until `--duration` or `--ops`).
//!
//! Closed loop: every slot sends its next request as soon as the previous one returns.
//! Open loop (`--rate`): each connection has a fixed schedule of intended start times
//! (rate split evenly across connections, phases staggered); a slot takes the next
//! intended time, waits for it if it is in the future, and the corrected latency is
//! completion − intended start, so time spent behind a stalled server counts (wrk2's
//! correction of coordinated omission). The raw latency is completion − actual send.
//!
//! Clock readings: a request's send time and its completion time are one reading of
//! [`ExecutorRun::now`], which on the load generator's own sockets is the stamp the
//! transport took when it read the replies of its latest round
//! ([`crate::transport::reply_stamp`]): every reply read in one round completes at that
//! moment, and a request issued by a task those replies woke is written by the next
//! round's flush, so the stamp is (at most one round) before its actual send. One clock
//! reading per round instead of two per request; without a stamp (no reply read since
//! the last round, another target) the clock is read. Decisions to sleep until an
//! intended start always read the clock itself.
//!
//! Errors are counted by kind and never stop the run; a `Disconnected` error makes the
//! connection reconnect (with backoff) while its other slots wait. A request the
//! connection itself moved to another node after a connection failure
//! ([`Connection::take_failovers`]) is one op: a success if the other node answered,
//! its latency from the first send (the failed attempt included), and counted in
//! `failovers`.
//!
//! Final check (`--verify-final`, [`run_with_final_check`]): after the run, with nothing
//! in flight any more, every key that had an acknowledged write is read once through
//! every host at the given consistency and judged by the same verifier, so an older
//! value than the latest acknowledged write, or none, is a violation. This module owns the
//! clock and the threads; it must never decide what counts as a violation (that is
//! `verify`) nor format output (that is `stats`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::stats::{
    new_histogram, record_us, ConnectionReport, ErrorCounts, Interval, LiveAggregator, LoadReport,
    RunStats, VerifyReport,
};
use crate::target::{ConnectOptions, Connection, Connector, ErrorKind, GetOutcome, OpError};
use crate::verify::{Verifier, Violation};
use crate::workload::{
    write_id_of, write_key, Generator, OpKind, Rng, ValueSource, WorkloadSpec, KEY_BYTES,
};
use ringkv::protocol::types::Consistency;

/// What ends the measured phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    Duration(Duration),
    Ops(u64),
}

/// Everything the engine needs to know.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub hosts: Vec<String>,
    pub options: ConnectOptions,
    pub threads: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub bound: Bound,
    pub warmup: Duration,
    pub load: u64,
    pub keys: u64,
    pub value_size_bytes: usize,
    pub rate_ops_per_s: Option<f64>,
    pub workload: WorkloadSpec,
    pub verify: bool,
    pub seed: u64,
}

/// Why a run could not happen.
#[derive(Debug)]
pub enum EngineError {
    /// A connection could not be opened at start (exit code 3).
    Connect(String),
    /// The executors could not be started (e.g. locked-memory limit).
    Setup(String),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Connect(why) => write!(f, "cannot connect: {why}"),
            EngineError::Setup(why) => write!(f, "cannot start executors: {why}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Violations kept for printing; the rest are only counted.
pub const VIOLATION_SAMPLE_MAX: usize = 100;

/// What a run measured.
#[derive(Debug)]
pub struct RunOutcome {
    pub stats: RunStats,
    /// From the end of warmup to the last completion, seconds.
    pub measured_seconds: f64,
    pub load: Option<LoadReport>,
    pub connections: ConnectionReport,
    pub missed_schedule: u64,
    pub verify: Option<VerifyReport>,
    pub violation_sample: Vec<Violation>,
    /// The final pass, when one was asked for (its reads and violations are also in
    /// `verify`).
    pub final_check: Option<FinalCheckReport>,
}

/// What the final pass of [`run_with_final_check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalCheckReport {
    pub consistency: Option<Consistency>,
    /// Hosts each key was read through.
    pub hosts: usize,
    /// Keys that had an acknowledged write.
    pub keys: u64,
    /// Reads judged (keys × hosts, less the unreadable ones).
    pub reads: u64,
    /// An acknowledged write not found at all.
    pub missing: u64,
    /// A value older than the latest acknowledged write.
    pub stale: u64,
    /// Reads still failing after [`FINAL_READ_ATTEMPTS`] attempts: not judged.
    pub unreadable: u64,
}

/// Attempts per final read (errors: retried after a backoff, reconnecting when the
/// connection broke).
pub const FINAL_READ_ATTEMPTS: u32 = 10;
/// Backoff before the second attempt of a final read; doubles up to 1 s.
const FINAL_READ_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// Final reads in flight per host.
const FINAL_SLOTS_PER_HOST: usize = 8;

/// How long a connection keeps trying to reconnect before it is given up.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(10);
/// Backoff between reconnect attempts: doubles from the first to the last.
const RECONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const RECONNECT_BACKOFF_LAST: Duration = Duration::from_millis(500);
/// Poll period of rendezvous and of slots waiting for a reconnect.
const POLL: Duration = Duration::from_millis(1);

/// State shared by all executors of a run.
struct Shared {
    threads: usize,
    abort: AtomicBool,
    abort_reason: Mutex<Option<String>>,
    arrived: [AtomicUsize; 2],
    released_at: Mutex<[Option<Instant>; 2]>,
    next_load_key: AtomicU64,
    next_insert: Arc<AtomicU64>,
    ops_issued: AtomicU64,
    verifier: Option<Mutex<VerifyState>>,
}

struct VerifyState {
    verifier: Verifier,
    sample: Vec<Violation>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn fail(&self, reason: String) {
        let mut slot = lock(&self.abort_reason);
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Wait until every executor arrived at `stage`; all get the same release instant.
    /// `None` if the run was aborted meanwhile.
    async fn rendezvous(&self, stage: usize) -> Option<Instant> {
        let arrived = self.arrived[stage].fetch_add(1, Ordering::SeqCst) + 1;
        if arrived == self.threads {
            lock(&self.released_at)[stage] = Some(Instant::now());
        }
        loop {
            if self.abort.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(at) = lock(&self.released_at)[stage] {
                return Some(at);
            }
            glommio::timer::sleep(POLL).await;
        }
    }

    fn with_verifier<R>(&self, f: impl FnOnce(&mut Verifier) -> R) -> Option<R> {
        self.verifier.as_ref().map(|v| f(&mut lock(v).verifier))
    }

    fn report_violation(&self, violation: Violation) {
        if let Some(v) = &self.verifier {
            let mut state = lock(v);
            if state.sample.len() < VIOLATION_SAMPLE_MAX {
                state.sample.push(violation);
            }
        }
    }
}

/// Messages from executors to the thread that prints live lines.
enum Live {
    Interval(Interval),
    Done,
}

/// Per-executor result.
struct ExecutorResult {
    stats: RunStats,
    load_written: u64,
    load_errors: ErrorCounts,
    connections: ConnectionReport,
    missed_schedule: u64,
    last_completion: Option<Instant>,
    measure_start: Option<Instant>,
    load_seconds: f64,
}

/// Run the workload. Blocks the calling thread, which prints live lines through
/// `on_line` (one call per second of the run).
pub fn run<C: Connector>(
    connector: C,
    config: &RunConfig,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutcome, EngineError> {
    run_with_final_check(connector, config, None, on_line)
}

/// [`run`], then, in verify mode with `final_check` set, the final pass (module doc)
/// at that consistency.
pub fn run_with_final_check<C: Connector>(
    connector: C,
    config: &RunConfig,
    final_check: Option<Consistency>,
    on_line: &mut dyn FnMut(&str),
) -> Result<RunOutcome, EngineError> {
    let final_connector = connector.clone();
    assert!(config.threads >= 1 && config.connections >= 1 && config.pipeline >= 1);
    assert!(!config.hosts.is_empty());
    let shared = Arc::new(Shared {
        threads: config.threads,
        abort: AtomicBool::new(false),
        abort_reason: Mutex::new(None),
        arrived: [AtomicUsize::new(0), AtomicUsize::new(0)],
        released_at: Mutex::new([None, None]),
        next_load_key: AtomicU64::new(0),
        next_insert: Arc::new(AtomicU64::new(config.keys)),
        ops_issued: AtomicU64::new(0),
        verifier: config.verify.then(|| {
            Mutex::new(VerifyState {
                verifier: Verifier::new(),
                sample: Vec::new(),
            })
        }),
    });
    let (live_tx, live_rx) = mpsc::channel::<Live>();
    let mut handles = Vec::with_capacity(config.threads);
    for executor in 0..config.threads {
        let connector = connector.clone();
        let config = config.clone();
        let shared = Arc::clone(&shared);
        let live_tx = live_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{executor}"))
            .spawn(move || {
                let result = run_executor(executor, connector, &config, &shared, &live_tx);
                let _ = live_tx.send(Live::Done);
                result
            })
            .map_err(|e| EngineError::Setup(e.to_string()))?;
        handles.push(handle);
    }
    drop(live_tx);

    let mut live = LiveAggregator::new(config.threads);
    while let Ok(message) = live_rx.recv() {
        let lines = match message {
            Live::Interval(i) => live.on_interval(i),
            Live::Done => live.on_executor_done(),
        };
        for line in lines {
            on_line(&line);
        }
    }
    for line in live.finish() {
        on_line(&line);
    }

    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(EngineError::Setup("an executor thread panicked".into())),
        }
    }
    if let Some(reason) = lock(&shared.abort_reason).clone() {
        return Err(EngineError::Connect(reason));
    }

    let mut stats = RunStats::default();
    let mut connections = ConnectionReport::default();
    let mut load = LoadReport::default();
    let mut load_errors = ErrorCounts::default();
    let mut missed_schedule = 0;
    let mut last_completion: Option<Instant> = None;
    let mut measure_start: Option<Instant> = None;
    for r in &results {
        stats.merge(&r.stats);
        connections.disconnects += r.connections.disconnects;
        connections.reconnects += r.connections.reconnects;
        connections.reconnect_failures += r.connections.reconnect_failures;
        connections.failovers += r.connections.failovers;
        load.keys_written += r.load_written;
        load.seconds = load.seconds.max(r.load_seconds);
        load_errors.merge(&r.load_errors);
        missed_schedule += r.missed_schedule;
        last_completion = last_completion.max(r.last_completion);
        measure_start = measure_start.or(r.measure_start);
    }
    let measured_seconds = match (measure_start, last_completion) {
        (Some(start), Some(end)) if end > start => (end - start).as_secs_f64(),
        _ => 0.0,
    };
    load.errors = load_errors.to_map();
    load.ops_per_second = if load.seconds > 0.0 {
        load.keys_written as f64 / load.seconds
    } else {
        0.0
    };
    let final_check = match final_check {
        Some(consistency) if config.verify => Some(run_final_check(
            final_connector,
            config,
            consistency,
            &shared,
        )?),
        _ => None,
    };
    let (verify, violation_sample) = match &shared.verifier {
        Some(v) => {
            let state = lock(v);
            (
                Some(VerifyReport {
                    reads_checked: state.verifier.reads_checked(),
                    violations: state.verifier.violations(),
                }),
                state.sample.clone(),
            )
        }
        None => (None, Vec::new()),
    };
    Ok(RunOutcome {
        stats,
        measured_seconds,
        load: (config.load > 0).then_some(load),
        connections,
        missed_schedule,
        verify,
        violation_sample,
        final_check,
    })
}

/// The final pass: every acknowledged key through every host, on one executor thread.
fn run_final_check<C: Connector>(
    connector: C,
    config: &RunConfig,
    consistency: Consistency,
    shared: &Arc<Shared>,
) -> Result<FinalCheckReport, EngineError> {
    let keys = Arc::new(
        shared
            .with_verifier(|v| v.acknowledged_keys())
            .unwrap_or_default(),
    );
    let options = ConnectOptions {
        consistency: Some(consistency),
        token: config.options.token.clone(),
        attempt_timeout: config.options.attempt_timeout,
    };
    let hosts = config.hosts.clone();
    let shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name("loadgen-final".into())
        .spawn(move || {
            let local = LocalExecutorBuilder::new(Placement::Unbound)
                .name("loadgen-final")
                .io_memory(256 << 10)
                .make()
                .map_err(|e| EngineError::Setup(format!("final check executor: {e}")))?;
            Ok(local.run(async move {
                let report = Rc::new(RefCell::new(FinalCheckReport {
                    consistency: Some(consistency),
                    hosts: hosts.len(),
                    keys: keys.len() as u64,
                    ..FinalCheckReport::default()
                }));
                let mut tasks = Vec::new();
                for host in &hosts {
                    let next = Rc::new(Cell::new(0usize));
                    for _ in 0..FINAL_SLOTS_PER_HOST {
                        let (connector, options, host) =
                            (connector.clone(), options.clone(), host.clone());
                        let (keys, shared, report, next) = (
                            Arc::clone(&keys),
                            Arc::clone(&shared),
                            Rc::clone(&report),
                            Rc::clone(&next),
                        );
                        tasks.push(glommio::spawn_local(async move {
                            final_check_slot(connector, options, host, keys, shared, report, next)
                                .await
                        }));
                    }
                }
                for task in tasks {
                    task.await;
                }
                let report = report.borrow().clone();
                report
            }))
        })
        .map_err(|e| EngineError::Setup(e.to_string()))?;
    thread
        .join()
        .map_err(|_| EngineError::Setup("the final check thread panicked".into()))?
}

/// One slot of the final pass: takes the next key of `host`'s share until none is
/// left; each read is retried up to [`FINAL_READ_ATTEMPTS`] times.
async fn final_check_slot<C: Connector>(
    connector: C,
    options: ConnectOptions,
    host: String,
    keys: Arc<Vec<Vec<u8>>>,
    shared: Arc<Shared>,
    report: Rc<RefCell<FinalCheckReport>>,
    next: Rc<Cell<usize>>,
) {
    let mut conn: Option<C::Conn> = None;
    loop {
        let index = next.get();
        let Some(key) = keys.get(index) else { return };
        next.set(index + 1);
        let mut backoff = FINAL_READ_BACKOFF_FIRST;
        let mut judged = false;
        for attempt in 0..FINAL_READ_ATTEMPTS {
            if attempt > 0 {
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            if conn.is_none() {
                conn = connector.connect(&host, &options).await.ok();
            }
            let Some(c) = conn.as_ref() else { continue };
            let Some(ticket) = shared.with_verifier(|v| v.read_started(key)) else {
                return;
            };
            match c.get(key).await {
                Ok(outcome) => {
                    let got: Vec<Option<u64>> = match &outcome {
                        GetOutcome::NotFound => Vec::new(),
                        GetOutcome::Found(v) => vec![write_id_of(v)],
                        GetOutcome::Siblings(vs) => vs.iter().map(|v| write_id_of(v)).collect(),
                    };
                    let verdict = shared.with_verifier(|v| v.read_completed(ticket, &got));
                    let mut r = report.borrow_mut();
                    r.reads += 1;
                    if let Some(Err(violation)) = verdict {
                        if violation.got.is_empty() {
                            r.missing += 1;
                        } else {
                            r.stale += 1;
                        }
                        shared.report_violation(violation);
                    }
                    judged = true;
                    break;
                }
                Err(e) => {
                    shared.with_verifier(|v| v.read_failed(ticket));
                    if e.kind() == ErrorKind::Disconnected {
                        conn = None;
                    }
                }
            }
        }
        if !judged {
            report.borrow_mut().unreadable += 1;
        }
    }
}

fn run_executor<C: Connector>(
    executor: usize,
    connector: C,
    config: &RunConfig,
    shared: &Arc<Shared>,
    live_tx: &mpsc::Sender<Live>,
) -> Result<ExecutorResult, EngineError> {
    let built = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("loadgen-{executor}"))
        // The load generator does no storage I/O; keep locked memory small.
        .io_memory(256 << 10)
        .make();
    let local = match built {
        Ok(local) => local,
        Err(e) => {
            let reason = format!(
                "glommio executor {executor}: {e} (raise `ulimit -l` if this is a memlock error)"
            );
            shared.fail(reason.clone());
            return Err(EngineError::Setup(reason));
        }
    };
    let live_tx = live_tx.clone();
    let shared = Arc::clone(shared);
    Ok(local
        .run(async move { ExecutorRun::start(executor, connector, config, shared, live_tx).await }))
}

/// One connection as the slots see it.
struct ConnSlot<C: Connector> {
    /// Global connection number `j` (0..connections).
    index: usize,
    host: String,
    current: RefCell<Option<Rc<C::Conn>>>,
    generation: Cell<u64>,
    reconnecting: Cell<bool>,
    dead: Cell<bool>,
    /// Open loop: next ticket of the schedule, origin and spacing.
    next_ticket: Cell<u64>,
    schedule_origin: Cell<Option<Instant>>,
    interval: Option<Duration>,
    /// Tickets actually sent.
    sent: Cell<u64>,
}

/// Per-executor mutable state shared by its slots (single thread: `Rc`/`RefCell`).
/// Run `pipeline` concurrent slots on every connection (the requests in flight per
/// connection) and wait for all of them.
async fn run_slots<C, F, Fut>(run: &Rc<ExecutorRun<C>>, conns: &[Rc<ConnSlot<C>>], slot: F)
where
    C: Connector,
    F: Fn(Rc<ExecutorRun<C>>, Rc<ConnSlot<C>>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let mut tasks = Vec::new();
    for conn in conns {
        for _ in 0..run.config.pipeline {
            tasks.push(glommio::spawn_local(slot(Rc::clone(run), Rc::clone(conn))));
        }
    }
    for t in tasks {
        t.await;
    }
}

struct ExecutorRun<C: Connector> {
    executor: usize,
    connector: C,
    config: RunConfig,
    shared: Arc<Shared>,
    generator: RefCell<Generator>,
    values: ValueSource,
    next_write: Cell<u64>,
    stats: RefCell<RunStats>,
    interval_ops: Cell<u64>,
    interval_errors: Cell<ErrorCounts>,
    interval_latency: RefCell<hdrhistogram::Histogram<u64>>,
    load_written: Cell<u64>,
    load_errors: Cell<ErrorCounts>,
    connections: RefCell<ConnectionReport>,
    last_completion: Cell<Option<Instant>>,
    /// Set when the run phase starts.
    measure_start: Cell<Option<Instant>>,
    run_end: Cell<Option<Instant>>,
}

impl<C: Connector> ExecutorRun<C> {
    async fn start(
        executor: usize,
        connector: C,
        config: &RunConfig,
        shared: Arc<Shared>,
        live_tx: mpsc::Sender<Live>,
    ) -> ExecutorResult {
        let seed = config.seed ^ (executor as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = Rng::new(seed ^ 0xA5A5);
        let values = ValueSource::new(config.value_size_bytes, &mut rng);
        let generator = Generator::new(
            config.workload.clone(),
            config.keys,
            seed,
            Arc::clone(&shared.next_insert),
        );
        let run = Rc::new(ExecutorRun {
            executor,
            connector,
            config: config.clone(),
            shared,
            generator: RefCell::new(generator),
            values,
            next_write: Cell::new(0),
            stats: RefCell::new(RunStats::default()),
            interval_ops: Cell::new(0),
            interval_errors: Cell::new(ErrorCounts::default()),
            interval_latency: RefCell::new(new_histogram()),
            load_written: Cell::new(0),
            load_errors: Cell::new(ErrorCounts::default()),
            connections: RefCell::new(ConnectionReport::default()),
            last_completion: Cell::new(None),
            measure_start: Cell::new(None),
            run_end: Cell::new(None),
        });
        let mut result = ExecutorResult {
            stats: RunStats::default(),
            load_written: 0,
            load_errors: ErrorCounts::default(),
            connections: ConnectionReport::default(),
            missed_schedule: 0,
            last_completion: None,
            measure_start: None,
            load_seconds: 0.0,
        };

        // Phase 1: connect.
        let conns = match run.open_connections().await {
            Ok(conns) => conns,
            Err(reason) => {
                run.shared.fail(reason);
                return result;
            }
        };
        let Some(load_start) = run.shared.rendezvous(0).await else {
            return result;
        };

        // Phase 2: load.
        if run.config.load > 0 {
            run_slots(&run, &conns, |run, conn| async move {
                run.load_slot(&conn).await
            })
            .await;
        }
        let Some(run_start) = run.shared.rendezvous(1).await else {
            return result;
        };
        result.load_seconds = (run_start - load_start).as_secs_f64();

        // Phase 3: run.
        let measure_start = run_start + run.config.warmup;
        run.measure_start.set(Some(measure_start));
        if let Bound::Duration(d) = run.config.bound {
            run.run_end.set(Some(measure_start + d));
        }
        let total_conns = run.config.connections as u32;
        for conn in &conns {
            if let Some(interval) = conn.interval {
                // Stagger connections so the aggregate schedule is evenly spaced.
                let index = conn.index as u32;
                conn.schedule_origin
                    .set(Some(run_start + interval * index / total_conns));
            }
        }
        let ticker = {
            let run = Rc::clone(&run);
            glommio::spawn_local(async move { run.ticker(run_start, live_tx).await }).detach()
        };
        run_slots(&run, &conns, |run, conn| async move {
            run.run_slot(&conn).await
        })
        .await;
        // The last interval line is not sent: it would cover a partial second.
        ticker.cancel();

        if let (Some(end), Some(_)) = (run.run_end.get(), run.config.rate_ops_per_s) {
            for conn in &conns {
                let scheduled = scheduled_before(conn, end);
                result.missed_schedule += scheduled.saturating_sub(conn.sent.get());
            }
        }
        result.stats = run.stats.borrow().clone();
        result.load_written = run.load_written.get();
        result.load_errors = run.load_errors.get();
        result.connections = run.connections.borrow().clone();
        result.last_completion = run.last_completion.get();
        result.measure_start = Some(measure_start);
        result
    }

    async fn open_connections(&self) -> Result<Vec<Rc<ConnSlot<C>>>, String> {
        let c = &self.config;
        let interval = c.rate_ops_per_s.map(|rate| {
            // Each connection gets rate / connections.
            Duration::from_secs_f64(c.connections as f64 / rate)
        });
        let mut conns = Vec::new();
        for j in (self.executor..c.connections).step_by(c.threads) {
            // Connection j starts at host j (round robin); a host that cannot be reached
            // at the start (it died as the run began) gives way to the next one, and the
            // run fails only when none can be.
            let mut failures = Vec::new();
            let mut opened = None;
            for k in 0..c.hosts.len() {
                let host = c.hosts[(j + k) % c.hosts.len()].clone();
                match self.connector.connect(&host, &c.options).await {
                    Ok(conn) => {
                        opened = Some((host, conn));
                        break;
                    }
                    Err(e) => failures.push(format!("{host}: {e}")),
                }
            }
            let Some((host, conn)) = opened else {
                return Err(failures.join("; "));
            };
            conns.push(Rc::new(ConnSlot {
                index: j,
                host,
                current: RefCell::new(Some(Rc::new(conn))),
                generation: Cell::new(0),
                reconnecting: Cell::new(false),
                dead: Cell::new(false),
                next_ticket: Cell::new(0),
                schedule_origin: Cell::new(None),
                interval,
                sent: Cell::new(0),
            }));
        }
        Ok(conns)
    }

    fn next_write_id(&self) -> u64 {
        let n = self.next_write.get() + 1;
        self.next_write.set(n);
        assert!(n < (1 << 48), "write counter overflow");
        ((self.executor as u64 + 1) << 48) | n
    }

    /// The connection to use now, or `None` if it is dead or the run is over.
    async fn connection(&self, conn: &ConnSlot<C>) -> Option<(Rc<C::Conn>, u64)> {
        loop {
            if conn.dead.get() || self.past_end_now() {
                return None;
            }
            if !conn.reconnecting.get() {
                if let Some(c) = conn.current.borrow().as_ref() {
                    return Some((Rc::clone(c), conn.generation.get()));
                }
            }
            glommio::timer::sleep(POLL).await;
        }
    }

    fn past_end(&self, now: Instant) -> bool {
        self.run_end.get().is_some_and(|end| now >= end)
    }

    /// [`Self::past_end`] now; reads no clock when the run has no end time.
    fn past_end_now(&self) -> bool {
        self.run_end.get().is_some_and(|end| self.now() >= end)
    }

    /// The time for a send or a completion (module doc, "Clock readings").
    fn now(&self) -> Instant {
        crate::transport::reply_stamp().unwrap_or_else(Instant::now)
    }

    /// The connection of `generation` broke: reopen it (once, whichever slot sees it
    /// first), with doubling backoff, giving up after `RECONNECT_GIVE_UP`.
    async fn reconnect(&self, conn: &ConnSlot<C>, generation: u64) {
        if conn.generation.get() != generation || conn.reconnecting.get() {
            return;
        }
        conn.reconnecting.set(true);
        conn.current.replace(None);
        self.connections.borrow_mut().disconnects += 1;
        let give_up_at = Instant::now() + RECONNECT_GIVE_UP;
        let mut backoff = RECONNECT_BACKOFF_FIRST;
        loop {
            match self
                .connector
                .connect(&conn.host, &self.config.options)
                .await
            {
                Ok(c) => {
                    conn.current.replace(Some(Rc::new(c)));
                    conn.generation.set(generation + 1);
                    self.connections.borrow_mut().reconnects += 1;
                    break;
                }
                Err(_) => {
                    let now = Instant::now();
                    if now >= give_up_at || self.past_end(now) {
                        conn.dead.set(true);
                        self.connections.borrow_mut().reconnect_failures += 1;
                        break;
                    }
                    glommio::timer::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_LAST);
                }
            }
        }
        conn.reconnecting.set(false);
    }

    async fn load_slot(&self, conn: &ConnSlot<C>) {
        loop {
            let id = self.shared.next_load_key.fetch_add(1, Ordering::Relaxed);
            if id >= self.config.load {
                return;
            }
            let Some((c, generation)) = self.connection(conn).await else {
                return;
            };
            let mut key_buf = [0; KEY_BYTES];
            let key = write_key(id, &mut key_buf);
            let result = self.put(&c, key).await;
            self.count_failovers(&c);
            match result {
                Ok(()) => self.load_written.set(self.load_written.get() + 1),
                Err(e) => {
                    let mut errors = self.load_errors.get();
                    errors.add(e.kind());
                    self.load_errors.set(errors);
                    if e.kind() == ErrorKind::Disconnected {
                        self.reconnect(conn, generation).await;
                    }
                }
            }
            glommio::yield_if_needed().await;
        }
    }

    /// A put of a fresh value, tracked by the verifier in verify mode.
    async fn put(&self, c: &C::Conn, key: &[u8]) -> Result<(), OpError> {
        let write_id = self.config.verify.then(|| self.next_write_id());
        let value = {
            let generator = &mut *self.generator.borrow_mut();
            match write_id {
                Some(id) => std::borrow::Cow::Owned(self.values.value(generator.rng(), Some(id))),
                None => std::borrow::Cow::Borrowed(self.values.shared_value(generator.rng())),
            }
        };
        if let Some(id) = write_id {
            self.shared.with_verifier(|v| v.write_started(key, id));
        }
        let result = c.put(key, &value).await;
        if let Some(id) = write_id {
            self.shared.with_verifier(|v| match &result {
                Ok(()) => v.write_acked(key, id),
                Err(_) => v.write_failed(key, id),
            });
        }
        result
    }

    /// A get, checked by the verifier in verify mode. Returns whether it found a value.
    async fn get(&self, c: &C::Conn, key: &[u8]) -> Result<bool, OpError> {
        let ticket = self.shared.with_verifier(|v| v.read_started(key));
        let result = c.get(key).await;
        let Some(ticket) = ticket else {
            return result.map(|o| o != GetOutcome::NotFound);
        };
        match &result {
            Ok(outcome) => {
                let got: Vec<Option<u64>> = match outcome {
                    GetOutcome::NotFound => Vec::new(),
                    GetOutcome::Found(v) => vec![write_id_of(v)],
                    GetOutcome::Siblings(vs) => vs.iter().map(|v| write_id_of(v)).collect(),
                };
                let verdict = self
                    .shared
                    .with_verifier(|v| v.read_completed(ticket, &got));
                if let Some(Err(violation)) = verdict {
                    self.shared.report_violation(violation);
                }
            }
            Err(_) => {
                self.shared.with_verifier(|v| v.read_failed(ticket));
            }
        }
        result.map(|o| o != GetOutcome::NotFound)
    }

    /// Add the failovers `c` reports to this executor's connection report.
    fn count_failovers(&self, c: &C::Conn) {
        let failovers = c.take_failovers();
        if failovers > 0 {
            self.connections.borrow_mut().failovers += failovers;
        }
    }

    /// Next intended start time in open loop (`None` in closed loop).
    fn take_ticket(&self, conn: &ConnSlot<C>) -> Option<Instant> {
        let interval = conn.interval?;
        let origin = conn.schedule_origin.get()?;
        let ticket = conn.next_ticket.get();
        conn.next_ticket.set(ticket + 1);
        Some(origin + mul_duration(interval, ticket))
    }

    async fn run_slot(&self, conn: &ConnSlot<C>) {
        let Some(measure_start) = self.measure_start.get() else {
            return;
        };
        loop {
            let intended = self.take_ticket(conn);
            if let Some(t) = intended {
                if self.past_end(t) {
                    return;
                }
                let now = Instant::now();
                if t > now {
                    glommio::timer::sleep(t - now).await;
                }
            }
            let Some((c, generation)) = self.connection(conn).await else {
                return;
            };
            // The stamp may predate an intended start that fell within this round; the
            // request leaves after both.
            let sent = intended.map_or_else(|| self.now(), |t| self.now().max(t));
            if self.past_end(sent) {
                return;
            }
            let intended = intended.unwrap_or(sent);
            let measuring = intended >= measure_start;
            if measuring {
                if let Bound::Ops(limit) = self.config.bound {
                    if self.shared.ops_issued.fetch_add(1, Ordering::Relaxed) >= limit {
                        return;
                    }
                }
            }
            conn.sent.set(conn.sent.get() + 1);
            let op = self.generator.borrow_mut().next_op();
            let mut key_buf = [0; KEY_BYTES];
            let key = write_key(op.key_id, &mut key_buf);
            let result = match op.kind {
                OpKind::Read => self.get(&c, key).await,
                OpKind::Update | OpKind::Insert => self.put(&c, key).await.map(|()| true),
                OpKind::ReadModifyWrite => match self.get(&c, key).await {
                    Ok(found) => self.put(&c, key).await.map(|()| found),
                    Err(e) => Err(e),
                },
            };
            let done = self.now();
            self.count_failovers(&c);
            self.on_completion(op.kind, intended, sent, done, measuring, &result);
            if let Err(e) = &result {
                if e.kind() == ErrorKind::Disconnected {
                    self.reconnect(conn, generation).await;
                }
            }
            glommio::yield_if_needed().await;
        }
    }

    fn on_completion(
        &self,
        kind: OpKind,
        intended: Instant,
        sent: Instant,
        done: Instant,
        measuring: bool,
        result: &Result<bool, OpError>,
    ) {
        let corrected_us = micros(done - intended);
        let raw_us = micros(done - sent);
        match result {
            Ok(found) => {
                self.interval_ops.set(self.interval_ops.get() + 1);
                record_us(&mut self.interval_latency.borrow_mut(), corrected_us);
                if measuring {
                    let mut stats = self.stats.borrow_mut();
                    let op = stats.op_mut(kind);
                    record_us(&mut op.corrected, corrected_us);
                    record_us(&mut op.raw, raw_us);
                    if !found {
                        op.not_found += 1;
                    }
                }
            }
            Err(e) => {
                let mut errors = self.interval_errors.get();
                errors.add(e.kind());
                self.interval_errors.set(errors);
                if measuring {
                    self.stats.borrow_mut().op_mut(kind).errors.add(e.kind());
                }
            }
        }
        if measuring {
            self.last_completion.set(Some(done));
        }
    }

    /// Every second of the run phase, hand this executor's interval to the printer.
    async fn ticker(&self, run_start: Instant, live_tx: mpsc::Sender<Live>) {
        let measure_start = run_start + self.config.warmup;
        for second in 1u64.. {
            let at = run_start + Duration::from_secs(second);
            let now = Instant::now();
            if at > now {
                glommio::timer::sleep(at - now).await;
            }
            let interval = Interval {
                second,
                ops: self.interval_ops.replace(0),
                errors: self.interval_errors.replace(ErrorCounts::default()),
                latency: self.interval_latency.replace(new_histogram()),
                warmup: at - Duration::from_secs(1) < measure_start,
            };
            if live_tx.send(Live::Interval(interval)).is_err() {
                return;
            }
        }
    }
}

/// How many tickets of `conn`'s schedule fall before `end`.
fn scheduled_before<C: Connector>(conn: &ConnSlot<C>, end: Instant) -> u64 {
    match (conn.interval, conn.schedule_origin.get()) {
        (Some(interval), Some(origin)) if end > origin => {
            let span = (end - origin).as_nanos();
            let step = interval.as_nanos().max(1);
            span.div_ceil(step) as u64
        }
        _ => 0,
    }
}

fn mul_duration(d: Duration, n: u64) -> Duration {
    Duration::from_nanos(
        (d.as_nanos().saturating_mul(u128::from(n))).min(u128::from(u64::MAX)) as u64,
    )
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{FakeConfig, FakeTarget};
    use crate::workload::Distribution;

    fn config() -> RunConfig {
        RunConfig {
            hosts: vec!["fake".into(), "fake".into()],
            options: ConnectOptions::default(),
            threads: 1,
            connections: 2,
            pipeline: 2,
            bound: Bound::Ops(2000),
            warmup: Duration::ZERO,
            load: 0,
            keys: 50,
            value_size_bytes: 32,
            rate_ops_per_s: None,
            workload: WorkloadSpec::custom(0.5, Distribution::Uniform).unwrap(),
            verify: true,
            seed: 11,
        }
    }

    #[test]
    fn the_final_pass_reads_every_acknowledged_key_through_every_host() {
        let outcome = run_with_final_check(
            FakeTarget::new(FakeConfig::default()),
            &config(),
            Some(Consistency::All),
            &mut |_| {},
        )
        .unwrap();
        let f = outcome.final_check.unwrap();
        assert!(f.keys > 0 && f.keys <= 50, "{f:?}");
        assert_eq!(
            (f.hosts, f.reads, f.missing, f.stale, f.unreadable),
            (2, f.keys * 2, 0, 0, 0)
        );
        assert_eq!(outcome.verify.unwrap().violations, 0);
    }

    #[test]
    fn the_final_pass_counts_stale_values_as_violations() {
        let stale = FakeConfig {
            stale: true,
            ..FakeConfig::default()
        };
        let outcome = run_with_final_check(
            FakeTarget::new(stale),
            &config(),
            Some(Consistency::All),
            &mut |_| {},
        )
        .unwrap();
        let f = outcome.final_check.unwrap();
        assert!(f.stale > 0, "{f:?}");
        assert!(outcome.verify.unwrap().violations >= f.stale + f.missing);
    }

    #[test]
    fn without_the_flag_there_is_no_final_pass() {
        let outcome = run(
            FakeTarget::new(FakeConfig::default()),
            &config(),
            &mut |_| {},
        )
        .unwrap();
        assert!(outcome.final_check.is_none());
    }
}
