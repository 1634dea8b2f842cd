//! Configuration: a TOML file (`--config`) and `ringkv serve` flags (docs/design.md
//! §1.7).
//!
//! One struct, [`ConfigLayer`], is both the TOML schema (snake_case keys) and the flag
//! set (kebab-case flags), so every key is a flag and their names can never drift
//! apart. Layers are resolved defaults ← file ← flags into a validated [`Config`]; a bad
//! value is reported with the name of its key.

use crate::conflict::ConflictMode;
use crate::protocol::types::Consistency;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A size in bytes; accepts `4096`, `"64KiB"`, `"16 MiB"`, `"1GiB"` (also KB/MB/GB as
/// binary units, and a bare `B`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected e.g. 4096, 64KiB, 16MiB, 1GiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size unit {other:?} in {s:?}: use B, KiB, MiB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

/// A duration in milliseconds; accepts `250` (ms), `"250ms"`, `"10s"`, `"5m"`, `"3h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 10s, 5m, 3h"))?;
        let mult: u64 = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            other => {
                return Err(format!(
                    "invalid duration unit {other:?} in {s:?}: use ms, s, m or h"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Millis)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }
}

/// Deserialize a value that TOML may give as an integer or as a string with a unit.
fn int_or_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Int(n)) => T::from_str(&n.to_string())
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(Raw::Str(s)) => T::from_str(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn from_str_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => T::from_str(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `commitlog_sync`: when a write is acknowledged relative to its reaching the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitlogSync {
    /// Ack after the group commit's durable write (one `O_DSYNC` direct write; default:
    /// no acknowledged write is lost, not even to a power loss).
    Batch,
    /// Ack once the group commit's write completed (not synced); fdatasync every
    /// `commitlog_sync_period_ms`.
    Periodic,
}

impl FromStr for CommitlogSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "batch" => Ok(CommitlogSync::Batch),
            "periodic" => Ok(CommitlogSync::Periodic),
            _ => Err(format!(
                "invalid commitlog_sync {s:?}: expected batch or periodic"
            )),
        }
    }
}

/// `speculative_retry`: when a read asks the replicas beyond the R it needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SpeculativeRetry {
    /// Every alive replica at once (a slow or silent replica never delays a read).
    Always,
    /// R replicas, the others after this many milliseconds without an answer.
    FixedMs(u64),
    /// R replicas, the others after this percentile (0 < p < 100) of the shard's recent
    /// replica read latencies.
    Percentile(f64),
}

impl FromStr for SpeculativeRetry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let invalid = || {
            format!(
                "invalid speculative_retry {s:?}: expected always, a delay like 20ms, or a \
                 percentile like 99p"
            )
        };
        if lower == "always" {
            return Ok(SpeculativeRetry::Always);
        }
        if let Some(ms) = lower.strip_suffix("ms") {
            return ms
                .trim()
                .parse()
                .map(SpeculativeRetry::FixedMs)
                .map_err(|_| invalid());
        }
        let number = lower
            .strip_suffix("percentile")
            .or_else(|| lower.strip_suffix('p'))
            .ok_or_else(invalid)?;
        match number.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p < 100.0 => Ok(SpeculativeRetry::Percentile(p)),
            _ => Err(invalid()),
        }
    }
}

impl FromStr for ConflictMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lww" => Ok(ConflictMode::Lww),
            "causal" => Ok(ConflictMode::Causal),
            _ => Err(format!(
                "invalid conflict_mode {s:?}: expected lww or causal"
            )),
        }
    }
}

/// `compaction_strategy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionStrategy {
    SizeTiered,
}

impl FromStr for CompactionStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "size_tiered" | "size-tiered" | "stcs" => Ok(CompactionStrategy::SizeTiered),
            _ => Err(format!(
                "invalid compaction_strategy {s:?}: expected size_tiered"
            )),
        }
    }
}

