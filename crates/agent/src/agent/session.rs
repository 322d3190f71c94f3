//! One MQTT session with one set of credentials, and the EST work scheduled beside it.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Agent, AgentError, Command, Message, MqttEndpoint};
use crate::enroll::{EnrollError, Enrolled, Enrollment, enroll, reenroll};
use crate::est::{is_certificate_alert, tls_alert_in};
use crate::identity::{CertInfo, DeviceCredentials};
use crate::posture::{Posture, PostureSigner, notice_topic, posture_topic};
use crate::renew::until;
use crate::tls::mutual_tls_config;

/// Longest single wait for a scheduled EST operation: the deadline is checked again
/// after this, so a wall clock that jumps (a device setting its time) is followed.
const MAX_TIMER: Duration = Duration::from_secs(60);
/// Shortest time between two renewals. The server backdates `not_before` (five minutes,
/// for clock skew), so a certificate issued for only a few minutes is due for renewal as
/// soon as it arrives; without this the agent would renew in a loop.
const MIN_RENEWAL_SPACING: Duration = Duration::from_secs(10);
/// Time allowed for DISCONNECT to go out before a session is dropped.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// How a session ended.
pub(super) enum End {
    /// The agent was told to stop, or every handle is gone.
    Shutdown,
    /// New credentials (renewed or enrolled again): start the next session with them.
    NewCredentials(DeviceCredentials),
}

/// The EST operation the session may run beside the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// `simplereenroll` with the current certificate.
    Renew,
    /// `simpleenroll` from scratch with the token or IDevID.
    Enroll,
}

type Reply = oneshot::Sender<Result<(), AgentError>>;

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Agent (sessions) ===

impl Agent {
    pub(super) async fn session(&mut self, creds: DeviceCredentials) -> Result<End, AgentError> {
        let info = creds.info().clone();
        let span = info_span!("session", tenant = %info.tenant, device = %info.device);
        self.session_inner(creds).instrument(span).await
    }

