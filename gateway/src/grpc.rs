//! gRPC wire plumbing for a proxy that never decodes payloads: status replies, `grpc-timeout`,
//! and body wrappers that read only the 5-byte message prefixes (to enforce the message size
//! limit) and end a response stream with a proper status when the deadline passes or the
//! upstream breaks.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tonic::body::Body;

use crate::error::ApiError as _;
use tonic::{Code, Status};

/// Metadata key carrying the exchange's request id on every request and response.
pub use tongban_proto::metadata::REQUEST_ID;

/// A trailers-only gRPC response carrying `status` and the request id.
pub fn status_response(status: Status, request_id: &str) -> http::Response<Body> {
    let mut resp = status.into_http::<Body>();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_timeout(v: &str) -> Option<Duration> {
    // ASCII only: the unit is the last byte (a multi-byte last character was a panic, found
    // by the fuzzer).
    if v.len() < 2 || v.len() > 9 || !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value, in the finest unit that fits 8 digits.
pub fn format_timeout(d: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let micros = d.as_micros();
    if micros <= MAX {
        return format!("{}u", micros.max(1));
    }
    let millis = d.as_millis();
    if millis <= MAX {
        return format!("{millis}m");
    }
    format!("{}S", d.as_secs().min(MAX as u64))
}

/// Maps a non-200 HTTP status of an upstream to a gRPC code (gRPC's http-grpc-status-mapping).
pub fn code_for_http_status(s: http::StatusCode) -> Code {
    match s.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Follows the gRPC length-prefixed message framing across arbitrary chunk boundaries.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    limit: u64,
    header: [u8; 5],
    filled: usize,
    remaining: u64,
    /// Messages whose prefix has been seen.
    pub messages: u64,
    /// Bytes seen, prefixes included.
    pub bytes: u64,
}

impl FrameScanner {
    pub fn new(limit: u64) -> Self {
        FrameScanner {
            limit,
            header: [0; 5],
            filled: 0,
            remaining: 0,
            messages: 0,
            bytes: 0,
        }
    }

    /// Scans one chunk. Returns the length of the first message that exceeds the limit.
    pub fn scan(&mut self, mut chunk: &[u8]) -> Result<(), u64> {
        self.bytes += chunk.len() as u64;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                self.remaining -= take as u64;
                chunk = &chunk[take..];
                continue;
            }
            let take = (5 - self.filled).min(chunk.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&chunk[..take]);
            self.filled += take;
            chunk = &chunk[take..];
            if self.filled == 5 {
                self.filled = 0;
                let len = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
                self.messages += 1;
                if len > self.limit {
                    return Err(len);
                }
                self.remaining = len;
            }
        }
        Ok(())
    }

    fn too_large(&self, len: u64, what: &'static str) -> Status {
        GuardError::TooLarge {
            what,
            len,
            limit: self.limit,
        }
        .status()
    }
}

/// How a body guard ends a stream with a status of its own.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{what} message of {len} bytes exceeds the limit of {limit} bytes (limits.max_message_bytes)")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("the caller's request stream failed: {0}")]
    CallerGone(String),
    #[error("{upstream} failed while streaming the response: {error}")]
    UpstreamBroken { upstream: String, error: String },
    #[error("{0} ended the response without a status")]
    NoStatus(String),
    #[error("deadline exceeded while streaming the response of {0}")]
    Deadline(String),
}

impl crate::error::ApiError for GuardError {
    fn code(&self) -> Code {
        match self {
            GuardError::TooLarge { .. } => Code::ResourceExhausted,
            GuardError::CallerGone(_) => Code::Cancelled,
            GuardError::UpstreamBroken { .. } => Code::Unavailable,
            GuardError::NoStatus(_) => Code::Internal,
            GuardError::Deadline(_) => Code::DeadlineExceeded,
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            GuardError::TooLarge { .. } => "MESSAGE_TOO_LARGE",
            GuardError::CallerGone(_) => "CALLER_GONE",
            GuardError::UpstreamBroken { .. } => "UPSTREAM_BROKEN",
            GuardError::NoStatus(_) => "UPSTREAM_NO_STATUS",
            GuardError::Deadline(_) => "DEADLINE_EXCEEDED",
        }
    }
}

/// SHA-256 and size of a message stream as framed on the wire (the audit's digests).
#[derive(Clone, Default)]
pub struct Tally {
    hasher: sha2::Sha256,
    pub bytes: u64,
}

