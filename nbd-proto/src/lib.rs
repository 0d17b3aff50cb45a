//! NBD protocol.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod error;
pub mod flags;
pub mod magic;
pub mod types;
pub mod wire;
