//! The EST client against a scripted HTTPS server on 127.0.0.1:0: what it sends, and what
//! it makes of bad answers (too large, too slow, wrong type, garbage, refusals). Every bad
//! answer must be an `EstError`, never a panic or a hang.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gatehouse_agent::est::pkcs7::encode_base64_body;
use gatehouse_agent::{DeviceKey, EstClient, EstError, EstLimits};
use gatehouse_pki::{ClientAuth, LocalCa, ServerTlsBuilder, pkcs7_certs_only};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type TestResult = Result<(), Box<dyn std::error::Error>>;
/// What a bad answer must turn into.
type Expect = fn(&EstError) -> bool;

/// What the scripted server answers.
#[derive(Clone)]
enum Answer {
    /// Raw HTTP response bytes.
    Raw(Vec<u8>),
    /// Read the request, then say nothing.
    Silence,
}

struct Fixture {
    _dir: tempfile::TempDir,
    ca: LocalCa,
    url: String,
    /// The request heads the server received.
    requests: mpsc::UnboundedReceiver<String>,
}

/// A server that answers every request with `answer`.
async fn serve(answer: Answer) -> Result<Fixture, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(dir.path())?;
    let server = ca.issue_server(
        &["localhost".to_owned()],
        &["127.0.0.1".parse()?],
        Duration::from_secs(3600),
    )?;
    let tls = ServerTlsBuilder::from_issued(&server)?
        .client_roots(&ca.client_trust_anchors())
        .client_auth(ClientAuth::Optional)
        .alpn_protocols(vec![b"http/1.1".to_vec()])
        .build()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://{}", listener.local_addr()?);
    let (tx, requests) = mpsc::unbounded_channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let answer = answer.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = tls.read_exact(&mut body).await;
                let _ = tx.send(format!("{head}{}", String::from_utf8_lossy(&body)));
                match answer {
                    Answer::Raw(bytes) => {
                        let _ = tls.write_all(&bytes).await;
                        let _ = tls.shutdown().await;
                    }
                    Answer::Silence => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    Ok(Fixture {
        _dir: dir,
        ca,
        url,
        requests,
    })
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Answer {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Answer::Raw(out)
}

fn client(f: &Fixture, limits: EstLimits) -> Result<EstClient, EstError> {
    EstClient::with_limits(&f.url, f.ca.client_trust_anchors(), limits)
}

#[tokio::test]
async fn cacerts_reads_a_wrapped_base64_bundle() -> TestResult {
    let dir = tempfile::tempdir()?;
    let other = LocalCa::load_or_create(dir.path())?;
    let bundle = pkcs7_certs_only(&other.client_trust_anchors());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bundle);
    let wrapped: String = b64
        .as_bytes()
        .chunks(64)
        .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
        .collect();
    let mut f = serve(response(
        "200 OK",
        "application/pkcs7-mime; smime-type=certs-only",
        wrapped.as_bytes(),
    ))
    .await?;
    let certs = client(&f, EstLimits::default())?.cacerts().await?;
    assert_eq!(certs, other.client_trust_anchors());
    let head = f.requests.recv().await.ok_or("no request")?;
    assert!(
        head.starts_with("GET /.well-known/est/cacerts HTTP/1.1\r\n"),
        "{head}"
    );
    Ok(())
}

