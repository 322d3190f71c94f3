//! Accept loops: connection limits and per-source rate limits are applied here, before
//! any TLS work is spent on a connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use gatehouse_types::{AuthFailure, Observation};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::broker::Inner;
use crate::connection;
use crate::metrics::Metrics;

pub(crate) enum Kind {
    Tls(Arc<ArcSwap<rustls::ServerConfig>>),
    Plain,
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct OpenGuard(Arc<Inner>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections_open.dec();
        self.0.connections_closed.notify_waiters();
    }
}

pub(crate) fn refuse(inner: &Inner, peer: SocketAddr, reason: &'static str) {
    Metrics::reason(&inner.metrics.refused, reason);
    if inner.tap.is_active() {
        inner.tap.emit(Observation::AuthFailure(AuthFailure {
            at: SystemTime::now(),
            peer,
            identity: None,
            client_id: None,
            reason: reason.to_owned(),
        }));
    }
}

pub(crate) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, kind: Kind) {
    let mut stop = inner.shutdown.subscribe();
    let kind = Arc::new(kind);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        inner.metrics.connections_accepted.inc();
        if inner.sanctions.is_banned(peer.ip(), Instant::now()) {
            // Counted, not tapped: the ban already answers whatever the source is doing.
            debug!(%peer, "refused: source address banned");
            Metrics::reason(&inner.metrics.refused, "source_banned");
            continue;
        }
        let max = inner.config.limits.max_connections;
        if max != 0 && inner.open_connections.load(Ordering::Acquire) >= max {
            debug!(%peer, "refused: connection limit reached");
            refuse(&inner, peer, "max_connections");
            continue;
        }
        if !inner.admit_source(peer.ip(), Instant::now()) {
            debug!(%peer, "refused: connection rate from this source exceeded");
            refuse(&inner, peer, "connect_rate_exceeded");
            continue;
        }
        let _ = tcp.set_nodelay(true);
        inner.open_connections.fetch_add(1, Ordering::AcqRel);
        inner.metrics.connections_open.inc();
        let guard = OpenGuard(inner.clone());
        let inner = inner.clone();
        let kind = kind.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match &*kind {
                Kind::Tls(cfg) => connection::serve_tls(inner, tcp, peer, cfg.load_full()).await,
                Kind::Plain => connection::serve_plain(inner, tcp, peer).await,
            }
        });
    }
}
