//! The `ringkv` binary: server (`serve`), client commands (`put`, `get`, `delete`) and
//! admin (`status`, `ring`, `decommission`). Exit codes (docs/design.md §1.7): 0 success,
//! 1 key not found, 2 usage error, 3 operational error (a causal write of unknown outcome
//! included) — each failure with a one-line reason on stderr. Client commands fail over
//! to other nodes on connection failures (`client::retry`).

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: it hands freed memory back to the
/// operating system on its own (glibc's per-thread arenas kept a node's peak of
/// connection buffers for good) and is faster on the request path's small allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ringkv::client::blocking::Client;
use ringkv::client::ClientError;
use ringkv::config::ConfigLayer;
use ringkv::protocol::types::{Consistency, ErrorReply};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_OPERATIONAL: u8 = 3;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A leaderless, replicated, shard-per-core key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct HostArgs {
    /// Node to talk to, HOST:PORT
    #[arg(long, default_value = "127.0.0.1:7400")]
    host: String,
    /// Token to present when the server sets `client_auth_token`
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// File holding the token (trailing newline ignored)
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Send keyed requests to --host itself, which coordinates them (by default they
    /// go to the key's first live replica). With `get --consistency one` on a replica,
    /// the answer is that node's own copy. Such a request does not fail over to
    /// another node
    #[arg(long)]
    direct: bool,
}

impl HostArgs {
    fn connect(&self) -> Result<Client, Failure> {
        let mut client =
            Client::connect_with(&self.host, std::time::Duration::from_secs(5), self.token()?)?;
        client.pin_to_seed(self.direct);
        Ok(client)
    }

    /// The client auth token from `--token` or `--token-file`, if any.
    fn token(&self) -> Result<Option<Vec<u8>>, Failure> {
        Ok(match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone().into_bytes()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Failure {
                        code: EXIT_USAGE,
                        message: format!("cannot read {}: {e}", path.display()),
                    })?
                    .trim_end_matches(['\n', '\r'])
                    .as_bytes()
                    .to_vec(),
            ),
            (None, None) => None,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node
    Serve {
        /// TOML config file; flags override its keys
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: Box<ConfigLayer>,
    },
    /// Store VALUE under KEY
    Put {
        key: String,
        /// The value; `-` reads it from stdin
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from a file
        #[arg(long, conflicts_with = "value")]
        value_file: Option<PathBuf>,
        #[arg(long)]
        consistency: Option<Consistency>,
        /// Causal mode: the context (hex) from the `get` this write replaces
        #[arg(long, value_parser = parse_hex)]
        context: Option<HexBytes>,
        /// Override the server's sloppy_quorum for this write (true|false)
        #[arg(long)]
        sloppy_quorum: Option<bool>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Print the value of KEY (its bytes, nothing else); siblings each under a header,
    /// followed by the causal context
    Get {
        key: String,
        #[arg(long)]
        consistency: Option<Consistency>,
        /// Print {"values": [...], "context": "<hex>"} instead (values as UTF-8 text,
        /// or as {"hex": ...} when they are not valid UTF-8)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Delete KEY
    Delete {
        key: String,
        #[arg(long)]
        consistency: Option<Consistency>,
        /// Causal mode: the context (hex) from the `get` this delete replaces
        #[arg(long, value_parser = parse_hex)]
        context: Option<HexBytes>,
        /// Override the server's sloppy_quorum for this delete (true|false)
        #[arg(long)]
        sloppy_quorum: Option<bool>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Show the nodes, their shards, ports and data size
    Status {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Show the token ranges and the replicas of each (as the asked node sees the ring)
    Ring {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Make the node at --host leave the cluster: it streams every key it replicates to
    /// the nodes that take over its ranges, then leaves the ring (status `left`). Waits
    /// for the end and prints what moved
    Decommission {
        #[command(flatten)]
        host: HostArgs,
        /// Give up waiting after this many seconds (the node goes on streaming)
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Full anti-entropy repair of the ranges the node at --host replicates: it pulls
    /// every key from their other replicas, merges, and pushes its merged copy back, so
    /// every replica of those ranges ends up with the newest state of every key. Needs
    /// every replica up. Waits for the end and prints what moved
    Repair {
        #[command(flatten)]
        host: HostArgs,
        /// Give up waiting after this many seconds (the node goes on repairing)
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

/// A failure with its exit code and one-line reason.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Usage(_) | ClientError::Server(ErrorReply::BadRequest { .. }) => {
                EXIT_USAGE
            }
            // A causal write whose connection failed after it was sent: the message
            // says it may or may not have been applied.
            ClientError::Indeterminate { .. } => EXIT_OPERATIONAL,
            _ => EXIT_OPERATIONAL,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve { config, flags } => serve(config, *flags),
        Command::Put {
            key,
            value,
            value_file,
            consistency,
            context,
            sloppy_quorum,
            host,
        } => {
            let value = read_value(value, value_file)?;
            let mut client = host.connect()?;
            client.set_sloppy_quorum(sloppy_quorum);
            client.put(key.as_bytes(), &value, consistency, context.map(|c| c.0))?;
            Ok(())
        }
        Command::Get {
            key,
            consistency,
            json,
            host,
        } => {
            let mut client = host.connect()?;
            let result = client.get(key.as_bytes(), consistency)?;
            let mut out = std::io::stdout().lock();
            if json {
                let values: Vec<serde_json::Value> = result
                    .values
                    .iter()
                    .map(|v| match std::str::from_utf8(v) {
                        Ok(text) => serde_json::Value::String(text.to_string()),
                        Err(_) => serde_json::json!({ "hex": hex(v) }),
                    })
                    .collect();
                let doc = serde_json::json!({ "values": values, "context": result.context.as_deref().map(hex) });
                writeln!(out, "{doc}").map_err(io_failure)?;
                return if result.values.is_empty() {
                    Err(Failure {
                        code: EXIT_NOT_FOUND,
                        message: "not found".into(),
                    })
                } else {
                    Ok(())
                };
            }
            match result.values.as_slice() {
                [] => Err(Failure {
                    code: EXIT_NOT_FOUND,
                    message: "not found".into(),
                }),
                [one] => out.write_all(one).map_err(io_failure),
                siblings => {
                    for (i, v) in siblings.iter().enumerate() {
                        writeln!(
                            out,
                            "--- sibling {} of {} ({} bytes)",
                            i + 1,
                            siblings.len(),
                            v.len()
                        )
                        .map_err(io_failure)?;
                        out.write_all(v).map_err(io_failure)?;
                        writeln!(out).map_err(io_failure)?;
                    }
                    if let Some(context) = &result.context {
                        writeln!(out, "--- context {}", hex(context)).map_err(io_failure)?;
                    }
                    Ok(())
                }
            }
        }
        Command::Delete {
            key,
            consistency,
            context,
            sloppy_quorum,
            host,
        } => {
            let mut client = host.connect()?;
            client.set_sloppy_quorum(sloppy_quorum);
            client.delete(key.as_bytes(), consistency, context.map(|c| c.0))?;
            Ok(())
        }
        Command::Ring { host } => {
            let mut client = host.connect()?;
            let topology = client.refresh_topology()?.clone();
            let members: Vec<_> = topology
                .nodes
                .iter()
                .filter(|n| {
                    matches!(
                        n.status,
                        ringkv::protocol::types::NodeStatus::Normal
                            | ringkv::protocol::types::NodeStatus::Leaving
                    ) && !n.tokens.is_empty()
                })
                .collect();
            let ring = ringkv::cluster::ring::Ring::new(
                members.iter().map(|n| (n.node_id, n.tokens.as_slice())),
            )
            .map_err(|e| Failure {
                code: EXIT_OPERATIONAL,
                message: format!("inconsistent ring: {e}"),
            })?;
            let rf = (topology.replication_factor as usize).max(1);
            let name = |id: &u64| {
                members.iter().find(|n| n.node_id == *id).map_or_else(
                    || format!("{id:016x}"),
                    |n| format!("{}{}", n.address, if n.up { "" } else { "(down)" }),
                )
            };
            println!(
                "{} ranges, {} nodes, replication factor {} (N = {})",
                ring.vnodes().len(),
                members.len(),
                rf,
                rf.min(members.len())
            );
            println!(
                "{:<20} {:<20} replicas",
                "start (exclusive)", "end (inclusive)"
            );
            for range in ring.ranges(rf) {
                let replicas: Vec<String> = range.replicas.iter().map(name).collect();
                println!(
                    "{:<20} {:<20} {}",
                    range.start_exclusive,
                    range.end_inclusive,
                    replicas.join(", ")
                );
            }
            Ok(())
        }
        Command::Decommission { host, timeout_secs } => decommission(&host, timeout_secs),
        Command::Repair { host, timeout_secs } => repair(&host, timeout_secs),
        Command::Status { host } => {
            let mut client = host.connect()?;
            let topology = client.refresh_topology()?.clone();
            print!("{}", status_table(&topology));
            Ok(())
        }
    }
}

/// One admin request (`Decommission`, `Repair`) to `host`, answered when the work is
/// done. The connection's read timeout is ten times its connect timeout, so the connect
/// timeout is a tenth of `timeout_secs`.
fn admin_call(
    host: &HostArgs,
    timeout_secs: u64,
    op: ringkv::protocol::types::Op,
) -> Result<ringkv::protocol::types::Reply, Failure> {
    use ringkv::protocol::types::{Op, Reply};
    use std::net::ToSocketAddrs;
    let usage = |message: String| Failure {
        code: EXIT_USAGE,
        message,
    };
    let addr = host
        .host
        .to_socket_addrs()
        .map_err(|e| usage(format!("invalid address {:?}: {e}", host.host)))?
        .next()
        .ok_or_else(|| usage(format!("address {:?} resolves to nothing", host.host)))?;
    let timeout = std::time::Duration::from_secs((timeout_secs / 10).max(1));
    let mut conn = ringkv::client::blocking::Connection::connect(addr, timeout)?;
    if let Some(token) = host.token()? {
        match conn.call(Op::Auth { token })? {
            Reply::Done => {}
            Reply::Error(e) => return Err(ClientError::Server(e).into()),
            other => {
                return Err(
                    ClientError::Protocol(format!("unexpected reply to Auth: {other:?}")).into(),
                )
            }
        }
    }
    match conn.call(op)? {
        Reply::Error(e) => Err(ClientError::Server(e).into()),
        reply => Ok(reply),
    }
}

/// `ringkv decommission`: see [`admin_call`].
fn decommission(host: &HostArgs, timeout_secs: u64) -> Result<(), Failure> {
    use ringkv::protocol::types::{Op, Reply};
    match admin_call(host, timeout_secs, Op::Decommission)? {
        Reply::Decommissioned(moved) => {
            println!(
                "decommissioned {}: streamed {} key copies ({}) to the new owners in {:.1} s; it has left the ring",
                host.host,
                moved.keys_streamed,
                human_bytes(moved.bytes_streamed),
                moved.duration_ms as f64 / 1000.0
            );
            Ok(())
        }
        other => Err(
            ClientError::Protocol(format!("unexpected reply to Decommission: {other:?}")).into(),
        ),
    }
}

/// `ringkv repair`: see [`admin_call`].
fn repair(host: &HostArgs, timeout_secs: u64) -> Result<(), Failure> {
    use ringkv::protocol::types::{Op, Reply};
    match admin_call(host, timeout_secs, Op::Repair)? {
        Reply::Repaired(stats) => {
            println!(
                "repaired {}: {} ranges; pulled {} key states from the other replicas, pushed {} key copies to them ({} in all) in {:.1} s",
                host.host,
                stats.ranges,
                stats.keys_pulled,
                stats.keys_pushed,
                human_bytes(stats.bytes_streamed),
                stats.duration_ms as f64 / 1000.0
            );
            Ok(())
        }
        other => {
            Err(ClientError::Protocol(format!("unexpected reply to Repair: {other:?}")).into())
        }
    }
}

/// `ringkv status`, like `nodetool status`: one line per known node, up or down, with
/// its share of the ring (replicated ownership, `Ring::ownership`), sorted by address.
fn status_table(topology: &ringkv::protocol::types::Topology) -> String {
    use ringkv::protocol::types::NodeStatus;
    use std::fmt::Write as _;
    let in_ring: Vec<_> = topology
        .nodes
        .iter()
        .filter(|n| matches!(n.status, NodeStatus::Normal | NodeStatus::Leaving))
        .collect();
    let rf = (topology.replication_factor.max(1) as usize).min(in_ring.len().max(1));
    let ownership =
        ringkv::cluster::Ring::new(in_ring.iter().map(|n| (n.node_id, n.tokens.as_slice())))
            .map(|ring| ring.ownership(rf))
            .unwrap_or_default();
    let mut nodes: Vec<_> = topology.nodes.iter().collect();
    nodes.sort_by(|a, b| a.address.cmp(&b.address).then(a.node_id.cmp(&b.node_id)));
    // A node that left is neither up nor down: it is no longer part of the cluster.
    let left = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Left)
        .count();
    let up = nodes
        .iter()
        .filter(|n| n.up && n.status != NodeStatus::Left)
        .count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} nodes ({} up, {} down{}), replication factor {}",
        nodes.len(),
        up,
        nodes.len() - left - up,
        if left > 0 {
            format!(", {left} left")
        } else {
            String::new()
        },
        topology.replication_factor
    );
    let _ = writeln!(
        out,
        "{:<18} {:<22} {:<6} {:<8} {:>8} {:>6} {:>7} {:>7} {:>12}  hints held for it",
        "node", "address", "state", "status", "load", "tokens", "owns", "shards", "shard ports"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for n in nodes {
        let ports = format!(
            "{}-{}",
            n.shard_port_base,
            n.shard_port_base as u32 + n.shard_count.saturating_sub(1)
        );
        let owns = ownership
            .get(&n.node_id)
            .map_or_else(|| "?".to_string(), |share| format!("{:.1}%", share * 100.0));
        let _ = writeln!(
            out,
            "{:<18} {:<22} {:<6} {:<8} {:>8} {:>6} {:>7} {:>7} {:>12}  {}",
            format!("{:016x}", n.node_id),
            n.address,
            if n.up { "up" } else { "down" },
            format!("{:?}", n.status).to_lowercase(),
            human_bytes(n.load_bytes),
            n.tokens.len(),
            owns,
            n.shard_count,
            ports,
            hint_cell(&n.hints, now_ms),
        );
    }
    out
}

/// The `status` cell for the hints the answering node holds for one node:
/// `-` when none, else `COUNT/BYTES/AGE` of the pending hints (age of the oldest), then
/// `+N skipped, needs repair` when a bound refused hints for it.
fn hint_cell(h: &ringkv::protocol::types::HintSummary, now_ms: u64) -> String {
    let mut cell = if h.pending == 0 {
        "-".to_string()
    } else {
        let age_s = now_ms.saturating_sub(h.oldest_created_ms) as f64 / 1000.0;
        format!("{}/{}/{age_s:.0}s", h.pending, human_bytes(h.pending_bytes))
    };
    if h.skipped > 0 {
        cell.push_str(&format!(" +{} skipped", h.skipped));
    }
    if h.needs_repair {
        cell.push_str(", needs repair");
    }
    cell
}

fn serve(config_file: Option<PathBuf>, flags: ConfigLayer) -> Result<(), Failure> {
    let usage = |message: String| Failure {
        code: EXIT_USAGE,
        message,
    };
    let file_layer = match config_file {
        Some(path) => ConfigLayer::from_file(&path).map_err(|e| usage(e.to_string()))?,
        None => ConfigLayer::default(),
    };
    let config = file_layer
        .overlay(flags)
        .resolve(ringkv::server::default_shards())
        .map_err(|e| usage(e.to_string()))?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    ringkv::server::run(config).map_err(|e| Failure {
        code: EXIT_OPERATIONAL,
        message: format!("{e:#}"),
    })
}

fn read_value(value: Option<String>, value_file: Option<PathBuf>) -> Result<Vec<u8>, Failure> {
    match (value, value_file) {
        (Some(v), None) if v == "-" => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(io_failure)?;
            Ok(buf)
        }
        (Some(v), None) => Ok(v.into_bytes()),
        (None, Some(path)) => std::fs::read(&path).map_err(|e| Failure {
            code: EXIT_USAGE,
            message: format!("cannot read {}: {e}", path.display()),
        }),
        _ => Err(Failure {
            code: EXIT_USAGE,
            message: "give a VALUE or --value-file".into(),
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes given on the command line as hex (a causal context).
#[derive(Clone, Debug)]
struct HexBytes(Vec<u8>);

fn parse_hex(text: &str) -> Result<HexBytes, String> {
    let text = text.trim();
    if !text.is_ascii() || !text.len().is_multiple_of(2) {
        return Err("a context is an even number of hex digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&text[i..i + 2], 16)
                .map_err(|_| format!("invalid hex in context {text:?}"))
        })
        .collect::<Result<Vec<u8>, String>>()
        .map(HexBytes)
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure {
        code: EXIT_OPERATIONAL,
        message: e.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}
