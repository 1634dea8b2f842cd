//! Command line: flags (docs/design.md §8.3), validation into a [`RunConfig`], choice of
//! the target, printing of live lines and the final table, output files, exit codes.
//!
//! Exit codes:
//! - 0: the run completed (errors, if any, are in the table).
//! - 2: usage error (bad flag or value, workload E, unreadable `--plot-from` input).
//! - 3: operational failure: cannot connect at start, executors cannot start, no
//!   operation succeeded at all, or an output file cannot be written.
//! - 4: `--verify` found at least one violation (a read older than the latest
//!   acknowledged write, or a lost write); each is printed with key, expected, got.
//!   With `--verify-final`, the final pass's violations count too; a final read that
//!   keeps failing is not judged and makes the exit code 3 (when nothing else is 4).
//!
//! Hosts named `fake` select the in-process [`FakeTarget`] (for demos and tests of this
//! binary): `fake[:stale][:delay_us=N]`.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringkv::protocol::types::Consistency;

use crate::engine::{self, Bound, EngineError, RunConfig, RunOutcome};
use crate::plot;
use crate::ringkv_target::RingkvConnector;
use crate::stats::{format_hgrm, format_table, redact_command_line, OpReport, Report, Settings};
use crate::target::{ConnectOptions, FakeConfig, FakeTarget};
use crate::workload::{Distribution, OpKind, WorkloadSpec, KEY_ID_MAX, WRITE_ID_BYTES};

pub const EXIT_OK: i32 = 0;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_OPERATIONAL: i32 = 3;
pub const EXIT_VERIFY: i32 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "ringkv-loadgen",
    version,
    about = "Load generator for ringkv: closed or open loop, YCSB workloads, HdrHistogram latencies",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Plot the percentile curves of one or more JSON reports into one SVG.
    Plot {
        /// JSON reports written with --json.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output SVG file.
        #[arg(long, visible_alias = "plot")]
        out: PathBuf,
        #[arg(long)]
        title: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Servers to load, HOST:PORT,... (connections are spread round-robin).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub hosts: Option<String>,
    /// YCSB core workload a|b|c|d|f, or custom (default: custom). E is refused: it
    /// needs range scans, which ringkv does not have.
    #[arg(long)]
    pub workload: Option<String>,
    /// custom: fraction of reads (the rest are updates). Default 0.5.
    #[arg(long, value_name = "R")]
    pub read_ratio: Option<f64>,
    /// Number of keys (key space 0..N). Default 100000.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub keys: u64,
    /// custom: uniform|zipfian|latest. Default zipfian.
    #[arg(long)]
    pub distribution: Option<String>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100, value_name = "B")]
    pub value_size: usize,
    /// Total connections (split over threads).
    #[arg(long, default_value_t = 8, value_name = "C")]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_name = "P")]
    pub pipeline: usize,
    /// Executor threads (one glommio executor each).
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub threads: usize,
    /// Measured run time, e.g. 30s, 500ms, 2m (default 30s).
    #[arg(long, conflicts_with = "ops")]
    pub duration: Option<String>,
    /// Measured operations instead of a duration.
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// Unmeasured time before the measured phase (default 5s with --duration, 0 with --ops).
    #[arg(long)]
    pub warmup: Option<String>,
    /// Write keys 0..N once before the run (unmeasured).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub load: u64,
    /// Open loop at this many operations per second (all connections together).
    #[arg(long, value_name = "OPS_PER_S")]
    pub rate: Option<f64>,
    /// one|two|quorum|all|N, sent with every request.
    #[arg(long)]
    pub consistency: Option<String>,
    /// How long one attempt waits for its reply before the request moves to the next
    /// node of its plan (a silent node); 0 = forever (default 3s, above the server's
    /// default request timeout, so a coordinator's own Timeout answer comes first).
    #[arg(long, value_name = "DURATION")]
    pub attempt_timeout: Option<String>,
    /// Write the JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the HdrHistogram percentile distribution (all ops, corrected, ms) here.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write a percentile plot (SVG) here.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Plot these JSON reports together (with --plot FILE) instead of running.
    #[arg(long, value_name = "A.json,B.json")]
    pub plot_from: Option<String>,
    /// Check every read against acknowledged writes; exit 4 on violations.
    #[arg(long)]
    pub verify: bool,
    /// With --verify: after the run, read every key that had an acknowledged write
    /// through every host at --verify-final-consistency; an older value than the
    /// latest acknowledged write, or none, is a violation (exit 4).
    #[arg(long, requires = "verify")]
    pub verify_final: bool,
    /// Consistency of the final pass: one|two|quorum|all|N (default all).
    #[arg(long, value_name = "C", requires = "verify_final")]
    pub verify_final_consistency: Option<String>,
    /// Auth token passed to the target.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the auth token.
    #[arg(long, value_name = "F")]
    pub token_file: Option<PathBuf>,
    /// Seed of the key and value generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A usage error (exit 2) or an operational failure (exit 3), with its message.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message: message.into(),
    }
}

