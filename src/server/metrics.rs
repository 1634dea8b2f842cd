//! Prometheus metrics (`metrics_listen`): shard 0 serves `GET /metrics` in the text
//! exposition format, gathering every shard's counters over the channel mesh. A tiny
//! HTTP/1.0 responder: it reads one bounded request head and closes the connection.

use super::faults::FAULT_KINDS;
use super::router;
use super::shard::{Shard, ShardStats};
use crate::cluster::hints::TargetStats;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpListener;
use std::fmt::Write as _;
use std::rc::Rc;

/// Largest request head we read before answering.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Render the exposition text for these shards.
pub fn render(stats: &[ShardStats]) -> String {
    type Field = fn(&ShardStats) -> f64;
    let series: [(&str, &str, &str, Field); 26] = [
        (
            "ringkv_requests_total",
            "counter",
            "Requests answered by the shard.",
            |s| s.requests as f64,
        ),
        (
            "ringkv_bad_requests_total",
            "counter",
            "Frames refused with BadRequest.",
            |s| s.bad_requests as f64,
        ),
        (
            "ringkv_overloaded_total",
            "counter",
            "Requests refused with Overloaded.",
            |s| s.overloaded as f64,
        ),
        (
            "ringkv_client_connections",
            "gauge",
            "Client connections open on the shard.",
            |s| s.client_connections as f64,
        ),
        (
            "ringkv_connections_refused_total",
            "counter",
            "Client connections refused beyond max_client_connections.",
            |s| s.connections_refused as f64,
        ),
        (
            "ringkv_connections_idle_closed_total",
            "counter",
            "Client connections closed after client_idle_timeout.",
            |s| s.idle_closed as f64,
        ),
        (
            "ringkv_connections_stalled_closed_total",
            "counter",
            "Connections closed after stalling mid-frame for request_timeout_ms.",
            |s| s.stalled_closed as f64,
        ),
        (
            "ringkv_accept_failures_total",
            "counter",
            "Failed accepts (EMFILE and the like), each followed by a backoff.",
            |s| s.accept_failures as f64,
        ),
        (
            "ringkv_refused_peer_ops_total",
            "counter",
            "Peer operations refused on client connections.",
            |s| s.refused_peer_ops as f64,
        ),
        (
            "ringkv_unauthorized_total",
            "counter",
            "Client requests refused for authentication.",
            |s| s.unauthorized as f64,
        ),
        (
            "ringkv_peer_auth_failures_total",
            "counter",
            "Peer handshakes that failed (accepted or dialled).",
            |s| s.peer_auth_failures as f64,
        ),
        (
            "ringkv_hlc_rejected_total",
            "counter",
            "Received timestamps refused for being further ahead than max_clock_skew_ms.",
            |s| s.hlc_rejected as f64,
        ),
        (
            "ringkv_forwarded_total",
            "counter",
            "Requests forwarded to the owning shard.",
            |s| s.forwarded as f64,
        ),
        (
            "ringkv_inflight_requests",
            "gauge",
            "Requests admitted and not yet answered.",
            |s| f64::from(s.inflight),
        ),
        (
            "ringkv_engine_writes_total",
            "counter",
            "Writes applied by the storage engine.",
            |s| s.engine.writes as f64,
        ),
        (
            "ringkv_engine_reads_total",
            "counter",
            "Reads served by the storage engine.",
            |s| s.engine.reads as f64,
        ),
        (
            "ringkv_engine_flushes_total",
            "counter",
            "Memtables flushed to SSTables.",
            |s| s.engine.flushes as f64,
        ),
        (
            "ringkv_engine_compactions_total",
            "counter",
            "Compactions completed.",
            |s| s.engine.compactions as f64,
        ),
        ("ringkv_engine_sstables", "gauge", "Live SSTables.", |s| {
            s.engine.sstables as f64
        }),
        (
            "ringkv_engine_memtable_bytes",
            "gauge",
            "Bytes in the active memtable.",
            |s| s.engine.memtable_bytes as f64,
        ),
        (
            "ringkv_engine_frozen_memtables",
            "gauge",
            "Memtables waiting to be flushed.",
            |s| s.engine.frozen_memtables as f64,
        ),
        (
            "ringkv_commitlog_appends_total",
            "counter",
            "Records appended to the commit log.",
            |s| s.engine.commitlog_appends as f64,
        ),
        (
            "ringkv_commitlog_group_commits_total",
            "counter",
            "Commit log flushes that wrote records (each one durable write per batch).",
            |s| s.engine.commitlog_group_commits as f64,
        ),
        (
            "ringkv_commitlog_group_commit_seconds_total",
            "counter",
            "Time group commits spent in their durable writes (÷ group commits = latency).",
            |s| s.engine.commitlog_group_commit_micros as f64 / 1e6,
        ),
        (
            "ringkv_commitlog_written_bytes_total",
            "counter",
            "Bytes the commit log wrote to its segments (whole blocks).",
            |s| s.engine.commitlog_bytes_written as f64,
        ),
        (
            "ringkv_engine_data_bytes",
            "gauge",
            "SSTable and memtable bytes.",
            |s| s.engine.data_bytes as f64,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in stats {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, field(s));
        }
    }
    let name = "ringkv_peer_faults_total";
    let _ = writeln!(
        out,
        "# HELP {name} Outgoing peer calls a test fault rule cut, dropped or delayed.\n# TYPE {name} counter"
    );
    for s in stats {
        for (kind, count) in FAULT_KINDS.iter().zip(s.peer_faults) {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\",kind=\"{kind}\"}} {count}",
                s.shard
            );
        }
    }
    render_hints(stats, &mut out);
    out
}

