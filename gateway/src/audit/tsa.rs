//! Trusted time for checkpoints (RFC 3161), where a city has a time-stamping authority
//! (`[audit.tsa] url`): each checkpoint the node signs is sent to the TSA as the SHA-256 of
//! its encoded `Checkpoint`, and the token that comes back is kept beside it (Audit
//! `Checkpoints`, `SignedCheckpoint.timestamp_token`). Anyone can then check, with the TSA's
//! certificate (`openssl ts -verify`), that the head existed at the token's time. Without a
//! TSA, the peers' held checkpoints remain the witness.
//!
//! What the node checks of an answer: the status is granted, the token is CMS SignedData
//! whose TSTInfo names the checkpoint's hash (SHA-256) and the nonce it sent. The token's
//! signature is the TSA's and is checked by whoever relies on it, against the TSA
//! certificate they trust.

use std::time::Duration;

use bytes::Bytes;
use cms::content_info::ContentInfo;
use cms::signed_data::SignedData;
use der::asn1::{Int, ObjectIdentifier, OctetString};
use der::{Decode as _, Encode as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use x509_tsp::{MessageImprint, TimeStampReq, TimeStampResp, TspVersion, TstInfo};

/// SHA-256's OID.
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-ct-TSTInfo.
const TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
/// Largest answer taken.
const MAX_BYTES: usize = 64 * 1024;

/// A TSA reached over HTTP (`application/timestamp-query`, RFC 3161 §3.4).
#[derive(Debug, Clone)]
pub struct Tsa {
    url: http::Uri,
    host: String,
    port: u16,
    timeout: Duration,
}

/// A time-stamp token, checked against its request.
#[derive(Debug, Clone)]
pub struct Stamp {
    /// The token (CMS ContentInfo, DER): what `openssl ts -verify -in` takes as `-token_in`.
    pub token: Vec<u8>,
    /// The TSA's time (ms since the epoch).
    pub gen_time_ms: i64,
}

impl Tsa {
    pub fn new(url: &str, timeout: Duration) -> Result<Tsa, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "`{url}`: the TSA is reached over http (its tokens are signed; TLS adds nothing to them)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("`{url}` has no host"))?
            .to_string();
        Ok(Tsa {
            port: uri.port_u16().unwrap_or(80),
            host,
            url: uri,
            timeout,
        })
    }

    pub fn url(&self) -> String {
        self.url.to_string()
    }

    /// Time-stamps `message` (its SHA-256).
    pub async fn stamp(&self, message: &[u8]) -> Result<Stamp, String> {
        tokio::time::timeout(self.timeout, self.stamp_inner(message))
            .await
            .map_err(|_| {
                format!(
                    "the TSA at {} did not answer within {:?}",
                    self.url, self.timeout
                )
            })?
    }

    async fn stamp_inner(&self, message: &[u8]) -> Result<Stamp, String> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let mut nonce_bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut nonce_bytes).map_err(|_| "no randomness for the nonce")?;
        nonce_bytes[0] &= 0x7f; // a positive INTEGER
        let nonce = Int::new(&nonce_bytes).map_err(|e| e.to_string())?;
        let req = TimeStampReq {
            version: TspVersion::V1,
            message_imprint: MessageImprint {
                hash_algorithm: cms::cert::x509::spki::AlgorithmIdentifier {
                    oid: SHA256,
                    parameters: None,
                },
                hashed_message: OctetString::new(digest.to_vec()).map_err(|e| e.to_string())?,
            },
            req_policy: None,
            nonce: Some(nonce.clone()),
            cert_req: true,
            extensions: None,
        };
        let body = req.to_der().map_err(|e| e.to_string())?;
        let answer = self.post(body).await?;
        let resp =
            TimeStampResp::from_der(&answer).map_err(|e| format!("not a TimeStampResp: {e}"))?;
        // PKIStatus granted (0) or grantedWithMods (1).
        let status = resp.status.status as u8;
        if status > 1 {
            return Err(format!("the TSA refused (PKIStatus {status})"));
        }
        let token = resp
            .time_stamp_token
            .ok_or("the TSA granted but sent no token")?;
        let token_der = token.to_der().map_err(|e| e.to_string())?;
        let info = tst_info(&token)?;
        if info.message_imprint.hash_algorithm.oid != SHA256
            || info.message_imprint.hashed_message.as_bytes() != digest
        {
            return Err("the token time-stamps another message".into());
        }
        if info.nonce.as_ref() != Some(&nonce) {
            return Err("the token does not carry the nonce sent".into());
        }
        Ok(Stamp {
            token: token_der,
            gen_time_ms: unix_ms(&info),
        })
    }

    async fn post(&self, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let fail = |e: String| format!("TSA {}: {e}", self.url);
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = self.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let req = http::Request::post(path)
            .header(http::header::HOST, self.host.as_str())
            .header(http::header::CONTENT_TYPE, "application/timestamp-query")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if resp.status() != http::StatusCode::OK {
            return Err(fail(format!("http {}", resp.status())));
        }
        let bytes = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("body: {e}")))?
            .to_bytes();
        Ok(bytes.to_vec())
    }
}

/// The TSTInfo inside a token (CMS SignedData, eContentType id-ct-TSTInfo).
pub fn tst_info(token: &ContentInfo) -> Result<TstInfo, String> {
    let signed = token
        .content
        .decode_as::<SignedData>()
        .map_err(|e| format!("the token is not SignedData: {e}"))?;
    if signed.encap_content_info.econtent_type != TST_INFO {
        return Err("the token's content is not a TSTInfo".into());
    }
    let content = signed
        .encap_content_info
        .econtent
        .ok_or("the token carries no TSTInfo")?;
    let octets = content
        .decode_as::<OctetString>()
        .map_err(|e| format!("TSTInfo: {e}"))?;
    TstInfo::from_der(octets.as_bytes()).map_err(|e| format!("TSTInfo: {e}"))
}

fn unix_ms(info: &TstInfo) -> i64 {
    i64::try_from(info.gen_time.to_unix_duration().as_millis()).unwrap_or(i64::MAX)
}

/// The time a token (DER) states (ms since the epoch), and the SHA-256 it time-stamps.
pub fn token_time(token_der: &[u8]) -> Result<(i64, Vec<u8>), String> {
    let ci = ContentInfo::from_der(token_der).map_err(|e| e.to_string())?;
    let info = tst_info(&ci)?;
    Ok((
        unix_ms(&info),
        info.message_imprint.hashed_message.as_bytes().to_vec(),
    ))
}
