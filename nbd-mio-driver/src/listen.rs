//! listen (stub, being written).
