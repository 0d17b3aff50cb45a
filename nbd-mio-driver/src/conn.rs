//! conn (stub, being written).
