//! Enrollment over EST: N devices enroll with one enrollment token, C at a time, each over a
//! new TCP connection and a full TLS handshake (no resumption), as devices coming out of a
//! factory would; a sample then renews with the certificate it was given (mutual TLS); and
//! a few connect over MQTTS and are revoked one at a time through the REST API, timing the
//! revocation to the disconnection, then try to come back with the revoked certificate.
//!
//! The registry objects (a manufacturer, a model, the token) are created through the REST
//! API first, with the bench operator's API token (see [`Broker::api_token`]). Every device's key and CSR are made before the clock starts: key generation
//! is the device's work, not the server's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use gatehouse_mqtt::Packet;
use gatehouse_pki::ManufacturerCa;
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::json;
use tokio::task::JoinSet;

use super::{CONNECT_TIMEOUT, Ctx, IDLE_READ_CHUNK, percent};
use crate::bench::broker::Broker;
use crate::bench::machine::CpuMeter;
use crate::bench::pki::device_name;
use crate::bench::report::{Figure, Row};
use crate::bench::samples::{Samples, ms, percentile};
use crate::client::{Client, ConnectOptions};
use crate::est::{
    DeviceCsr, HttpsConnection, HttpsResponse, HttpsTarget, PKCS10, basic_auth, bearer_auth,
    decode_base64, names_device, pkcs7_certificates,
};

/// The tenant the devices enroll into (it exists from the first start).
pub(super) const TENANT: &str = "default";

/// The manufacturer and model the enrollment token is for.
pub(super) const MANUFACTURER: &str = "bench-maker";
pub(super) const MODEL: &str = "bench-sensor";

/// Deadline for TCP + TLS, and again for one request's response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a revoked device's connection to be closed.
const DISCONNECT_WAIT: Duration = Duration::from_secs(10);

/// Keys and CSRs generated per blocking task.
const KEYGEN_CHUNK: usize = 250;

/// Keep-alive of the MQTTS sessions that are revoked (they live for seconds).
const KEEP_ALIVE: u16 = 60;

pub(super) const ENROLL_PATH: &str = "/.well-known/est/simpleenroll";
const REENROLL_PATH: &str = "/.well-known/est/simplereenroll";

