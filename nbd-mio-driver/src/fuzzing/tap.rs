//! What the connection decided, as the harness needs to know it: where
//! transmission starts in the output and which replies it queued in which
//! order. `conn.rs` calls these under `cfg(feature = "fuzzing")` only; they
//! record nothing unless the harness has armed this thread (the test
//! builds enable the feature for every server they start).

use std::cell::RefCell;

use nbd_proto::HeaderMode;
use nbd_proto::server::{Negotiated, Pending};

use crate::dispatch::Executed;

use super::client::Expect;

/// One decision, in the order the connection made them.
#[derive(Debug)]
pub enum Event {
    /// Negotiation ended with `at` bytes of output queued in all.
    Negotiated { at: u64, mode: HeaderMode },
    /// A reply was queued now (inline or rejected), answering this.
    Replied(Expect),
    /// A request went to the pool: its reply comes with its job.
    Queued,
}

thread_local! {
    static TAP: RefCell<Option<Vec<Event>>> = const { RefCell::new(None) };
}

/// Start recording on this thread (dropping anything recorded before).
pub fn arm() {
    TAP.with(|t| *t.borrow_mut() = Some(Vec::new()));
}

/// Stop recording.
pub fn disarm() {
    TAP.with(|t| *t.borrow_mut() = None);
}

/// Everything recorded since the last call, in order.
pub fn take(into: &mut Vec<Event>) {
    TAP.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            into.append(v);
        }
    });
}

fn record(e: Event) {
    TAP.with(|t| {
        if let Some(v) = t.borrow_mut().as_mut() {
            v.push(e);
        }
    });
}

/// An export question was answered; `n` once negotiation is over.
pub fn negotiated(at: u64, n: Option<&Negotiated>) {
    if let Some(n) = n {
        record(Event::Negotiated { at, mode: n.mode });
    }
}

/// A request nbd-proto rejected: its error reply is queued now.
pub fn rejected(p: &Pending) {
    record(Event::Replied(Expect::of(p, true)));
}

/// A request about to be executed (its token moves into the dispatcher).
pub struct Request(Expect);

impl Request {
    pub fn new(p: &Pending) -> Self {
        Self(Expect::of(p, false))
    }

    /// How the dispatcher ran it.
    pub fn executed(self, done: &Executed) {
        record(match done {
            Executed::Done => Event::Replied(self.0),
            Executed::Queued { .. } => Event::Queued,
        });
    }
}
