//! HTTP/2 settings every Tongban endpoint uses (nodes' listeners and upstream connections,
//! and the reference providers), so that one busy or abandoning caller never breaks a
//! connection that other calls share.
//!
//! - **Fixed, large flow-control windows** instead of the adaptive ones: the h2 library sizes
//!   its per-connection budget for small DATA frames from the connection window (half of it);
//!   with the small windows an adaptive connection starts with, a few hundred concurrent gRPC
//!   calls with small messages exhaust it and the connection is closed with
//!   `GOAWAY ENHANCE_YOUR_CALM too_many_data_frames`, failing every call on it.
//! - **Reset-stream limits well above the default of 20**: a caller that cancels many calls at
//!   once (each one an RST_STREAM before the server accepted it) must not make the server tear
//!   the whole connection down.

/// Per-stream flow-control window (bytes).
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Per-connection flow-control window (bytes); the small-frame budget is half of it.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Streams a peer may reset before the server accepted them, and locally reset streams
/// kept, before the connection is considered abusive.
pub const MAX_RESET_STREAMS: usize = 16 * 1024;

/// A tonic server with these limits: every provider of the workspace serves with it.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_max_pending_accept_reset_streams(Some(MAX_RESET_STREAMS))
}
