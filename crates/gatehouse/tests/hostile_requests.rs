//! Requests built to take the whole gateway down, against the real binary (threats 16 and
//! 17): policy text nested to overflow a parser's stack, floods of expensive password
//! checks from many addresses, each under its own rate, connections opened and left idle
//! before CONNECT, and floods of connection attempts. Each must be refused, shed or timed
//! out, and the broker must go on serving certificate devices.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use support::clients::V5;
use support::{Gatehouse, LAB_POLICY, Options, WAIT, raw};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address 127.0.0.`host`.
async fn connect_from(host: u8, to: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
        0,
    ))?;
    Ok(socket.connect(to).await?)
}

/// One HTTPS request to `to` from 127.0.0.`host`; returns (status, body).
async fn https(
    to: SocketAddr,
    tls: &Arc<ClientConfig>,
    host: u8,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String)> {
    let work = async {
        let tcp = connect_from(host, to).await?;
        let name = ServerName::IpAddress(to.ip().into());
        let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        if let Err(e) = stream.read_to_end(&mut response).await
            && response.is_empty()
        {
            return Err(anyhow::Error::from(e));
        }
        Ok(response)
    };
    let response = tokio::time::timeout(WAIT * 4, work)
        .await
        .context("HTTPS request timed out")??;
    support::http_status_and_body(&response)
}

/// A field of `/proc/<pid>/status` in KiB (VmRSS, VmHWM).
fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the server (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The server is up: `/healthz` answers and a certificate device gets its own message
/// back through the broker.
async fn still_serving(gh: &Gatehouse, device: &str) -> Result<()> {
    let (status, body) = gh.https_get("/healthz").await?;
    ensure!(status == 200, "/healthz answered {status}: {body}");
    let mut dev = V5::connect_as(gh.listeners.mqtts, gh.client_tls(device)?, device).await?;
    let topic = format!("lab/{device}");
    dev.subscribe(&topic, Q5::AtLeastOnce).await?;
    dev.client
        .publish(&topic, Q5::AtLeastOnce, false, "still here")
        .await?;
    let p = dev
        .publish()
        .await
        .context("round trip through the broker")?;
    ensure!(p.payload.as_ref() == b"still here", "got {p:?}");
    dev.disconnect().await
}

/// Well-behaved certificate devices that, until stopped, connect, publish one QoS 1
/// message, wait for its PUBACK and disconnect, one round every 150 ms: what a flood does
/// to everyone else, as a distribution of connect-and-publish times rather than one
/// sample. Each round is another device (a new id, until 80 have gone round, 12 s), so
/// that no device comes back within the connection-flood rule's window (10 s): the rule
/// counts only such returns from one address (127.0.0.1 here), and this is not a flood.
struct Probe {
    stop: Arc<AtomicBool>,
    task: std::thread::JoinHandle<Result<Vec<Duration>>>,
}

/// Connect-and-publish times one probe saw.
struct Served {
    times: Vec<Duration>,
}

impl Probe {
    fn start(mqtts: SocketAddr, devices: Vec<(String, Arc<ClientConfig>)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        // On a thread and runtime of its own: the attackers' tasks in this process do not
        // queue in front of it, so what it measures is the server.
        let task = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(Self::rounds(mqtts, devices, stopped))
        });
        Self { stop, task }
    }

    async fn rounds(
        mqtts: SocketAddr,
        devices: Vec<(String, Arc<ClientConfig>)>,
        stopped: Arc<AtomicBool>,
    ) -> Result<Vec<Duration>> {
        {
            let mut times = Vec::new();
            for (device, tls) in devices.iter().cycle() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let topic = format!("lab/{device}");
                let started = Instant::now();
                let round = async {
                    let mut dev = V5::connect_as(mqtts, tls.clone(), device).await?;
                    dev.client
                        .publish(&topic, Q5::AtLeastOnce, false, "probe")
                        .await?;
                    let ack = dev.puback().await?;
                    ensure!(
                        ack.reason == rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
                        "the probe's publish was refused: {ack:?}"
                    );
                    dev.disconnect().await
                };
                tokio::time::timeout(WAIT * 2, round)
                    .await
                    .with_context(|| format!("probe round {} did not finish", times.len() + 1))??;
                let took = started.elapsed();
                times.push(took);
                tokio::time::sleep(Duration::from_millis(150).saturating_sub(took)).await;
            }
            Ok(times)
        }
    }

    /// Stops after the round in progress; every round must have been served.
    async fn finish(self) -> Result<Served> {
        self.stop.store(true, Ordering::Relaxed);
        let task = self.task;
        let mut times = tokio::task::spawn_blocking(move || task.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the probe's thread panicked"))??;
        ensure!(!times.is_empty(), "the probe never finished a round");
        times.sort();
        Ok(Served { times })
    }

    /// `count` probe devices named `{name}-{n}`, with their certificates.
    fn devices(
        gh: &Gatehouse,
        name: &str,
        count: usize,
    ) -> Result<Vec<(String, Arc<ClientConfig>)>> {
        (1..=count)
            .map(|n| {
                let device = format!("{name}-{n}");
                let tls = gh.client_tls(&device)?;
                Ok((device, tls))
            })
            .collect()
    }

    /// The probe's figures with nothing else going on, for comparison.
    async fn quiet(gh: &Gatehouse) -> Result<Served> {
        let probe = Self::start(gh.listeners.mqtts, Self::devices(gh, "alone", 20)?);
        tokio::time::sleep(Duration::from_secs(2)).await;
        probe.finish().await
    }

    /// Starts a probe of 80 devices, for the length of a flood.
    fn during(gh: &Gatehouse) -> Result<Self> {
        Ok(Self::start(
            gh.listeners.mqtts,
            Self::devices(gh, "probe", 80)?,
        ))
    }
}

