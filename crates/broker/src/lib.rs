//! gatehouse-broker (in progress).
