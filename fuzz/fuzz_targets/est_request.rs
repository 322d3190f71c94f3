//! What an EST client sends the server: the request body (base64 or DER), the PKCS#10 CSR
//! inside it, and the client certificate the TLS layer passes on without verifying it.
//! Arbitrary bytes must give a value or an error, never a panic; a CSR that verifies must
//! answer the name check either way.

#![no_main]

use gatehouse_pki::{CsrPolicy, identity_from_cert, verify_csr};
use gatehouse_types::{DeviceId, TenantId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bodies = [
        Some(data.to_vec()),
        gatehouse_api::est::decode_body(data),
    ];
    for body in bodies.into_iter().flatten() {
        if let Ok(csr) = verify_csr(&body, &CsrPolicy::default()) {
            if let (Ok(t), Ok(d)) = (TenantId::new("t"), DeviceId::new("d")) {
                let _ = csr.check_names(&t, &d);
            }
        }
    }
    let _ = identity_from_cert(data);
});