/// One layer of settings: the TOML file, or the flags. Every field is optional; a field
/// set in a later layer wins. Field names are the config keys (flags in kebab-case).
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Client address HOST:PORT (shard s also listens on port+1+s) [default 127.0.0.1:7400]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory [default ./ringkv-data]
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Shards (executors pinned to cores) [default: cores available to the process]
    #[arg(long)]
    pub shards: Option<u32>,
    /// Seed nodes HOST:PORT,... (cluster bootstrap)
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<SocketAddr>>,
    /// Join an existing cluster (bootstrap, streaming ranges)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub join: Option<bool>,
    /// Replication factor N [default 3; N = min(rf, nodes)]
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Virtual nodes per node [default 16]
    #[arg(long)]
    pub num_tokens: Option<u32>,
    /// Default read consistency [default quorum]
    #[arg(long)]
    #[serde(default, deserialize_with = "from_str_opt")]
    pub read_consistency: Option<Consistency>,
    /// Default write consistency [default quorum]
    #[arg(long)]
    #[serde(default, deserialize_with = "from_str_opt")]
    pub write_consistency: Option<Consistency>,
    /// lww or causal [default lww]
    #[arg(long)]
    #[serde(default, deserialize_with = "from_str_opt")]
    pub conflict_mode: Option<ConflictMode>,
    /// Sloppy quorum with hinted handoff [default true]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub sloppy_quorum: Option<bool>,
    /// When a read asks replicas beyond the R it needs: always, a delay (20ms) or a percentile of recent replica reads (99p) [default always]
    #[arg(long)]
    #[serde(default, deserialize_with = "from_str_opt")]
    pub speculative_retry: Option<SpeculativeRetry>,
    /// batch (fsync before ack) or periodic [default batch]
    #[arg(long)]
    #[serde(default, deserialize_with = "from_str_opt")]
    pub commitlog_sync: Option<CommitlogSync>,
    /// Periodic sync interval [default 1000ms]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub commitlog_sync_period_ms: Option<Millis>,
    /// Commit log segment size [default 32MiB]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub commitlog_segment_size: Option<ByteSize>,
    /// Memtable size per shard before flush [default 64MiB]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub memtable_size: Option<ByteSize>,
    /// Block cache per shard [default 256MiB]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub block_cache_size: Option<ByteSize>,
    /// SSTable data block size [default 4KiB]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub sstable_block_size: Option<ByteSize>,
    /// size_tiered [default size_tiered]
    #[arg(long)]
    #[serde(default, deserialize_with = "from_str_opt")]
    pub compaction_strategy: Option<CompactionStrategy>,
    /// Seconds before a tombstone may be purged [default 864000]
    #[arg(long)]
    pub gc_grace_seconds: Option<u64>,
    /// Coordinator timeout [default 2000ms]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub request_timeout_ms: Option<Millis>,
    /// Gossip round interval [default 1000ms]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub gossip_interval_ms: Option<Millis>,
    /// Phi accrual conviction threshold [default 8]
    #[arg(long)]
    pub phi_convict_threshold: Option<f64>,
    /// No new hints for a node down longer than this [default 3h]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub max_hint_window: Option<Millis>,
    /// Hint bytes per target node [default 1GiB]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub max_hints_bytes: Option<ByteSize>,
    /// Hint replay rate per shard, in mutations per second [default 10000]
    #[arg(long)]
    pub hint_replay_rate: Option<u64>,
    /// Reject timestamps further ahead than this [default 5000ms]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub max_clock_skew_ms: Option<Millis>,
    /// Tests only: add this many milliseconds (signed) to every wall-clock read of the server, to simulate a skewed clock [default 0]
    #[arg(long, allow_negative_numbers = true)]
    pub clock_offset_ms: Option<i64>,
    /// Causal mode: refuse writes beyond this many siblings [default 64]
    #[arg(long)]
    pub max_siblings: Option<u32>,
    /// Largest key [default 64KiB]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub max_key_size: Option<ByteSize>,
    /// Largest value [default 16MiB]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub max_value_size: Option<ByteSize>,
    /// In-flight requests per connection; beyond it the connection is not read until one finishes (TCP backpressure) [default 1024]
    #[arg(long)]
    pub max_inflight_per_connection: Option<u32>,
    /// In-flight requests per shard; each further request is answered Overloaded from its id alone, before any decode [default 4096]
    #[arg(long)]
    pub max_inflight_per_shard: Option<u32>,
    /// Close a client connection with nothing in flight that sent nothing for this long; 0 = never [default 10m]
    #[arg(long)]
    #[serde(default, deserialize_with = "int_or_str")]
    pub client_idle_timeout: Option<Millis>,
    /// Client connections the node keeps open; a new one beyond it gets Overloaded and is closed [default 10000]
    #[arg(long)]
    pub max_client_connections: Option<u32>,
    /// Prometheus metrics HOST:PORT (off unless set)
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// First shard port [default: client port + 1]
    #[arg(long)]
    pub shard_port_base: Option<u16>,
    /// Cluster name; peers must match [default ringkv]
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Shared secret for peer authentication
    #[arg(long)]
    pub cluster_secret: Option<String>,
    /// File holding the cluster secret
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Token clients must present (Auth op); off unless set
    #[arg(long)]
    pub client_auth_token: Option<String>,
    /// File of accepted client tokens, one per line (blank lines and `#` comments skipped)
    #[arg(long)]
    pub client_auth_token_file: Option<PathBuf>,
    /// Tests only: file of network fault rules for outgoing peer calls (cut/drop/delay)
    #[arg(long)]
    pub fault_rules_file: Option<PathBuf>,
}

