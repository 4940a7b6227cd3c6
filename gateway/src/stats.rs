//! Counters of what goes wrong below the calls: connection-level errors (GOAWAY, resets,
//! protocol errors, keepalive timeouts) on the listeners and on upstream connections. Each is
//! also logged with its reason where it happens; the counters are what metrics will export.

use std::sync::atomic::{AtomicU64, Ordering};

static LISTENER_CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);
static UPSTREAM_CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Which end of a connection this node is.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// A caller's or peer's connection to one of this node's listeners.
    Listener,
    /// This node's connection to a provider or peer node.
    Upstream,
}

/// A connection ended with `error`: counted, and logged with its reason (the whole chain of
/// causes). The other end simply going away (reset, broken pipe, end of stream: a process
/// stopping) is logged at info; anything else — a GOAWAY with an error code, a protocol
/// error, a keepalive timeout — at warn.
pub fn connection_ended(side: Side, peer: &str, error: &(dyn std::error::Error + 'static)) {
    let counter = match side {
        Side::Listener => &LISTENER_CONNECTION_ERRORS,
        Side::Upstream => &UPSTREAM_CONNECTION_ERRORS,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let mut reason = error.to_string();
    let mut gone = false;
    let mut source = error.source();
    while let Some(e) = source {
        reason.push_str(": ");
        reason.push_str(&e.to_string());
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            gone |= matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
            );
        }
        source = e.source();
    }
    if gone {
        tracing::info!(?side, %peer, %reason, "connection closed by the other end");
    } else {
        tracing::warn!(?side, %peer, %reason, "connection failed");
    }
}

/// (listener, upstream) connection errors since the process started.
pub fn connection_errors() -> (u64, u64) {
    (
        LISTENER_CONNECTION_ERRORS.load(Ordering::Relaxed),
        UPSTREAM_CONNECTION_ERRORS.load(Ordering::Relaxed),
    )
}
