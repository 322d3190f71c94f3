//! The scenarios, and what they share: how a client is pointed at a broker and how a set of
//! publishers and subscribers is connected, run and measured.

pub mod detect;
pub mod enroll;
pub mod idle;
pub mod messages;
pub mod storm;
pub mod trust;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gatehouse_mqtt::ProtocolVersion;
use rustls_pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::args::BenchArgs;
use super::pki::BenchPki;
use crate::client::{Client, ConnectOptions};

/// Deadline for one connection's TCP + TLS + CONNACK.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Read buffer reservation of connections that carry traffic.
pub const BUSY_READ_CHUNK: usize = 16 * 1024;

/// Read buffer reservation of connections that mostly wait.
pub const IDLE_READ_CHUNK: usize = 256;

/// What every scenario needs to open connections.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The command line.
    pub args: Arc<BenchArgs>,
    /// Certificates.
    pub pki: Arc<BenchPki>,
    /// Protocol version of every client.
    pub version: ProtocolVersion,
    /// Name checked on the server certificate.
    pub server_name: ServerName<'static>,
}

impl Ctx {
    /// Loopback source address for connection `i`: 127.0.0.2, 127.0.0.3, … in turn.
    pub fn source_addr(&self, i: usize) -> IpAddr {
        let n = self.args.source_addrs.max(1) as usize;
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % n) as u8))
    }

    /// Options for connecting identity `identity` to `addr`.
    pub fn options(
        &self,
        addr: SocketAddr,
        identity: usize,
        read_chunk: usize,
        keep_alive: u16,
    ) -> ConnectOptions {
        let id = self.pki.identity(identity);
        ConnectOptions {
            addr,
            bind: Some(self.source_addr(identity)),
            tls: id.tls.clone(),
            server_name: self.server_name.clone(),
            version: self.version,
            client_id: id.device.clone(),
            keep_alive,
            receive_maximum: None,
            read_chunk,
            timeout: CONNECT_TIMEOUT,
        }
    }

    /// Connects identities `ids`, at most `concurrency` at a time; the clients come back
    /// in the order of `ids`. Any failure fails the whole set.
    pub async fn connect_many(
        &self,
        addr: SocketAddr,
        ids: impl IntoIterator<Item = usize>,
        read_chunk: usize,
        keep_alive: u16,
    ) -> anyhow::Result<Vec<Client>> {
        let permits = Arc::new(Semaphore::new(self.args.concurrency.max(1) as usize));
        let mut set = JoinSet::new();
        let mut count = 0;
        for (slot, identity) in ids.into_iter().enumerate() {
            let opts = self.options(addr, identity, read_chunk, keep_alive);
            let permits = permits.clone();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let result = Client::connect(&opts).await;
                (slot, opts.client_id, result)
            });
            count += 1;
        }
        let mut clients: Vec<Option<Client>> = (0..count).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            let (slot, client_id, result) = joined.context("connect task panicked")?;
            let (client, _connack) =
                result.with_context(|| format!("connecting {client_id} to {addr}"))?;
            clients[slot] = Some(client);
        }
        Ok(clients.into_iter().flatten().collect())
    }
}

/// Percent of one core, for figures.
pub fn percent(value: Option<f64>) -> Option<f64> {
    value.map(|v| (v * 10.0).round() / 10.0)
}