/// Validated settings with defaults applied.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub shards: u32,
    pub seeds: Vec<SocketAddr>,
    pub join: bool,
    pub replication_factor: u32,
    pub num_tokens: u32,
    pub read_consistency: Consistency,
    pub write_consistency: Consistency,
    pub conflict_mode: ConflictMode,
    pub sloppy_quorum: bool,
    pub speculative_retry: SpeculativeRetry,
    pub commitlog_sync: CommitlogSync,
    pub commitlog_sync_period_ms: u64,
    pub commitlog_segment_size_bytes: u64,
    pub memtable_size_bytes: u64,
    pub block_cache_size_bytes: u64,
    pub sstable_block_size_bytes: u64,
    pub compaction_strategy: CompactionStrategy,
    pub gc_grace_seconds: u64,
    pub request_timeout_ms: u64,
    pub gossip_interval_ms: u64,
    pub phi_convict_threshold: f64,
    pub max_hint_window_ms: u64,
    pub max_hints_bytes: u64,
    pub hint_replay_rate: u64,
    pub max_clock_skew_ms: u64,
    /// Tests only: added to every wall-clock read of the server (HLC physical time).
    pub clock_offset_ms: i64,
    pub max_siblings: u32,
    pub max_key_size_bytes: u64,
    pub max_value_size_bytes: u64,
    pub max_inflight_per_connection: u32,
    pub max_inflight_per_shard: u32,
    /// 0 = never.
    pub client_idle_timeout_ms: u64,
    pub max_client_connections: u32,
    pub metrics_listen: Option<SocketAddr>,
    pub shard_port_base: u16,
    pub cluster_name: String,
    /// Held only as the derived MAC key; prints as `<redacted>`.
    pub cluster_secret: Option<crate::auth::ClusterSecret>,
    /// Prints as `<redacted>`.
    pub client_auth_token: Option<crate::auth::ClientAuthToken>,
    /// Tests only: network fault rules for outgoing peer calls (`server::faults`).
    pub fault_rules_file: Option<PathBuf>,
}

/// A configuration error naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.to_string(),
    }
}

