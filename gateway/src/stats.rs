//! Counters of what goes wrong below the calls: connection-level errors (GOAWAY, resets,
//! protocol errors, keepalive timeouts) on the listeners and on upstream connections. Each is
//! also logged with its reason where it happens; the counters are what metrics will export.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static LISTENER_CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);
static UPSTREAM_CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many recent failures [`recent_errors`] keeps.
const RECENT: usize = 8;

/// A connection failure, for `tongban status`.
#[derive(Debug, Clone)]
pub struct ErrorEvent {
    pub at_ms: i64,
    pub side: Side,
    pub peer: String,
    pub reason: String,
}

static RECENT_ERRORS: Mutex<VecDeque<ErrorEvent>> = Mutex::new(VecDeque::new());

/// The most recent connection failures (not the other end simply going away), newest first.
pub fn recent_errors() -> Vec<ErrorEvent> {
    RECENT_ERRORS
        .lock()
        .map(|q| q.iter().rev().cloned().collect())
        .unwrap_or_default()
}

fn remember(side: Side, peer: &str, reason: &str) {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if let Ok(mut q) = RECENT_ERRORS.lock() {
        if q.len() == RECENT {
            q.pop_front();
        }
        q.push_back(ErrorEvent {
            at_ms,
            side,
            peer: peer.to_string(),
            reason: reason.to_string(),
        });
    }
}

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
        remember(side, peer, &reason);
    }
}

/// (listener, upstream) connection errors since the process started.
pub fn connection_errors() -> (u64, u64) {
    (
        LISTENER_CONNECTION_ERRORS.load(Ordering::Relaxed),
        UPSTREAM_CONNECTION_ERRORS.load(Ordering::Relaxed),
    )
}
