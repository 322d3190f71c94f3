//! The registry commands against a remote server: with `--server https://host:8443` (or
//! `GATEHOUSE_SERVER`) they call its REST API with an operator's API token (`--token` or
//! `GATEHOUSE_TOKEN`) instead of opening a local data directory, so the server decides
//! what the token's operator may see and do, and audits it under that operator's name.
//!
//! Devices, incidents, actions, bans, tenants, enrollment tokens, manufacturers (list,
//! add), models (list, add, profile upload), claims (add), the policy set (show, validate,
//! set) and the audit log's tail and verification are served this way; the rest name the
//! command to run on the server's host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use gatehouse_sim::est::{HttpsConnection, HttpsTarget};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use super::{
    RegistryCommand, audit, claim, device, incident, manufacturer, model, policy, table, tenant,
    token,
};

/// Where the server is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `https://host[:port]`.
    pub server: String,
    /// An API token, `gha_…`.
    pub token: String,
    /// The CA bundle that signs the server's certificate.
    pub ca: PathBuf,
    /// Print JSON.
    pub json: bool,
}

/// A connection target built from [`Remote`].
struct Client {
    target: HttpsTarget,
    json: bool,
}

impl Client {
    async fn open(r: &Remote) -> Result<Self> {
        let rest = r
            .server
            .strip_prefix("https://")
            .context("--server must start with https://")?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || p.parse::<u16>().is_ok() => {
                (h, p.parse::<u16>().context("--server port")?)
            }
            _ => (rest, 8443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr: SocketAddr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let pem = std::fs::read_to_string(&r.ca)
            .with_context(|| format!("reading the CA bundle {}", r.ca.display()))?;
        let roots = gatehouse_pki::load_certs_pem(&pem)
            .with_context(|| format!("{}: no certificate", r.ca.display()))?;
        let tls = gatehouse_pki::client_config(&roots, None)?;
        let server_name =
            ServerName::try_from(host.to_owned()).context("the server's host name")?;
        Ok(Self {
            target: HttpsTarget {
                addr,
                bind: None,
                server_name,
                tls,
                timeout: Duration::from_secs(30),
                authorization: Some(format!("Bearer {}", r.token)),
            },
            json: r.json,
        })
    }

    /// One request; the JSON answer, or the server's error message.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.call_with(method, path, "application/json", body).await
    }

    /// One request with a body of `content_type`.
    async fn call_with(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body_bytes: String,
    ) -> Result<Value> {
        let mut conn = HttpsConnection::connect(&self.target)
            .await
            .with_context(|| format!("connecting to {}", self.target.addr))?;
        let r = match method {
            "GET" => conn.get(path).await,
            "DELETE" => conn.delete(path).await,
            "PUT" => conn.put(path, content_type, body_bytes).await,
            _ => conn.post(path, content_type, None, body_bytes).await,
        }
        .with_context(|| format!("{method} {path}"))?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if !(200..300).contains(&r.status) {
            let msg = v["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).trim().to_owned());
            match r.status {
                401 => bail!(
                    "the server refused the token ({msg}); create one on the server's host \
                     with `gatehouse admin token NAME` and pass it with --token or GATEHOUSE_TOKEN"
                ),
                _ => bail!(
                    "{} ({}): {msg}",
                    r.status,
                    v["error"]["code"].as_str().unwrap_or("error")
                ),
            }
        }
        Ok(v)
    }

    fn print(&self, v: &Value, text: impl FnOnce(&Value) -> String) -> Result<()> {
        if self.json {
            crate::output::print_json(v)
        } else {
            Ok(crate::output::println(text(v).trim_end())?)
        }
    }
}

// === impl Client ===

impl Client {
    /// Prints a listing: in JSON mode the array alone (`v[key]` when the answer wraps it
    /// in an object), as the local commands print it.
    fn print_list(&self, v: &Value, key: &str, text: impl FnOnce(&Value) -> String) -> Result<()> {
        if self.json {
            return crate::output::print_json(v.get(key).unwrap_or(v));
        }
        self.print(v, text)
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn host_only(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`gatehouse {what}` is not available with --server yet: run it on the server's host"
    )
}

/// Runs a registry command against the remote server.
pub fn run(command: RegistryCommand, remote: &Remote) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c = Client::open(remote).await?;
        match command {
            RegistryCommand::Device(g) => run_device(&c, g.command).await,
            RegistryCommand::Incident(g) => run_incident(&c, g.command).await,
            RegistryCommand::Tenant(g) => run_tenant(&c, g.command).await,
            RegistryCommand::Token(g) => run_token(&c, g.command).await,
            RegistryCommand::Audit(g) => run_audit(&c, g.command).await,
            RegistryCommand::Manufacturer(g) => run_manufacturer(&c, g.command).await,
            RegistryCommand::Model(g) => run_model(&c, g.command).await,
            RegistryCommand::Claim(g) => run_claim(&c, g.command).await,
            RegistryCommand::Policy(g) => run_policy(&c, g.command).await,
            RegistryCommand::Admin(_) => Err(host_only("admin")),
        }
    })
}