impl ConfigLayer {
    /// Parse a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    /// `self` overridden by every field set in `top`.
    pub fn overlay(self, top: ConfigLayer) -> ConfigLayer {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                ConfigLayer { $($field: top.$field.or(self.$field)),* }
            };
        }
        pick!(
            listen,
            data_dir,
            shards,
            seeds,
            join,
            replication_factor,
            num_tokens,
            read_consistency,
            write_consistency,
            conflict_mode,
            sloppy_quorum,
            speculative_retry,
            commitlog_sync,
            commitlog_sync_period_ms,
            commitlog_segment_size,
            memtable_size,
            block_cache_size,
            sstable_block_size,
            compaction_strategy,
            gc_grace_seconds,
            request_timeout_ms,
            gossip_interval_ms,
            phi_convict_threshold,
            max_hint_window,
            max_hints_bytes,
            hint_replay_rate,
            max_clock_skew_ms,
            clock_offset_ms,
            max_siblings,
            max_key_size,
            max_value_size,
            max_inflight_per_connection,
            max_inflight_per_shard,
            client_idle_timeout,
            max_client_connections,
            metrics_listen,
            shard_port_base,
            cluster_name,
            cluster_secret,
            cluster_secret_file,
            client_auth_token,
            client_auth_token_file,
            fault_rules_file,
        )
    }

    /// Apply defaults and validate. `available_cores` is the default shard count.
    pub fn resolve(self, available_cores: u32) -> Result<Config, ConfigError> {
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7400)));
        let shards = self.shards.unwrap_or(available_cores.max(1));
        if shards == 0 || shards > 256 {
            return Err(invalid(
                "shards",
                format!("{shards} is out of range 1..=256"),
            ));
        }
        let shard_port_base = match self.shard_port_base {
            Some(p) => p,
            None => listen
                .port()
                .checked_add(1)
                .ok_or_else(|| invalid("listen", "port 65535 leaves no room for shard ports"))?,
        };
        if u32::from(shard_port_base) + shards > 65_536 {
            return Err(invalid("shard_port_base", "shard ports would exceed 65535"));
        }
        let replication_factor = self.replication_factor.unwrap_or(3);
        if replication_factor == 0 {
            return Err(invalid("replication_factor", "must be at least 1"));
        }
        let num_tokens = self.num_tokens.unwrap_or(16);
        if num_tokens == 0 || num_tokens > 1024 {
            return Err(invalid(
                "num_tokens",
                format!("{num_tokens} is out of range 1..=1024"),
            ));
        }
        let size = |v: Option<ByteSize>, default: u64| v.map_or(default, |b| b.0);
        let ms = |v: Option<Millis>, default: u64| v.map_or(default, |m| m.0);
        let memtable_size_bytes = size(self.memtable_size, 64 << 20);
        if memtable_size_bytes < 64 << 10 {
            return Err(invalid("memtable_size", "must be at least 64KiB"));
        }
        let commitlog_segment_size_bytes = size(self.commitlog_segment_size, 32 << 20);
        if commitlog_segment_size_bytes < 64 << 10 {
            return Err(invalid("commitlog_segment_size", "must be at least 64KiB"));
        }
        let sstable_block_size_bytes = size(self.sstable_block_size, 4 << 10);
        if !(512..=(1 << 20)).contains(&sstable_block_size_bytes) {
            return Err(invalid(
                "sstable_block_size",
                "must be between 512B and 1MiB",
            ));
        }
        let max_key_size_bytes = size(self.max_key_size, 64 << 10);
        if max_key_size_bytes == 0 || max_key_size_bytes > u64::from(u32::MAX) {
            return Err(invalid("max_key_size", "must be between 1B and 4GiB"));
        }
        let max_value_size_bytes = size(self.max_value_size, 16 << 20);
        if max_value_size_bytes > 1 << 30 {
            return Err(invalid("max_value_size", "must be at most 1GiB"));
        }
        let commitlog_sync_period_ms = ms(self.commitlog_sync_period_ms, 1000);
        if commitlog_sync_period_ms == 0 {
            return Err(invalid("commitlog_sync_period_ms", "must be positive"));
        }
        let request_timeout_ms = ms(self.request_timeout_ms, 2000);
        if request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms", "must be positive"));
        }
        let gossip_interval_ms = ms(self.gossip_interval_ms, 1000);
        if gossip_interval_ms == 0 {
            return Err(invalid("gossip_interval_ms", "must be positive"));
        }
        let phi_convict_threshold = self.phi_convict_threshold.unwrap_or(8.0);
        if !(phi_convict_threshold.is_finite() && phi_convict_threshold > 0.0) {
            return Err(invalid(
                "phi_convict_threshold",
                "must be a positive number",
            ));
        }
        let max_siblings = self.max_siblings.unwrap_or(64);
        if max_siblings == 0 {
            return Err(invalid("max_siblings", "must be at least 1"));
        }
        let cluster_secret = match (self.cluster_secret, self.cluster_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "cluster_secret_file",
                    "set either cluster_secret or cluster_secret_file, not both",
                ))
            }
            (Some(s), None) => Some(s),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        invalid(
                            "cluster_secret_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let cluster_secret = cluster_secret
            .map(|s| crate::auth::ClusterSecret::new(s.as_bytes()))
            .transpose()
            .map_err(|e| invalid("cluster_secret", e))?;
        let mut tokens: Vec<String> = self.client_auth_token.into_iter().collect();
        if let Some(path) = &self.client_auth_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "client_auth_token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let listed: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string)
                .collect();
            if listed.is_empty() {
                return Err(invalid(
                    "client_auth_token_file",
                    format!("{} lists no token", path.display()),
                ));
            }
            tokens.extend(listed);
        }
        if tokens
            .iter()
            .any(|t| t.len() > crate::protocol::codec::AUTH_TOKEN_BYTES_MAX)
        {
            return Err(invalid(
                "client_auth_token",
                format!(
                    "a token is longer than {} bytes",
                    crate::protocol::codec::AUTH_TOKEN_BYTES_MAX
                ),
            ));
        }
        let client_auth_token = if tokens.is_empty() {
            None
        } else {
            Some(
                crate::auth::ClientAuthToken::any_of(tokens.iter().map(|t| t.as_bytes()))
                    .map_err(|e| invalid("client_auth_token", e))?,
            )
        };
        let max_inflight_per_connection = self.max_inflight_per_connection.unwrap_or(1024);
        let max_inflight_per_shard = self.max_inflight_per_shard.unwrap_or(4096);
        if max_inflight_per_connection == 0 || max_inflight_per_shard == 0 {
            return Err(invalid(
                "max_inflight_per_connection",
                "in-flight limits must be positive",
            ));
        }
        // A day either way is far beyond any skew worth testing, and keeps the shifted
        // clock well inside the HLC's 48-bit millisecond range.
        const CLOCK_OFFSET_MS_MAX: i64 = 86_400_000;
        let clock_offset_ms = self.clock_offset_ms.unwrap_or(0);
        if clock_offset_ms.abs() > CLOCK_OFFSET_MS_MAX {
            return Err(invalid(
                "clock_offset_ms",
                format!("{clock_offset_ms} is out of range ±{CLOCK_OFFSET_MS_MAX}"),
            ));
        }
        Ok(Config {
            listen,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from("./ringkv-data")),
            shards,
            seeds: self.seeds.unwrap_or_default(),
            join: self.join.unwrap_or(false),
            replication_factor,
            num_tokens,
            read_consistency: self.read_consistency.unwrap_or(Consistency::Quorum),
            write_consistency: self.write_consistency.unwrap_or(Consistency::Quorum),
            conflict_mode: self.conflict_mode.unwrap_or(ConflictMode::Lww),
            sloppy_quorum: self.sloppy_quorum.unwrap_or(true),
            speculative_retry: self.speculative_retry.unwrap_or(SpeculativeRetry::Always),
            commitlog_sync: self.commitlog_sync.unwrap_or(CommitlogSync::Batch),
            commitlog_sync_period_ms,
            commitlog_segment_size_bytes,
            memtable_size_bytes,
            block_cache_size_bytes: size(self.block_cache_size, 256 << 20),
            sstable_block_size_bytes,
            compaction_strategy: self
                .compaction_strategy
                .unwrap_or(CompactionStrategy::SizeTiered),
            gc_grace_seconds: self.gc_grace_seconds.unwrap_or(864_000),
            request_timeout_ms,
            gossip_interval_ms,
            phi_convict_threshold,
            max_hint_window_ms: ms(self.max_hint_window, 3 * 3_600_000),
            max_hints_bytes: size(self.max_hints_bytes, 1 << 30),
            hint_replay_rate: self.hint_replay_rate.unwrap_or(10_000),
            max_clock_skew_ms: ms(self.max_clock_skew_ms, 5000),
            clock_offset_ms,
            max_siblings,
            max_key_size_bytes,
            max_value_size_bytes,
            max_inflight_per_connection,
            max_inflight_per_shard,
            client_idle_timeout_ms: ms(self.client_idle_timeout, 600_000),
            max_client_connections: self.max_client_connections.unwrap_or(10_000),
            metrics_listen: self.metrics_listen,
            shard_port_base,
            cluster_name: self.cluster_name.unwrap_or_else(|| "ringkv".to_string()),
            cluster_secret,
            client_auth_token,
            fault_rules_file: self.fault_rules_file,
        })
    }
}