fn operational(message: impl Into<String>) -> Failure {
    Failure {
        code: EXIT_OPERATIONAL,
        message: message.into(),
    }
}

/// `30s`, `500ms`, `2m`, `1h`, or bare seconds.
/// `--attempt-timeout` when not given.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit_s) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 500ms, 2m"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(value * unit_s))
}

/// Which target the hosts name.
#[derive(Debug, Clone)]
pub enum TargetChoice {
    Fake(FakeConfig),
    Ringkv,
}

/// `fake[:stale][:delay_us=N]` for every host, or real hosts.
pub fn parse_target(hosts: &[String]) -> Result<TargetChoice, String> {
    let fakes = hosts
        .iter()
        .filter(|h| h.split(':').next() == Some("fake"))
        .count();
    if fakes == 0 {
        return Ok(TargetChoice::Ringkv);
    }
    if fakes != hosts.len() {
        return Err("cannot mix fake and real hosts".into());
    }
    let mut config = FakeConfig::default();
    for part in hosts[0].split(':').skip(1) {
        if part == "stale" {
            config.stale = true;
        } else if let Some(us) = part.strip_prefix("delay_us=") {
            let us: u64 = us
                .parse()
                .map_err(|_| format!("invalid fake option {part:?}"))?;
            config.delay = Duration::from_micros(us);
        } else {
            return Err(format!(
                "invalid fake option {part:?}: expected stale or delay_us=N"
            ));
        }
    }
    Ok(TargetChoice::Fake(config))
}

/// Everything decided from the flags.
#[derive(Debug)]
pub struct Plan {
    pub config: RunConfig,
    pub settings: Settings,
    pub target: TargetChoice,
    /// `--verify-final`: the final pass's consistency.
    pub verify_final: Option<Consistency>,
}

