//! `gatehouse serve`: wires the CA, the broker and the HTTPS listener together.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use gatehouse_api::{ApiMetrics, ApiState};
use gatehouse_broker::Broker;
use gatehouse_pki::password::PasswordChecks;
use gatehouse_pki::{ClientAuth, Enroller, IssuedCert, PublishedCrl, ServerTlsBuilder};
use gatehouse_runtime::feed::{DetectionHandler, RevocationHandler};
use gatehouse_runtime::fleet_history::{self, FleetHistory};
use gatehouse_runtime::{
    DetectionMetrics, DetectionService, Follower, RegistryFeed, RevocationMetrics, RevocationSync,
    SessionControl, TrustMetrics, TrustService,
};
use gatehouse_store::{AuditEntry, Registry, SqliteStore};
use gatehouse_types::{DeviceRef, TenantId};
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::auth::GatehouseAuth;
use crate::config::Settings;
use crate::config::raw::GateMode;

/// Validity of the server certificate issued at each start.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// How often the dashboard's message rate and score trend are sampled.
const HISTORY_SAMPLE: Duration = Duration::from_secs(15);

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
    // Caught from before the listeners open: a SIGTERM while the server is still starting
    // stops it gracefully once it is up (saving the sessions and retained messages it took
    // meanwhile) instead of ending the process on the spot.
    let signal = shutdown_signal();
    let running = start(settings).await?;
    signal.await;
    running.shutdown().await
}

/// A server started in this process: where it listens, and how to stop it.
#[derive(Debug)]
pub struct Running {
    pub mqtts: std::net::SocketAddr,
    pub https: std::net::SocketAddr,
    pub mqtt: Option<std::net::SocketAddr>,
    /// The CA bundle clients trust.
    pub ca_file: std::path::PathBuf,
    stop: watch::Sender<bool>,
    broker: Broker,
    listeners_file: std::path::PathBuf,
}

impl Running {
    /// Stops the listeners and background work and saves the broker's state.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        info!("shutting down");
        let _ = self.stop.send(true);
        self.broker
            .shutdown(Duration::from_secs(5))
            .await
            .context("saving broker state")?;
        let _ = std::fs::remove_file(&self.listeners_file);
        info!("stopped");
        Ok(())
    }
}