/// Hint series, one sample per shard and target node (a target appears once a hint for
/// it was stored or refused).
fn render_hints(stats: &[ShardStats], out: &mut String) {
    type Field = fn(&TargetStats) -> f64;
    let series: [(&str, &str, &str, Field); 6] = [
        (
            "ringkv_hints_pending",
            "gauge",
            "Hints stored and not yet delivered to the target.",
            |t| t.pending_count as f64,
        ),
        (
            "ringkv_hints_pending_bytes",
            "gauge",
            "Key and mutation bytes of the pending hints.",
            |t| t.pending_bytes as f64,
        ),
        (
            "ringkv_hints_oldest_created_ms",
            "gauge",
            "Creation time (Unix ms) of the oldest pending hint; 0 when none.",
            |t| t.oldest_created_ms.unwrap_or(0) as f64,
        ),
        (
            "ringkv_hints_delivered_total",
            "counter",
            "Hints the target acknowledged.",
            |t| t.delivered as f64,
        ),
        (
            "ringkv_hints_skipped_window_total",
            "counter",
            "Writes not hinted because the target was down longer than max_hint_window.",
            |t| t.skipped_window as f64,
        ),
        (
            "ringkv_hints_skipped_bytes_total",
            "counter",
            "Writes not hinted because the target's hints reached max_hints_bytes.",
            |t| t.skipped_bytes as f64,
        ),
    ];
    for (name, kind, help, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in stats {
            for (target, t) in &s.hints {
                let _ = writeln!(
                    out,
                    "{name}{{shard=\"{}\",target=\"{target:016x}\"}} {}",
                    s.shard,
                    field(t)
                );
            }
        }
    }
}

/// Serve metrics until the shard stops.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            shard.stopping.wait().await;
            None
        })
        .await;
        let Some(Ok(mut stream)) = accepted else {
            if shard.stopping.is_set() {
                return;
            }
            continue;
        };
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_BYTES_MAX {
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => head.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET / ") {
            ("200 OK", render(&router::all_stats(&shard).await))
        } else {
            ("404 Not Found", "try GET /metrics\n".to_string())
        };
        let response = format!(
            "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_one_sample_per_shard() {
        let stats = [
            ShardStats {
                shard: 0,
                requests: 7,
                ..Default::default()
            },
            ShardStats {
                shard: 1,
                requests: 9,
                peer_faults: [3, 0, 2],
                ..Default::default()
            },
        ];
        let text = render(&stats);
        assert!(text.contains("# TYPE ringkv_requests_total counter"));
        assert!(text.contains("ringkv_requests_total{shard=\"0\"} 7"));
        assert!(text.contains("ringkv_requests_total{shard=\"1\"} 9"));
        assert!(text.contains("# TYPE ringkv_peer_faults_total counter"));
        assert!(text.contains("ringkv_peer_faults_total{shard=\"1\",kind=\"cut\"} 3"));
        assert!(text.contains("ringkv_peer_faults_total{shard=\"1\",kind=\"delay\"} 2"));
        assert!(text.contains("ringkv_peer_faults_total{shard=\"0\",kind=\"drop\"} 0"));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("ringkv_engine_sstables{"))
                .count(),
            2
        );
    }
}