/// Runs the enrollment scenario against Gatehouse; returns its rows: `enroll`, `renew` and
/// `revoke`.
pub async fn run(ctx: &Ctx, broker: &mut Broker) -> anyhow::Result<Vec<Row>> {
    let args = &ctx.args;
    let server = Server::new(ctx, broker)?;
    let n = args.devices as usize;
    let renewals = (args.renewals as usize).min(n);
    let revocations = (args.revocations as usize).min(n);
    let concurrency = (args.concurrency as usize).max(1);

    let auth = server
        .create_registry(n)
        .await
        .context("creating the manufacturer, model and enrollment token over the REST API")?;
    let issuing = server.issuing_chain().await?;

    // The devices' side, before any clock starts.
    let keygen = Instant::now();
    let first = generate_csrs((0..n).map(device_name).collect()).await?;
    let second = generate_csrs((0..renewals).map(device_name).collect()).await?;
    let keygen_note = format!(
        "{} ECDSA P-256 device keys and CSRs ({n} to enroll, {renewals} to renew) were made \
         in {:.1} s before timing: that is device-side work, not the server's",
        n + renewals,
        keygen.elapsed().as_secs_f64()
    );

    // Enrollment.
    let ops: Vec<Op> = first
        .iter()
        .enumerate()
        .map(|(i, csr)| Op {
            target: server.target(ctx, i, server.tls.clone()),
            path: ENROLL_PATH,
            auth: Some(auth.clone()),
            body: Bytes::from(csr.est_body()),
            device: csr.device.clone(),
        })
        .collect();
    let rss_before = broker.rss().ok();
    let keep = renewals.max(revocations);
    let mut enrolled = load(broker, ops, concurrency, keep).await;
    broker.check_alive()?;
    let rss_after = broker.rss().ok();
    if enrolled.ok == 0 {
        bail!(
            "no device enrolled; errors: {}",
            error_summary(&enrolled.errors)
        );
    }
    let certs: BTreeMap<usize, CertificateDer<'static>> =
        std::mem::take(&mut enrolled.certs).into_iter().collect();
    let mut enroll_row = enrolled.row(broker, "enroll", rss_after);
    enroll_row.notes.push(keygen_note);
    enroll_row.notes.push(format!(
        "ms: p50/p99/max from TCP connect to the whole response; TLS = TCP connect and the \
         full handshake; HTTP = request written to response read (the server's handler, its \
         registry writes, and queueing behind the other {} requests in flight)",
        concurrency.saturating_sub(1)
    ));
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        enroll_row.notes.push(format!(
            "broker resident set {:.1} MiB before the enrollments, {:.1} MiB after",
            mib(before),
            mib(after)
        ));
    }

    // Renewal: the first `renewals` devices that enrolled, each presenting its new
    // certificate with the issuing CA, and a CSR for a new key naming the same device.
    let mut renew_ops = Vec::new();
    for (i, csr) in second.iter().enumerate() {
        let Some(cert) = certs.get(&i) else { continue };
        let tls = server.device_tls(cert, &issuing, &first[i].key_pkcs8, true)?;
        renew_ops.push(Op {
            target: server.target(ctx, i, tls),
            path: REENROLL_PATH,
            auth: None,
            body: Bytes::from(csr.est_body()),
            device: csr.device.clone(),
        });
    }
    let renew_row = if renew_ops.is_empty() {
        None
    } else {
        let renewed = load(broker, renew_ops, concurrency, 0).await;
        broker.check_alive()?;
        Some(renewed.row(broker, "renew", broker.rss().ok()))
    };

    // Revocation to disconnection.
    let revoke_row = if revocations == 0 {
        None
    } else {
        let revoke: Vec<usize> = certs.keys().copied().take(revocations).collect();
        let mut sessions = Vec::new();
        for &i in &revoke {
            let tls = server.device_tls(&certs[&i], &issuing, &first[i].key_pkcs8, false)?;
            sessions.push((i, server.mqtt_options(ctx, i, tls)));
        }
        Some(revoke_and_watch(ctx, &server, broker, sessions).await?)
    };

    let mut rows = vec![enroll_row];
    rows.extend(renew_row);
    rows.extend(revoke_row);
    Ok(rows)
}

/// Gatehouse's HTTPS and MQTTS listeners and the TLS pieces to reach them.
pub(super) struct Server {
    https: SocketAddr,
    mqtts: SocketAddr,
    server_name: ServerName<'static>,
    roots: Arc<RootCertStore>,
    /// Server authentication only: what a device enrolling with a token uses.
    pub(super) tls: Arc<rustls::ClientConfig>,
    /// `Authorization` of the REST calls: `Bearer <the bench operator's API token>`.
    api_auth: String,
}

