//! Mutual TLS over real TCP sockets on 127.0.0.1 with tokio-rustls, using the configs this
//! crate builds: the properties the MQTTS listener relies on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_pki::{
    ClientAuth, DeviceCertParams, IssuedCert, LocalCa, ServerTlsBuilder, client_config,
    identity_from_cert, server_config, tls_facts,
};
use gatehouse_types::{DeviceId, IdentitySource, TenantId, TlsFacts};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const HOUR: Duration = Duration::from_secs(3600);
const LIMIT: Duration = Duration::from_secs(20);

/// What the server side saw of a completed handshake.
struct Accepted {
    peer: Option<CertificateDer<'static>>,
    facts: TlsFacts,
}

/// One connection: the server's handshake result and whether the client read the server's
/// greeting after its own handshake.
struct Outcome {
    server: Result<Accepted, std::io::Error>,
    client_got_greeting: bool,
    client_error: Option<String>,
}

impl Outcome {
    /// The server's handshake error, as text.
    fn server_error(&self) -> String {
        match &self.server {
            Ok(_) => String::new(),
            Err(e) => format!("{e:?}"),
        }
    }
}

async fn connect_once(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let (_, conn) = tls.get_ref();
        let accepted = Accepted {
            peer: conn.peer_certificates().and_then(|c| c.first()).cloned(),
            facts: tls_facts(conn),
        };
        tls.write_all(b"hello").await?;
        tls.shutdown().await?;
        Ok::<_, std::io::Error>(accepted)
    });

    let connector = TlsConnector::from(client);
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf == b"hello")
    };
    let (client_got_greeting, client_error) = match tokio::time::timeout(LIMIT, client_side).await?
    {
        Ok(greeted) => (greeted, None),
        Err(e) => (false, Some(e.to_string())),
    };
    let server = tokio::time::timeout(LIMIT, server_task).await??;
    Ok(Outcome {
        server,
        client_got_greeting,
        client_error,
    })
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("valid name")
}

struct Fixture {
    _dir: tempfile::TempDir,
    ca: LocalCa,
    server: IssuedCert,
}

fn fixture() -> Result<Fixture, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(&dir.path().join("ca"))?;
    let server = ca.issue_server(
        &["localhost".to_owned(), "gatehouse.test".to_owned()],
        &[
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
        HOUR,
    )?;
    Ok(Fixture {
        _dir: dir,
        ca,
        server,
    })
}

fn ids(tenant: &str, device: &str) -> (TenantId, DeviceId) {
    (
        TenantId::new(tenant).expect("valid tenant"),
        DeviceId::new(device).expect("valid device"),
    )
}

#[tokio::test]
async fn valid_device_cert_completes_mutual_tls_and_names_the_device() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "thermo-0001");
    let dev = f.ca.issue_device(&tenant, &device, HOUR)?;

    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let client = client_config(&[f.ca.cert_der()], Some(&dev))?;
    let out = connect_once(server, client, localhost()).await?;

    let accepted = out.server?;
    assert!(out.client_got_greeting);
    let peer = accepted.peer.expect("client certificate");
    let identity = identity_from_cert(&peer)?;
    assert_eq!(identity.tenant, tenant);
    assert_eq!(identity.device, device);
    assert_eq!(identity.source, IdentitySource::CertificateSanUri);

    let facts = accepted.facts;
    assert_eq!(facts.version, "TLSv1_3");
    assert!(facts.cipher.starts_with("TLS13_"), "{}", facts.cipher);
    assert_eq!(facts.cert_serial, dev.serial_hex);
    assert_eq!(facts.cert_issuer, "CN=Gatehouse Issuing CA 1,O=Gatehouse");
    assert_eq!(facts.cert_not_after, dev.not_after.unix_timestamp());
    assert_eq!(facts.cert_key, "ecdsa-p256");
    Ok(())
}

#[tokio::test]
async fn tls12_client_with_device_cert_is_accepted() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "old-stack");
    let dev = f.ca.issue_device(&tenant, &device, HOUR)?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.ca.cert_der())?;
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![dev.cert_der()?], dev.key_der()?)?;

    // The client sends its leaf alone (as mosquitto does): the issuing CA must be an anchor.
    let server = server_config(
        &f.server,
        &f.ca.client_trust_anchors(),
        ClientAuth::Required,
    )?;
    let out = connect_once(server, Arc::new(client), localhost()).await?;
    let facts = out.server?.facts;
    assert!(out.client_got_greeting);
    assert_eq!(facts.version, "TLSv1_2");
    assert!(
        facts.cipher.starts_with("TLS_ECDHE_ECDSA_"),
        "{}",
        facts.cipher
    );
    Ok(())
}

