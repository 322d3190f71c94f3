//! `gatehouse serve`: wires the CA, the broker and the HTTPS listener together.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use gatehouse_broker::Broker;
use gatehouse_pki::{ClientAuth, LocalCa, ServerTlsBuilder};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::auth::GatehouseAuth;
use crate::config::Settings;

/// Validity of the server certificate issued at each start.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

fn server_names(extra: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_owned()];
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            dns.push(h.to_owned());
        }
    }
    for n in extra {
        match n.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(n.clone()),
        }
    }
    dns.sort();
    dns.dedup();
    ips.dedup();
    (dns, ips)
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    let ca = LocalCa::load_or_create(&settings.ca_dir()).context("loading the local CA")?;
    info!(dir = %settings.ca_dir().display(), "local CA ready");

    let (dns, ips) = server_names(&settings.server_names);
    let server = ca
        .issue_server(&dns, &ips, SERVER_CERT_VALIDITY)
        .context("issuing the server certificate")?;
    let roots = ca.client_trust_anchors();
    let mqtts_tls = ServerTlsBuilder::from_issued(&server)?
        .client_roots(&roots)
        .client_auth(ClientAuth::Required)
        .build()
        .context("building the MQTTS TLS configuration")?;
    let https_tls = ServerTlsBuilder::from_issued(&server)?
        .client_auth(ClientAuth::None)
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .build()
        .context("building the HTTPS TLS configuration")?;

    let broker = Broker::new(
        settings.broker.clone(),
        Arc::new(settings.policy.clone()),
        Arc::new(GatehouseAuth::new(settings.legacy_users.clone())),
    )
    .context("loading saved broker state")?;
    broker.start();
    let mut registry = Registry::default();
    broker.metrics().register(&mut registry, broker.tap());

    let mqtts = TcpListener::bind(settings.mqtts)
        .await
        .with_context(|| format!("binding MQTTS on {}", settings.mqtts))?;
    let mqtts_addr = mqtts.local_addr()?;
    broker.serve_tls(mqtts, Arc::new(ArcSwap::new(mqtts_tls)));

    let mut plain_addr = None;
    if let Some(addr) = settings.mqtt {
        let plain = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding plain MQTT on {addr}"))?;
        plain_addr = Some(plain.local_addr()?);
        warn!(addr = %addr, "plain MQTT listener enabled: its devices have a weaker, password identity");
        broker.serve_plain(plain);
    }

    let https = TcpListener::bind(settings.https)
        .await
        .with_context(|| format!("binding HTTPS on {}", settings.https))?;
    let https_addr = https.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    crate::https::serve(
        https,
        https_tls,
        broker.clone(),
        Arc::new(registry),
        stop_rx,
    );

    // Where we actually listen (ports may have been 0), for scripts and tests.
    let listeners = serde_json::json!({
        "mqtts": mqtts_addr.to_string(),
        "https": https_addr.to_string(),
        "mqtt": plain_addr.map(|a| a.to_string()),
        "ca": settings.ca_dir().join("ca.crt"),
    });
    let listeners_file = settings.data_dir.join("listeners.json");
    std::fs::write(&listeners_file, serde_json::to_vec_pretty(&listeners)?)
        .with_context(|| format!("writing {}", listeners_file.display()))?;
    info!(mqtts = %mqtts_addr, https = %https_addr, "Gatehouse is up");

    wait_for_signal().await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    broker
        .shutdown(Duration::from_secs(5))
        .await
        .context("saving broker state")?;
    let _ = std::fs::remove_file(&listeners_file);
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
