//! The ringkv target: the real `ringkv::client` glommio transport behind the load
//! generator's `Connection` trait.
//!
//! One load-generator "connection" is shard-aware: it asks the host for its topology,
//! then opens one pipelined socket per shard port of that node and sends each request
//! straight to the shard that owns the key (no forwarding between cores on the server).
//! Typed error replies map to error kinds: `Overloaded`, `Timeout`, `Unavailable`; a
//! broken socket is `Disconnected` (the engine reconnects); anything else is `Other`.

use crate::target::{ConnectOptions, Connection, Connector, GetOutcome, OpError};
use ringkv::client::asynch::AsyncConnection;
use ringkv::client::ClientError;
use ringkv::protocol::token::{shard_of, token_of};
use ringkv::protocol::types::{Consistency, ErrorReply, Op, Reply};
use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Clone, Debug, Default)]
pub struct RingkvConnector;

/// Sockets to every shard of one node.
pub struct RingkvConnection {
    shards: Vec<AsyncConnection>,
    consistency: Option<Consistency>,
}

fn op_error(e: ClientError) -> OpError {
    match e {
        ClientError::Server(ErrorReply::Overloaded) => OpError::Overloaded,
        ClientError::Server(ErrorReply::Timeout { .. }) => OpError::Timeout,
        ClientError::Server(e @ ErrorReply::Unavailable { .. }) => {
            OpError::Unavailable(e.to_string())
        }
        ClientError::Io { .. } => OpError::Disconnected(e.to_string()),
        other => OpError::Other(other.to_string()),
    }
}

fn reply_error(reply: Reply) -> OpError {
    match reply {
        Reply::Error(e) => op_error(ClientError::Server(e)),
        other => OpError::Other(format!("unexpected reply {other:?}")),
    }
}

/// Open a socket and, when a token is given, present it before anything else.
async fn connect_authenticated(
    addr: SocketAddr,
    token: Option<&[u8]>,
) -> Result<AsyncConnection, OpError> {
    let conn = AsyncConnection::connect(addr).await.map_err(op_error)?;
    if let Some(token) = token {
        match conn
            .call(Op::Auth {
                token: token.to_vec(),
            })
            .await
            .map_err(op_error)?
        {
            Reply::Done => {}
            other => return Err(reply_error(other)),
        }
    }
    Ok(conn)
}

impl Connector for RingkvConnector {
    type Conn = RingkvConnection;

    async fn connect(
        &self,
        host: &str,
        options: &ConnectOptions,
    ) -> Result<RingkvConnection, OpError> {
        let addr: SocketAddr = host
            .to_socket_addrs()
            .map_err(|e| OpError::Disconnected(format!("{host}: {e}")))?
            .next()
            .ok_or_else(|| OpError::Disconnected(format!("{host}: resolves to nothing")))?;
        let token = options.token.as_ref().map(|t| t.as_bytes().to_vec());
        let seed = connect_authenticated(addr, token.as_deref()).await?;
        let topology = match seed.call(Op::Topology).await.map_err(op_error)? {
            Reply::Topology(t) => t,
            other => return Err(reply_error(other)),
        };
        // The node we asked is the one whose shards we use (the cluster layer will route
        // to each key's replicas instead).
        let node = topology
            .nodes
            .iter()
            .find(|n| n.address.parse::<SocketAddr>().ok() == Some(addr))
            .or_else(|| topology.nodes.first())
            .ok_or_else(|| OpError::Other(format!("{host}: empty topology")))?;
        let mut shards = Vec::with_capacity(node.shard_count as usize);
        for s in 0..node.shard_count {
            let port = node
                .shard_port_base
                .checked_add(s as u16)
                .ok_or_else(|| OpError::Other(format!("{host}: shard port overflow")))?;
            shards.push(
                connect_authenticated(SocketAddr::new(addr.ip(), port), token.as_deref()).await?,
            );
        }
        if shards.is_empty() {
            shards.push(seed);
        }
        Ok(RingkvConnection {
            shards,
            consistency: options.consistency,
        })
    }
}

impl RingkvConnection {
    fn shard_for(&self, key: &[u8]) -> &AsyncConnection {
        let s = shard_of(token_of(key), self.shards.len() as u32) as usize;
        &self.shards[s.min(self.shards.len() - 1)]
    }
}

impl Connection for RingkvConnection {
    async fn get(&self, key: &[u8]) -> Result<GetOutcome, OpError> {
        let op = Op::Get {
            key: key.to_vec(),
            consistency: self.consistency,
        };
        match self.shard_for(key).call(op).await.map_err(op_error)? {
            Reply::Value { mut values, .. } => Ok(match values.len() {
                0 => GetOutcome::NotFound,
                1 => GetOutcome::Found(values.pop().unwrap_or_default()),
                _ => GetOutcome::Siblings(values),
            }),
            other => Err(reply_error(other)),
        }
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            consistency: self.consistency,
            context: None,
        };
        match self.shard_for(key).call(op).await.map_err(op_error)? {
            Reply::Done => Ok(()),
            other => Err(reply_error(other)),
        }
    }
}
