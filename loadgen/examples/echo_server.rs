//! A trivial server that speaks ringkv's protocol and answers every request at once,
//! storing nothing: `Put`/`Delete` → `Done`, `Get` → a fixed value, `Topology` → itself
//! as a one-shard node. It measures the load generator's own ceiling and CPU cost
//! (how fast ringkv-loadgen can go when the server costs nothing).
//!
//! `cargo run --release -p ringkv-loadgen --example echo_server -- 127.0.0.1:7500`
//! (also listens on port + 1, the "shard port").

use ringkv::protocol::codec::{decode_request, Encoder, Limits};
use ringkv::protocol::frame::next_frame;
use ringkv::protocol::types::{NodeInfo, NodeStatus, Op, Reply, Response, Topology};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

fn serve(mut stream: TcpStream, me: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let mut encoder = Encoder::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024);
    let value = vec![b'v'; 100];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Ok(Some(bounds)) = next_frame(&buf[at..], limits.max_frame_bytes) {
            let body = &buf[at + bounds.body.start..at + bounds.body.end];
            at += bounds.total_len;
            let Ok(request) = decode_request(body, &limits) else {
                return;
            };
            let body = match request.op {
                Op::Get { .. } => Reply::Value {
                    values: vec![value.clone()],
                    context: None,
                },
                Op::Topology => Reply::Topology(Topology {
                    nodes: vec![NodeInfo {
                        node_id: 1,
                        address: me.to_string(),
                        shard_count: 1,
                        shard_port_base: me.port() + 1,
                        status: NodeStatus::Normal,
                        up: true,
                        tokens: vec![0],
                        load_bytes: 0,
                    }],
                    replication_factor: 1,
                }),
                Op::Ping => Reply::Pong,
                _ => Reply::Done,
            };
            encoder.encode_response(
                &Response {
                    request_id: request.request_id,
                    body,
                },
                &mut out,
            );
        }
        buf.drain(..at);
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let me: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7500".into())
        .parse()?;
    let shard = SocketAddr::new(me.ip(), me.port() + 1);
    for addr in [me, shard] {
        let listener = TcpListener::bind(addr)?;
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream, me));
            }
        });
    }
    eprintln!("echo server on {me} and {shard}");
    loop {
        std::thread::park();
    }
}
