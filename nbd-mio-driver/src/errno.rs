//! errno (stub, being written).