pub fn plan(args: &RunArgs) -> Result<Plan, Failure> {
    let hosts: Vec<String> = args
        .hosts
        .as_deref()
        .ok_or_else(|| usage("--hosts HOST:PORT,... is required"))?
        .split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(usage("--hosts names no host"));
    }
    let target = parse_target(&hosts).map_err(usage)?;

    let workload_name = args
        .workload
        .as_deref()
        .unwrap_or("custom")
        .to_ascii_lowercase();
    let workload = if workload_name == "custom" {
        let distribution: Distribution = args
            .distribution
            .as_deref()
            .unwrap_or("zipfian")
            .parse()
            .map_err(usage)?;
        WorkloadSpec::custom(args.read_ratio.unwrap_or(0.5), distribution).map_err(usage)?
    } else {
        if args.read_ratio.is_some() || args.distribution.is_some() {
            return Err(usage(format!(
                "--read-ratio and --distribution apply to --workload custom, not {workload_name}"
            )));
        }
        WorkloadSpec::preset(&workload_name).map_err(usage)?
    };

    if args.keys == 0 || args.keys > KEY_ID_MAX {
        return Err(usage(format!("--keys must be within 1..={KEY_ID_MAX}")));
    }
    if args.load > KEY_ID_MAX {
        return Err(usage(format!("--load must be at most {KEY_ID_MAX}")));
    }
    if args.threads == 0 || args.connections == 0 || args.pipeline == 0 {
        return Err(usage(
            "--threads, --connections and --pipeline must be at least 1",
        ));
    }
    if args.connections < args.threads {
        return Err(usage(format!(
            "--connections ({}) must be at least --threads ({})",
            args.connections, args.threads
        )));
    }
    if args.verify && args.value_size < WRITE_ID_BYTES {
        return Err(usage(format!(
            "--verify needs --value-size of at least {WRITE_ID_BYTES} bytes (values carry a write id)"
        )));
    }
    if let Some(rate) = args.rate {
        if !rate.is_finite() || rate <= 0.0 {
            return Err(usage(
                "--rate must be a positive number of operations per second",
            ));
        }
    }
    let consistency: Option<Consistency> = args
        .consistency
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(usage)?;
    let verify_final: Option<Consistency> = if args.verify_final {
        Some(
            args.verify_final_consistency
                .as_deref()
                .unwrap_or("all")
                .parse()
                .map_err(usage)?,
        )
    } else {
        None
    };
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let (bound, default_warmup) = match (args.ops, &args.duration) {
        (Some(0), _) => return Err(usage("--ops must be at least 1")),
        (Some(n), _) => (Bound::Ops(n), Duration::ZERO),
        (None, d) => {
            let d = parse_duration(d.as_deref().unwrap_or("30s")).map_err(usage)?;
            if d.is_zero() {
                return Err(usage("--duration must be positive"));
            }
            (Bound::Duration(d), Duration::from_secs(5))
        }
    };
    let warmup = match &args.warmup {
        Some(w) => parse_duration(w).map_err(usage)?,
        None => default_warmup,
    };
    if let Some(p) = &args.plot {
        check_svg(p)?;
    }

    let attempt_timeout = match args.attempt_timeout.as_deref() {
        None => Some(DEFAULT_ATTEMPT_TIMEOUT),
        Some("0") => None,
        Some(text) => Some(parse_duration(text).map_err(usage)?),
    };
    let config = RunConfig {
        hosts: hosts.clone(),
        options: ConnectOptions {
            consistency,
            token,
            attempt_timeout,
        },
        threads: args.threads,
        connections: args.connections,
        pipeline: args.pipeline,
        bound,
        warmup,
        load: args.load,
        keys: args.keys,
        value_size_bytes: args.value_size,
        rate_ops_per_s: args.rate,
        workload: workload.clone(),
        verify: args.verify,
        seed: args.seed,
    };
    let settings = Settings {
        hosts,
        workload,
        keys: args.keys,
        value_size_bytes: args.value_size,
        connections: args.connections,
        pipeline: args.pipeline,
        threads: args.threads,
        duration_seconds: match bound {
            Bound::Duration(d) => Some(d.as_secs_f64()),
            Bound::Ops(_) => None,
        },
        ops: args.ops,
        warmup_seconds: warmup.as_secs_f64(),
        load: args.load,
        rate_ops_per_second: args.rate,
        consistency: args.consistency.clone(),
        verify: args.verify,
        seed: args.seed,
    };
    Ok(Plan {
        config,
        settings,
        target,
        verify_final,
    })
}

fn check_svg(path: &Path) -> Result<(), Failure> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("svg") => Ok(()),
        _ => Err(usage(format!(
            "--plot {}: only SVG output is supported (use a .svg file name)",
            path.display()
        ))),
    }
}

