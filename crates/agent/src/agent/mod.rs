//! The agent's life: hold an identity, stay connected over MQTTS, renew at two thirds of the
//! certificate's lifetime, and enroll again when the server no longer accepts it.
//!
//! [`Agent::run`] is one task. It keeps the device's credentials, runs one MQTT session
//! with them (the rumqttc event loop polled in a task of its own, its events read here),
//! and drives at most one EST operation at a time beside it, so the connection stays up
//! while a renewal is in flight. A renewed certificate ends the session gracefully and the
//! next one starts with the new key. When configured with a [`Posture`], it publishes a
//! signed posture report right after each connection and then at an interval.
//! [`AgentHandle`]s publish, subscribe, read messages and watch [`AgentStatus`]; the agent
//! stops when told to or when every handle is gone.

mod session;

pub(crate) use session::mqtt_options;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
pub use rumqttc::QoS;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::enroll::{Enrollment, enroll};
use crate::est::EstClient;
use crate::identity::{CertInfo, DeviceCredentials};
use crate::posture::{Posture, PostureError};
use crate::state::{StateDir, StateError};

/// Where the MQTTS listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    /// Host name or IP address; must be a name in the server's certificate.
    pub host: String,
    /// Port (Gatehouse's default is 8883).
    pub port: u16,
}

/// How an agent runs. Build with [`AgentConfig::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The state directory (device key, certificate, CA certificates).
    pub state: StateDir,
    /// The EST client, trusting the bootstrap anchors (replaced by `ca.crt` once there).
    pub est: EstClient,
    /// The MQTTS listener.
    pub mqtt: MqttEndpoint,
    /// How to enroll when there is no identity yet, or when the server refuses it (revoked
    /// and reclaimed, expired). Without it such a device can only log and retry.
    pub enrollment: Option<Enrollment>,
    /// Interval of the heartbeat published to `$gatehouse/<device>/health`; `None` sends
    /// none.
    pub heartbeat: Option<Duration>,
    /// The posture to report on `$gatehouse/<device>/posture`, signed with the
    /// certificate's key, right after each connection and then every
    /// [`posture_interval`](Self::posture_interval); `None` reports none.
    pub posture: Option<Posture>,
    /// Interval of the posture reports after the one made on connecting; `None` reports
    /// only on connecting.
    pub posture_interval: Option<Duration>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// First delay before retrying a failed connection or EST request; doubles up to
    /// [`retry_max`](Self::retry_max).
    pub retry_min: Duration,
    /// Longest delay between retries.
    pub retry_max: Duration,
}

