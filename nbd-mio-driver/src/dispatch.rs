//! dispatch (stub, being written).