    async fn session_inner(&mut self, creds: DeviceCredentials) -> Result<End, AgentError> {
        let info = creds.info().clone();
        let config = self.config.clone();
        let options = mqtt_options(&creds, config.est.trust(), &config.mqtt, config.keep_alive)?;
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (event_tx, mut events) = mpsc::channel(64);
        let _poller = AbortOnDrop(tokio::spawn(
            poll(eventloop, event_tx, config.retry_min, config.retry_max).in_current_span(),
        ));
        self.status.send_modify(|s| {
            s.identity = Some(info.clone());
            s.connected = false;
        });
        info!(
            serial = %info.serial_hex,
            renew_at = %creds.renew_at(),
            mqtt = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
            "connecting"
        );

        let now = OffsetDateTime::now_utc();
        let mut next: Option<(OffsetDateTime, Task)> = if now >= info.not_after
            && config.enrollment.is_some()
        {
            warn!(not_after = %info.not_after, "certificate expired: enrolling again");
            Some((now, Task::Enroll))
        } else {
            let mut at = creds.renew_at();
            if let Some(last) = self.last_renewal {
                let earliest = last + MIN_RENEWAL_SPACING;
                if at < earliest {
                    warn!(
                        renew_at = %at,
                        "the new certificate is due for renewal already (a validity shorter than the server's backdating?); renewing at most every {MIN_RENEWAL_SPACING:?}"
                    );
                    at = earliest;
                }
            }
            Some((at, Task::Renew))
        };
        let mut running: Option<(Task, JoinHandle<Result<Enrolled, EnrollError>>)> = None;
        let mut est_delay = config.retry_min;
        let mut connected = false;
        // Subscribe requests in the order given to the client, then by packet id once
        // sent; `None` for re-subscriptions nobody waits for.
        let mut queued: VecDeque<Option<(String, Reply)>> = VecDeque::new();
        let mut sent: HashMap<u16, Option<(String, Reply)>> = HashMap::new();
        let mut heartbeat = config.heartbeat.map(|every| {
            let mut t = tokio::time::interval_at(Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let started = Instant::now();
        // The posture to report, with the key to sign it: built once per session (the
        // credentials are the session's). A key that cannot sign is logged, not fatal.
        let posture =
            config
                .posture
                .as_ref()
                .and_then(|posture| match PostureSigner::new(&creds) {
                    Ok(signer) => Some((posture, signer)),
                    Err(e) => {
                        warn!(error = %e, "no posture reports with this certificate");
                        None
                    }
                });
        let mut posture_timer = posture.as_ref().and(config.posture_interval).map(|every| {
            let mut t = tokio::time::interval_at(Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let notices = notice_topic(&info.device);

        loop {
            let timer = next
                .map(|(at, _)| until(at, OffsetDateTime::now_utc()).min(MAX_TIMER))
                .unwrap_or(MAX_TIMER);
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => {
                        disconnect(&client, &mut events).await;
                        return Ok(End::Shutdown);
                    }
                    Some(Command::Publish { topic, qos, retain, payload, reply }) => {
                        let result = if connected {
                            client
                                .try_publish(topic, qos, retain, payload)
                                .map_err(|e| AgentError::Request(e.to_string()))
                        } else {
                            Err(AgentError::NotConnected)
                        };
                        let _ = reply.send(result);
                    }
                    Some(Command::Subscribe { filter, qos, reply }) => {
                        self.subscriptions.insert(filter.clone(), qos);
                        if connected {
                            match client.try_subscribe(filter.clone(), qos) {
                                Ok(()) => queued.push_back(Some((filter, reply))),
                                Err(e) => {
                                    let _ = reply.send(Err(AgentError::Request(e.to_string())));
                                }
                            }
                        } else {
                            let _ = reply.send(Ok(()));
                        }
                    }
                },

                event = events.recv() => match event {
                    None => {
                        warn!("MQTT event loop ended; starting a new session");
                        return Ok(End::NewCredentials(creds));
                    }
                    Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {
                        connected = true;
                        self.refused_enrollments = 0;
                        info!("connected");
                        for (filter, qos) in &self.subscriptions {
                            if client.try_subscribe(filter.clone(), *qos).is_ok() {
                                queued.push_back(None);
                            }
                        }
                        // Posture right after each connection; the next one an interval
                        // later.
                        let reported = posture.as_ref().is_some_and(|(posture, signer)| {
                            report_posture(&client, &info, posture, signer)
                        });
                        if let Some(t) = posture_timer.as_mut() {
                            t.reset();
                        }
                        self.status.send_modify(|s| {
                            s.connected = true;
                            s.connections += 1;
                            s.posture_reports += u64::from(reported);
                        });
                    }
                    Some(Ok(Event::Outgoing(Outgoing::Subscribe(pkid)))) => {
                        if let Some(waiter) = queued.pop_front() {
                            sent.insert(pkid, waiter);
                        }
                    }
                    Some(Ok(Event::Incoming(Incoming::SubAck(ack)))) => {
                        let refused = ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, SubscribeReasonCode::Failure));
                        match sent.remove(&ack.pkid) {
                            Some(Some((filter, reply))) => {
                                let _ = reply.send(if refused {
                                    Err(AgentError::SubscriptionRefused(filter))
                                } else {
                                    Ok(())
                                });
                            }
                            Some(None) if refused => {
                                warn!(pkid = ack.pkid, "broker refused a re-subscription");
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                        if p.topic == notices {
                            log_notice(&p.payload);
                        }
                        let _ = self.messages.send(Message {
                            topic: p.topic,
                            payload: p.payload,
                            retain: p.retain,
                        });
                    }
                    Some(Ok(Event::Incoming(Incoming::Disconnect))) => {
                        connected = false;
                        self.status.send_modify(|s| s.connected = false);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        // Waiters of this connection will get no answer.
                        queued.clear();
                        sent.clear();
                        if connected {
                            warn!(error = %e, "connection lost");
                        }
                        connected = false;
                        let message = e.to_string();
                        self.status.send_modify(|s| {
                            s.connected = false;
                            s.last_error = Some(message);
                        });
                        if is_identity_refusal(&e) {
                            if config.enrollment.is_some() {
                                if running.is_none()
                                    && !matches!(next, Some((_, Task::Enroll)))
                                {
                                    // Enrolling again right away the first time; if the new
                                    // certificate is refused too, waiting longer each time.
                                    let wait = self.refusal_backoff();
                                    warn!(error = %e, in_ = ?wait, "the server refuses this certificate: enrolling again");
                                    next = Some((OffsetDateTime::now_utc() + wait, Task::Enroll));
                                }
                            } else {
                                warn!(error = %e, "the server refuses this certificate, and no token or IDevID is configured to enroll again");
                            }
                        } else {
                            debug!(error = %e, "connection attempt failed");
                        }
                    }
                },

                () = tokio::time::sleep(timer), if running.is_none() && next.is_some() => {
                    let now = OffsetDateTime::now_utc();
                    if let Some((at, task)) = next
                        && now >= at
                    {
                        next = None;
                        running = Some((task, self.spawn_task(task, &creds)));
                    }
                }

                joined = async {
                    match running.as_mut() {
                        Some((_, handle)) => handle.await,
                        None => std::future::pending().await,
                    }
                }, if running.is_some() => {
                    let Some((task, _)) = running.take() else { continue };
                    let result = joined.unwrap_or_else(|e| {
                        Err(EnrollError::Est(crate::est::EstError::InvalidRequest(
                            if e.is_panic() { "the EST task panicked" } else { "the EST task was cancelled" },
                        )))
                    });
                    match result {
                        Ok(enrolled) => {
                            let new = self.install(&enrolled)?;
                            self.last_renewal = Some(OffsetDateTime::now_utc());
                            // This session ends here: the next one reports its own
                            // CONNACK.
                            self.status.send_modify(|s| {
                                s.connected = false;
                                match task {
                                    Task::Renew => s.renewals += 1,
                                    Task::Enroll => s.enrollments += 1,
                                }
                            });
                            info!(
                                old_serial = %info.serial_hex,
                                new_serial = %new.info().serial_hex,
                                "reconnecting with the new certificate"
                            );
                            disconnect(&client, &mut events).await;
                            return Ok(End::NewCredentials(new));
                        }
                        Err(e) => {
                            self.set_error(e.to_string());
                            if task == Task::Renew
                                && e.is_credential_refusal()
                                && config.enrollment.is_some()
                            {
                                warn!(error = %e, "renewal refused: enrolling again");
                                next = Some((OffsetDateTime::now_utc(), Task::Enroll));
                            } else {
                                warn!(error = %e, ?task, retry_in = ?est_delay, "EST request failed");
                                next = Some((
                                    OffsetDateTime::now_utc() + est_delay,
                                    task,
                                ));
                                est_delay = (est_delay * 2).min(config.retry_max);
                            }
                        }
                    }
                }

                _ = async {
                    match heartbeat.as_mut() {
                        Some(t) => t.tick().await,
                        None => std::future::pending().await,
                    }
                }, if connected && heartbeat.is_some() => {
                    let payload = serde_json::json!({
                        "device": info.device.as_str(),
                        "serial": info.serial_hex,
                        "not_after": info.not_after.unix_timestamp(),
                        "renew_at": creds.renew_at().unix_timestamp(),
                        "uptime_secs": started.elapsed().as_secs(),
                    });
                    let topic = format!("$gatehouse/{}/health", info.device);
                    if let Err(e) = client.try_publish(
                        topic,
                        rumqttc::QoS::AtMostOnce,
                        false,
                        payload.to_string(),
                    ) {
                        debug!(error = %e, "heartbeat not queued");
                    }
                }

                _ = async {
                    match posture_timer.as_mut() {
                        Some(t) => t.tick().await,
                        None => std::future::pending().await,
                    }
                }, if connected && posture_timer.is_some() => {
                    if let Some((posture, signer)) = posture.as_ref()
                        && report_posture(&client, &info, posture, signer)
                    {
                        self.status.send_modify(|s| s.posture_reports += 1);
                    }
                }
            }
        }
    }

    /// How long to wait before enrolling again after the server refused our certificate:
    /// nothing the first time, then doubling while no connection succeeds in between.
    fn refusal_backoff(&mut self) -> Duration {
        let n = self.refused_enrollments;
        self.refused_enrollments = n.saturating_add(1);
        if n == 0 {
            return Duration::ZERO;
        }
        self.config
            .retry_min
            .saturating_mul(1u32 << n.min(16))
            .min(self.config.retry_max)
    }

    fn spawn_task(
        &self,
        task: Task,
        creds: &DeviceCredentials,
    ) -> JoinHandle<Result<Enrolled, EnrollError>> {
        let est = self.config.est.clone();
        match (task, self.config.enrollment.clone()) {
            (Task::Enroll, Some(how)) => {
                info!("enrolling from scratch");
                // A token given without a device id enrolls the device we already are.
                let how = match how {
                    Enrollment::Token(token) if token.device().is_none() => Enrollment::Token(
                        token
                            .for_device(creds.info().device.clone())
                            .in_tenant(creds.info().tenant.clone()),
                    ),
                    other => other,
                };
                tokio::spawn(async move { enroll(&est, &how).await }.in_current_span())
            }
            _ => {
                info!("renewing the certificate");
                let creds = creds.clone();
                tokio::spawn(async move { reenroll(&est, &creds).await }.in_current_span())
            }
        }
    }
}

/// The MQTT options of a connection with `creds`: client id = the device id, mutual TLS
/// trusting `trust`, a clean session.
pub(crate) fn mqtt_options(
    creds: &DeviceCredentials,
    trust: &[rustls_pki_types::CertificateDer<'static>],
    mqtt: &MqttEndpoint,
    keep_alive: Duration,
) -> Result<MqttOptions, AgentError> {
    let tls = mutual_tls_config(trust, creds.chain(), creds.key())?;
    let mut options = MqttOptions::new(creds.info().device.as_str(), mqtt.host.clone(), mqtt.port);
    options
        .set_keep_alive(keep_alive)
        .set_clean_session(true)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    Ok(options)
}

/// Signs a report of `posture` made now and queues it on the connection (QoS 1); whether
/// it was queued.
fn report_posture(
    client: &AsyncClient,
    info: &CertInfo,
    posture: &Posture,
    signer: &PostureSigner,
) -> bool {
    let report = posture.report_now();
    let signed = match signer.sign(&report) {
        Ok(signed) => signed,
        Err(e) => {
            warn!(error = %e, "posture report not sent");
            return false;
        }
    };
    match client.try_publish(
        posture_topic(&info.device),
        rumqttc::QoS::AtLeastOnce,
        false,
        signed.to_envelope(),
    ) {
        Ok(()) => {
            info!(
                firmware = report.firmware.as_deref().unwrap_or("-"),
                services = report.services.len(),
                default_credentials = report.default_credentials.map_or("-", |c| c.as_str()),
                algorithm = signer.algorithm(),
                "posture reported"
            );
            true
        }
        Err(e) => {
            warn!(error = %e, "posture report not queued");
            false
        }
    }
}

/// Logs a server notice (`$gatehouse/{device}/notice`, sent to MQTT 5 sessions without a
/// subscription): information about the session, not an error.
fn log_notice(payload: &[u8]) {
    let (event, filters) = read_notice(payload);
    info!(
        event = %event,
        filters = %filters.join(", "),
        notice = %String::from_utf8_lossy(&payload[..payload.len().min(1024)]),
        "server notice"
    );
}

/// A notice's event and the filters it names (`{"event": "subscriptions_removed",
/// "filters": [...]}`); `unknown` and none for anything else.
fn read_notice(payload: &[u8]) -> (String, Vec<String>) {
    let notice: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let event = notice["event"].as_str().unwrap_or("unknown").to_owned();
    let filters = notice["filters"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (event, filters)
}

/// Polls the event loop and forwards what it yields. After an error it waits before the
/// next poll (which reconnects), doubling the wait up to `max`; a CONNACK resets it.
async fn poll(
    mut eventloop: EventLoop,
    events: mpsc::Sender<Result<Event, ConnectionError>>,
    min: Duration,
    max: Duration,
) {
    let mut delay = min;
    loop {
        match eventloop.poll().await {
            Ok(event) => {
                if matches!(event, Event::Incoming(Incoming::ConnAck(_))) {
                    delay = min;
                }
                if events.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if events.send(Err(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(max);
            }
        }
    }
}

/// Sends DISCONNECT and waits (briefly) for it to go out.
async fn disconnect(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(DISCONNECT_GRACE, async {
        while let Some(event) = events.recv().await {
            match event {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Whether a connection failure means the server does not accept our certificate: a TLS
/// alert about it (revoked, expired, unknown issuer). A CONNACK refusal is not one: it is
/// the broker's policy (a blocked device), which a new certificate does not change.
fn is_identity_refusal(e: &ConnectionError) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(rustls::Error::AlertReceived(alert)) = err.downcast_ref::<rustls::Error>() {
            return is_certificate_alert(*alert);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(alert) = tls_alert_in(io)
        {
            return is_certificate_alert(alert);
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use rumqttc::ConnectReturnCode;
    use rustls::AlertDescription;

    use super::*;

    #[test]
    fn notices_are_read() {
        let (event, filters) = read_notice(
            br#"{"event":"subscriptions_removed","filters":["devices/d/cmd/#","a/+"],"tier":"restricted"}"#,
        );
        assert_eq!(event, "subscriptions_removed");
        assert_eq!(filters, ["devices/d/cmd/#", "a/+"]);
        assert_eq!(read_notice(b"not json"), ("unknown".to_owned(), vec![]));
    }

    #[test]
    fn certificate_alerts_and_not_authorized_are_identity_refusals() {
        let alert = |a| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(a),
            )
        };
        assert!(is_identity_refusal(&ConnectionError::Io(alert(
            AlertDescription::CertificateRevoked
        ))));
        assert!(is_identity_refusal(&ConnectionError::Tls(
            rumqttc::TlsError::Io(alert(AlertDescription::BadCertificate))
        )));
        assert!(is_identity_refusal(&ConnectionError::MqttState(
            rumqttc::StateError::Io(alert(AlertDescription::CertificateExpired))
        )));
        assert!(!is_identity_refusal(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        )));
        assert!(!is_identity_refusal(&ConnectionError::Io(alert(
            AlertDescription::HandshakeFailure
        ))));
        assert!(!is_identity_refusal(&ConnectionError::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        )));
        assert!(!is_identity_refusal(&ConnectionError::NetworkTimeout));
    }
}
