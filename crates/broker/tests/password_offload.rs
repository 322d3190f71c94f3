//! Threat 17: password checks are expensive on purpose, so they must never run on the
//! async workers that serve every other connection. Here each check blocks until the test
//! lets it go; while more checks are stuck than the runtime has workers, a mutual-TLS
//! device must still connect, subscribe and get its own message back. Were the checks run
//! on the workers, nothing else would move and the round trip would time out.

mod support;

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{Context, Result, ensure};
use gatehouse_broker::{
    AuthError, Authenticator, BrokerConfig, PasswordCheck, StaticPolicy, TopicPattern,
};
use gatehouse_types::{Identity, TlsFacts};
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::clients::V5;
use support::{CertAuth, TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Certificates as usual; every password check blocks until `open` is set.
#[derive(Debug, Default)]
struct StuckPasswords {
    started: AtomicUsize,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl StuckPasswords {
    fn release(&self) {
        let (open, cv) = &*self.gate;
        *open.lock().expect("lock") = true;
        cv.notify_all();
    }
}

impl Authenticator for StuckPasswords {
    fn identify_tls(
        &self,
        conn: &rustls::ServerConnection,
    ) -> Result<(Identity, TlsFacts), AuthError> {
        CertAuth.identify_tls(conn)
    }

    fn password_check(
        &self,
        _username: Option<&str>,
        _password: Option<&[u8]>,
    ) -> Result<PasswordCheck, AuthError> {
        let gate = Arc::clone(&self.gate);
        self.started.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(move || {
            let (open, cv) = &*gate;
            let mut open = open.lock().expect("lock");
            while !*open {
                open = cv.wait(open).expect("wait");
            }
            Err(AuthError(Cow::Borrowed("bad_password")))
        }))
    }
}

/// A 3.1.1 CONNECT with a user name and password.
fn connect_with_password(client_id: &str) -> Vec<u8> {
    let field = |s: &[u8]| {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    };
    let mut body = field(b"MQTT");
    body.extend([4, 0b1100_0010, 0, 60]);
    body.extend(field(client_id.as_bytes()));
    body.extend(field(b"meter"));
    body.extend(field(b"wrong-password"));
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_never_block_the_async_workers() -> Result<()> {
    let mut policy = StaticPolicy::default_policy();
    policy.publish.push(TopicPattern::new("lab/#")?);
    policy.subscribe.push(TopicPattern::new("lab/#")?);
    let auth = Arc::new(StuckPasswords::default());
    let tb = TestBroker::start_with_auth(BrokerConfig::default(), Arc::new(policy), auth.clone())
        .await?;
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plain_addr = plain.local_addr()?;
    tb.broker.serve_plain(plain);

    // Four times as many stuck checks as there are workers.
    const STUCK: usize = 8;
    let mut waiting = Vec::new();
    for i in 0..STUCK {
        let mut s = TcpStream::connect(plain_addr).await?;
        s.write_all(&connect_with_password(&format!("meter-{i}")))
            .await?;
        waiting.push(s);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while auth.started.load(Ordering::SeqCst) < STUCK {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "only {} password checks started",
            auth.started.load(Ordering::SeqCst)
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // Every check is stuck: a certificate device is served all the same.
    let mut dev = V5::connect_as(tb.addr, tb.client_tls("sensor-1")?, "sensor-1")
        .await
        .context("an mTLS device connects while password checks are stuck")?;
    dev.subscribe("lab/echo", Q5::AtLeastOnce).await?;
    dev.client
        .publish("lab/echo", Q5::AtLeastOnce, false, "still here")
        .await?;
    let p = dev
        .publish()
        .await
        .context("round trip while checks are stuck")?;
    ensure!(p.payload.as_ref() == b"still here", "got {p:?}");

    // Let the checks finish: each refused connection gets its CONNACK (0x04: bad user
    // name or password).
    auth.release();
    for mut s in waiting {
        let mut ack = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut ack))
            .await
            .context("CONNACK after the check")??;
        ensure!(ack == [0x20, 2, 0, 4], "CONNACK {ack:?}");
    }
    Ok(())
}
