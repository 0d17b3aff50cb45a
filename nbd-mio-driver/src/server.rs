//! server (stub, being written).
