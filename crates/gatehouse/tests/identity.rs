//! Identity is a certificate: clients without one, with an expired one or with one from
//! another CA are refused in the TLS handshake, while the broker and its well-behaved
//! clients carry on; the MQTT client id must be the certificate's device id.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gatehouse_pki::{DeviceCertParams, LocalCa};
use gatehouse_types::{DeviceId, TenantId};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::clients::{V4, V5, v4_options, v5_options};
use support::{Gatehouse, LAB_POLICY, Options};

/// A connection error that came from the transport (the TLS alert or the closed
/// connection), not from an MQTT CONNACK: the handshake refused the client.
fn is_handshake_refusal(e: &rumqttc::v5::ConnectionError) -> bool {
    use rumqttc::v5::ConnectionError as E;
    !matches!(
        e,
        E::ConnectionRefused(_) | E::NotConnAck(_) | E::Timeout(_)
    )
}

/// A client configuration presenting a device certificate (SAN URI of `device`, client
/// authentication) from a freshly made CA that has nothing to do with Gatehouse.
fn unrelated_ca_client(
    server_root: CertificateDer<'static>,
    device: &str,
) -> Result<Arc<rustls::ClientConfig>> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Unrelated Test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name.push(DnType::CommonName, device);
    leaf.subject_alt_names = vec![SanType::URI(
        format!("gatehouse://default/device/{device}").try_into()?,
    )];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_root)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )?;
    Ok(Arc::new(config))
}

#[tokio::test]
async fn certificates_missing_expired_or_foreign_are_refused_while_others_carry_on() -> Result<()> {
    const N: usize = 60;
    let gh = Gatehouse::start(Options::extra(LAB_POLICY)).await?;
    let addr = gh.listeners.mqtts;

    // A well-behaved pair that keeps talking throughout.
    let mut sub = V5::connect_as(addr, gh.client_tls("steady-sub")?, "steady-sub").await?;
    sub.subscribe("lab/steady", Q5::AtLeastOnce).await?;
    let publisher = V5::connect_as(addr, gh.client_tls("steady-pub")?, "steady-pub").await?;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .client
                .publish("lab/steady", Q5::AtLeastOnce, false, i.to_string())
                .await?;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        anyhow::Ok(publisher)
    });

    // No certificate at all.
    let mut anon = V5::spawn(v5_options(addr, gh.anonymous_tls()?, "anon"));
    let err = anon.refused().await?;
    ensure!(is_handshake_refusal(&err), "no certificate: {err:?}");

    // A certificate from the right CA that expired yesterday.
    let now = time::OffsetDateTime::now_utc();
    let expired = gh.ca()?.issue_device_with(
        DeviceCertParams::new(
            TenantId::default(),
            DeviceId::new("expired-dev")?,
            Duration::from_secs(3600),
        )?
        .with_window(now - time::Duration::days(2), now - time::Duration::days(1)),
    )?;
    let tls = gatehouse_pki::client_config(&[gh.ca_der()?], Some(&expired))?;
    let mut old = V5::spawn(v5_options(addr, tls, "expired-dev"));
    let err = old.refused().await?;
    ensure!(is_handshake_refusal(&err), "expired certificate: {err:?}");

    // A device certificate from another Gatehouse's CA (same CA name, other key).
    let elsewhere = tempfile::tempdir()?;
    let other_ca = LocalCa::load_or_create(&elsewhere.path().join("ca"))?;
    let rogue = other_ca.issue_device(
        &TenantId::default(),
        &DeviceId::new("steady-sub")?,
        Duration::from_secs(3600),
    )?;
    let tls = gatehouse_pki::client_config(&[gh.ca_der()?], Some(&rogue))?;
    let mut impostor = V5::spawn(v5_options(addr, tls, "steady-sub"));
    let err = impostor.refused().await?;
    ensure!(
        is_handshake_refusal(&err),
        "another Gatehouse's CA: {err:?}"
    );

    // A device certificate from an unrelated CA.
    let tls = unrelated_ca_client(gh.ca_der()?, "steady-sub")?;
    let mut intruder = V5::spawn(v5_options(addr, tls, "steady-sub"));
    let err = intruder.refused().await?;
    ensure!(is_handshake_refusal(&err), "unrelated CA: {err:?}");

    // The steady pair never noticed.
    for i in 0..N {
        let p = sub
            .publish()
            .await
            .with_context(|| format!("message {i}"))?;
        ensure!(
            p.payload.as_ref() == i.to_string().as_bytes(),
            "expected message {i}, got {p:?}"
        );
    }
    let _publisher = sender.await??;

    for reason in ["no_client_certificate", "certificate_expired", "unknown_ca"] {
        gh.wait_metric(
            &format!("gatehouse_tls_failures_total{{reason=\"{reason}\"}}"),
            1.0,
        )
        .await?;
    }
    // Every local CA has the same name today, so webpki takes the server's CA for the
    // issuer of another Gatehouse's certificate and fails on its signature
    // (`bad_signature`); with distinct CA names it would be `unknown_ca`. Either way both
    // foreign certificates are counted.
    let metrics = gh.metrics().await?;
    let foreign = support::metric_value(
        &metrics,
        "gatehouse_tls_failures_total{reason=\"bad_signature\"}",
    ) + support::metric_value(
        &metrics,
        "gatehouse_tls_failures_total{reason=\"unknown_ca\"}",
    );
    ensure!(
        foreign >= 2.0,
        "foreign certificates counted {foreign}:\n{metrics}"
    );
    let (status, body) = gh.https_get("/healthz").await?;
    ensure!(status == 200, "/healthz answered {status}: {body}");
    Ok(())
}

