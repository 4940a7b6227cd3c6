//! Counters of what goes wrong below the calls: connection-level errors (GOAWAY, resets,
//! protocol errors, keepalive timeouts) on the listeners and on upstream connections. Each is
//! also logged with its reason where it happens; the counters are what metrics will export.

use std::sync::atomic::{AtomicU64, Ordering};

static LISTENER_CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);
static UPSTREAM_CONNECTION_ERRORS: AtomicU64 = AtomicU64::new(0);

/// A caller or peer connection ended with an error.
pub fn listener_connection_error() {
    LISTENER_CONNECTION_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// A connection to a provider or peer node ended with an error.
pub fn upstream_connection_error() {
    UPSTREAM_CONNECTION_ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// (listener, upstream) connection errors since the process started.
pub fn connection_errors() -> (u64, u64) {
    (
        LISTENER_CONNECTION_ERRORS.load(Ordering::Relaxed),
        UPSTREAM_CONNECTION_ERRORS.load(Ordering::Relaxed),
    )
}
