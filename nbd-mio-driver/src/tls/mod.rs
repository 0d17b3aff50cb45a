//! TLS sessions (stub, being written).