/// Starts every part of the server and returns once it listens.
pub async fn start(settings: Settings) -> anyhow::Result<Running> {
    check_open_file_limit(settings.broker.limits.max_connections);
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    let store = open_registry(&settings)?;
    let registry: Arc<dyn gatehouse_store::Registry> = store.clone();
    // Where the change feed is followed from: taken before any service loads its state, so
    // a change another process makes meanwhile is applied rather than lost.
    let follower = Follower::from_head(Arc::new(RegistryFeed(registry.clone())))
        .context("reading the change feed")?;

    let https = bind(settings.https, settings.backlog)
        .with_context(|| format!("binding HTTPS on {}", settings.https))?;
    let https_addr = https.local_addr()?;
    let (dns, ips) = server_names(&settings.server_names);
    let public_url = settings.enrollment.public_url.clone().unwrap_or_else(|| {
        let host = settings
            .server_names
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into());
        format!("https://{host}:{}", https_addr.port())
    });
    let ca = settings.open_ca()?;
    let crl_url = format!("{public_url}/pki/crl/{}.crl", ca.active_issuer_name());
    let ca = Arc::new(ca.with_crl_url(crl_url));
    info!(dir = %settings.ca_dir().display(), "local CA ready");

    let server = ca
        .issue_server(&dns, &ips, SERVER_CERT_VALIDITY)
        .context("issuing the server certificate")?;
    let https_tls = ServerTlsBuilder::from_issued(&server)?
        .client_auth(ClientAuth::Deferred)
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .build()
        .context("building the HTTPS TLS configuration")?;

    // One budget for every password check in the process: operators' logins and legacy
    // devices' MQTT passwords.
    let password_checks = PasswordChecks::new(settings.passwords);
    let broker = Broker::new(
        settings.broker.clone(),
        Arc::new(settings.policy.clone()),
        Arc::new(GatehouseAuth::new(
            settings.legacy_users.clone(),
            password_checks.clone(),
        )),
    )
    .context("loading saved broker state")?;
    broker.start();
    let mut metrics_registry = MetricsRegistry::default();
    metrics_registry.register_collector(Box::new(PasswordCheckMetrics(password_checks.clone())));
    broker
        .metrics()
        .register(&mut metrics_registry, broker.tap());

    // Every registered device's verdict is compiled before the listeners open, so no
    // device is ever seen without one.
    let trust = match settings.trust.gate {
        GateMode::Trust => {
            let metrics = TrustMetrics::default();
            metrics.register(&mut metrics_registry);
            let service = TrustService::start(
                registry.clone(),
                broker.clone(),
                settings.trust_service_settings(),
                metrics,
            )
            .context("compiling the trust verdicts")?;
            broker.set_gate(Arc::new(service.gate().with_posture_worker()));
            Some(service)
        }
        GateMode::StaticPolicyOnly => {
            warn!(
                "trust.gate = \"static-policy-only\": scores, pins and policies do not reach the data plane"
            );
            None
        }
    };

    // The MQTTS verifier is rebuilt with every new CRL: a revoked certificate's reconnect
    // fails the handshake.
    let control = Arc::new(MqttsControl {
        server: server.clone(),
        roots: ca.client_trust_anchors(),
        tls: Arc::new(ArcSwap::from(
            ServerTlsBuilder::from_issued(&server)?
                .client_roots(&ca.client_trust_anchors())
                .client_auth(ClientAuth::Required)
                .build()
                .context("building the MQTTS TLS configuration")?,
        )),
        broker: broker.clone(),
    });
    let enroller = Arc::new(Enroller::new(
        registry.clone(),
        ca.clone(),
        settings.enrollment.policy.clone(),
    ));
    let api_metrics = ApiMetrics::default();
    api_metrics.register(&mut metrics_registry);
    let revocation_metrics = RevocationMetrics::default();
    revocation_metrics.register(&mut metrics_registry);
    let revocations = Arc::new(
        RevocationSync::start(enroller.clone(), control.clone(), revocation_metrics)
            .context("signing the certificate revocation lists")?,
    );

    // Detection listens on the broker's tap from the first connection on.
    let detection = match settings.detection.clone() {
        Some(d) => {
            let metrics = DetectionMetrics::default();
            metrics.register(&mut metrics_registry);
            Some(
                DetectionService::start(
                    registry.clone(),
                    broker.clone(),
                    trust.clone(),
                    revocations.clone(),
                    d,
                    metrics,
                )
                .context("starting detection")?,
            )
        }
        None => {
            warn!("detect.enabled = false: no findings, no automated response");
            None
        }
    };

    let mqtts = bind(settings.mqtts, settings.backlog)
        .with_context(|| format!("binding MQTTS on {}", settings.mqtts))?;
    let mqtts_addr = mqtts.local_addr()?;
    broker.serve_tls(mqtts, control.tls.clone());

    let mut plain_addr = None;
    if let Some(addr) = settings.mqtt {
        let plain = bind(addr, settings.backlog)
            .with_context(|| format!("binding plain MQTT on {addr}"))?;
        plain_addr = Some(plain.local_addr()?);
        warn!(addr = %addr, "plain MQTT listener enabled: its devices have a weaker, password identity");
        broker.serve_plain(plain);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let history = Arc::new(FleetHistory::new(HISTORY_SAMPLE));
    {
        let broker = broker.clone();
        fleet_history::spawn_sampler(
            history.clone(),
            registry.clone(),
            Arc::new(move || {
                let m = broker.metrics();
                (m.messages_in.get(), m.messages_out.get())
            }),
            stop_rx.clone(),
        );
    }
    let limits = settings.http_limits;
    let app = gatehouse_api::router(
        ApiState {
            enroller,
            registry,
            revocations: revocations.clone(),
            metrics: api_metrics,
            trust: trust.clone(),
            detection: detection.clone(),
            auth: Arc::new(gatehouse_api::Auth::new(
                store.clone(),
                settings.api,
                password_checks.clone(),
            )),
            history: Some(history.clone()),
        },
        limits,
    )
    .merge(crate::https::router(
        broker.clone(),
        Arc::new(metrics_registry),
    ));
    gatehouse_api::serve(
        https,
        Arc::new(ArcSwap::from(https_tls)),
        app,
        limits,
        stop_rx.clone(),
    );
    let mut follower = follower.with(Arc::new(RevocationHandler {
        sync: revocations,
        resign_after: settings.enrollment.policy.crl_validity / 2,
    }));
    if let Some(t) = trust {
        follower = follower.with(t);
    }
    if let Some(d) = detection {
        follower = follower.with(Arc::new(DetectionHandler(d)));
    }
    spawn_follower(
        Arc::new(follower),
        settings.enrollment.registry_poll,
        stop_rx,
    );

    // Only now that every listener is bound: a start that fails (a port taken, a CA file
    // missing) must not spend the one printing of the first admin's password.
    crate::registry_cli::first_admin(&store)?;

    // Where we actually listen (ports may have been 0), for scripts and tests.
    let listeners = serde_json::json!({
        "mqtts": mqtts_addr.to_string(),
        "https": https_addr.to_string(),
        "mqtt": plain_addr.map(|a| a.to_string()),
        "ca": settings.ca_dir().join("ca.crt"),
        "crl": public_url,
    });
    let listeners_file = settings.data_dir.join("listeners.json");
    std::fs::write(&listeners_file, serde_json::to_vec_pretty(&listeners)?)
        .with_context(|| format!("writing {}", listeners_file.display()))?;
    info!(mqtts = %mqtts_addr, https = %https_addr, "Gatehouse is up");
    Ok(Running {
        mqtts: mqtts_addr,
        https: https_addr,
        mqtt: plain_addr,
        ca_file: settings.ca_dir().join("ca.crt"),
        stop: stop_tx,
        broker,
        listeners_file,
    })
}