impl Config {
    /// Port of shard `s` on this node.
    pub fn shard_port(&self, shard: u32) -> u16 {
        // Validated in `resolve`: base + shards ≤ 65536.
        self.shard_port_base + shard as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speculative_retry_parses_cassandra_forms() {
        use SpeculativeRetry::*;
        assert_eq!("always".parse(), Ok(Always));
        assert_eq!("ALWAYS".parse(), Ok(Always));
        assert_eq!("20ms".parse(), Ok(FixedMs(20)));
        assert_eq!("99p".parse(), Ok(Percentile(99.0)));
        assert_eq!("99.9PERCENTILE".parse(), Ok(Percentile(99.9)));
        for bad in ["", "100p", "0p", "-5ms", "soon", "20s"] {
            assert!(bad.parse::<SpeculativeRetry>().is_err(), "{bad:?}");
        }
        let layer = ConfigLayer::from_toml("speculative_retry = \"15ms\"").unwrap();
        assert_eq!(layer.resolve(2).unwrap().speculative_retry, FixedMs(15));
        assert_eq!(
            ConfigLayer::default().resolve(2).unwrap().speculative_retry,
            Always
        );
        assert!(ConfigLayer::from_toml("speculative_retry = \"later\"").is_err());
    }

    #[test]
    fn sizes_and_durations_parse_with_units() {
        assert_eq!("64KiB".parse::<ByteSize>(), Ok(ByteSize(65_536)));
        assert_eq!("16 MiB".parse::<ByteSize>(), Ok(ByteSize(16 << 20)));
        assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert!("12XB".parse::<ByteSize>().is_err());
        assert_eq!("250ms".parse::<Millis>(), Ok(Millis(250)));
        assert_eq!("3h".parse::<Millis>(), Ok(Millis(10_800_000)));
        assert!("3 days".parse::<Millis>().is_err());
    }

    #[test]
    fn toml_keys_parse_and_flags_win() {
        let file = ConfigLayer::from_toml(
            "listen = \"127.0.0.1:9000\"\nmemtable_size = \"8MiB\"\nrequest_timeout_ms = 500\n\
             commitlog_sync = \"periodic\"\nwrite_consistency = \"all\"\nshards = 3\n\
             fault_rules_file = \"/tmp/rules\"\n",
        )
        .unwrap();
        let flags = ConfigLayer {
            shards: Some(2),
            ..Default::default()
        };
        let cfg = file.overlay(flags).resolve(8).unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.shard_port_base, 9001);
        assert_eq!(cfg.memtable_size_bytes, 8 << 20);
        assert_eq!(cfg.request_timeout_ms, 500);
        assert_eq!(cfg.commitlog_sync, CommitlogSync::Periodic);
        assert_eq!(cfg.write_consistency, Consistency::All);
        assert_eq!(cfg.shards, 2, "flags win over the file");
        assert_eq!(cfg.fault_rules_file, Some(PathBuf::from("/tmp/rules")));
    }