impl Tally {
    pub fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest;
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
    }

    /// The digest of what was seen so far.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        self.hasher.clone().finalize().into()
    }
}

/// A tally shared between a body and whoever reads it at the end of the exchange.
pub type SharedTally = std::sync::Arc<std::sync::Mutex<Tally>>;

/// How an exchange ended, as the response guard saw it.
pub struct End {
    pub code: i32,
    pub message: String,
    /// The upstream's trailers, when it sent them (a receipt may be in there).
    pub trailers: HeaderMap,
    pub response: Tally,
}

/// What to do when a response ends, before its trailers are released: the audit record is
/// made durable here, and may add trailers (a receipt) or replace the status (when the record
/// cannot be written, the caller must not see a success).
pub type OnEnd = Box<
    dyn FnOnce(End) -> std::pin::Pin<Box<dyn Future<Output = Result<HeaderMap, Status>> + Send>>
        + Send,
>;

pin_project_lite::pin_project! {
    /// The caller's request body on its way upstream. On an oversized message it reports the
    /// violation on `violation` (so the proxy answers RESOURCE_EXHAUSTED) and fails the
    /// upstream stream, so the provider never receives the message.
    pub struct RequestGuard<B> {
        #[pin]
        inner: B,
        scanner: FrameScanner,
        violation: Option<oneshot::Sender<Status>>,
        tally: SharedTally,
    }
}

impl<B> RequestGuard<B> {
    pub fn new(inner: B, limit: u64, tally: SharedTally) -> (Self, oneshot::Receiver<Status>) {
        let (tx, rx) = oneshot::channel();
        (
            RequestGuard {
                inner,
                scanner: FrameScanner::new(limit),
                violation: Some(tx),
                tally,
            },
            rx,
        )
    }
}

impl<B> HttpBody for RequestGuard<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Ok(mut t) = this.tally.lock() {
                        t.update(data.chunk());
                    }
                    if let Err(len) = this.scanner.scan(data.chunk()) {
                        let status = this.scanner.too_large(len, "request");
                        if let Some(tx) = this.violation.take() {
                            let _ = tx.send(status.clone());
                        }
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(GuardError::CallerGone(e.to_string()).status()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body on its way to the caller. It ends the stream with a gRPC
    /// status of its own (instead of an HTTP/2 reset the caller cannot interpret) when a
    /// message exceeds the limit, the deadline passes, or the upstream stream breaks; and it
    /// holds the final trailers until its [`OnEnd`] (the audit) has finished.
    pub struct ResponseGuard<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Sleep,
        scanner: FrameScanner,
        upstream: String,
        request_id: String,
        done: bool,
        tally: Tally,
        on_end: Option<OnEnd>,
        ending: Option<(HeaderMap, std::pin::Pin<Box<dyn Future<Output = Result<HeaderMap, Status>> + Send>>)>,
    }
}

impl<B> ResponseGuard<B> {
    pub fn new(
        inner: B,
        limit: u64,
        deadline: Instant,
        upstream: String,
        request_id: String,
    ) -> Self {
        ResponseGuard {
            inner,
            deadline: tokio::time::sleep_until(deadline),
            scanner: FrameScanner::new(limit),
            upstream,
            request_id,
            done: false,
            tally: Tally::default(),
            on_end: None,
            ending: None,
        }
    }

    /// Runs `on_end` before the final trailers are released.
    pub fn on_end(mut self, on_end: OnEnd) -> Self {
        self.on_end = Some(on_end);
        self
    }
}

/// The gRPC status carried by a header map, if any.
pub fn status_of(h: &HeaderMap) -> Option<(i32, String)> {
    let code = h
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let message = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| {
            percent_encoding::percent_decode_str(m)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    Some((code, message))
}

/// Trailers carrying `status` and the request id.
pub fn trailers(status: &Status, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let _ = status.add_header(&mut h);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID, v);
    }
    h
}