/// Build the JSON report from a run.
pub fn build_report(
    command_line: &[String],
    settings: &Settings,
    config: &RunConfig,
    outcome: &RunOutcome,
) -> Report {
    let seconds = outcome.measured_seconds;
    let ops: Vec<OpReport> = OpKind::ALL
        .iter()
        .filter(|k| {
            let s = outcome.stats.op(**k);
            s.count() > 0 || s.errors.total() > 0
        })
        .map(|k| OpReport::of(k.name(), outcome.stats.op(*k), seconds))
        .collect();
    Report {
        tool: "ringkv-loadgen".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command_line: redact_command_line(command_line),
        settings: settings.clone(),
        latency_unit: "us".into(),
        open_loop: config.rate_ops_per_s.is_some(),
        measured_seconds: seconds,
        ops,
        total: OpReport::of("all", &outcome.stats.total(), seconds),
        load: outcome.load.clone(),
        connections: outcome.connections.clone(),
        missed_schedule: outcome.missed_schedule,
        verify: outcome.verify.clone(),
    }
}

/// Entry point of the binary; returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let argv: Vec<OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version with exit 0 and errors with exit 2.
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let command_line: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let result = match &cli.command {
        Some(Command::Plot { files, out, title }) => plot_files(files, out, title.as_deref()),
        None => match &cli.run.plot_from {
            Some(list) => match &cli.run.plot {
                Some(out) => {
                    let files: Vec<PathBuf> = list
                        .split(',')
                        .filter(|s| !s.trim().is_empty())
                        .map(|s| PathBuf::from(s.trim()))
                        .collect();
                    plot_files(&files, out, None)
                }
                None => Err(usage("--plot-from needs --plot FILE.svg")),
            },
            None => run_command(&cli.run, &command_line),
        },
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("ringkv-loadgen: {}", f.message);
            f.code
        }
    }
}

fn plot_files(files: &[PathBuf], out: &Path, title: Option<&str>) -> Result<i32, Failure> {
    check_svg(out)?;
    if files.is_empty() {
        return Err(usage("no JSON reports to plot"));
    }
    let mut reports = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| usage(format!("{}: {e}", f.display())))?;
        let report: Report = serde_json::from_str(&text).map_err(|e| {
            usage(format!(
                "{}: not a ringkv-loadgen JSON report: {e}",
                f.display()
            ))
        })?;
        let label = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.display().to_string());
        reports.push((label, report));
    }
    let title = title.map(str::to_string).unwrap_or_else(|| {
        let names: Vec<&str> = reports.iter().map(|(l, _)| l.as_str()).collect();
        format!("ringkv-loadgen latency by percentile: {}", names.join(", "))
    });
    let svg = plot::render_svg(&title, &plot::series_from_reports(&reports));
    std::fs::write(out, svg).map_err(|e| operational(format!("{}: {e}", out.display())))?;
    Ok(EXIT_OK)
}

/// Prints live lines: one updating line on a terminal, plain lines otherwise.
struct LivePrinter {
    terminal: bool,
    printed: bool,
}

