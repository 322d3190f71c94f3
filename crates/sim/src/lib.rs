//! gatehouse-sim (in progress).
