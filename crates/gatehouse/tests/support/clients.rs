//! rumqttc clients (MQTT 3.1.1 and 5.0) with their event loops run in a task, and waits
//! with deadlines on what they receive.
//!
//! Dropping a client aborts its event loop task, which closes the TCP connection without
//! a DISCONNECT: the abrupt disconnect that wills are for. [`V5::disconnect`] and
//! [`V4::disconnect`] end a session politely.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{TlsConfiguration, Transport};
use rustls::ClientConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::WAIT;

fn transport(tls: Arc<ClientConfig>) -> Transport {
    Transport::tls_with_config(TlsConfiguration::Rustls(tls))
}

// === MQTT 5.0 ===

/// An MQTT 5.0 client.
pub struct V5 {
    pub client: v5::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<v5::Event, v5::ConnectionError>>,
    task: JoinHandle<()>,
    /// PUBLISH packets seen while waiting for something else.
    stash: VecDeque<p5::Publish>,
    /// The first connection error seen while waiting for something else.
    error: Option<v5::ConnectionError>,
}

/// Options of an MQTT 5.0 client: `client_id` at `addr` over mutual TLS.
pub fn v5_options(addr: SocketAddr, tls: Arc<ClientConfig>, client_id: &str) -> v5::MqttOptions {
    let mut o = v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_transport(transport(tls));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

impl V5 {
    /// Connects and waits for a successful CONNACK.
    pub async fn connect(options: v5::MqttOptions) -> Result<(Self, p5::ConnAck)> {
        let mut c = Self::spawn(options);
        let ack = c.connack().await?;
        Ok((c, ack))
    }

    /// Connects with the default options for `client_id`.
    pub async fn connect_as(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        client_id: &str,
    ) -> Result<Self> {
        Ok(Self::connect(v5_options(addr, tls, client_id)).await?.0)
    }

    /// Starts the event loop without waiting for anything.
    pub fn spawn(options: v5::MqttOptions) -> Self {
        let (client, mut eventloop) = v5::AsyncClient::new(options, 1000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    // Polling again after an error would reconnect.
                    return;
                }
            }
        });
        Self {
            client,
            events,
            task,
            stash: VecDeque::new(),
            error: None,
        }
    }

    /// The next event, or the connection error that ended the loop.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Result<v5::Event> {
        if let Some(e) = self.error.take() {
            bail!("connection error: {e}");
        }
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Err(_) => bail!("timed out waiting for an MQTT event"),
            Ok(None) => bail!("the event loop has stopped"),
            Ok(Some(Ok(ev))) => Ok(ev),
            Ok(Some(Err(e))) => {
                let text = format!("connection error: {e:?}");
                self.error = Some(e);
                bail!(text)
            }
        }
    }

    /// Waits for the CONNACK; a refusal is an error naming the code.
    pub async fn connack(&mut self) -> Result<p5::ConnAck> {
        self.wait("CONNACK", |p| match p {
            p5::Packet::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the connection attempt to be refused, returning the error.
    pub async fn refused(&mut self) -> Result<v5::ConnectionError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.error.take() {
                return Ok(e);
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!("timed out waiting for the connection to be refused"),
                Ok(None) => bail!("the event loop stopped without an error"),
                Ok(Some(Err(e))) => return Ok(e),
                Ok(Some(Ok(v5::Event::Incoming(p5::Packet::ConnAck(a))))) => {
                    bail!("expected a refusal, got {a:?}")
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Waits for an incoming packet that `f` picks. PUBLISH packets that arrive
    /// meanwhile are kept for [`V5::publish`].
    pub async fn wait<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&p5::Packet) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = self
                .next(deadline)
                .await
                .map_err(|e| anyhow!("waiting for {what}: {e}"))?;
            if let v5::Event::Incoming(p) = ev {
                if let Some(t) = f(&p) {
                    return Ok(t);
                }
                if let p5::Packet::Publish(p) = p {
                    self.stash.push_back(p);
                }
            }
        }
    }

    /// Waits for the SUBACK and returns its reason codes.
    pub async fn suback(&mut self) -> Result<Vec<p5::SubscribeReasonCode>> {
        self.wait("SUBACK", |p| match p {
            p5::Packet::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes and checks the SUBACK grants it.
    pub async fn subscribe(&mut self, filter: &str, qos: v5::mqttbytes::QoS) -> Result<()> {
        self.client.subscribe(filter, qos).await?;
        self.expect_granted().await
    }

    /// Subscribes with full filter options and properties and checks the SUBACK.
    pub async fn subscribe_filter(
        &mut self,
        filter: p5::Filter,
        properties: Option<p5::SubscribeProperties>,
    ) -> Result<()> {
        match properties {
            Some(props) => {
                self.client
                    .subscribe_many_with_properties([filter], props)
                    .await?
            }
            None => self.client.subscribe_many([filter]).await?,
        }
        self.expect_granted().await
    }

    async fn expect_granted(&mut self) -> Result<()> {
        let codes = self.suback().await?;
        if codes
            .iter()
            .all(|c| matches!(c, p5::SubscribeReasonCode::Success(_)))
        {
            Ok(())
        } else {
            bail!("subscription refused: {codes:?}")
        }
    }

    /// Waits for the next PUBACK.
    pub async fn puback(&mut self) -> Result<p5::PubAck> {
        self.wait("PUBACK", |p| match p {
            p5::Packet::PubAck(a) => Some(a.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for the next PUBLISH.
    pub async fn publish(&mut self) -> Result<p5::Publish> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(p);
        }
        self.wait("PUBLISH", |p| match p {
            p5::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for PUBLISH packets until one with `payload` arrives; returns those before it.
    pub async fn publishes_until(&mut self, payload: &[u8]) -> Result<Vec<p5::Publish>> {
        let mut before = Vec::new();
        loop {
            let p = self.publish().await?;
            if p.payload.as_ref() == payload {
                return Ok(before);
            }
            before.push(p);
        }
    }

    /// Waits for the server to end the session; returns the DISCONNECT reason code, or
    /// `None` when the connection closed without one.
    pub async fn server_disconnect(&mut self) -> Result<Option<p5::DisconnectReasonCode>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let err = match self.error.take() {
            Some(e) => e,
            None => loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Err(_) => bail!("timed out waiting for the server to disconnect"),
                    Ok(None) => bail!("the event loop stopped without an error"),
                    Ok(Some(Err(e))) => break e,
                    Ok(Some(Ok(v5::Event::Incoming(p5::Packet::Publish(p))))) => {
                        self.stash.push_back(p)
                    }
                    Ok(Some(Ok(_))) => {}
                }
            },
        };
        match &err {
            v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
                reason_code,
                ..
            }) => Ok(Some(*reason_code)),
            v5::ConnectionError::Io(_)
            | v5::ConnectionError::MqttState(v5::StateError::Io(_))
            | v5::ConnectionError::MqttState(v5::StateError::ConnectionAborted) => {
                eprintln!("connection closed without DISCONNECT: {err:?}");
                Ok(None)
            }
            other => bail!("unexpected connection error: {other:?}"),
        }
    }

    /// Checks that no PUBLISH arrives for `quiet` (and that the connection stays up).
    pub async fn no_publish_for(&mut self, quiet: Duration) -> Result<()> {
        if let Some(p) = self.stash.pop_front() {
            bail!("unexpected PUBLISH {p:?}");
        }
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(()),
                Ok(None) => bail!("the event loop stopped"),
                Ok(Some(Err(e))) => bail!("connection error: {e:?}"),
                Ok(Some(Ok(v5::Event::Incoming(p5::Packet::Publish(p))))) => {
                    bail!("unexpected PUBLISH on {:?}: {:?}", p.topic, p.payload)
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends DISCONNECT and waits for the server to close the connection.
    pub async fn disconnect(mut self) -> Result<()> {
        self.client.disconnect().await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!("timed out disconnecting"),
                Ok(None) | Ok(Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

impl Drop for V5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === MQTT 3.1.1 ===

/// An MQTT 3.1.1 client.
pub struct V4 {
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Result<rumqttc::Event, rumqttc::ConnectionError>>,
    task: JoinHandle<()>,
    stash: VecDeque<rumqttc::Publish>,
    error: Option<rumqttc::ConnectionError>,
}

/// Options of an MQTT 3.1.1 client.
pub fn v4_options(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    client_id: &str,
) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_transport(transport(tls));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

impl V4 {
    /// Connects and waits for a successful CONNACK.
    pub async fn connect(options: rumqttc::MqttOptions) -> Result<(Self, rumqttc::ConnAck)> {
        let mut c = Self::spawn(options);
        let ack = c
            .wait("CONNACK", |p| match p {
                rumqttc::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await?;
        Ok((c, ack))
    }

    /// Connects with the default options for `client_id`.
    pub async fn connect_as(
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        client_id: &str,
    ) -> Result<Self> {
        Ok(Self::connect(v4_options(addr, tls, client_id)).await?.0)
    }

    /// Starts the event loop without waiting for anything.
    pub fn spawn(options: rumqttc::MqttOptions) -> Self {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 1000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    return;
                }
            }
        });
        Self {
            client,
            events,
            task,
            stash: VecDeque::new(),
            error: None,
        }
    }

    /// Waits for the connection attempt to be refused, returning the error.
    pub async fn refused(&mut self) -> Result<rumqttc::ConnectionError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.error.take() {
                return Ok(e);
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!("timed out waiting for the connection to be refused"),
                Ok(None) => bail!("the event loop stopped without an error"),
                Ok(Some(Err(e))) => return Ok(e),
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))))) => {
                    bail!("expected a refusal, got {a:?}")
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Waits for an incoming packet that `f` picks, keeping PUBLISH packets meanwhile.
    pub async fn wait<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&rumqttc::Packet) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.error.take() {
                bail!("waiting for {what}: connection error: {e:?}");
            }
            let ev = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!("timed out waiting for {what}"),
                Ok(None) => bail!("waiting for {what}: the event loop has stopped"),
                Ok(Some(Err(e))) => {
                    let text = format!("waiting for {what}: connection error: {e:?}");
                    self.error = Some(e);
                    bail!(text)
                }
                Ok(Some(Ok(ev))) => ev,
            };
            if let rumqttc::Event::Incoming(p) = ev {
                if let Some(t) = f(&p) {
                    return Ok(t);
                }
                if let rumqttc::Packet::Publish(p) = p {
                    self.stash.push_back(p);
                }
            }
        }
    }

    /// Waits for the SUBACK and returns its return codes.
    pub async fn suback(&mut self) -> Result<Vec<rumqttc::SubscribeReasonCode>> {
        self.wait("SUBACK", |p| match p {
            rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Subscribes and checks the SUBACK grants it.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> Result<()> {
        self.client.subscribe(filter, qos).await?;
        let codes = self.suback().await?;
        if codes
            .iter()
            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)))
        {
            Ok(())
        } else {
            bail!("subscription refused: {codes:?}")
        }
    }

    /// Waits for the next PUBLISH.
    pub async fn publish(&mut self) -> Result<rumqttc::Publish> {
        if let Some(p) = self.stash.pop_front() {
            return Ok(p);
        }
        self.wait("PUBLISH", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for PUBLISH packets until one with `payload` arrives; returns those before it.
    pub async fn publishes_until(&mut self, payload: &[u8]) -> Result<Vec<rumqttc::Publish>> {
        let mut before = Vec::new();
        loop {
            let p = self.publish().await?;
            if p.payload.as_ref() == payload {
                return Ok(before);
            }
            before.push(p);
        }
    }

    /// Waits for the connection to end (3.1.1 servers close without a DISCONNECT).
    pub async fn closed(&mut self) -> Result<rumqttc::ConnectionError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        if let Some(e) = self.error.take() {
            return Ok(e);
        }
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!("timed out waiting for the connection to close"),
                Ok(None) => bail!("the event loop stopped without an error"),
                Ok(Some(Err(e))) => return Ok(e),
                Ok(Some(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))))) => {
                    self.stash.push_back(p)
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends DISCONNECT and waits for the server to close the connection.
    pub async fn disconnect(mut self) -> Result<()> {
        self.client.disconnect().await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => bail!("timed out disconnecting"),
                Ok(None) | Ok(Some(Err(_))) => return Ok(()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

impl Drop for V4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
