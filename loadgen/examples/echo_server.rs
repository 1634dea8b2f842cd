//! A trivial server that speaks ringkv's protocol and answers every request at once,
//! storing nothing: `Put`/`Delete` → `Done`, `Get` → a fixed 100-byte value,
//! `Topology` → itself as a one-shard node. It runs on one glommio executor, like a
//! ringkv shard, so it measures the load generator's own ceiling and CPU cost (how fast
//! ringkv-loadgen can go when the server costs almost nothing).
//!
//! `cargo run --release -p ringkv-loadgen --example echo_server -- 127.0.0.1:7500`
//! (also listens on port + 1, the "shard port").

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use ringkv::protocol::codec::{decode_request, Encoder, Limits};
use ringkv::protocol::frame::next_frame;
use ringkv::protocol::read_buffer::ReadBuffer;
use ringkv::protocol::types::{NodeInfo, NodeStatus, Op, Reply, Response, Topology};
use std::net::SocketAddr;

async fn serve(mut stream: TcpStream, me: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let mut encoder = Encoder::new();
    let mut buf = ReadBuffer::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(64 * 1024);
    let value = vec![b'v'; 100];
    loop {
        match stream.read(buf.spare(64 * 1024)).await {
            Ok(n) if n > 0 => buf.advance(n),
            _ => return,
        }
        while let Ok(Some(bounds)) = next_frame(buf.filled(), limits.max_frame_bytes) {
            let decoded = decode_request(&buf.filled()[bounds.body.clone()], &limits);
            buf.consume(bounds.total_len);
            let Ok(request) = decoded else { return };
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
                        hints: Default::default(),
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
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

async fn accept_loop(listener: TcpListener, me: SocketAddr) {
    while let Ok(stream) = listener.accept().await {
        glommio::spawn_local(serve(stream, me)).detach();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let me: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7500".into())
        .parse()?;
    let shard = SocketAddr::new(me.ip(), me.port() + 1);
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("echo")
        .io_memory(1 << 20)
        .spawn(move || async move {
            let (Ok(client), Ok(shard_listener)) =
                (TcpListener::bind(me), TcpListener::bind(shard))
            else {
                eprintln!("cannot bind {me} and {shard}");
                return;
            };
            eprintln!("echo server on {me} and {shard}");
            let a = glommio::spawn_local(accept_loop(client, me));
            let b = glommio::spawn_local(accept_loop(shard_listener, me));
            a.await;
            b.await;
        })?;
    handle.join()?;
    Ok(())
}
