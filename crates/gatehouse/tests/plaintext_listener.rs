//! No plaintext MQTT unless configured; when it is, only legacy user names and passwords
//! from the configuration get in.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use rumqttc::v5::mqttbytes::QoS as Q5;
use support::clients::V5;
use support::{Gatehouse, Options, WAIT, have_program, raw};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::process::Command;

/// TCP ports the process `pid` listens on (Linux: its socket inodes matched against
/// the kernel's listening sockets).
fn listening_ports(pid: u32) -> Result<BTreeSet<u16>> {
    let mut inodes = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let target = std::fs::read_link(fd?.path()).unwrap_or_default();
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
        {
            inodes.insert(inode.to_owned());
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is column 1 (ADDR:PORT in hex), st is column 3 (0A = LISTEN),
            // inode is column 9.
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().context("local address")?;
                ports.insert(u16::from_str_radix(port, 16)?);
            }
        }
    }
    Ok(ports)
}

#[tokio::test]
async fn plaintext_listener_is_off_by_default() -> Result<()> {
    // The built-in defaults have no plain listener.
    let out = Command::new(support::binary())
        .args(["config", "check"])
        .env_remove("GATEHOUSE_CONFIG")
        .output()
        .await?;
    ensure!(out.status.success(), "gatehouse config check failed");
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("plain MQTT off"),
        "default settings have a plain listener:\n{text}"
    );

    // A server whose configuration only moves the ports.
    let gh = Gatehouse::start_default().await?;
    let listeners = &gh.listeners.json;
    ensure!(
        listeners.get("mqtt") == Some(&serde_json::Value::Null),
        "listeners.json: {listeners}"
    );
    ensure!(gh.listeners.mqtt.is_none());
    let pid = gh.pid().context("server pid")?;
    let ports = listening_ports(pid)?;
    let expected = BTreeSet::from([gh.listeners.mqtts.port(), gh.listeners.https.port()]);
    ensure!(
        ports == expected,
        "gatehouse listens on {ports:?}; only MQTTS and HTTPS ({expected:?}) were expected"
    );
    // The MQTTS port does not speak plain MQTT either: a plaintext CONNECT gets no CONNACK.
    let mut tcp = TcpStream::connect(gh.listeners.mqtts).await?;
    tcp.write_all(&raw::connect_v311(
        "anyone",
        Some("anyone"),
        Some("password"),
    ))
    .await?;
    let closed = raw::read_until_closed(&mut tcp, WAIT).await?;
    ensure!(
        !closed.bytes.starts_with(&[0x20]),
        "the TLS listener answered a plaintext CONNECT with {:?}",
        closed.bytes
    );
    Ok(())
}

async fn hash_password(password: &str) -> Result<String> {
    let mut child = Command::new(support::binary())
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(format!("{password}\n").as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    ensure!(out.status.success(), "gatehouse passwd failed");
    let hash = String::from_utf8(out.stdout)?.trim().to_owned();
    ensure!(hash.starts_with("$argon2"), "not an Argon2 hash: {hash}");
    Ok(hash)
}

#[tokio::test]
async fn legacy_users_get_in_on_the_plain_listener_and_wrong_passwords_do_not() -> Result<()> {
    let hash = hash_password("s3cret-meter").await?;
    let gh = Gatehouse::start(Options {
        plain: true,
        extra: format!(
            "[[policy.device]]\n\
             id = \"monitor\"\n\
             subscribe = [\"devices/+/#\"]\n\
             [[legacy.users]]\n\
             username = \"legacy-1\"\n\
             password_hash = '{hash}'\n"
        ),
        no_operator: false,
    })
    .await?;
    let plain = gh
        .listeners
        .mqtt
        .context("no plain listener in listeners.json")?;

    // Raw CONNECTs, to read the exact return and reason codes.
    let cases: [(Vec<u8>, u8, &str); 5] = [
        (
            raw::connect_v311("legacy-1", Some("legacy-1"), Some("s3cret-meter")),
            0,
            "right password, 3.1.1",
        ),
        (
            raw::connect_v311("legacy-1", Some("legacy-1"), Some("wrong")),
            4,
            "wrong password, 3.1.1",
        ),
        (
            raw::connect_v311("nobody", Some("nobody"), Some("s3cret-meter")),
            4,
            "unknown user, 3.1.1",
        ),
        (
            raw::connect_v5_password("legacy-1", "legacy-1", "wrong"),
            0x86,
            "wrong password, 5.0",
        ),
        (
            raw::connect_v311("legacy-1", None, None),
            4,
            "no credentials, 3.1.1",
        ),
    ];
    for (connect, code, what) in cases {
        let mut tcp = TcpStream::connect(plain).await?;
        raw::send(&mut tcp, &connect).await?;
        let ack = raw::read_frame(&mut tcp).await?;
        ensure!(
            ack.connack().map(|(_, c)| c) == Some(code),
            "{what}: got {ack:?}, expected CONNACK code {code:#04x}"
        );
    }

    if have_program("mosquitto_pub", &["--help"]) {
        let mut monitor =
            V5::connect_as(gh.listeners.mqtts, gh.client_tls("monitor")?, "monitor").await?;
        monitor
            .subscribe("devices/legacy-1/#", Q5::AtLeastOnce)
            .await?;
        let port = plain.port().to_string();
        let run = |password: &'static str| {
            let port = port.clone();
            async move {
                tokio::time::timeout(
                    WAIT,
                    Command::new("mosquitto_pub")
                        .args(["-h", "127.0.0.1", "-p", &port, "-i", "legacy-1"])
                        .args(["-u", "legacy-1", "-P", password])
                        .args(["-t", "devices/legacy-1/reading", "-m", "42", "-q", "1"])
                        .stdin(Stdio::null())
                        .kill_on_drop(true)
                        .output(),
                )
                .await
                .context("mosquitto_pub hung")?
                .context("running mosquitto_pub")
            }
        };
        let ok = run("s3cret-meter").await?;
        ensure!(
            ok.status.success(),
            "mosquitto_pub with the right password failed: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let p = monitor.publish().await?;
        ensure!(p.payload.as_ref() == b"42", "got {p:?}");
        let bad = run("wrong").await?;
        ensure!(
            !bad.status.success(),
            "mosquitto_pub with a wrong password succeeded"
        );
        monitor
            .no_publish_for(std::time::Duration::from_millis(200))
            .await?;
    }
    gh.wait_metric(
        "gatehouse_connections_refused_total{reason=\"bad_password\"}",
        2.0,
    )
    .await?;
    Ok(())
}
