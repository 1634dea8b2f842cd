//! The ringkv target: where the real `ringkv::client` plugs into the load generator.
//!
//! PLACEHOLDER until the glommio client lands: `connect` fails with a clear message, so
//! the binary exits 3 ("cannot connect") instead of pretending to measure anything.
//! To plug the client in, implement `Connector::connect` (open a pipelined, shard-aware
//! connection to `host`, passing `options.consistency` with every request and
//! `options.token` for auth) and `Connection::get`/`put` (map typed error replies:
//! `Overloaded` → `OpError::Overloaded`, `Timeout` → `Timeout`, `Unavailable` →
//! `Unavailable`, a broken socket → `Disconnected`, anything else → `Other`).

use crate::target::{ConnectOptions, Connection, Connector, GetOutcome, OpError};

#[derive(Clone, Debug, Default)]
pub struct RingkvConnector;

#[derive(Debug)]
pub struct RingkvConnection;

pub const NOT_PLUGGED_IN: &str =
    "the ringkv client is not plugged into ringkv-loadgen yet (loadgen/src/ringkv_target.rs)";

impl Connector for RingkvConnector {
    type Conn = RingkvConnection;

    async fn connect(
        &self,
        host: &str,
        _options: &ConnectOptions,
    ) -> Result<RingkvConnection, OpError> {
        Err(OpError::Unavailable(format!("{host}: {NOT_PLUGGED_IN}")))
    }
}

impl Connection for RingkvConnection {
    async fn get(&self, _key: &[u8]) -> Result<GetOutcome, OpError> {
        Err(OpError::Other(NOT_PLUGGED_IN.into()))
    }

    async fn put(&self, _key: &[u8], _value: &[u8]) -> Result<(), OpError> {
        Err(OpError::Other(NOT_PLUGGED_IN.into()))
    }
}