impl<B> HttpBody for ResponseGuard<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if let Some((trailers, fut)) = this.ending.as_mut() {
            // Hold the trailers until the end hook (the audit) has finished.
            let out = match ready!(fut.as_mut().poll(cx)) {
                Ok(extra) => {
                    let mut t = std::mem::take(trailers);
                    t.extend(extra);
                    t
                }
                Err(status) => crate::grpc::trailers(&status, this.request_id),
            };
            *this.ending = None;
            *this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(out))));
        }
        let watch = Watch {
            scanner: this.scanner,
            tally: this.tally,
            upstream: this.upstream,
            request_id: this.request_id,
        };
        let (trailers, upstream_trailers) = match ready!(watch.next(this.inner, this.deadline, cx))
        {
            Next::Pass(frame) => return Poll::Ready(Some(Ok(frame))),
            Next::End { ours, upstream } => (ours, upstream),
        };
        match this.on_end.take() {
            Some(hook) => {
                let (code, message) =
                    status_of(&trailers).unwrap_or((Code::Unknown as i32, String::new()));
                let fut = hook(End {
                    code,
                    message,
                    trailers: upstream_trailers,
                    response: this.tally.clone(),
                });
                *this.ending = Some((trailers, fut));
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => {
                *this.done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// What the next upstream frame means for the caller.
enum Next {
    /// A data frame within the limits: pass it on.
    Pass(Frame<Bytes>),
    /// The end: the trailers to send (`ours`), and the upstream's own (a receipt may be in
    /// there; empty when the upstream did not end the stream itself).
    End {
        ours: HeaderMap,
        upstream: HeaderMap,
    },
}

/// The response guard's view of the upstream stream.
struct Watch<'a> {
    scanner: &'a mut FrameScanner,
    tally: &'a mut Tally,
    upstream: &'a str,
    request_id: &'a str,
}

impl Watch<'_> {
    /// The upstream's next frame: data within the limit, or its trailers, or the status of
    /// what went wrong (an oversized message, a broken stream, no status, the deadline).
    fn next<B>(
        self,
        inner: Pin<&mut B>,
        deadline: Pin<&mut Sleep>,
        cx: &mut Context<'_>,
    ) -> Poll<Next>
    where
        B: HttpBody<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let ours = |s: Status| Next::End {
            ours: trailers(&s, self.request_id),
            upstream: HeaderMap::new(),
        };
        Poll::Ready(match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => match self.scanner.scan(data.chunk()) {
                    Ok(()) => {
                        self.tally.update(data.chunk());
                        Next::Pass(Frame::data(data))
                    }
                    Err(len) => ours(self.scanner.too_large(len, "response")),
                },
                Err(frame) => match frame.into_trailers() {
                    Ok(t) => Next::End {
                        ours: t.clone(),
                        upstream: t,
                    },
                    // Neither data nor trailers: nothing to pass on.
                    Err(_) => Next::Pass(Frame::data(Bytes::new())),
                },
            },
            Poll::Ready(Some(Err(e))) => ours(
                GuardError::UpstreamBroken {
                    upstream: self.upstream.to_string(),
                    error: e.to_string(),
                }
                .status(),
            ),
            Poll::Ready(None) => ours(GuardError::NoStatus(self.upstream.to_string()).status()),
            Poll::Pending => {
                ready!(deadline.poll(cx));
                ours(GuardError::Deadline(self.upstream.to_string()).status())
            }
        })
    }
}

/// Wraps any body into tonic's boxed body.
pub fn boxed<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Body::new(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_trip() {
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in [
            "",
            "m",
            "10",
            "10x",
            "-1m",
            "123456789m",
            "1.5S",
            "1ώ",
            "\u{15}\u{fffd}ώ",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
        for d in [
            Duration::from_millis(1),
            Duration::from_secs(30),
            Duration::from_secs(100_000),
        ] {
            let back = parse_timeout(&format_timeout(d)).unwrap();
            assert!(back <= d && d - back < Duration::from_secs(1), "{d:?}");
        }
    }

    fn frame(len: u32) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&len.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len as usize));
        v
    }

    #[test]
    fn scanner_follows_frames_split_anywhere() {
        let mut all = frame(10);
        all.extend(frame(0));
        all.extend(frame(300));
        for split in 1..all.len() {
            let mut s = FrameScanner::new(300);
            s.scan(&all[..split]).unwrap();
            s.scan(&all[split..]).unwrap();
            assert_eq!(s.messages, 3);
        }
        let mut s = FrameScanner::new(299);
        let mut data = frame(1);
        data.extend(frame(300));
        assert_eq!(s.scan(&data), Err(300));
    }
}