impl Server {
    pub(super) fn new(ctx: &Ctx, broker: &Broker) -> anyhow::Result<Self> {
        let https = broker
            .https()
            .context("the broker reported no HTTPS listener")?;
        let data_dir = broker
            .data_dir()
            .context("the broker has no data directory")?;
        let bundle = data_dir.join("ca").join("ca.crt");
        let pem = std::fs::read_to_string(&bundle)
            .with_context(|| format!("reading the CA bundle {}", bundle.display()))?;
        let anchors = gatehouse_pki::load_certs_pem(&pem)?;
        let token = broker
            .api_token()
            .context("the broker has no API token for its REST API")?;
        let mut roots = RootCertStore::empty();
        for anchor in &anchors {
            roots.add(anchor.clone())?;
        }
        let mut tls = (*gatehouse_pki::client_config(&anchors, None)?).clone();
        tls.resumption = Resumption::disabled();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            https,
            mqtts: broker.addr(),
            server_name: ctx.server_name.clone(),
            roots: Arc::new(roots),
            tls: Arc::new(tls),
            api_auth: bearer_auth(token),
        })
    }

    /// The HTTPS listener reached from connection `i`'s source address with `tls`, for EST:
    /// no default `Authorization`.
    pub(super) fn target(
        &self,
        ctx: &Ctx,
        i: usize,
        tls: Arc<rustls::ClientConfig>,
    ) -> HttpsTarget {
        HttpsTarget {
            bind: Some(ctx.source_addr(i)),
            tls,
            ..self.plain_target()
        }
    }

    /// The HTTPS listener, without a client certificate, from any source address, for the
    /// public endpoints (EST, `/metrics`): no default `Authorization`.
    pub(super) fn plain_target(&self) -> HttpsTarget {
        HttpsTarget {
            addr: self.https,
            bind: None,
            server_name: self.server_name.clone(),
            tls: self.tls.clone(),
            timeout: REQUEST_TIMEOUT,
            authorization: None,
        }
    }

    /// The HTTPS listener for the REST API under `/api/v1`: like
    /// [`plain_target`](Self::plain_target), with the bench operator's API token.
    pub(super) fn api_target(&self) -> HttpsTarget {
        HttpsTarget {
            authorization: Some(self.api_auth.clone()),
            ..self.plain_target()
        }
    }

    /// The `Authorization` value of REST calls made over another target.
    pub(super) fn api_auth(&self) -> &str {
        &self.api_auth
    }

    /// A TLS configuration presenting a device's certificate (with the issuing CAs) and key.
    pub(super) fn device_tls(
        &self,
        cert: &CertificateDer<'static>,
        issuing: &[CertificateDer<'static>],
        key_pkcs8: &[u8],
        http: bool,
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut chain = vec![cert.clone()];
        chain.extend_from_slice(issuing);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_root_certificates(self.roots.clone())
        .with_client_auth_cert(chain, key)?;
        config.resumption = Resumption::disabled();
        if http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(Arc::new(config))
    }

    pub(super) fn mqtt_options(
        &self,
        ctx: &Ctx,
        i: usize,
        tls: Arc<rustls::ClientConfig>,
    ) -> ConnectOptions {
        ConnectOptions {
            addr: self.mqtts,
            bind: Some(ctx.source_addr(i)),
            tls,
            server_name: self.server_name.clone(),
            version: ctx.version,
            client_id: device_name(i),
            keep_alive: KEEP_ALIVE,
            receive_maximum: None,
            read_chunk: IDLE_READ_CHUNK,
            timeout: CONNECT_TIMEOUT,
        }
    }

    /// A REST call without a client certificate, with the API token; fails unless the
    /// status is `expect`.
    async fn rest(
        &self,
        path: &str,
        body: &serde_json::Value,
        expect: u16,
    ) -> anyhow::Result<serde_json::Value> {
        let mut conn = HttpsConnection::connect(&self.api_target()).await?;
        let response = conn
            .post(path, "application/json", None, serde_json::to_vec(body)?)
            .await?;
        ensure!(
            response.status == expect,
            "POST {path}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
        Ok(serde_json::from_slice(&response.body)?)
    }

    /// A manufacturer, a model, and a token for `uses` enrollments; returns the token's
    /// `Authorization` header.
    pub(super) async fn create_registry(&self, uses: usize) -> anyhow::Result<String> {
        let maker = tokio::task::spawn_blocking(|| ManufacturerCa::new(MANUFACTURER)).await??;
        self.rest(
            "/api/v1/manufacturers",
            &json!({
                "id": MANUFACTURER,
                "idevid_ca_pems": [maker.cert_pem()],
                "model_rules": [],
            }),
            201,
        )
        .await?;
        self.rest(
            "/api/v1/models",
            &json!({ "id": MODEL, "manufacturer": MANUFACTURER }),
            201,
        )
        .await?;
        let token = self
            .rest(
                "/api/v1/tokens",
                &json!({
                    "tenant": TENANT,
                    "model": MODEL,
                    "max_uses": u32::try_from(uses).unwrap_or(u32::MAX),
                    "expires_in": 3600,
                }),
                201,
            )
            .await?;
        let id = token["token"]["id"]
            .as_str()
            .context("the token response has no token.id")?;
        let secret = token["secret"]
            .as_str()
            .context("the token response has no secret")?;
        Ok(basic_auth(id, secret))
    }

    /// The issuing CA certificates from EST `cacerts` (all but the root, which comes last),
    /// which a device sends after its own certificate.
    pub(super) async fn issuing_chain(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let mut conn = HttpsConnection::connect(&self.plain_target()).await?;
        let response = conn.get("/.well-known/est/cacerts").await?;
        ensure!(response.status == 200, "cacerts: {}", response.status);
        let mut certs = decode_base64(&response.body)
            .and_then(|der| pkcs7_certificates(&der))
            .context("cacerts is not a base64 PKCS#7 certs-only bundle")?;
        if certs.len() > 1 {
            certs.pop();
        }
        Ok(certs)
    }
}

/// Makes a key and CSR for every device, on the blocking pool.
pub(super) async fn generate_csrs(devices: Vec<String>) -> anyhow::Result<Vec<DeviceCsr>> {
    let mut tasks = Vec::new();
    for chunk in devices.chunks(KEYGEN_CHUNK) {
        let chunk = chunk.to_vec();
        tasks.push(tokio::task::spawn_blocking(move || {
            chunk
                .iter()
                .map(|d| DeviceCsr::generate(d))
                .collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut out = Vec::with_capacity(devices.len());
    for task in tasks {
        out.extend(task.await.context("key generation task panicked")??);
    }
    Ok(out)
}

/// One EST request over a connection of its own.
pub(super) struct Op {
    pub(super) target: HttpsTarget,
    pub(super) path: &'static str,
    pub(super) auth: Option<String>,
    pub(super) body: Bytes,
    pub(super) device: String,
}

/// What a set of workers measured.
#[derive(Default)]
pub(super) struct Outcome {
    total: Samples,
    tls: Samples,
    http: Samples,
    pub(super) ok: usize,
    /// Failures by kind (HTTP status or transport step): count and the first message.
    pub(super) errors: BTreeMap<String, (u64, String)>,
    /// Certificates of the first devices, for the later phases.
    pub(super) certs: Vec<(usize, CertificateDer<'static>)>,
    pub(super) elapsed: Duration,
    broker_cpu: Option<f64>,
    generator_cpu: Option<f64>,
}

impl Outcome {
    fn error(&mut self, kind: String, message: String) {
        let entry = self.errors.entry(kind).or_insert((0, message));
        entry.0 += 1;
    }

    fn merge(&mut self, mut other: Outcome) {
        self.total.append(&mut other.total);
        self.tls.append(&mut other.tls);
        self.http.append(&mut other.http);
        self.ok += other.ok;
        for (kind, (count, message)) in other.errors {
            let entry = self.errors.entry(kind).or_insert((0, message));
            entry.0 += count;
        }
        self.certs.append(&mut other.certs);
    }

    fn row(self, broker: &Broker, variant: &str, rss: Option<u64>) -> Row {
        let failed: u64 = self.errors.values().map(|(count, _)| count).sum();
        let total = self.total.sorted();
        let tls = self.tls.sorted();
        let http = self.http.sorted();
        let mut notes = Vec::new();
        if !self.errors.is_empty() {
            notes.push(format!("errors: {}", error_summary(&self.errors)));
        }
        Row {
            broker: broker.kind(),
            variant: variant.to_owned(),
            figures: vec![
                Figure::higher(
                    "ops/s",
                    self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9),
                    0,
                ),
                Figure::lower("p50 ms", ms(percentile(&total, 0.50)), 2),
                Figure::lower("p99 ms", ms(percentile(&total, 0.99)), 2),
                Figure::lower("max ms", ms(percentile(&total, 1.0)), 2),
                Figure::info("TLS p50 ms", ms(percentile(&tls, 0.50)), 2),
                Figure::info("HTTP p50 ms", ms(percentile(&http, 0.50)), 2),
                Figure::info("HTTP p99 ms", ms(percentile(&http, 0.99)), 2),
                Figure::info("done", self.ok as f64, 0),
                Figure::lower("failed", failed as f64, 0),
                Figure::info("broker CPU %", percent(self.broker_cpu), 1),
                Figure::info("generator CPU %", percent(self.generator_cpu), 1),
                Figure::info("broker RSS MiB", rss.map(mib), 1),
            ],
            notes,
        }
    }
}

/// Runs `ops`, `concurrency` at a time, each over a new connection; keeps the certificates
/// of devices numbered below `keep`.
pub(super) async fn load(
    broker: &Broker,
    ops: Vec<Op>,
    concurrency: usize,
    keep: usize,
) -> Outcome {
    let ops = Arc::new(ops);
    let next = Arc::new(AtomicUsize::new(0));
    let broker_cpu = CpuMeter::start(Some(broker.pid()));
    let generator_cpu = CpuMeter::start(None);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..concurrency.min(ops.len()) {
        let ops = ops.clone();
        let next = next.clone();
        set.spawn(async move {
            let mut w = Outcome::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(op) = ops.get(i) else { break };
                one(op, i < keep, i, &mut w).await;
            }
            w
        });
    }
    let mut outcome = Outcome::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(w) => outcome.merge(w),
            Err(e) => outcome.error("worker".to_owned(), e.to_string()),
        }
    }
    outcome.elapsed = started.elapsed();
    outcome.broker_cpu = broker_cpu.percent();
    outcome.generator_cpu = generator_cpu.percent();
    outcome
}

async fn one(op: &Op, keep: bool, i: usize, w: &mut Outcome) {
    let t0 = Instant::now();
    let mut conn = match HttpsConnection::connect(&op.target).await {
        Ok(c) => c,
        Err(e) => return w.error(e.kind().to_owned(), e.to_string()),
    };
    let t1 = Instant::now();
    let response = conn
        .post(op.path, PKCS10, op.auth.as_deref(), op.body.clone())
        .await;
    let t2 = Instant::now();
    drop(conn);
    let response = match response {
        Ok(r) => r,
        Err(e) => return w.error(e.kind().to_owned(), e.to_string()),
    };
    match issued_certificate(&response, &op.device) {
        Ok(cert) => {
            w.ok += 1;
            w.total.push(t2 - t0);
            w.tls.push(t1 - t0);
            w.http.push(t2 - t1);
            if keep {
                w.certs.push((i, cert));
            }
        }
        Err((kind, message)) => w.error(kind, message),
    }
}

/// The certificate in an EST response, if the response is a 200 with a base64 PKCS#7 whose
/// first certificate names `device`; otherwise the failure's kind and message.
fn issued_certificate(
    response: &HttpsResponse,
    device: &str,
) -> Result<CertificateDer<'static>, (String, String)> {
    if response.status != 200 {
        let text = String::from_utf8_lossy(&response.body);
        return Err((
            response.status.to_string(),
            text.trim().chars().take(200).collect(),
        ));
    }
    let cert = decode_base64(&response.body)
        .and_then(|der| pkcs7_certificates(&der))
        .and_then(|certs| certs.into_iter().next())
        .ok_or_else(|| {
            (
                "bad body".to_owned(),
                "200 without a base64 PKCS#7 certificate".to_owned(),
            )
        })?;
    if !names_device(&cert, device) {
        return Err((
            "wrong certificate".to_owned(),
            format!("the certificate issued does not name {device}"),
        ));
    }
    Ok(cert)
}

/// Connects every session, revokes the devices one at a time through the REST API, and
/// times each revocation to the moment its client sees the connection end; then tries a
/// reconnect with a revoked certificate.
async fn revoke_and_watch(
    ctx: &Ctx,
    server: &Server,
    broker: &mut Broker,
    sessions: Vec<(usize, ConnectOptions)>,
) -> anyhow::Result<Row> {
    let mut watchers = Vec::new();
    for (i, opts) in &sessions {
        let (mut client, _) = Client::connect(opts).await.with_context(|| {
            format!("connecting enrolled device {} over MQTTS", device_name(*i))
        })?;
        watchers.push(tokio::spawn(async move {
            loop {
                match client.recv().await {
                    Ok(Packet::Disconnect(d)) => {
                        return (
                            Instant::now(),
                            format!("DISCONNECT {}", d.reason.explained()),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => return (Instant::now(), e.to_string()),
                }
            }
        }));
    }
    let mut to_disconnect = Samples::default();
    let mut request = Samples::default();
    let mut missed = 0u64;
    let mut notes = Vec::new();
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    for ((i, _), watcher) in sessions.iter().zip(watchers) {
        let device = device_name(*i);
        let mut conn = HttpsConnection::connect(&server.target(ctx, *i, server.tls.clone()))
            .await
            .context("connecting to revoke")?;
        let body = serde_json::to_vec(&json!({
            "reason": "key_compromise",
            "comment": "gatehouse bench: revocation to disconnection",
        }))?;
        let t0 = Instant::now();
        let response = conn
            .post(
                &format!("/api/v1/devices/{TENANT}/{device}/revoke"),
                "application/json",
                Some(server.api_auth()),
                body,
            )
            .await?;
        request.push(t0.elapsed());
        ensure!(
            response.status == 200,
            "revoking {device}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
        match tokio::time::timeout(DISCONNECT_WAIT, watcher).await {
            Ok(Ok((seen, how))) => {
                to_disconnect.push(seen.saturating_duration_since(t0));
                *ends.entry(how).or_default() += 1;
            }
            Ok(Err(e)) => bail!("session watcher failed: {e}"),
            Err(_) => {
                missed += 1;
                notes.push(format!(
                    "{device}: still connected {DISCONNECT_WAIT:?} after its revocation"
                ));
            }
        }
    }
    broker.check_alive()?;
    let k = sessions.len();
    notes.push(format!(
        "{k} MQTTS sessions of enrolled devices, revoked one at a time (POST \
         /api/v1/devices/{TENANT}/<id>/revoke); ms = from sending the request to the client \
         seeing its connection end ({}); HTTP = the revoke request's own response time",
        ends.iter()
            .map(|(how, n)| format!("{how} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut reconnect_accepted = false;
    if let Some((i, opts)) = sessions.first() {
        match Client::connect(opts).await {
            Ok((client, _)) => {
                client.disconnect().await;
                reconnect_accepted = true;
                notes.push(format!(
                    "RECONNECT ACCEPTED: {} connected again with its revoked certificate",
                    device_name(*i)
                ));
            }
            Err(e) => {
                notes.push(format!(
                    "reconnect of {} with its revoked certificate refused: {e}",
                    device_name(*i)
                ));
            }
        }
    }
    let failed = missed + u64::from(reconnect_accepted);
    let disconnect = to_disconnect.sorted();
    let request = request.sorted();
    Ok(Row {
        broker: broker.kind(),
        variant: "revoke".to_owned(),
        figures: vec![
            Figure::higher("ops/s", None, 0),
            Figure::lower("p50 ms", ms(percentile(&disconnect, 0.50)), 2),
            Figure::lower("p99 ms", None, 2),
            Figure::lower("max ms", ms(percentile(&disconnect, 1.0)), 2),
            Figure::info("TLS p50 ms", None, 2),
            Figure::info("HTTP p50 ms", ms(percentile(&request, 0.50)), 2),
            Figure::info("HTTP p99 ms", None, 2),
            Figure::info("done", disconnect.len() as f64, 0),
            Figure::lower("failed", failed as f64, 0),
            Figure::info("broker CPU %", None, 1),
            Figure::info("generator CPU %", None, 1),
            Figure::info("broker RSS MiB", broker.rss().ok().map(mib), 1),
        ],
        notes,
    })
}

/// Enrolls devices `0..n` over EST with `auth`, `concurrency` at a time, with the enroll
/// scenario's machinery; notes the setup line in `setup` and returns the outcome, with its
/// certificates in device order, and the devices' keys and CSRs (indexed by device).
pub(super) async fn enroll_fleet(
    ctx: &Ctx,
    broker: &mut Broker,
    server: &Server,
    auth: &str,
    n: usize,
    concurrency: usize,
    setup: &mut Vec<String>,
) -> anyhow::Result<(Outcome, Vec<DeviceCsr>)> {
    let keygen = Instant::now();
    let csrs = generate_csrs((0..n).map(device_name).collect()).await?;
    let keygen = keygen.elapsed();
    let ops: Vec<Op> = csrs
        .iter()
        .enumerate()
        .map(|(i, csr)| Op {
            target: server.target(ctx, i, server.tls.clone()),
            path: ENROLL_PATH,
            auth: Some(auth.to_owned()),
            body: Bytes::from(csr.est_body()),
            device: csr.device.clone(),
        })
        .collect();
    let mut enrolled = load(broker, ops, concurrency, n).await;
    broker.check_alive()?;
    let enroll_secs = enrolled.elapsed.as_secs_f64();
    setup.push(format!(
        "setup: {n} device keys and CSRs made in {:.1} s; {} of {n} devices enrolled over EST \
         in {enroll_secs:.1} s ({:.0}/s){}",
        keygen.as_secs_f64(),
        enrolled.ok,
        enrolled.ok as f64 / enroll_secs.max(1e-9),
        if enrolled.errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", error_summary(&enrolled.errors))
        }
    ));
    enrolled.certs.sort_by_key(|(i, _)| *i);
    Ok((enrolled, csrs))
}

pub(super) fn error_summary(errors: &BTreeMap<String, (u64, String)>) -> String {
    errors
        .iter()
        .map(|(kind, (count, first))| format!("{kind} ×{count} (first: {first})"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_with_the_devices_certificate_counts() {
        let csr = DeviceCsr::generate("bench-000007").expect("csr");
        // Any DER naming the device stands in for its certificate here.
        let cert = CertificateDer::from(csr.csr_der.clone());
        let body = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            gatehouse_pki::pkcs7_certs_only(std::slice::from_ref(&cert)),
        );
        let ok = HttpsResponse {
            status: 200,
            body: Bytes::from(body),
        };
        assert_eq!(issued_certificate(&ok, "bench-000007"), Ok(cert));
        let (kind, _) = issued_certificate(&ok, "bench-000008").expect_err("other device");
        assert_eq!(kind, "wrong certificate");
        let refused = HttpsResponse {
            status: 403,
            body: Bytes::from_static(b"refused: token used up\n"),
        };
        assert_eq!(
            issued_certificate(&refused, "bench-000007"),
            Err(("403".to_owned(), "refused: token used up".to_owned()))
        );
        let garbage = HttpsResponse {
            status: 200,
            body: Bytes::from_static(b"hello"),
        };
        assert_eq!(
            issued_certificate(&garbage, "bench-000007")
                .expect_err("not PKCS#7")
                .0,
            "bad body"
        );
    }

    #[test]
    fn errors_are_summarised_by_kind() {
        let mut o = Outcome::default();
        o.error("403".to_owned(), "first".to_owned());
        o.error("403".to_owned(), "second".to_owned());
        o.error("tls".to_owned(), "handshake".to_owned());
        assert_eq!(
            error_summary(&o.errors),
            "403 ×2 (first: first); tls ×1 (first: handshake)"
        );
    }
}