impl LivePrinter {
    fn line(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    fn finish(&mut self) {
        if self.terminal && self.printed {
            eprintln!();
        }
    }
}

fn run_command(args: &RunArgs, command_line: &[String]) -> Result<i32, Failure> {
    let plan = plan(args)?;
    let mut printer = LivePrinter {
        terminal: std::io::stderr().is_terminal(),
        printed: false,
    };
    eprintln!(
        "ringkv-loadgen: workload {} ({}% read, {}% update, {}% insert, {}% read-modify-write, {}), {} keys, {} B values, {} connections x {} pipeline on {} thread(s), {}",
        plan.settings.workload.name,
        plan.settings.workload.read * 100.0,
        plan.settings.workload.update * 100.0,
        plan.settings.workload.insert * 100.0,
        plan.settings.workload.read_modify_write * 100.0,
        format!("{:?}", plan.settings.workload.distribution).to_lowercase(),
        plan.settings.keys,
        plan.settings.value_size_bytes,
        plan.settings.connections,
        plan.settings.pipeline,
        plan.settings.threads,
        match plan.config.rate_ops_per_s {
            Some(r) => format!("open loop at {r} ops/s"),
            None => "closed loop".into(),
        }
    );
    let mut on_line = |line: &str| printer.line(line);
    let outcome = match &plan.target {
        TargetChoice::Fake(fake) => engine::run_with_final_check(
            FakeTarget::new(fake.clone()),
            &plan.config,
            plan.verify_final,
            &mut on_line,
        ),
        TargetChoice::Ringkv => engine::run_with_final_check(
            RingkvConnector,
            &plan.config,
            plan.verify_final,
            &mut on_line,
        ),
    };
    printer.finish();
    let outcome = outcome.map_err(|e| match e {
        EngineError::Connect(_) | EngineError::Setup(_) => operational(e.to_string()),
    })?;
    let report = build_report(command_line, &plan.settings, &plan.config, &outcome);
    print_summary(&report, &outcome);

    if let Some(path) = &args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| operational(format!("JSON: {e}")))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| operational(format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, format_hgrm(&outcome.stats.total().corrected))
            .map_err(|e| operational(format!("{}: {e}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "ringkv-loadgen workload {} ({})",
            report.settings.workload.name,
            if report.open_loop {
                "open loop"
            } else {
                "closed loop"
            }
        );
        let svg = plot::render_svg(
            &title,
            &plot::series_from_reports(&[(String::new(), report.clone())]),
        );
        std::fs::write(path, svg).map_err(|e| operational(format!("{}: {e}", path.display())))?;
    }

    if report.verify.as_ref().is_some_and(|v| v.violations > 0) {
        return Ok(EXIT_VERIFY);
    }
    if let Some(f) = outcome.final_check.as_ref().filter(|f| f.unreadable > 0) {
        return Err(operational(format!(
            "final verification could not read {} of {} keys",
            f.unreadable,
            f.keys * f.hosts as u64
        )));
    }
    if report.total.count == 0 && report.total.error_total() > 0 {
        return Err(operational("no operation succeeded"));
    }
    Ok(EXIT_OK)
}

fn print_summary(report: &Report, outcome: &RunOutcome) {
    if let Some(load) = &report.load {
        println!(
            "load: {} keys written in {:.3} s ({:.1} ops/s), errors {}",
            load.keys_written,
            load.seconds,
            load.ops_per_second,
            load.errors.values().sum::<u64>()
        );
    }
    println!(
        "measured {:.3} s; latency in ms; ops/s = count / measured seconds",
        report.measured_seconds
    );
    if report.open_loop {
        println!(
            "corrected latency (completion - intended start, coordinated omission corrected):"
        );
        print!("{}", format_table(&report.ops, &report.total, true));
        println!("raw service latency (completion - actual send):");
        print!("{}", format_table(&report.ops, &report.total, false));
        if report.missed_schedule > 0 {
            println!(
                "WARNING: {} scheduled operations were never sent: the target could not keep up with --rate",
                report.missed_schedule
            );
        }
    } else {
        println!("closed loop (latency = completion - send):");
        print!("{}", format_table(&report.ops, &report.total, true));
    }
    let c = &report.connections;
    if c.disconnects > 0 || c.failovers > 0 {
        println!(
            "connections: {} disconnects, {} reconnects, {} given up, {} requests failed over to another node",
            c.disconnects, c.reconnects, c.reconnect_failures, c.failovers
        );
    }
    if let Some(v) = &report.verify {
        for violation in &outcome.violation_sample {
            eprintln!("{violation}");
        }
        if v.violations as usize > outcome.violation_sample.len() {
            eprintln!(
                "... {} more violations not shown",
                v.violations as usize - outcome.violation_sample.len()
            );
        }
        if let Some(f) = &outcome.final_check {
            let consistency = f.consistency.map_or_else(
                || "default".to_string(),
                |c| format!("{c:?}").to_lowercase(),
            );
            println!(
                "verify-final: {} keys with acknowledged writes read at {consistency} through {} host(s): {} reads, {} missing, {} stale, {} unreadable",
                f.keys, f.hosts, f.reads, f.missing, f.stale, f.unreadable
            );
        }
        println!(
            "verify: {} reads checked, {} violations",
            v.reads_checked, v.violations
        );
    }
}
