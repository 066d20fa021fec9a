//! The JSON bodies of the admin writes that name a server (`POST
//! /maintenance`, `POST /weight`) and their decoding: no state, no I/O, so
//! the fuzz target `admin_json` (`fuzz/`) compiles this file as it is.

use std::net::SocketAddr;

use serde::Deserialize;
use vigil_hostdb::OriginKey;

/// An admin write naming one server of one origin.
pub(crate) trait ServerBody: serde::de::DeserializeOwned {
    /// The body's shape, for the error a bad one gets.
    const SHAPE: &'static str;
    fn origin(&self) -> &str;
    fn server(&self) -> &str;
}

/// `POST /maintenance`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MaintenanceBody {
    pub(crate) origin: String,
    pub(crate) server: String,
    pub(crate) on: bool,
}

impl ServerBody for MaintenanceBody {
    const SHAPE: &'static str = "{\"origin\": \"host:port\", \"server\": \"ip:port\", \"on\": true|false}";
    fn origin(&self) -> &str {
        &self.origin
    }
    fn server(&self) -> &str {
        &self.server
    }
}

/// `POST /weight`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WeightBody {
    pub(crate) origin: String,
    pub(crate) server: String,
    pub(crate) weight: u32,
}

// The shape below names the highest weight.
const _: () = assert!(vigil_hostdb::policy::MAX_WEIGHT == 256);

impl ServerBody for WeightBody {
    const SHAPE: &'static str = "{\"origin\": \"host:port\", \"server\": \"ip:port\", \"weight\": 0 to 256}";
    fn origin(&self) -> &str {
        &self.origin
    }
    fn server(&self) -> &str {
        &self.server
    }
}

/// A body, its origin and its server, or the message a 400 carries.
pub(crate) fn decode<B: ServerBody>(body: &[u8]) -> Result<(B, OriginKey, SocketAddr), String> {
    let b: B = serde_json::from_slice(body).map_err(|e| format!("expected {}: {e}", B::SHAPE))?;
    let origin: OriginKey = b.origin().parse().map_err(|e| format!("origin {:?}: {e}", b.origin()))?;
    let server =
        vigil_hostdb::parse_server_addr(b.server()).map_err(|e| format!("server {:?}: {e}", b.server()))?;
    Ok((b, origin, server))
}
