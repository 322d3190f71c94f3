//! The device side of Gatehouse: zero-touch onboarding and a connection that looks after
//! itself.
//!
//! A device enrolls over EST (RFC 7030) with an operator's enrollment token or its
//! manufacturer identity (IDevID), keeps the key it generated (0600) and the certificate it
//! was given (its LDevID) in a state directory, connects to the MQTTS listener with them,
//! renews at two thirds of the certificate's lifetime, and enrolls from scratch if the
//! server stops accepting the certificate (revoked, then the device reclaimed).
//!
//! - [`est::EstClient`]: the EST operations (`cacerts`, `csrattrs`, `simpleenroll` with a
//!   token or a client certificate, `simplereenroll`), over HTTP/1.1 and rustls, with size
//!   limits and timeouts; [`est::pkcs7`] reads the certs-only responses.
//! - [`identity`]: key and CSR generation ([`identity::DeviceKey`]), credentials checked to
//!   match ([`identity::DeviceCredentials`], [`identity::Idevid`]).
//! - [`enroll`](mod@enroll): the enrollment and re-enrollment flows; [`state`]: the state
//!   directory; [`renew`]: when to renew.
//! - [`agent`]: the long-running [`agent::Agent`] with its [`agent::AgentHandle`].
//! - [`posture`]: the signed posture reports the agent publishes on
//!   `$gatehouse/{device}/posture`, and [`posture::send_once`] to publish one.
//!
//! The one design decision that shapes this crate: **it is a library first, and shares
//! nothing between devices but what is immutable.** The fleet simulator runs thousands of
//! agents in one process, so an [`est::EstClient`] is an `Arc` cloned per device, each
//! request opens its own TLS connection with that device's credentials, every TLS
//! configuration names the *ring* provider explicitly (no process-wide default), and an
//! agent's state lives in its own task and directory. The crate depends on no server-side
//! code: only `gatehouse-types`.

pub mod agent;
pub mod enroll;
pub mod est;
pub mod identity;
pub mod posture;
pub mod renew;
pub mod state;
pub mod tls;

pub use agent::{Agent, AgentConfig, AgentError, AgentHandle, AgentStatus, Message, MqttEndpoint};
pub use enroll::{EnrollError, Enrolled, Enrollment, EnrollmentToken, enroll, reenroll};
pub use est::{EstClient, EstError, EstLimits};
pub use identity::{CertInfo, DeviceCredentials, DeviceKey, Idevid};
pub use posture::{CredentialState, Posture, PostureError, PostureReport, PostureSigner};
pub use state::StateDir;