    #[test]
    fn clock_offset_is_signed_and_bounded() {
        let cfg = ConfigLayer::from_toml("clock_offset_ms = -400")
            .unwrap()
            .resolve(1)
            .unwrap();
        assert_eq!(cfg.clock_offset_ms, -400);
        assert_eq!(
            ConfigLayer::default().resolve(1).unwrap().clock_offset_ms,
            0
        );
        let err = ConfigLayer {
            clock_offset_ms: Some(86_400_001),
            ..Default::default()
        }
        .resolve(1)
        .unwrap_err();
        assert!(err.to_string().contains("clock_offset_ms"), "{err}");
    }

    #[test]
    fn unknown_key_and_bad_value_name_the_key() {
        let err = ConfigLayer::from_toml("memtable_sise = 5").unwrap_err();
        assert!(err.contains("memtable_sise"), "{err}");
        let err = ConfigLayer::from_toml("memtable_size = \"5 parsecs\"").unwrap_err();
        assert!(err.contains("memtable_size"), "{err}");
        let err = ConfigLayer {
            replication_factor: Some(0),
            ..Default::default()
        }
        .resolve(1)
        .unwrap_err();
        assert!(err.to_string().contains("replication_factor"), "{err}");
    }

    #[test]
    fn defaults_run_a_single_local_node() {
        let cfg = ConfigLayer::default().resolve(2).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(cfg.data_dir, PathBuf::from("./ringkv-data"));
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.commitlog_sync, CommitlogSync::Batch);
        assert_eq!(cfg.fault_rules_file, None, "no fault rules unless asked");
    }
}
