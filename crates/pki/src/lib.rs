//! gatehouse-pki (in progress).
