//! Large attachments on the client's side: publishing a report with an attachment read from
//! any byte source (`PublishStream`), and fetching one (`GetReport`) into any sink, each in
//! chunks of [`CHUNK`] bytes with the SHA-256 checked. Memory stays a few chunks whatever the
//! size. `tongban medical import --attachment` and `tongban medical fetch` use them.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_stream::wrappers::ReceiverStream;
use tongban_proto::medical::v1::result_registry_client::ResultRegistryClient;
use tongban_proto::medical::v1::{
    report_chunk, GetReportRequest, PublishResponse, Report, ReportChunk,
};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::service::CHUNK;

/// What a fetch received.
#[derive(Debug)]
pub struct Fetched {
    pub header: Report,
    pub bytes: u64,
    /// Lowercase hex, of the bytes received.
    pub sha256: String,
}

/// The SHA-256 (lowercase hex) and the length of everything `source` yields.
pub async fn digest(mut source: impl AsyncRead + Unpin) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = source.read(&mut buf).await?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), total));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Reads up to [`CHUNK`] bytes (fewer only at the end).
async fn next_chunk(source: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        let n = source.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Publishes `report` (without `attachment`; set `attachment_sha256` to have the registry
/// check it) with the bytes of `source` as its attachment, through `client` with the call's
/// `metadata` (authorization, target city, subject, catalog code, consent).
pub async fn publish_stream<T>(
    client: &mut ResultRegistryClient<T>,
    metadata: MetadataMap,
    report: Report,
    mut source: impl AsyncRead + Send + Unpin + 'static,
) -> Result<PublishResponse, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(async move {
        let header = ReportChunk {
            part: Some(report_chunk::Part::Header(report)),
        };
        if tx.send(header).await.is_err() {
            return Ok::<(), std::io::Error>(());
        }
        loop {
            let chunk = next_chunk(&mut source).await?;
            if chunk.is_empty() {
                return Ok(());
            }
            let part = ReportChunk {
                part: Some(report_chunk::Part::Attachment(chunk)),
            };
            if tx.send(part).await.is_err() {
                // The call ended (refused): its status says why.
                return Ok(());
            }
        }
    });
    let mut req = Request::new(ReceiverStream::new(rx));
    *req.metadata_mut() = metadata;
    let answer = client.publish_stream(req).await;
    match reader.await {
        Ok(Ok(())) => {}
        // A source that fails mid-way ends the stream early: a registry given a SHA-256
        // refuses the cut attachment, but say what happened here regardless.
        Ok(Err(e)) => {
            return Err(Status::aborted(format!(
                "reading the attachment failed: {e}"
            )))
        }
        Err(e) => return Err(Status::internal(format!("attachment reader failed: {e}"))),
    }
    Ok(answer?.into_inner())
}

/// Fetches a report through `client` and writes its attachment to `sink`, hashing it on
/// the way. The caller compares [`Fetched::sha256`] with `header.attachment_sha256`.
pub async fn fetch<T>(
    client: &mut ResultRegistryClient<T>,
    metadata: MetadataMap,
    registry_id: &str,
    mut sink: impl AsyncWrite + Unpin,
) -> Result<Fetched, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut req = Request::new(GetReportRequest {
        registry_id: registry_id.to_string(),
    });
    *req.metadata_mut() = metadata;
    let mut stream = client.get_report(req).await?.into_inner();
    let mut header = None;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(c) = stream.message().await? {
        match c.part {
            Some(report_chunk::Part::Header(h)) if header.is_none() => header = Some(h),
            Some(report_chunk::Part::Attachment(b)) if header.is_some() => {
                hasher.update(&b);
                bytes += b.len() as u64;
                sink.write_all(&b)
                    .await
                    .map_err(|e| Status::aborted(format!("writing the attachment failed: {e}")))?;
            }
            _ => {
                return Err(Status::internal(
                    "the registry's answer is out of order: one header, then the attachment",
                ))
            }
        }
    }
    sink.flush()
        .await
        .map_err(|e| Status::aborted(format!("writing the attachment failed: {e}")))?;
    let header = header.ok_or_else(|| Status::internal("the registry sent no header"))?;
    Ok(Fetched {
        header,
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

impl Fetched {
    /// Whether what arrived is what the registry stored: its length and SHA-256.
    pub fn intact(&self) -> bool {
        self.bytes == self.header.attachment_bytes
            && (self.bytes == 0 || self.sha256 == self.header.attachment_sha256)
    }
}
