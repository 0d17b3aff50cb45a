//! NBD protocol.
#![no_std]
