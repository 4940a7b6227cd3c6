//! Fetching a JWKS document over HTTPS (HTTP/1.1, rustls): the identity provider of a city
//! usually publishes its keys at a URL. Bounded in time and size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Largest JWKS document accepted.
const MAX_BYTES: usize = 1024 * 1024;
/// Longest a fetch may take, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("jwks url `{0}` must be https://host[:port]/path")]
    BadUrl(String),
    #[error("cannot read the jwks ca file {path}: {reason}")]
    Ca { path: String, reason: String },
    #[error("fetching {url} failed: {reason}")]
    Failed { url: String, reason: String },
    #[error("fetching {url} timed out")]
    Timeout { url: String },
}

/// Where and how to fetch.
#[derive(Clone)]
pub struct JwksUrl {
    pub url: Uri,
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

impl JwksUrl {
    /// `ca_file`: PEM roots to trust instead of the public web PKI (a city's own CA).
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<JwksUrl, FetchError> {
        let uri: Uri = url.parse().map_err(|_| FetchError::BadUrl(url.into()))?;
        if uri.scheme_str() != Some("https") {
            return Err(FetchError::BadUrl(url.into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| FetchError::BadUrl(url.into()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(p) => {
                let ca = |reason: String| FetchError::Ca {
                    path: p.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(p).map_err(|e| ca(e.to_string()))?;
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| ca(e.to_string()))?;
                    roots.add(c).map_err(|e| ca(e.to_string()))?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::BadUrl(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(JwksUrl {
            url: uri,
            host,
            port,
            tls: Arc::new(tls),
        })
    }

    /// GETs the document.
    pub async fn fetch(&self) -> Result<String, FetchError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_inner())
            .await
            .map_err(|_| FetchError::Timeout {
                url: self.url.to_string(),
            })?
    }

    async fn fetch_inner(&self) -> Result<String, FetchError> {
        let fail = |reason: String| FetchError::Failed {
            url: self.url.to_string(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| fail(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("tls: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = self.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = http::Request::get(path)
            .header(http::header::HOST, self.host.as_str())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if resp.status() != http::StatusCode::OK {
            return Err(fail(format!("http {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("body: {e}")))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| fail("body is not utf-8".into()))
    }
}
