//! workers (stub, being written).