#[tokio::test]
async fn client_id_must_be_the_certificate_device_id() -> Result<()> {
    let gh = Gatehouse::start_default().await?;
    let addr = gh.listeners.mqtts;
    let tls = gh.client_tls("meter-1")?;

    // 5.0: CONNACK 0x85 (Client Identifier not valid).
    let mut c = V5::spawn(v5_options(addr, tls.clone(), "meter-2"));
    match c.refused().await? {
        rumqttc::v5::ConnectionError::ConnectionRefused(
            p5::ConnectReturnCode::ClientIdentifierNotValid,
        ) => {}
        other => bail!("5.0 client id mismatch: {other:?}"),
    }

    // 3.1.1: return code 2 (identifier rejected).
    let mut c = V4::spawn(v4_options(addr, tls.clone(), "meter-2"));
    match c.refused().await? {
        rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::BadClientId) => {}
        other => bail!("3.1.1 client id mismatch: {other:?}"),
    }

    // An empty client id is given the device id (and a 5.0 client is told).
    let (c, ack) = V5::connect(v5_options(addr, tls.clone(), "")).await?;
    let assigned = ack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone());
    ensure!(
        assigned.as_deref() == Some("meter-1"),
        "assigned client id {assigned:?}"
    );
    drop(c);

    // The right one is accepted.
    let (_c, ack) = V4::connect(v4_options(addr, tls, "meter-1")).await?;
    ensure!(ack.code == rumqttc::ConnectReturnCode::Success);

    gh.wait_metric(
        "gatehouse_connections_refused_total{reason=\"client_id_mismatch\"}",
        2.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn cloned_certificate_ping_pong_is_refused_after_the_takeover_limit() -> Result<()> {
    // One certificate used from two places takes its session over again and again; past
    // `takeovers_per_device_per_minute` new connections are refused with 0x9F.
    let gh = Gatehouse::start(Options::extra(
        "[limits]\ntakeovers_per_device_per_minute = 3\n",
    ))
    .await?;
    let tls = gh.client_tls("clone")?;
    let mut live = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let mut s = support::raw::tls(gh.listeners.mqtts, tls.clone()).await?;
        support::raw::send(&mut s, &support::raw::connect_v5("clone")).await?;
        let ack = support::raw::read_frame(&mut s).await?;
        codes.push(ack.connack().context("expected CONNACK")?.1);
        live.push(s);
    }
    // The first connects, three take it over, then the rest are refused.
    ensure!(
        codes == [0, 0, 0, 0, 0x9f, 0x9f],
        "CONNACK codes for six connections of one device: {codes:x?}"
    );
    gh.wait_metric(
        "gatehouse_connections_refused_total{reason=\"takeover_rate_exceeded\"}",
        2.0,
    )
    .await?;
    Ok(())
}