/// Every connection is an open file: raises the soft limit to the hard one, and says so
/// when even that is below what `limits.max_connections` promises (connections beyond it
/// then fail to be accepted).
fn check_open_file_limit(max_connections: usize) {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        warn!(error = %e, "could not raise the open-file limit");
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    let needed = max_connections as u64 + 1024;
    if max_connections > 0 && soft > 0 && soft < needed {
        warn!(
            open_files = soft,
            hard_limit = hard,
            max_connections,
            "the open-file limit is below limits.max_connections: raise it (ulimit -Hn, LimitNOFILE=) or lower max_connections"
        );
    }
}

/// A listening socket with `backlog` pending connections (the standard library's 128 drops
/// connections in an enrollment or reconnection storm).
fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Opens the registry, creating the `default` tenant on first start.
pub fn open_registry(settings: &Settings) -> anyhow::Result<Arc<SqliteStore>> {
    let path = settings.db_path();
    let store = SqliteStore::open(&path)
        .with_context(|| format!("opening the registry {}", path.display()))?;
    let default = TenantId::default();
    if store.get_tenant(&default)?.is_none() {
        let audit = AuditEntry::new(
            time::OffsetDateTime::now_utc(),
            "system",
            "create_tenant",
            default.to_string(),
        )
        .reason("first start");
        store.create_tenant(&default, "Default tenant", &audit)?;
    }
    info!(path = %path.display(), "registry ready");
    Ok(Arc::new(store))
}

/// Follows the change feed every `every`: what other processes (the CLI) changed reaches
/// the live data plane, and expiries, decay and CRL re-signing happen on time.
fn spawn_follower(follower: Arc<Follower>, every: Duration, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let f = follower.clone();
            match tokio::task::spawn_blocking(move || f.step()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(error = %e, "following the change feed failed"),
                Err(e) => warn!(error = %e, "change feed task failed"),
            }
        }
    });
}

/// The data plane side of revocation: the MQTTS TLS configuration and live sessions.
struct MqttsControl {
    server: IssuedCert,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    broker: Broker,
}

impl SessionControl for MqttsControl {
    fn crls_changed(&self, crls: &[PublishedCrl]) {
        let ders = crls.iter().map(|c| c.crl.der.clone()).collect();
        let built = ServerTlsBuilder::from_issued(&self.server).and_then(|b| {
            b.client_roots(&self.roots)
                .client_auth(ClientAuth::Required)
                .crls(ders)
                .build()
        });
        match built {
            Ok(config) => self.tls.store(config),
            // Keeping the old verifier would keep accepting revoked certificates: say so
            // loudly. (Only a CRL our own CA signed can get here, so this is a bug.)
            Err(e) => error!(error = %e, "the MQTTS verifier could not take the new CRLs"),
        }
    }

    fn disconnect(&self, device: &DeviceRef) {
        self.broker.disconnect_device(device, "certificate revoked");
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    shutdown_signal().await;
}

/// SIGTERM or Ctrl-C, caught from the moment this is called (not from the first poll):
/// one that arrives before the future is awaited completes it at once.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, interrupt) {
                (Some(mut term), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Some(mut term), None) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                (None, Some(mut interrupt)) => {
                    let _ = interrupt.recv().await;
                }
                (None, None) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The password-check budget on `/metrics`: checks done, shed by cause, in flight, and the
/// memory slots made (each 19 MiB, never more than `passwords.concurrent_checks`).
#[derive(Debug)]
struct PasswordCheckMetrics(Arc<PasswordChecks>);

impl prometheus_client::collector::Collector for PasswordCheckMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let checks = &self.0;
        let done = ConstCounter::new(checks.checked());
        done.encode(encoder.encode_descriptor(
            "gatehouse_password_checks",
            "Argon2 password checks run (logins and legacy MQTT passwords)",
            None,
            done.metric_type(),
        )?)?;
        let (rate, busy) = checks.shed();
        let mut family = encoder.encode_descriptor(
            "gatehouse_password_checks_shed",
            "Password checks refused before any work, by cause (rate: the per-second budget; busy: the bound on checks at once)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in [("rate", rate), ("busy", busy)] {
            let c = ConstCounter::new(n);
            c.encode(family.encode_family(&[("reason", reason)])?)?;
        }
        for (name, help, value) in [
            (
                "gatehouse_password_checks_in_flight",
                "Password checks running or waiting for a memory slot",
                checks.in_flight(),
            ),
            (
                "gatehouse_password_check_slots",
                "Memory slots of 19 MiB allocated for password checks",
                checks.slots(),
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