/// What the agent is doing, as seen through [`AgentHandle::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStatus {
    /// Whether an MQTT session is up (CONNACK received).
    pub connected: bool,
    /// The certificate in use.
    pub identity: Option<CertInfo>,
    /// Successful MQTT connections so far.
    pub connections: u64,
    /// Certificates renewed with `simplereenroll`.
    pub renewals: u64,
    /// Enrollments from scratch (`simpleenroll`) done by this agent.
    pub enrollments: u64,
    /// Signed posture reports handed to the MQTT connection.
    pub posture_reports: u64,
    /// The last error seen (connection, EST), for display.
    pub last_error: Option<String>,
}

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// Whether it is a retained message.
    pub retain: bool,
}

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The state directory could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// There is no identity in the state directory and no way to enroll was given.
    #[error("the device is not enrolled and no enrollment token or IDevID was given")]
    NotEnrolled,
    /// The TLS configuration for MQTTS could not be built from the credentials.
    #[error("MQTTS TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The agent has stopped.
    #[error("the agent is not running")]
    Stopped,
    /// No MQTT session is up.
    #[error("not connected")]
    NotConnected,
    /// The MQTT client refused the request (queue full, invalid topic).
    #[error("MQTT request refused: {0}")]
    Request(String),
    /// The broker refused the subscription.
    #[error("the broker refused the subscription to {0:?}")]
    SubscriptionRefused(String),
    /// The session ended before the broker answered.
    #[error("the connection was lost before the broker answered")]
    ConnectionLost,
    /// The MQTT connection failed or was refused.
    #[error("MQTT connection: {0}")]
    Connection(Box<rumqttc::ConnectionError>),
    /// A posture report could not be made or signed.
    #[error(transparent)]
    Posture(#[from] PostureError),
    /// The operation did not finish in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A device agent; run it with [`Agent::run`].
pub struct Agent {
    config: AgentConfig,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<AgentStatus>,
    messages: broadcast::Sender<Message>,
    /// Filters to subscribe to on every connection.
    subscriptions: BTreeMap<String, QoS>,
    /// Enrollments started because the server refused the certificate, since the last
    /// successful connection.
    refused_enrollments: u32,
    /// When the last new certificate was installed.
    last_renewal: Option<time::OffsetDateTime>,
}

/// Talks to a running [`Agent`]. Cheap to clone; the agent stops when the last one is
/// dropped.
#[derive(Clone)]
pub struct AgentHandle {
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<AgentStatus>,
    messages: broadcast::Sender<Message>,
}

/// A request from a handle.
enum Command {
    Publish {
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    Subscribe {
        filter: String,
        qos: QoS,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    Shutdown,
}

impl From<rumqttc::ConnectionError> for AgentError {
    fn from(e: rumqttc::ConnectionError) -> Self {
        Self::Connection(Box::new(e))
    }
}

// === impl AgentConfig ===

impl AgentConfig {
    /// A configuration with the defaults: no enrollment credentials, a heartbeat every 60 s,
    /// no posture reports (every hour once [`with_posture`](Self::with_posture) gives one),
    /// keep-alive 30 s, retries from 1 s up to 5 minutes.
    pub fn new(state: StateDir, est: EstClient, mqtt: MqttEndpoint) -> Self {
        Self {
            state,
            est,
            mqtt,
            enrollment: None,
            heartbeat: Some(Duration::from_secs(60)),
            posture: None,
            posture_interval: Some(Duration::from_secs(3600)),
            keep_alive: Duration::from_secs(30),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
        }
    }

    /// How to enroll from scratch.
    pub fn with_enrollment(mut self, enrollment: Enrollment) -> Self {
        self.enrollment = Some(enrollment);
        self
    }

    /// The heartbeat interval (`None`: no heartbeat).
    pub fn with_heartbeat(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The posture to report on each connection and every
    /// [`posture_interval`](Self::with_posture_interval) (`None`: no reports).
    pub fn with_posture(mut self, posture: Option<Posture>) -> Self {
        self.posture = posture;
        self
    }

    /// The interval of posture reports after the one made on connecting (`None`, or zero:
    /// only on connecting).
    pub fn with_posture_interval(mut self, interval: Option<Duration>) -> Self {
        self.posture_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// The MQTT keep-alive.
    pub fn with_keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// Retry delays: the first, and the longest.
    pub fn with_retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }
}

// === impl Agent ===

impl Agent {
    /// An agent and a handle to it. Nothing happens until [`run`](Self::run).
    pub fn new(config: AgentConfig) -> (Agent, AgentHandle) {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (status_tx, status_rx) = watch::channel(AgentStatus::default());
        let (msg_tx, _) = broadcast::channel(256);
        let agent = Agent {
            config,
            commands: cmd_rx,
            status: status_tx,
            messages: msg_tx.clone(),
            subscriptions: BTreeMap::new(),
            refused_enrollments: 0,
            last_renewal: None,
        };
        let handle = AgentHandle {
            commands: cmd_tx,
            status: status_rx,
            messages: msg_tx,
        };
        (agent, handle)
    }

    /// Runs until [`AgentHandle::shutdown`] or until every handle is dropped. Enrolls
    /// first if the state directory holds no usable identity (and a way to enroll was
    /// given). Fails only on what retrying cannot fix: an unreadable or unwritable state
    /// directory, or no identity and no way to get one.
    pub async fn run(mut self) -> Result<(), AgentError> {
        self.refresh_trust();
        let Some(mut creds) = self.startup().await? else {
            return Ok(());
        };
        loop {
            match self.session(creds).await? {
                session::End::Shutdown => {
                    info!("agent stopped");
                    return Ok(());
                }
                session::End::NewCredentials(next) => creds = next,
            }
        }
    }

    /// The credentials to start with: those in the state directory, or new ones.
    async fn startup(&mut self) -> Result<Option<DeviceCredentials>, AgentError> {
        match self.config.state.load() {
            Ok(creds) => return Ok(Some(creds)),
            Err(StateError::NotEnrolled { .. }) if self.config.enrollment.is_some() => {
                info!(dir = %self.config.state.path().display(), "no identity yet: enrolling");
            }
            Err(e @ StateError::Credentials { .. }) if self.config.enrollment.is_some() => {
                warn!(error = %e, "stored identity is unusable: enrolling again");
            }
            Err(StateError::NotEnrolled { .. }) => return Err(AgentError::NotEnrolled),
            Err(e) => return Err(e.into()),
        }
        let mut delay = self.config.retry_min;
        loop {
            let Some(how) = self.config.enrollment.clone() else {
                return Err(AgentError::NotEnrolled);
            };
            let est = self.config.est.clone();
            let attempt = enroll(&est, &how);
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    r = &mut attempt => break Some(r),
                    cmd = self.commands.recv() => {
                        if !self.offline_command(cmd) {
                            break None;
                        }
                    }
                }
            };
            match result {
                None => return Ok(None),
                Some(Ok(enrolled)) => {
                    let creds = self.install(&enrolled)?;
                    self.status.send_modify(|s| s.enrollments += 1);
                    return Ok(Some(creds));
                }
                Some(Err(e)) => {
                    warn!(error = %e, retry_in = ?delay, "enrollment failed");
                    self.set_error(e.to_string());
                    if !self.pause(delay).await {
                        return Ok(None);
                    }
                    delay = (delay * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Writes new credentials and CA certificates to the state directory and trusts the
    /// CA certificates from now on.
    fn install(
        &mut self,
        enrolled: &crate::enroll::Enrolled,
    ) -> Result<DeviceCredentials, AgentError> {
        self.config.state.save(&enrolled.credentials)?;
        self.config.state.save_ca(&enrolled.ca_certs)?;
        self.refresh_trust();
        let info = enrolled.credentials.info().clone();
        info!(
            device = %info.device,
            serial = %info.serial_hex,
            not_after = %info.not_after,
            "new identity stored"
        );
        self.status.send_modify(|s| s.identity = Some(info));
        Ok(enrolled.credentials.clone())
    }

    /// Trusts `ca.crt` for EST from now on, if present and usable (RFC 7030 §4.1.3: the
    /// bootstrap anchor is replaced by the CA certificates once enrolled).
    fn refresh_trust(&mut self) {
        match self.config.state.load_ca() {
            Ok(Some(certs)) => match self.config.est.with_trust(certs) {
                Ok(est) => self.config.est = est,
                Err(e) => warn!(error = %e, "ca.crt is unusable; keeping the bootstrap trust"),
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read ca.crt; keeping the bootstrap trust"),
        }
    }

    /// Sleeps, answering commands; false if told to stop.
    async fn pause(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                cmd = self.commands.recv() => {
                    if !self.offline_command(cmd) {
                        return false;
                    }
                }
            }
        }
    }

    /// Answers a command while no session is up; false if it says stop.
    fn offline_command(&mut self, cmd: Option<Command>) -> bool {
        match cmd {
            None | Some(Command::Shutdown) => false,
            Some(Command::Publish { reply, .. }) => {
                let _ = reply.send(Err(AgentError::NotConnected));
                true
            }
            Some(Command::Subscribe { filter, qos, reply }) => {
                // Remembered: subscribed on the first connection.
                self.subscriptions.insert(filter, qos);
                let _ = reply.send(Ok(()));
                true
            }
        }
    }

    fn set_error(&self, error: String) {
        self.status.send_modify(|s| s.last_error = Some(error));
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("config", &self.config)
            .field("subscriptions", &self.subscriptions)
            .finish()
    }
}

// === impl AgentHandle ===

impl AgentHandle {
    /// The agent's status now.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes.
    pub fn watch_status(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Waits until the status satisfies `f`; [`AgentError::Stopped`] if the agent stops
    /// first.
    pub async fn wait_for(
        &self,
        f: impl FnMut(&AgentStatus) -> bool,
    ) -> Result<AgentStatus, AgentError> {
        let mut rx = self.status.clone();
        let status = rx.wait_for(f).await.map_err(|_| AgentError::Stopped)?;
        Ok(status.clone())
    }

    /// Messages received on the agent's subscriptions from now on. A receiver that falls
    /// more than 256 messages behind loses the oldest.
    pub fn messages(&self) -> broadcast::Receiver<Message> {
        self.messages.subscribe()
    }

    /// Queues a publish on the current session. [`AgentError::NotConnected`] if none is up.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        payload: impl Into<Bytes>,
    ) -> Result<(), AgentError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish {
            topic: topic.into(),
            qos,
            retain: false,
            payload: payload.into(),
            reply,
        })
        .await?;
        rx.await.map_err(|_| AgentError::ConnectionLost)?
    }

    /// Subscribes to `filter`, now and on every later connection. Returns when the broker
    /// has accepted it (or, while disconnected, once it is remembered).
    pub async fn subscribe(&self, filter: impl Into<String>, qos: QoS) -> Result<(), AgentError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe {
            filter: filter.into(),
            qos,
            reply,
        })
        .await?;
        rx.await.map_err(|_| AgentError::ConnectionLost)?
    }

    /// Tells the agent to disconnect and stop.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }

    async fn send(&self, cmd: Command) -> Result<(), AgentError> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| AgentError::Stopped)
    }
}

impl fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentHandle")
            .field("status", &*self.status.borrow())
            .finish()
    }
}