async fn run_device(c: &Client, cmd: device::Command) -> Result<()> {
    use device::Command as D;
    match cmd {
        D::List {
            tenant,
            status,
            model,
            limit,
            cursor,
        } => {
            let path = format!(
                "/api/v1/devices{}",
                query(&[
                    ("tenant", tenant.map(|t| t.to_string())),
                    ("status", status.map(|s| s.as_str().to_owned())),
                    ("model", model.map(|m| m.to_string())),
                    ("limit", Some(limit.to_string())),
                    ("cursor", cursor),
                ])
            );
            let v = c.call("GET", &path, None).await?;
            c.print_list(&v, "items", |v| {
                let rows: Vec<Vec<String>> = v["items"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|d| {
                                vec![
                                    format!("{}/{}", s(&d["tenant"]), s(&d["id"])),
                                    s(&d["model"]),
                                    s(&d["status"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["DEVICE", "MODEL", "STATUS"], &rows)
            })?;
            if let Some(next) = v["next"].as_str() {
                eprintln!("more: --cursor {next}");
            }
            Ok(())
        }
        D::Show { device } => {
            let base = format!("/api/v1/devices/{}/{}", device.tenant, device.device);
            let detail = c.call("GET", &base, None).await?;
            let trust = c.call("GET", &format!("{base}/trust"), None).await.ok();
            let v = json!({ "device": detail, "trust": trust });
            c.print(&v, |v| {
                let d = &v["device"]["device"];
                let t = &v["trust"];
                format!(
                    "device {}/{}\nmodel:   {}\nstatus:  {}\nscore:   {}\ntier:    {}\n",
                    s(&d["tenant"]),
                    s(&d["id"]),
                    s(&d["model"]),
                    s(&d["status"]),
                    s(&t["assessment"]["score"]),
                    s(&t["verdict"]["tier"]),
                )
            })
        }
        D::Reinstate { device, why } => {
            let path = format!(
                "/api/v1/devices/{}/{}/reinstate",
                device.tenant, device.device
            );
            let v = c
                .call("POST", &path, Some(json!({ "comment": why })))
                .await?;
            c.print(&v, |_| format!("device {device} reinstated"))
        }
        D::Pin {
            device,
            tier,
            duration,
            reason,
        } => {
            let path = format!("/api/v1/devices/{}/{}/pin", device.tenant, device.device);
            let v = c
                .call(
                    "PUT",
                    &path,
                    Some(json!({ "tier": tier, "for": duration, "reason": reason })),
                )
                .await?;
            c.print(&v, |_| {
                format!("device {device} pinned at {tier} for {duration}")
            })
        }
        D::Unpin { device, .. } => {
            let path = format!("/api/v1/devices/{}/{}/pin", device.tenant, device.device);
            let v = c.call("DELETE", &path, None).await?;
            c.print(&v, |_| format!("device {device} unpinned"))
        }
        D::Revoke {
            device: Some(device),
            reason,
            why,
            ..
        } => {
            let path = format!("/api/v1/devices/{}/{}/revoke", device.tenant, device.device);
            let body = json!({
                "reason": reason.map(|r| r.api_name()),
                "comment": why,
            });
            let v = c.call("POST", &path, Some(body)).await?;
            c.print(&v, |v| {
                format!(
                    "device {device} revoked: {} certificate(s), {} session(s) ended",
                    v["certificates"].as_array().map_or(0, Vec::len),
                    v["disconnected"].as_array().map_or(0, Vec::len)
                )
            })
        }
        D::Revoke { device: None, .. } => Err(host_only("device revoke --manufacturer")),
    }
}

async fn run_incident(c: &Client, cmd: incident::Command) -> Result<()> {
    use incident::Command as I;
    match cmd {
        I::List {
            state,
            device,
            limit,
        } => {
            let path = format!(
                "/api/v1/incidents{}",
                query(&[
                    ("state", state.map(|s| s.as_str().to_owned())),
                    ("device", device.map(|d| d.to_string())),
                    ("limit", Some(limit.to_string())),
                ])
            );
            let v = c.call("GET", &path, None).await?;
            c.print_list(&v, "incidents", |v| {
                let rows: Vec<Vec<String>> = v["incidents"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|i| {
                                vec![
                                    s(&i["id"]),
                                    s(&i["kind"]),
                                    s(&i["state"]),
                                    s(&i["max_severity"]),
                                    i["device"]
                                        .as_object()
                                        .map(|_| s(&i["device"]))
                                        .unwrap_or_else(|| s(&i["device"])),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["ID", "KIND", "STATE", "SEVERITY", "DEVICE"], &rows)
            })
        }
        I::Show { id } => {
            let v = c
                .call("GET", &format!("/api/v1/incidents/{id}"), None)
                .await?;
            c.print(&v, |v| serde_json::to_string_pretty(v).unwrap_or_default())
        }
        I::Ack { id, note } => {
            let v = c
                .call(
                    "POST",
                    &format!("/api/v1/incidents/{id}/acknowledge"),
                    Some(json!({ "note": note })),
                )
                .await?;
            c.print(&v, |_| format!("incident {id} acknowledged"))
        }
        I::Resolve { id, note } => {
            let v = c
                .call(
                    "POST",
                    &format!("/api/v1/incidents/{id}/resolve"),
                    Some(json!({ "note": note })),
                )
                .await?;
            c.print(&v, |_| format!("incident {id} resolved"))
        }
        I::Actions { state, incident } => {
            let path = format!(
                "/api/v1/actions{}",
                query(&[
                    ("state", state.map(|s| s.as_str().to_owned())),
                    ("incident", incident.map(|i| i.to_string())),
                ])
            );
            let v = c.call("GET", &path, None).await?;
            c.print_list(&v, "actions", |v| {
                let rows: Vec<Vec<String>> = v["actions"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                vec![s(&x["id"]), s(&x["kind"]), s(&x["state"]), s(&x["device"])]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["ID", "KIND", "STATE", "DEVICE"], &rows)
            })
        }
        I::Approve { action } => {
            let v = c
                .call("POST", &format!("/api/v1/actions/{action}/approve"), None)
                .await?;
            c.print(&v, |v| format!("action {action}: {}", s(&v["state"])))
        }
        I::Reject { action, note } => {
            let v = c
                .call(
                    "POST",
                    &format!("/api/v1/actions/{action}/reject"),
                    Some(json!({ "note": note })),
                )
                .await?;
            c.print(&v, |v| format!("action {action}: {}", s(&v["state"])))
        }
        I::Release { action, note } => {
            let v = c
                .call(
                    "POST",
                    &format!("/api/v1/actions/{action}/reverse"),
                    Some(json!({ "note": note })),
                )
                .await?;
            c.print(&v, |v| format!("action {action}: {}", s(&v["state"])))
        }
        I::Bans => {
            let v = c.call("GET", "/api/v1/bans", None).await?;
            c.print_list(&v, "bans", |v| {
                let rows: Vec<Vec<String>> = v["bans"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|b| vec![s(&b["addr"]), s(&b["until"]), s(&b["reason"])])
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["ADDRESS", "UNTIL", "REASON"], &rows)
            })
        }
        I::Unban { addr } => {
            let v = c
                .call("DELETE", &format!("/api/v1/bans/{addr}"), None)
                .await?;
            c.print(&v, |_| format!("ban of {addr} lifted"))
        }
    }
}

async fn run_tenant(c: &Client, cmd: tenant::Command) -> Result<()> {
    use tenant::Command as T;
    match cmd {
        T::List => {
            let v = c.call("GET", "/api/v1/tenants", None).await?;
            c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| vec![s(&t["id"]), s(&t["display_name"])])
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["TENANT", "NAME"], &rows)
            })
        }
        T::Add { id, name, .. } => {
            let v = c
                .call(
                    "POST",
                    "/api/v1/tenants",
                    Some(json!({ "id": id.to_string(), "display_name": name.unwrap_or_default() })),
                )
                .await?;
            c.print(&v, |_| format!("tenant {id} created"))
        }
    }
}

async fn run_token(c: &Client, cmd: token::Command) -> Result<()> {
    use token::Command as K;
    match cmd {
        K::Create {
            tenant,
            model,
            uses,
            expires,
        } => {
            let v = c
                .call(
                    "POST",
                    "/api/v1/tokens",
                    Some(json!({
                        "tenant": tenant.to_string(),
                        "model": model.to_string(),
                        "max_uses": uses,
                        "expires_in": expires.as_secs(),
                    })),
                )
                .await?;
            c.print(&v, |v| {
                format!(
                    "created token {}\nsecret:  {}\nagent:   {}:{}\nThe secret is shown only this once.",
                    s(&v["token"]["id"]),
                    s(&v["secret"]),
                    s(&v["token"]["id"]),
                    s(&v["secret"])
                )
            })
        }
        K::List { tenant } => {
            let v = c
                .call("GET", &format!("/api/v1/tokens?tenant={tenant}"), None)
                .await?;
            c.print(&v, |v| serde_json::to_string_pretty(v).unwrap_or_default())
        }
        K::Revoke { id } => {
            let v = c
                .call("POST", &format!("/api/v1/tokens/{id}/revoke"), None)
                .await?;
            c.print(&v, |_| format!("token {id} revoked"))
        }
    }
}

async fn run_audit(c: &Client, cmd: audit::Command) -> Result<()> {
    use audit::Command as A;
    match cmd {
        A::Verify { file: None, .. } => {
            let v = c.call("GET", "/api/v1/audit/verify", None).await?;
            let ok = v["ok"].as_bool() == Some(true);
            c.print(&v, |v| {
                if ok {
                    format!("audit log intact: {} records", s(&v["records"]))
                } else {
                    format!("audit log BROKEN: {}", s(&v["problem"]))
                }
            })?;
            if !ok {
                bail!("the audit chain does not verify");
            }
            Ok(())
        }
        A::Verify { file: Some(_), .. } => {
            bail!("`audit verify FILE` checks a local export; drop --server")
        }
        A::Tail { limit } => {
            // The newest records: find the head, then read the last `limit`.
            // The API pages at most 1000 records.
            let limit = u64::from(limit).clamp(1, 1000);
            let head = c.call("GET", "/api/v1/audit/verify", None).await?;
            let total = head["records"].as_u64().unwrap_or(0);
            let from = total.saturating_sub(limit).max(1);
            let v = c
                .call(
                    "GET",
                    &format!("/api/v1/audit?from={from}&limit={limit}"),
                    None,
                )
                .await?;
            c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                vec![
                                    s(&r["seq"]),
                                    s(&r["actor"]),
                                    s(&r["action"]),
                                    s(&r["subject"]),
                                    s(&r["outcome"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["SEQ", "ACTOR", "ACTION", "SUBJECT", "OUTCOME"], &rows)
            })
        }
        A::Export { .. } => Err(host_only("audit export")),
    }
}

fn read(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

async fn run_manufacturer(c: &Client, cmd: manufacturer::Command) -> Result<()> {
    use manufacturer::Command as M;
    match cmd {
        M::List => {
            let v = c.call("GET", "/api/v1/manufacturers", None).await?;
            c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|m| {
                                vec![
                                    s(&m["id"]),
                                    s(&m["display_name"]),
                                    m["idevid_ca_pems"]
                                        .as_array()
                                        .map_or(0, Vec::len)
                                        .to_string(),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["MANUFACTURER", "NAME", "CAS"], &rows)
            })
        }
        M::Add {
            id,
            cas,
            name,
            model_from,
        } => {
            let pems = cas.iter().map(|p| read(p)).collect::<Result<Vec<_>>>()?;
            let v = c
                .call(
                    "POST",
                    "/api/v1/manufacturers",
                    Some(json!({
                        "id": id.to_string(),
                        "display_name": name.unwrap_or_default(),
                        "idevid_ca_pems": pems,
                        "model_rules": model_from,
                    })),
                )
                .await?;
            c.print(&v, |_| format!("manufacturer {id} registered"))
        }
        M::Show { .. } | M::SetCa { .. } => Err(host_only("manufacturer show|set-ca")),
    }
}

async fn run_model(c: &Client, cmd: model::Command) -> Result<()> {
    use model::Command as M;
    match cmd {
        M::List => {
            let v = c.call("GET", "/api/v1/models", None).await?;
            c.print(&v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|m| {
                                vec![s(&m["id"]), s(&m["manufacturer"]), s(&m["display_name"])]
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                table(&["MODEL", "MANUFACTURER", "NAME"], &rows)
            })
        }
        M::Add {
            id,
            manufacturer,
            name,
            profile,
        } => {
            let v = c
                .call(
                    "POST",
                    "/api/v1/models",
                    Some(json!({
                        "id": id.to_string(),
                        "manufacturer": manufacturer.to_string(),
                        "display_name": name.unwrap_or_default(),
                    })),
                )
                .await?;
            if let Some(p) = profile {
                upload_profile(c, id.as_str(), &p).await?;
            }
            c.print(&v, |_| format!("model {id} registered"))
        }
        M::Profile { id, file } => {
            let v = upload_profile(c, id.as_str(), &file).await?;
            c.print(&v, |v| {
                format!("model {id}: profile version {}", s(&v["version"]))
            })
        }
    }
}

async fn upload_profile(c: &Client, model: &str, file: &std::path::Path) -> Result<Value> {
    c.call_with(
        "POST",
        &format!("/api/v1/models/{model}/profiles"),
        "application/toml",
        read(file)?,
    )
    .await
}

async fn run_claim(c: &Client, cmd: claim::Command) -> Result<()> {
    use claim::Command as C;
    match cmd {
        C::Add {
            tenant,
            manufacturer,
            serials,
            file,
        } => {
            let claims = match file {
                Some(path) => claim::parse_claims(&read(&path)?)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
                None => claim::from_flags(&serials)?,
            };
            let serials: Vec<Value> = claims
                .iter()
                .map(|c| {
                    json!({
                        "serial": c.serial,
                        "expected_model": c.expected_model.as_ref().map(ToString::to_string),
                    })
                })
                .collect();
            let v = c
                .call(
                    "POST",
                    &format!("/api/v1/tenants/{tenant}/claims"),
                    Some(json!({ "manufacturer": manufacturer.to_string(), "serials": serials })),
                )
                .await?;
            c.print(&v, |v| {
                format!("{} serial(s) claimed for tenant {tenant}", s(&v["added"]))
            })
        }
        C::Show { .. } => Err(host_only("claim show")),
    }
}

async fn run_policy(c: &Client, cmd: policy::Command) -> Result<()> {
    use policy::Command as P;
    let text_of = |v: &Value| {
        format!(
            "policy set version {} ({} policies)\n\n{}",
            s(&v["version"]),
            v["policies"].as_array().map_or(0, Vec::len),
            v["text"].as_str().unwrap_or("")
        )
    };
    match cmd {
        P::Show => {
            let v = c.call("GET", "/api/v1/policies", None).await?;
            c.print(&v, text_of)
        }
        P::Validate { file } => {
            let v = c
                .call(
                    "POST",
                    "/api/v1/policies/validate",
                    Some(json!({ "text": read(&file)? })),
                )
                .await?;
            c.print(&v, |v| {
                format!(
                    "valid: {} policies",
                    v["policies"].as_array().map_or(0, Vec::len)
                )
            })
        }
        P::Set { file } => {
            let v = c
                .call(
                    "PUT",
                    "/api/v1/policies",
                    Some(json!({ "text": read(&file)? })),
                )
                .await?;
            c.print(&v, text_of)
        }
        P::Reset | P::History => Err(host_only("policy reset|history")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_encoded() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[("device", Some("acme/pump 1".into())), ("x", None)]),
            "?device=acme/pump%201"
        );
    }
}