#[tokio::test]
async fn connection_without_client_cert_is_refused() -> TestResult {
    let f = fixture()?;
    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let client = client_config(&[f.ca.cert_der()], None)?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(
        out.server.is_err(),
        "server accepted a client without certificate"
    );
    assert!(
        out.server_error().contains("NoCertificatesPresented"),
        "{}",
        out.server_error()
    );
    assert!(!out.client_got_greeting);
    Ok(())
}

#[tokio::test]
async fn expired_device_cert_is_refused() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "expired-1");
    let now = OffsetDateTime::now_utc();
    let dev =
        f.ca.issue_device_with(DeviceCertParams::new(tenant, device, HOUR)?.with_window(
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        ))?;
    assert!(dev.not_after < now);

    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let client = client_config(&[f.ca.cert_der()], Some(&dev))?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(
        out.server.is_err(),
        "server accepted an expired certificate"
    );
    assert!(
        out.server_error().contains("Expired"),
        "{}",
        out.server_error()
    );
    assert!(!out.client_got_greeting);
    Ok(())
}

#[tokio::test]
async fn not_yet_valid_device_cert_is_refused() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "future-1");
    let now = OffsetDateTime::now_utc();
    let dev =
        f.ca.issue_device_with(DeviceCertParams::new(tenant, device, HOUR)?.with_window(
            now + time::Duration::days(1),
            now + time::Duration::days(30),
        ))?;
    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let client = client_config(&[f.ca.cert_der()], Some(&dev))?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(
        out.server.is_err(),
        "server accepted a not-yet-valid certificate"
    );
    assert!(
        out.server_error().contains("NotValidYet"),
        "{}",
        out.server_error()
    );
    Ok(())
}

#[tokio::test]
async fn device_cert_from_another_ca_is_refused() -> TestResult {
    let f = fixture()?;
    let other_dir = tempfile::tempdir()?;
    let other = LocalCa::load_or_create(other_dir.path())?;
    let (tenant, device) = ids("acme", "thermo-0001");
    let rogue = other.issue_device(&tenant, &device, HOUR)?;

    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    // The rogue device trusts the real server, so only the server's check can stop it.
    let client = client_config(&[f.ca.cert_der()], Some(&rogue))?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(
        out.server.is_err(),
        "server accepted a certificate from an unknown CA"
    );
    // Every local CA has the same subject, so webpki finds a candidate issuer by name and
    // the signature check is what fails.
    assert!(
        out.server_error().contains("BadSignature"),
        "{}",
        out.server_error()
    );
    assert!(!out.client_got_greeting);
    Ok(())
}

#[tokio::test]
async fn device_cert_from_a_foreign_ca_is_refused_as_unknown_issuer() -> TestResult {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

    let f = fixture()?;
    let foreign_key = KeyPair::generate()?;
    let mut foreign_params = CertificateParams::default();
    foreign_params
        .distinguished_name
        .push(DnType::CommonName, "Someone Else's CA");
    foreign_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let foreign = Issuer::new(foreign_params, foreign_key);
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::default();
    leaf_params.subject_alt_names = vec![SanType::URI(
        "gatehouse://acme/device/thermo-0001".try_into()?,
    )];
    let leaf = leaf_params.signed_by(&leaf_key, &foreign)?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.ca.cert_der())?;
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()).into(),
            )?;
    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let out = connect_once(server, Arc::new(client), localhost()).await?;
    assert!(
        out.server.is_err(),
        "server accepted a certificate from a foreign CA"
    );
    assert!(
        out.server_error().contains("UnknownIssuer"),
        "{}",
        out.server_error()
    );
    Ok(())
}

#[tokio::test]
async fn server_cert_cannot_authenticate_a_device() -> TestResult {
    let f = fixture()?;
    // A valid certificate of the right CA, but for serverAuth only.
    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let client = client_config(&[f.ca.cert_der()], Some(&f.server))?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(
        out.server.is_err(),
        "server accepted a serverAuth-only certificate"
    );
    assert!(
        out.server_error().contains("InvalidPurpose"),
        "{}",
        out.server_error()
    );
    Ok(())
}