#[tokio::test]
async fn token_enrollment_sends_basic_credentials_and_a_base64_csr() -> TestResult {
    let dir = tempfile::tempdir()?;
    let other = LocalCa::load_or_create(dir.path())?;
    let body = encode_base64_body(&pkcs7_certs_only(&[other.cert_der()]));
    let mut f = serve(response(
        "200 OK",
        "application/pkcs7-mime",
        body.as_bytes(),
    ))
    .await?;
    let csr = DeviceKey::generate()?.csr(&gatehouse_agent::identity::CsrSubject::Empty)?;
    let certs = client(&f, EstLimits::default())?
        .simpleenroll_token(&csr, "tok-1", "s3cret")
        .await?;
    assert_eq!(certs, vec![other.cert_der()]);
    let request = f.requests.recv().await.ok_or("no request")?;
    let lower = request.to_ascii_lowercase();
    assert!(request.starts_with("POST /.well-known/est/simpleenroll HTTP/1.1\r\n"));
    assert!(
        lower.contains("content-type: application/pkcs10\r\n"),
        "{request}"
    );
    assert!(
        lower.contains("content-transfer-encoding: base64\r\n"),
        "{request}"
    );
    // base64("tok-1:s3cret")
    assert!(request.contains("Basic dG9rLTE6czNjcmV0\r\n"), "{request}");
    assert!(request.ends_with(&encode_base64_body(&csr)), "{request}");
    Ok(())
}

#[tokio::test]
async fn refusal_keeps_status_and_reason() -> TestResult {
    let f = serve(response(
        "403 Forbidden",
        "text/plain",
        b"refused: token used up\n",
    ))
    .await?;
    let csr = DeviceKey::generate()?.csr(&gatehouse_agent::identity::CsrSubject::Empty)?;
    match client(&f, EstLimits::default())?
        .simpleenroll_token(&csr, "t", "s")
        .await
    {
        Err(EstError::Refused { status, message }) => {
            assert_eq!(status, 403);
            assert_eq!(message, "refused: token used up");
        }
        other => return Err(format!("{other:?}").into()),
    }
    Ok(())
}

#[tokio::test]
async fn oversize_responses_are_refused() -> TestResult {
    let big = vec![b'A'; 4096];
    let f = serve(response("200 OK", "application/pkcs7-mime", &big)).await?;
    let limits = EstLimits::default().with_max_response_bytes(1024);
    assert!(matches!(
        client(&f, limits)?.cacerts().await,
        Err(EstError::ResponseTooLarge { limit: 1024 })
    ));

    // Without a declared length too (chunked).
    let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..8 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'A'; 0x200]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let f = serve(Answer::Raw(raw)).await?;
    assert!(matches!(
        client(&f, limits)?.cacerts().await,
        Err(EstError::ResponseTooLarge { limit: 1024 })
    ));
    Ok(())
}

#[tokio::test]
async fn a_silent_server_times_out() -> TestResult {
    let f = serve(Answer::Silence).await?;
    let limits = EstLimits::default().with_request_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    assert!(matches!(
        client(&f, limits)?.cacerts().await,
        Err(EstError::Timeout(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[tokio::test]
async fn bad_answers_are_errors() -> TestResult {
    let cases: Vec<(Answer, Expect)> = vec![
        (response("200 OK", "text/html", b"<html>"), |e| {
            matches!(e, EstError::UnexpectedContentType { .. })
        }),
        (
            response("200 OK", "application/pkcs7-mime", b"not base64 !!"),
            |e| matches!(e, EstError::Body(_)),
        ),
        (response("200 OK", "application/pkcs7-mime", b"AAAA"), |e| {
            matches!(e, EstError::Body(_))
        }),
        (
            response(
                "200 OK",
                "application/pkcs7-mime",
                encode_base64_body(&pkcs7_certs_only(&[])).as_bytes(),
            ),
            |e| matches!(e, EstError::NoCertificate),
        ),
        (Answer::Raw(b"garbage\r\n\r\n".to_vec()), |e| {
            matches!(e, EstError::Http(_))
        }),
        (Answer::Raw(Vec::new()), |e| matches!(e, EstError::Http(_))),
        (
            response("503 Service Unavailable", "text/plain", b"busy"),
            |e| e.is_transient(),
        ),
    ];
    for (answer, expected) in cases {
        let f = serve(answer).await?;
        let result = client(&f, EstLimits::default())?.cacerts().await;
        match result {
            Err(e) if expected(&e) => {}
            other => return Err(format!("unexpected: {other:?}").into()),
        }
    }
    Ok(())
}
