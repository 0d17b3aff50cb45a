//! buffer (stub, being written).