#[tokio::test]
async fn device_cert_cannot_serve_tls() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "localhost");
    let dev = f.ca.issue_device(&tenant, &device, HOUR)?;
    let server = server_config(&dev, &[f.ca.cert_der()], ClientAuth::None)?;
    let client = client_config(&[f.ca.cert_der()], None)?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(
        !out.client_got_greeting,
        "client accepted a device certificate as server"
    );
    let client_error = out.client_error.unwrap_or_default();
    assert!(
        client_error.contains("extended key usage"),
        "{client_error}"
    );
    Ok(())
}

#[tokio::test]
async fn client_refuses_server_of_another_ca() -> TestResult {
    let f = fixture()?;
    let other_dir = tempfile::tempdir()?;
    let other = LocalCa::load_or_create(other_dir.path())?;
    let (tenant, device) = ids("acme", "thermo-0001");
    let dev = f.ca.issue_device(&tenant, &device, HOUR)?;

    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let client = client_config(&[other.cert_der()], Some(&dev))?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(!out.client_got_greeting);
    assert!(out.server.is_err());
    Ok(())
}

#[tokio::test]
async fn server_cert_is_valid_for_its_ip_addresses() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "thermo-0001");
    let dev = f.ca.issue_device(&tenant, &device, HOUR)?;
    let server = server_config(&f.server, &[f.ca.cert_der()], ClientAuth::Required)?;
    let client = client_config(&[f.ca.cert_der()], Some(&dev))?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let out = connect_once(server.clone(), client.clone(), name).await?;
    assert!(out.server.is_ok() && out.client_got_greeting);

    let wrong = ServerName::try_from("not-in-the-cert.example")?;
    let out = connect_once(server, client, wrong).await?;
    assert!(
        !out.client_got_greeting,
        "client accepted a name the certificate lacks"
    );
    let client_error = out.client_error.unwrap_or_default();
    assert!(
        client_error.contains("not valid for name"),
        "{client_error}"
    );
    Ok(())
}

#[tokio::test]
async fn optional_client_auth_accepts_anonymous_but_checks_presented_certs() -> TestResult {
    let f = fixture()?;
    let server = ServerTlsBuilder::from_issued(&f.server)?
        .client_roots(&[f.ca.cert_der()])
        .client_auth(ClientAuth::Optional)
        .build()?;

    let anonymous = client_config(&[f.ca.cert_der()], None)?;
    let out = connect_once(server.clone(), anonymous, localhost()).await?;
    assert!(out.client_got_greeting);
    assert!(out.server?.peer.is_none());

    let other_dir = tempfile::tempdir()?;
    let other = LocalCa::load_or_create(other_dir.path())?;
    let (tenant, device) = ids("acme", "rogue");
    let rogue = other.issue_device(&tenant, &device, HOUR)?;
    let client = client_config(&[f.ca.cert_der()], Some(&rogue))?;
    let out = connect_once(server, client, localhost()).await?;
    assert!(
        out.server.is_err(),
        "optional client auth accepted a rogue certificate"
    );
    Ok(())
}

#[tokio::test]
async fn alpn_is_negotiated() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "thermo-0001");
    let dev = f.ca.issue_device(&tenant, &device, HOUR)?;
    let server = ServerTlsBuilder::from_issued(&f.server)?
        .client_roots(&[f.ca.cert_der()])
        .alpn_protocols(vec![b"mqtt".to_vec()])
        .crls(Vec::new())
        .build()?;
    let mut client = (*client_config(&[f.ca.cert_der()], Some(&dev))?).clone();
    client.alpn_protocols = vec![b"mqtt".to_vec()];
    let out = connect_once(server, Arc::new(client), localhost()).await?;
    assert!(out.server.is_ok() && out.client_got_greeting);
    Ok(())
}

#[test]
fn required_client_auth_without_roots_is_a_config_error() -> TestResult {
    let f = fixture()?;
    let err = server_config(&f.server, &[], ClientAuth::Required).expect_err("no roots");
    assert!(matches!(err, gatehouse_pki::TlsError::NoClientRoots));
    assert!(server_config(&f.server, &[], ClientAuth::None).is_ok());
    Ok(())
}

#[test]
fn server_key_must_match_its_certificate() -> TestResult {
    let f = fixture()?;
    let (tenant, device) = ids("acme", "thermo-0001");
    let dev = f.ca.issue_device(&tenant, &device, HOUR)?;
    let result = ServerTlsBuilder::new(vec![f.server.cert_der()?], dev.key_der()?)
        .client_roots(&[f.ca.cert_der()])
        .build();
    assert!(
        result.is_err(),
        "a key that is not the certificate's was accepted"
    );
    Ok(())
}