impl Served {
    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.times.len() - 1) as f64 * q).round() as usize;
        self.times[i]
    }
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{} connect-and-publish rounds, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.times.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.times[self.times.len() - 1])
        )
    }
}

fn permit_when(condition: &str) -> String {
    format!(
        "@id(\"deep\")\npermit (principal, action == Action::\"publish\", resource)\nwhen {{ {condition} }};"
    )
}

#[tokio::test]
async fn deeply_nested_policy_is_refused_and_the_server_stays_up() -> Result<()> {
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let pid = gh.pid().context("server pid")?;
    let tls = gh.anonymous_tls()?;
    let auth = format!("Authorization: Bearer {}\r\n", gh.token);
    let quiet = Probe::quiet(&gh).await?;
    let probe = Probe::during(&gh)?;
    // Each of these aborted the process, broker and CA with it, before the limits.
    let texts = [
        permit_when(&format!("{}true{}", "(".repeat(150), ")".repeat(150))),
        permit_when(&format!(
            "{}1{}.contains(1)",
            "[".repeat(300),
            "]".repeat(300)
        )),
        permit_when(&format!("{}true{}", "(".repeat(20_000), ")".repeat(20_000))),
        permit_when(&format!("principal.score{} > 0", " + 1".repeat(5_000))),
    ];
    // Five times over, so that the probe has a flood to measure.
    for text in texts.iter().cycle().take(5 * texts.len()) {
        // A set within the limits would be put in force by PUT (and replace the set the
        // devices below connect under): only validate those.
        let routes: &[(&str, &str)] = if text.len() < 1_000 {
            &[("POST", "/api/v1/policies/validate")]
        } else {
            &[
                ("POST", "/api/v1/policies/validate"),
                ("PUT", "/api/v1/policies"),
            ]
        };
        for &(method, path) in routes {
            let body = json!({ "text": text }).to_string();
            let (status, answer) =
                https(gh.listeners.https, &tls, 1, method, path, &auth, &body).await?;
            let head: String = text.chars().take(40).collect();
            match status {
                422 => {
                    let why: Value = serde_json::from_str(&answer)?;
                    let message = why["error"]["message"].as_str().unwrap_or_default();
                    ensure!(
                        message.contains("nests deeper") || message.contains("does not"),
                        "{method} {path} refused {head}… for another reason: {message}"
                    );
                }
                // 150 parentheses are within the depth limit: parsed, on the checker's
                // own stack, and refused by the schema or accepted; either way, answered.
                200 => ensure!(
                    text.len() < 1_000,
                    "{method} {path} accepted {head}… ({} bytes)",
                    text.len()
                ),
                other => bail!("{method} {path} with {head}… answered {other}: {answer}"),
            }
            proc_kib(pid, "VmRSS").context("the server died on a nested policy")?;
        }
    }
    let during = probe.finish().await?;
    println!("nested policies: a device alone: {quiet}; while they were refused: {during}");
    // The deepest ones name the limit.
    let body = json!({ "text": texts[2] }).to_string();
    let (status, answer) = https(
        gh.listeners.https,
        &tls,
        1,
        "POST",
        "/api/v1/policies/validate",
        &auth,
        &body,
    )
    .await?;
    ensure!(
        status == 422 && answer.contains("nests deeper than the 160 levels allowed"),
        "{status}: {answer}"
    );
    still_serving(&gh, "after-policies").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_flood_from_many_addresses_keeps_memory_bounded() -> Result<()> {
    let gh = Arc::new(Gatehouse::start(Options::extra(LAB_POLICY)).await?);
    let pid = gh.pid().context("server pid")?;
    still_serving(&gh, "before-flood").await?;
    let before = proc_kib(pid, "VmRSS")?;
    let quiet = Probe::quiet(&gh).await?;
    let probe = Probe::during(&gh)?;

    // 60 addresses, 10 attempts each: every address stays within its own limit of 10 a
    // minute. All 600 at once: what the server must bound is how many it hashes at once.
    const ADDRESSES: u8 = 60;
    const EACH: usize = 10;
    let tls = gh.anonymous_tls()?;
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..ADDRESSES {
        for i in 0..EACH {
            let gh = gh.clone();
            let tls = tls.clone();
            let answered = answered.clone();
            tasks.push(tokio::spawn(async move {
                let body =
                    json!({ "name": format!("guess-{a}-{i}"), "password": "hunter2hunter2" })
                        .to_string();
                let r = https(
                    gh.listeners.https,
                    &tls,
                    10 + a,
                    "POST",
                    "/api/v1/session/login",
                    "",
                    &body,
                )
                .await;
                answered.fetch_add(1, Ordering::Relaxed);
                r
            }));
        }
    }
    // While the flood is on, the broker still serves a certificate device.
    still_serving(&gh, "during-flood").await?;
    let during = proc_kib(pid, "VmRSS")?;
    let answered_then = answered.load(Ordering::Relaxed);

    let mut by_status = std::collections::BTreeMap::new();
    for t in tasks {
        let (status, body) = t.await??;
        ensure!(
            matches!(status, 401 | 429 | 503),
            "a login answered {status}: {body}"
        );
        *by_status.entry(status).or_insert(0usize) += 1;
    }
    let took = started.elapsed();
    let served = probe.finish().await?;
    let peak = proc_kib(pid, "VmHWM")?;
    let after = proc_kib(pid, "VmRSS")?;
    let slots = gh.metric("gatehouse_password_check_slots").await?;
    let shed = gh
        .metric("gatehouse_password_checks_shed_total{reason=\"busy\"}")
        .await?
        + gh.metric("gatehouse_password_checks_shed_total{reason=\"rate\"}")
            .await?;
    println!(
        "login flood: {} attempts from {ADDRESSES} addresses in {took:?}: {by_status:?}; \
         RSS before {before} KiB, during {during} KiB ({answered_then} answered then), \
         peak {peak} KiB, after {after} KiB; {slots} check slots; {shed} shed; \
         a device alone: {quiet}; during the flood: {served}",
        usize::from(ADDRESSES) * EACH
    );
    ensure!(slots <= 2.0, "{slots} memory slots for password checks");
    ensure!(shed > 0.0, "nothing was shed: {by_status:?}");
    // Two 19 MiB slots and what 600 TLS connections cost; before the budget, the same
    // flood took the server past 10 GB.
    let growth = peak.saturating_sub(before);
    ensure!(
        growth < 256 * 1024,
        "the server grew by {growth} KiB at its peak during the login flood"
    );
    still_serving(&gh, "after-flood").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_flood_on_the_legacy_listener_does_not_delay_mtls_devices() -> Result<()> {
    let hash = gatehouse_pki::password::hash_password(b"s3cret-meter")?;
    let gh = Arc::new(
        Gatehouse::start(Options {
            plain: true,
            extra: format!(
                "{LAB_POLICY}\n[limits]\nconnect_rate_per_source = 1000\n\
                 [[legacy.users]]\nusername = \"meter-1\"\npassword_hash = '{hash}'\n"
            ),
            no_operator: false,
        })
        .await?,
    );
    let pid = gh.pid().context("server pid")?;
    let plain = gh.listeners.mqtt.context("no plain listener")?;
    /// Closed with no CONNACK: the address was banned.
    const BANNED: u8 = 0xff;
    let before = proc_kib(pid, "VmRSS")?;
    let quiet = Probe::quiet(&gh).await?;
    let probe = Probe::during(&gh)?;

    // 600 wrong passwords from 30 addresses, all at once.
    let mut tasks = Vec::new();
    for n in 0..600usize {
        tasks.push(tokio::spawn(async move {
            let mut s = connect_from(10 + (n % 30) as u8, plain).await?;
            s.write_all(&raw::connect_v311(
                &format!("meter-{n}"),
                Some("meter-1"),
                Some("wrong-password"),
            ))
            .await?;
            let mut ack = [0u8; 4];
            match tokio::time::timeout(WAIT * 4, s.read_exact(&mut ack))
                .await
                .context("neither a CONNACK nor a close")?
            {
                Ok(_) => Ok::<_, anyhow::Error>(ack[3]),
                // Detection bans an address that brute-forces: closed without a word.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(BANNED),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(BANNED),
                Err(e) => Err(e.into()),
            }
        }));
    }
    // A certificate device connects and round-trips while they are being refused.
    let started = Instant::now();
    still_serving(&gh, "mtls-during-flood").await?;
    let mtls_took = started.elapsed();

    let mut codes = std::collections::BTreeMap::new();
    for t in tasks {
        let code = t.await??;
        // 4: bad user name or password; 3: server unavailable (the check was shed).
        ensure!(matches!(code, 3 | 4 | BANNED), "CONNACK return code {code}");
        *codes.entry(code).or_insert(0usize) += 1;
    }
    let served = probe.finish().await?;
    let peak = proc_kib(pid, "VmHWM")?;
    let slots = gh.metric("gatehouse_password_check_slots").await?;
    let failures = gh
        .metric("gatehouse_connections_refused_total{reason=\"bad_password\"}")
        .await?;
    println!(
        "legacy flood: CONNACK codes {codes:?}; an mTLS connect, subscribe and round trip \
         during it took {mtls_took:?}; RSS before {before} KiB, peak {peak} KiB; \
         {slots} check slots; {failures} bad_password refusals counted; a device alone: \
         {quiet}; during the flood: {served}"
    );
    ensure!(slots <= 2.0, "{slots} memory slots for password checks");
    ensure!(
        peak.saturating_sub(before) < 256 * 1024,
        "the server grew by {} KiB",
        peak.saturating_sub(before)
    );
    // Wrong passwords still count as failed authentications (the brute-force rule reads
    // them from the tap).
    ensure!(
        codes.get(&4).copied().unwrap_or(0) > 0,
        "no password was checked at all: {codes:?}"
    );
    still_serving(&gh, "mtls-after-flood").await
}

/// A DER PKCS#10 request for `device` (P-256, the device id as the CN).
fn csr_for(device: &str) -> Result<Vec<u8>> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device);
    Ok(params.serialize_request(&key)?.der().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_an_enrollment_and_revocation_storm_loses_no_acknowledged_record()
-> Result<()> {
    use std::sync::Mutex;
    let lab = support::lab::Lab::start().await?;
    lab.register_acme(gatehouse_pki::ManufacturerCa::new("Acme")?.cert_pem())?;
    let (token_id, secret) = lab.token("default", 100_000, 3600)?;
    let https_addr = lab.gh.listeners.https;
    let est = gatehouse_agent::est::EstClient::new(
        &format!("https://{https_addr}"),
        vec![lab.gh.ca_der()?],
    )?;
    let tls = lab.gh.anonymous_tls()?;
    let auth = format!("Authorization: Bearer {}\r\n", lab.gh.token);
    let enrolled: Arc<Mutex<Vec<String>>> = Arc::default();
    let revoked: Arc<Mutex<Vec<String>>> = Arc::default();

    // Four enrolling devices' worth of load, and one operator revoking what enrolled.
    let mut storm = Vec::new();
    for worker in 0..4 {
        let (est, token_id, secret, enrolled) = (
            est.clone(),
            token_id.clone(),
            secret.clone(),
            enrolled.clone(),
        );
        storm.push(tokio::spawn(async move {
            for i in 0.. {
                let device = format!("storm-{worker}-{i}");
                let Ok(csr) = csr_for(&device) else { continue };
                match est.simpleenroll_token(&csr, &token_id, &secret).await {
                    Ok(_) => enrolled.lock().expect("lock").push(device),
                    // The server is gone: the storm is over.
                    Err(_) => return,
                }
            }
        }));
    }
    {
        let (enrolled, revoked, tls, auth) =
            (enrolled.clone(), revoked.clone(), tls.clone(), auth.clone());
        storm.push(tokio::spawn(async move {
            let mut next = 0;
            loop {
                let device = enrolled.lock().expect("lock").get(next).cloned();
                let Some(device) = device else {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                };
                next += 2; // every other device
                let path = format!("/api/v1/devices/default/{device}/revoke");
                match https(https_addr, &tls, 1, "POST", &path, &auth, "{}").await {
                    Ok((200, _)) => revoked.lock().expect("lock").push(device),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    // Once the storm is well under way, kill -9.
    let deadline = Instant::now() + WAIT * 4;
    while revoked.lock().expect("lock").len() < 10 {
        ensure!(Instant::now() < deadline, "the storm did not get going");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let support::lab::Lab { mut gh, dir } = lab;
    gh.crash().await?;
    for t in storm {
        t.abort();
    }
    let enrolled = enrolled.lock().expect("lock").clone();
    let revoked = revoked.lock().expect("lock").clone();

    // Everything the server acknowledged before it died is there after it starts again.
    let lab = support::lab::Lab {
        gh: gh.restart().await?,
        dir,
    };
    for device in &enrolled {
        let (s, v) = lab.api("GET", &format!("/api/v1/devices/default/{device}"), None)?;
        ensure!(s == 200, "{device} was acknowledged, then lost: {s} {v}");
        if revoked.contains(device) {
            ensure!(
                v["certificates"][0]["status"] == "revoked",
                "{device}'s revocation was acknowledged, then lost: {v}"
            );
        }
    }
    let verified = lab.gh.cli(&["audit", "verify"]).await?;
    println!(
        "storm: {} enrollments and {} revocations acknowledged before kill -9; all found after \
         restart; audit verify: {}",
        enrolled.len(),
        revoked.len(),
        verified.trim()
    );
    Ok(())
}

/// What each file descriptor the process holds open refers to (`socket:[…]`, a path),
/// by descriptor number.
fn open_fds(pid: u32) -> Result<std::collections::BTreeMap<u32, String>> {
    let mut fds = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("the server (pid {pid}) is gone"))?
    {
        let entry = entry?;
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Closed between the listing and the read: not open any more.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            fds.insert(fd, target.display().to_string());
        }
    }
    Ok(fds)
}

/// The first bytes of a TLS ClientHello that announces 508 bytes of handshake and stops
/// after the version and a few bytes of the random: the server must wait for the rest.
fn partial_client_hello() -> Vec<u8> {
    let mut bytes = vec![0x16, 0x03, 0x01, 0x02, 0x00]; // handshake record, 512 bytes
    bytes.extend([0x01, 0x00, 0x01, 0xfc]); // ClientHello, 508 bytes
    bytes.extend([0x03, 0x03]); // TLS 1.2 legacy version
    bytes.extend([0x5a; 12]); // 12 of the 32 bytes of random
    bytes
}

/// A connection that never sends CONNECT.
enum Idle {
    /// TCP only: nothing sent, or a ClientHello cut short.
    Tcp(TcpStream),
    /// A completed mutual-TLS handshake.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_tls_connections_do_not_keep_a_real_device_out() -> Result<()> {
    // Short deadlines so that the test is quick, but long enough for 500 connections to
    // be opened (a third of them with a TLS handshake) on a small, shared machine.
    const DEADLINE: &str = "5s";
    let gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[limits]\ntls_handshake_timeout = \"{DEADLINE}\"\n\
         connect_timeout = \"{DEADLINE}\"\n"
    )))
    .await?;
    still_serving(&gh, "before-idle").await?;
    gh.wait_metric_at_most("gatehouse_connections_open", 0.0)
        .await?;
    let mqtts = gh.listeners.mqtts;
    let idle_tls = gh.client_tls("idle-tls")?;
    let quiet = Probe::quiet(&gh).await?;
    let probe = Probe::during(&gh)?;

    // 500 connections from ten addresses, 50 each (within each address's burst of 100):
    // a third send nothing, a third send the start of a ClientHello, a third complete the
    // TLS handshake with a valid certificate. None sends CONNECT.
    const IDLE: usize = 500;
    let mut opening = Vec::new();
    for i in 0..IDLE {
        let tls = idle_tls.clone();
        opening.push(tokio::spawn(async move {
            let work = async {
                let mut tcp = connect_from(10 + (i % 10) as u8, mqtts).await?;
                Ok::<_, anyhow::Error>(match i % 3 {
                    0 => Idle::Tcp(tcp),
                    1 => {
                        tcp.write_all(&partial_client_hello()).await?;
                        Idle::Tcp(tcp)
                    }
                    _ => {
                        let name = ServerName::IpAddress(mqtts.ip().into());
                        let tls = tokio_rustls::TlsConnector::from(tls)
                            .connect(name, tcp)
                            .await?;
                        Idle::Tls(Box::new(tls))
                    }
                })
            };
            tokio::time::timeout(WAIT, work)
                .await
                .with_context(|| format!("opening idle connection {i} timed out"))?
        }));
    }
    let mut idle = Vec::with_capacity(IDLE);
    for (i, o) in opening.into_iter().enumerate() {
        idle.push(o.await?.with_context(|| format!("idle connection {i}"))?);
    }
    let tls_idle = idle.iter().filter(|c| matches!(c, Idle::Tls(_))).count();
    // The server holds every one of them (and the probe's connection, when one is open).
    gh.wait_metric("gatehouse_connections_open", IDLE as f64)
        .await?;

    // While they are all open, an enrolled certificate device connects and gets its own
    // message back through the broker.
    let started = Instant::now();
    let device = "real-device";
    let mut dev = V5::connect_as(mqtts, gh.client_tls(device)?, device).await?;
    let topic = format!("lab/{device}");
    dev.subscribe(&topic, Q5::AtLeastOnce).await?;
    dev.client
        .publish(&topic, Q5::AtLeastOnce, false, "let in")
        .await?;
    let p = dev
        .publish()
        .await
        .context("round trip through the broker")?;
    ensure!(p.payload.as_ref() == b"let in", "got {p:?}");
    let device_took = started.elapsed();
    let served = probe.finish().await?;
    // ...and none of the idle ones had been let go yet: the device got in beside them.
    let open = gh.metric("gatehouse_connections_open").await?;
    ensure!(
        open >= (IDLE + 1) as f64,
        "only {open} connections open with the device in: the idle ones were closed before \
         the device was served (raise DEADLINE if the machine is this slow)"
    );
    dev.disconnect().await?;

    // The server closes every idle connection by itself: each is read until it ends.
    let closing: Vec<_> = idle
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            tokio::spawn(async move {
                let closed = match c {
                    Idle::Tcp(mut s) => raw::read_until_closed(&mut s, WAIT * 2).await,
                    Idle::Tls(mut s) => raw::read_until_closed(&mut *s, WAIT * 2).await,
                };
                closed.with_context(|| format!("idle connection {i}"))
            })
        })
        .collect();
    let mut sent_nothing = 0;
    for c in closing {
        let closed = c.await??;
        // Whatever it answered (TLS session tickets), it is no MQTT packet.
        if closed.bytes.is_empty() {
            sent_nothing += 1;
        }
    }
    let all_closed = started.elapsed();
    gh.wait_metric_at_most("gatehouse_connections_open", 0.0)
        .await?;
    // Closed by the deadlines, and counted under them.
    let handshake_timeouts = gh
        .metric("gatehouse_tls_failures_total{reason=\"handshake_timeout\"}")
        .await?;
    let connect_timeouts = gh
        .metric("gatehouse_connections_refused_total{reason=\"connect_timeout\"}")
        .await?;
    println!(
        "idle: {IDLE} connections ({tls_idle} with TLS done) held; a device connected and \
         round-tripped in {device_took:?} beside them; all closed by the server \
         {all_closed:?} after that ({sent_nothing} without a byte); {handshake_timeouts} \
         handshake timeouts, {connect_timeouts} CONNECT timeouts counted; a device alone: \
         {quiet}; while they were opened and held: {served}"
    );
    ensure!(
        handshake_timeouts >= (IDLE - tls_idle) as f64,
        "{handshake_timeouts} handshake timeouts for {} connections without TLS",
        IDLE - tls_idle
    );
    ensure!(
        connect_timeouts >= tls_idle as f64,
        "{connect_timeouts} CONNECT timeouts for {tls_idle} TLS connections without CONNECT"
    );
    still_serving(&gh, "after-idle").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_flood_is_refused_by_rate_without_leaking_descriptors() -> Result<()> {
    // The default rate (50 new connections a second from one address, bursts of 100);
    // a short handshake deadline, so that admitted connections that send nothing go soon.
    let gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[limits]\ntls_handshake_timeout = \"2s\"\n"
    )))
    .await?;
    let pid = gh.pid().context("server pid")?;
    // Everything the server opens once (stores, logs, the first TLS sessions) is open.
    still_serving(&gh, "before-flood").await?;
    gh.wait_metric_at_most("gatehouse_connections_open", 0.0)
        .await?;
    const RATE: &str = "gatehouse_connections_refused_total{reason=\"connect_rate_exceeded\"}";
    const ACCEPTED: &str = "gatehouse_connections_accepted_total";
    let refused_before = gh.metric(RATE).await?;
    let accepted_before = gh.metric(ACCEPTED).await?;
    let fds_before = open_fds(pid)?;

    // 3,000 attempts from one address (not the device's), at most 200 at a time, in four
    // manners: dropped at once; the start of a ClientHello, then closed; held open until
    // the server closes it; a TLS handshake with a valid certificate, then dropped
    // without CONNECT.
    const ATTEMPTS: usize = 3_000;
    const FLOODER: u8 = 66;
    let mqtts = gh.listeners.mqtts;
    let tls = gh.client_tls("flood")?;
    let quiet = Probe::quiet(&gh).await?;
    let probe = Probe::during(&gh)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(200));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(ATTEMPTS);
    for i in 0..ATTEMPTS {
        let permit = slots.clone().acquire_owned().await?;
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let work = async {
                let mut tcp = connect_from(FLOODER, mqtts).await?;
                match i % 4 {
                    0 => drop(tcp),
                    1 => {
                        // Refused ones may already be closed: the write may fail.
                        let _ = tcp.write_all(&partial_client_hello()).await;
                        let _ = tcp.shutdown().await;
                        raw::read_until_closed(&mut tcp, WAIT).await?;
                    }
                    2 => {
                        raw::read_until_closed(&mut tcp, WAIT).await?;
                    }
                    _ => {
                        let name = ServerName::IpAddress(mqtts.ip().into());
                        // A refused connection fails the handshake.
                        if let Ok(s) = tokio_rustls::TlsConnector::from(tls)
                            .connect(name, tcp)
                            .await
                        {
                            drop(s);
                        }
                    }
                }
                Ok::<_, anyhow::Error>(())
            };
            tokio::time::timeout(WAIT * 2, work)
                .await
                .with_context(|| format!("flood attempt {i} timed out"))?
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        t.await?.with_context(|| format!("flood attempt {i}"))?;
    }
    let flood_took = started.elapsed();
    let served = probe.finish().await?;

    // Every connection is closed on the client's side; the server lets go of all of them.
    gh.wait_metric_at_most("gatehouse_connections_open", 0.0)
        .await?;
    const MARGIN: usize = 5;
    let deadline = Instant::now() + WAIT;
    let mut after = open_fds(pid)?;
    while after.len() > fds_before.len() + MARGIN {
        if Instant::now() >= deadline {
            let new: Vec<_> = after
                .iter()
                .filter(|&(fd, target)| fds_before.get(fd) != Some(target))
                .collect();
            bail!(
                "the server holds {} descriptors after the flood, {} before it; new: {new:?}",
                after.len(),
                fds_before.len()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = open_fds(pid)?;
    }
    let new: Vec<_> = after
        .iter()
        .filter(|&(fd, target)| fds_before.get(fd) != Some(target))
        .collect();
    let refused = gh.metric(RATE).await? - refused_before;
    let accepted = gh.metric(ACCEPTED).await? - accepted_before;
    println!(
        "connection flood: {ATTEMPTS} attempts from 127.0.0.{FLOODER} in {flood_took:?}; \
         {accepted} accepted at TCP level, {refused} refused by the rate limit; \
         descriptors before {}, after {} (new: {new:?}); a device alone: {quiet}; during \
         the flood, from another address: {served}",
        fds_before.len(),
        after.len()
    );
    ensure!(
        accepted >= ATTEMPTS as f64,
        "only {accepted} of {ATTEMPTS} attempts reached the server"
    );
    ensure!(refused > 0.0, "the rate limit refused none of {ATTEMPTS}");
    // A real device, from another address, still gets in and round-trips.
    still_serving(&gh, "after-flood").await
}

#[tokio::test]
async fn https_connections_past_the_limit_are_closed_and_the_rest_still_served() -> Result<()> {
    const MAX: usize = 8;
    let gh = Gatehouse::start(Options::extra(&format!(
        "{LAB_POLICY}\n[api]\nmax_connections = {MAX}\nconcurrent_handshakes = 2\n\
         [limits]\ntls_handshake_timeout = \"60s\"\n"
    )))
    .await?;
    let listener = gh.listeners.https;
    let (status, _) = gh.https_get("/healthz").await?;
    ensure!(status == 200, "/healthz answered {status}");

    // MAX connections that send nothing hold every place (each waits out its deadline).
    let mut held = Vec::new();
    for _ in 0..MAX {
        held.push(connect_from(20, listener).await?);
    }
    // The next one is accepted by the kernel and closed by the server at once, long
    // before the handshake deadline (60 s) would have closed it.
    let mut over = connect_from(21, listener).await?;
    let closed = raw::read_until_closed(&mut over, WAIT)
        .await
        .context("a connection past max_connections was kept open")?;
    ensure!(
        closed.bytes.is_empty(),
        "it was answered: {:?}",
        closed.bytes
    );
    // So is a well-formed client: refused, not queued.
    let refused = https(
        listener,
        &gh.anonymous_tls()?,
        22,
        "GET",
        "/healthz",
        "",
        "",
    )
    .await;
    ensure!(refused.is_err(), "served past the limit: {refused:?}");

    // Once the idle ones go, the listener serves again.
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        match https(
            listener,
            &gh.anonymous_tls()?,
            23,
            "GET",
            "/healthz",
            "",
            "",
        )
        .await
        {
            Ok((200, _)) => break,
            other if Instant::now() >= deadline => {
                bail!(
                    "the listener did not serve again after the idle connections closed: {other:?}"
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    still_serving(&gh, "after-https-limit").await
}
