//! Federation trust: the trust bundle (one CA per city), this node's identity (certificate and
//! ed25519 key), the rustls configurations of the mTLS peer channel, and the one place where a
//! peer's city is derived — from its verified certificate, never from a header.
//!
//! A node certificate carries the DNS name `node.<city>.tongban` (the bundle may name another)
//! and must chain to *that city's* CA: a certificate issued by Jinan's CA that claims to be
//! Qingdao is refused even though Jinan's CA is in the bundle.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::config::validate_city_id;

/// ALPN id of HTTP/2, the only protocol on both listeners.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid {what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("peer certificate refused: {0}")]
    PeerRefused(String),
    #[error("bad signature: {0}")]
    Signature(String),
    #[error("organisation signing certificate of `{city}/{org}` refused: {problem}")]
    OrgCertRefused {
        city: String,
        org: String,
        problem: CertProblem,
    },
}

/// Why a certificate chain was refused, each named as an inspector needs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertProblem {
    #[error("unknown issuer: it does not chain to the city's CA in the trust bundle")]
    UnknownIssuer,
    #[error("bad signature: a certificate of the chain is not signed by its issuer's key")]
    BadSignature,
    #[error("expired (or not yet valid) at the time of signing")]
    Expired,
    #[error("wrong key usage: the certificate is not for this use")]
    WrongKeyUsage,
    #[error("it names another organisation or city")]
    WrongName,
    #[error("no certificate")]
    Missing,
    #[error("{0}")]
    Other(String),
}

impl CertProblem {
    fn of(e: &rustls::Error) -> CertProblem {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => CertProblem::UnknownIssuer,
                C::BadSignature => CertProblem::BadSignature,
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => CertProblem::Expired,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => CertProblem::WrongKeyUsage,
                C::NotValidForName | C::NotValidForNameContext { .. } => CertProblem::WrongName,
                other => CertProblem::Other(format!("{other:?}")),
            },
            other => CertProblem::Other(other.to_string()),
        }
    }
}

fn invalid(what: &'static str, message: impl Into<String>) -> TrustError {
    TrustError::Invalid {
        what,
        message: message.into(),
    }
}

/// The conventional node identity name of a city.
pub fn node_name(city: &str) -> String {
    format!("node.{city}.tongban")
}

/// The conventional identity name of an organisation's signing certificate (electronic
/// certificates it issues are signed with its key).
pub fn org_name(city: &str, org: &str) -> String {
    format!("{org}.org.{city}.tongban")
}

/// The file format of the trust bundle (`trust-bundle.toml`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustBundleFile {
    pub cities: Vec<CityEntryFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityEntryFile {
    pub id: String,
    /// DNS name in the SAN of the city's node certificates.
    pub node_name: String,
    /// PEM of the city's CA certificate.
    pub ca_pem: String,
}

/// One city of the federation as trusted by this node.
struct CityTrust {
    node_name: String,
    ca: CertificateDer<'static>,
    /// Verifies a certificate against this city's CA only, name included.
    verifier: Arc<WebPkiServerVerifier>,
}

/// The validated trust bundle of the federation.
#[derive(Clone)]
pub struct TrustBundle {
    cities: Arc<BTreeMap<String, CityTrust>>,
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("cities", &self.cities.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TrustBundle {
    pub fn load(path: &Path) -> Result<TrustBundle, TrustError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
            what: "trust bundle",
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<TrustBundle, TrustError> {
        let file: TrustBundleFile =
            toml::from_str(text).map_err(|e| invalid("trust bundle", e.to_string()))?;
        let mut cities = BTreeMap::new();
        for c in file.cities {
            validate_city_id(&c.id).map_err(|m| invalid("trust bundle", m))?;
            let ca = CertificateDer::from_pem_slice(c.ca_pem.as_bytes())
                .map_err(|e| invalid("trust bundle", format!("ca_pem of city `{}`: {e}", c.id)))?;
            let mut roots = RootCertStore::empty();
            roots
                .add(ca.clone())
                .map_err(|e| invalid("trust bundle", format!("ca_pem of city `{}`: {e}", c.id)))?;
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| invalid("trust bundle", format!("city `{}`: {e}", c.id)))?;
            ServerName::try_from(c.node_name.clone()).map_err(|_| {
                invalid(
                    "trust bundle",
                    format!(
                        "node_name `{}` of city `{}` is not a dns name",
                        c.node_name, c.id
                    ),
                )
            })?;
            let entry = CityTrust {
                node_name: c.node_name,
                ca,
                verifier,
            };
            if cities.insert(c.id.clone(), entry).is_some() {
                return Err(invalid(
                    "trust bundle",
                    format!("city `{}` is listed twice", c.id),
                ));
            }
        }
        if cities.is_empty() {
            return Err(invalid("trust bundle", "lists no city"));
        }
        Ok(TrustBundle {
            cities: Arc::new(cities),
        })
    }

    pub fn contains(&self, city: &str) -> bool {
        self.cities.contains_key(city)
    }

    pub fn cities(&self) -> impl Iterator<Item = &str> {
        self.cities.keys().map(String::as_str)
    }

    fn city(&self, city: &str) -> Result<&CityTrust, TrustError> {
        self.cities.get(city).ok_or_else(|| {
            TrustError::PeerRefused(format!("city `{city}` is not in the trust bundle"))
        })
    }

    /// The identity name that `city`'s node certificates carry.
    pub fn node_name_of(&self, city: &str) -> Result<ServerName<'static>, TrustError> {
        let name = self.city(city)?.node_name.clone();
        ServerName::try_from(name).map_err(|e| invalid("trust bundle", e.to_string()))
    }

    /// Verifies that `chain[0]` is a node certificate of `city`: it chains to that city's CA,
    /// is valid now and carries the city's node name.
    pub fn verify_node_cert(
        &self,
        city: &str,
        chain: &[CertificateDer<'static>],
    ) -> Result<(), TrustError> {
        let name = self.city(city)?.node_name.clone();
        self.verify_named(city, name, "a node certificate", chain, UnixTime::now())
    }

    /// Verifies that `chain[0]` is the signing certificate of organisation `org` of `city`:
    /// it chains to that city's CA, was valid at `at` and carries [`org_name`].
    pub fn verify_org_cert(
        &self,
        city: &str,
        org: &str,
        chain: &[CertificateDer<'static>],
        at: UnixTime,
    ) -> Result<(), TrustError> {
        let refused = |problem| TrustError::OrgCertRefused {
            city: city.to_string(),
            org: org.to_string(),
            problem,
        };
        let trust = self.city(city)?;
        let (ee, intermediates) = chain
            .split_first()
            .ok_or_else(|| refused(CertProblem::Missing))?;
        let name = ServerName::try_from(org_name(city, org))
            .map_err(|e| invalid("trust bundle", e.to_string()))?;
        trust
            .verifier
            .verify_server_cert(ee, intermediates, &name, &[], at)
            .map_err(|e| refused(CertProblem::of(&e)))?;
        Ok(())
    }

    fn verify_named(
        &self,
        city: &str,
        name: String,
        what: &str,
        chain: &[CertificateDer<'static>],
        at: UnixTime,
    ) -> Result<(), TrustError> {
        let trust = self.city(city)?;
        let (ee, intermediates) = chain
            .split_first()
            .ok_or_else(|| TrustError::PeerRefused("no certificate".into()))?;
        let name =
            ServerName::try_from(name).map_err(|e| invalid("trust bundle", e.to_string()))?;
        trust
            .verifier
            .verify_server_cert(ee, intermediates, &name, &[], at)
            .map_err(|e| TrustError::PeerRefused(format!("not {what} of city `{city}`: {e}")))?;
        Ok(())
    }

    /// Derives the city of a peer from its verified client certificate chain: the SAN names
    /// the city, and the chain must verify against that city's CA.
    pub fn identify_peer(&self, chain: &[CertificateDer<'static>]) -> Result<String, TrustError> {
        let ee = chain
            .first()
            .ok_or_else(|| TrustError::PeerRefused("no client certificate".into()))?;
        let names = dns_names(ee)?;
        let city = self
            .cities
            .iter()
            .find(|(_, t)| names.iter().any(|n| n == &t.node_name))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                TrustError::PeerRefused(format!(
                    "certificate names {names:?} match no city of the trust bundle"
                ))
            })?;
        self.verify_node_cert(&city, chain)?;
        Ok(city)
    }

    fn roots(&self, only: Option<&str>) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for (id, t) in self.cities.iter() {
            if only.is_none_or(|c| c == id) {
                // The CA was added to a store once already in `parse`, so this cannot fail.
                let _ = roots.add(t.ca.clone());
            }
        }
        roots
    }
}

fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TrustError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TrustError::PeerRefused(format!("unparsable certificate: {e}")))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push((*d).to_string());
            }
        }
    }
    Ok(out)
}

/// The key types of node certificates. Ed25519 is the default; ECDSA P-256 is for
/// federations whose peers run TLS stacks without Ed25519 certificates (gRPC's C core).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKeyType {
    Ed25519,
    P256,
}

impl NodeKeyType {
    /// The one JWT algorithm a node key of this type signs with and is verified with.
    pub fn jwt_algorithm(self) -> Algorithm {
        match self {
            NodeKeyType::Ed25519 => Algorithm::EdDSA,
            NodeKeyType::P256 => Algorithm::ES256,
        }
    }

    /// The type of a raw public key as [`public_key_of`] returns it: 32 bytes for Ed25519,
    /// a 65-byte uncompressed SEC1 point for P-256.
    pub fn of_public_key(raw: &[u8]) -> Option<NodeKeyType> {
        match (raw.len(), raw.first()) {
            (32, _) => Some(NodeKeyType::Ed25519),
            (65, Some(0x04)) => Some(NodeKeyType::P256),
            _ => None,
        }
    }
}

/// A new Ed25519 private key as PKCS#8 v1 DER (RFC 8410: the seed only, no public key).
/// v1 is what OpenSSL 3, Python `cryptography`, PyJWT and most tools read; the v2 documents
/// aws-lc writes by default are refused by several of them. Both load here.
pub fn generate_ed25519_pkcs8_v1() -> Result<Vec<u8>, TrustError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| invalid("key generation", "no randomness"))?;
    // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    Ok(der)
}

/// A JWT verification key for a node's raw public key, with the only algorithm that key
/// may sign with (algorithms are pinned by key type, never taken from a token header).
pub fn jwt_decoding_key(raw: &[u8]) -> (DecodingKey, Algorithm) {
    match NodeKeyType::of_public_key(raw) {
        Some(NodeKeyType::P256) => (DecodingKey::from_ec_der(raw), Algorithm::ES256),
        _ => (DecodingKey::from_ed_der(raw), Algorithm::EdDSA),
    }
}

/// Signs JWTs (caller assertions, receipts, consents) with a node key, in the algorithm of
/// its type.
pub struct NodeJwtSigner {
    key: EncodingKey,
    alg: Algorithm,
}

impl NodeJwtSigner {
    /// `pkcs8`: the node key (Ed25519 or P-256), PKCS#8 DER v1 or v2.
    pub fn from_pkcs8(pkcs8: &[u8]) -> NodeJwtSigner {
        if EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).is_ok() {
            NodeJwtSigner {
                key: EncodingKey::from_ec_der(pkcs8),
                alg: Algorithm::ES256,
            }
        } else {
            NodeJwtSigner {
                key: EncodingKey::from_ed_der(pkcs8),
                alg: Algorithm::EdDSA,
            }
        }
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.key)
    }
}

/// The private half of a node key.
enum KeySigner {
    Ed25519(Ed25519KeyPair),
    P256(EcdsaKeyPair),
}

impl KeySigner {
    /// Reads an Ed25519 or P-256 key, PKCS#8 v1 or v2.
    fn from_pkcs8(der: &[u8]) -> Result<KeySigner, TrustError> {
        if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
            return Ok(KeySigner::Ed25519(k));
        }
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map(KeySigner::P256)
            .map_err(|e| {
                invalid(
                    "node key",
                    format!("not an ed25519 or ecdsa p-256 pkcs#8 key: {e}"),
                )
            })
    }

    fn public_key(&self) -> &[u8] {
        match self {
            KeySigner::Ed25519(k) => k.public_key().as_ref(),
            KeySigner::P256(k) => k.public_key().as_ref(),
        }
    }
}

fn read_file(what: &'static str, p: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(p).map_err(|source| TrustError::Read {
        what,
        path: p.display().to_string(),
        source,
    })
}

/// This node's certificate and key.
pub struct NodeIdentity {
    pub city: String,
    pub chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    signer: KeySigner,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("city", &self.city)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads the node certificate (PEM chain) and key (Ed25519 or P-256, PKCS#8 PEM v1 or
    /// v2) and checks that
    /// they belong together and to `city` under the trust bundle.
    pub fn load(
        city: &str,
        cert_path: &Path,
        key_path: &Path,
        bundle: &TrustBundle,
    ) -> Result<NodeIdentity, TrustError> {
        let cert_pem = read_file("node certificate", cert_path)?;
        let key_pem = read_file("node key", key_path)?;
        Self::from_pem(city, &cert_pem, &key_pem, bundle)
    }

    /// The signing certificate and key of organisation `org` of `city` (it signs the
    /// electronic certificates the organisation issues), checked like a node's.
    pub fn load_org(
        city: &str,
        org: &str,
        cert_path: &Path,
        key_path: &Path,
        bundle: &TrustBundle,
    ) -> Result<NodeIdentity, TrustError> {
        let cert_pem = read_file("organisation certificate", cert_path)?;
        let key_pem = read_file("organisation key", key_path)?;
        Self::from_pem_checked(city, &cert_pem, &key_pem, |chain| {
            bundle.verify_org_cert(city, org, chain, UnixTime::now())
        })
    }

    pub fn from_pem(
        city: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
        bundle: &TrustBundle,
    ) -> Result<NodeIdentity, TrustError> {
        Self::from_pem_checked(city, cert_pem, key_pem, |chain| {
            bundle.verify_node_cert(city, chain)
        })
    }

    fn from_pem_checked(
        city: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
        check: impl FnOnce(&[CertificateDer<'static>]) -> Result<(), TrustError>,
    ) -> Result<NodeIdentity, TrustError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("node certificate", e.to_string()))?;
        if chain.is_empty() {
            return Err(invalid("node certificate", "no certificate in file"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| invalid("node key", e.to_string()))?;
        let key_der = key.secret_der().to_vec();
        let signer = KeySigner::from_pkcs8(&key_der)?;
        check(&chain).map_err(|e| invalid("node certificate", e.to_string()))?;
        let cert_key = public_key_of(&chain[0])?;
        if cert_key.as_slice() != signer.public_key() {
            return Err(invalid("node key", "does not match the node certificate"));
        }
        Ok(NodeIdentity {
            city: city.to_string(),
            chain,
            key_der,
            signer,
        })
    }

    /// DER of this node's certificate (sent in the federation handshake).
    pub fn cert_der(&self) -> Vec<u8> {
        self.chain.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// The type of this node's key.
    pub fn key_type(&self) -> NodeKeyType {
        match self.signer {
            KeySigner::Ed25519(_) => NodeKeyType::Ed25519,
            KeySigner::P256(_) => NodeKeyType::P256,
        }
    }

    /// Signs JWTs with the node key.
    pub fn jwt_signer(&self) -> NodeJwtSigner {
        NodeJwtSigner::from_pkcs8(&self.key_der)
    }

    /// Signs `msg` with the node key (Ed25519, or ECDSA P-256 with SHA-256 as r‖s).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.signer {
            KeySigner::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
            KeySigner::P256(k) => match k.sign(&aws_lc_rs::rand::SystemRandom::new(), msg) {
                Ok(sig) => sig.as_ref().to_vec(),
                Err(error) => {
                    // Cannot happen short of a broken RNG; an empty signature fails to verify.
                    tracing::error!(%error, "ecdsa signing failed");
                    Vec::new()
                }
            },
        }
    }

    /// The server side of the peer listener: TLS 1.3/1.2, h2 only, a client certificate from
    /// any city of the bundle required (the city itself is checked after the handshake).
    pub fn peer_server_config(
        &self,
        bundle: &TrustBundle,
    ) -> Result<Arc<rustls::ServerConfig>, TrustError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(bundle.roots(None)), provider())
                .build()
                .map_err(|e| invalid("trust bundle", e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls", e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.private_key())
            .map_err(|e| invalid("node certificate", e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The client side of the channel to `peer_city`: only that city's CA is trusted, so a
    /// certificate from any other CA of the bundle cannot impersonate the peer.
    /// TLS for the caller listener: this node's certificate chain and key from `cert`/`key`
    /// files, and, with `client_ca`, client certificates required from that CA.
    pub fn caller_server_config(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Arc<rustls::ServerConfig>, TrustError> {
        let chain = CertificateDer::pem_slice_iter(&read_file("caller tls certificate", cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("caller tls certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&read_file("caller tls key", key)?)
            .map_err(|e| invalid("caller tls key", e.to_string()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls", e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read_file("caller client ca", ca)?) {
                    let c = c.map_err(|e| invalid("caller client ca", e.to_string()))?;
                    roots
                        .add(c)
                        .map_err(|e| invalid("caller client ca", e.to_string()))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| invalid("caller client ca", e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut cfg = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid("caller tls certificate", e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// TLS of the web listener: the caller listener's certificate, no client certificates
    /// (browsers have none), HTTP/2 or HTTP/1.1.
    pub fn web_server_config(
        cert: &Path,
        key: &Path,
    ) -> Result<Arc<rustls::ServerConfig>, TrustError> {
        let mut cfg = (*Self::caller_server_config(cert, key, None)?).clone();
        cfg.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The client side of a call to another replica of this city at its TLS caller
    /// listener. The replicas of a city share the caller certificate (`cert`, `key`), so the
    /// other replica is accepted with exactly that certificate (pinned: no CA is involved),
    /// and a listener that asks for a client certificate is given the same one.
    pub fn replica_client_config(
        cert: &Path,
        key: &Path,
    ) -> Result<Arc<rustls::ClientConfig>, TrustError> {
        let chain = CertificateDer::pem_slice_iter(&read_file("caller tls certificate", cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("caller tls certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&read_file("caller tls key", key)?)
            .map_err(|e| invalid("caller tls key", e.to_string()))?;
        let own = chain
            .first()
            .cloned()
            .ok_or_else(|| invalid("caller tls certificate", "no certificate"))?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                cert: own,
                provider: provider(),
            }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid("caller tls certificate", e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The node key (PKCS#8 DER), for signing caller assertions.
    pub fn key_pkcs8(&self) -> &[u8] {
        &self.key_der
    }

    pub fn peer_client_config(
        &self,
        bundle: &TrustBundle,
        peer_city: &str,
    ) -> Result<Arc<rustls::ClientConfig>, TrustError> {
        bundle.city(peer_city)?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls", e.to_string()))?
            .with_root_certificates(bundle.roots(Some(peer_city)))
            .with_client_auth_cert(self.chain.clone(), self.private_key())
            .map_err(|e| invalid("node certificate", e.to_string()))?;
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Accepts a server with exactly one certificate (its handshake signature still checked).
#[derive(Debug)]
struct PinnedServer {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The public key of `city`'s node from its certificate file (PEM, the node's first), once
/// the certificate is checked as that city's node certificate: what a service of the city
/// verifies its node's signed statements with (e.g. consent tokens).
pub fn node_public_key(
    city: &str,
    cert_path: &Path,
    bundle: &TrustBundle,
) -> Result<Vec<u8>, TrustError> {
    let pem = read_file("node certificate", cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("node certificate", e.to_string()))?;
    bundle.verify_node_cert(city, &chain)?;
    let first = chain
        .first()
        .ok_or_else(|| invalid("node certificate", "no certificate in the file"))?;
    public_key_of(first)
}

/// The raw public key of a node certificate: 32 bytes of Ed25519, or the 65-byte
/// uncompressed point of a P-256 key.
pub fn public_key_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, TrustError> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| invalid("certificate", e.to_string()))?;
    let spki = parsed.public_key();
    let alg = &spki.algorithm;
    let p256 = alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|c| c == OID_EC_P256);
    if alg.algorithm != OID_SIG_ED25519 && !p256 {
        return Err(invalid(
            "certificate",
            "node keys must be ed25519 or ecdsa p-256",
        ));
    }
    Ok(spki.subject_public_key.data.to_vec())
}

/// Verifies a signature made by the holder of `cert` ([`NodeIdentity::sign`]).
pub fn verify_signature(
    cert: &CertificateDer<'_>,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), TrustError> {
    let key = public_key_of(cert)?;
    let alg: &dyn signature::VerificationAlgorithm = match NodeKeyType::of_public_key(&key) {
        Some(NodeKeyType::P256) => &signature::ECDSA_P256_SHA256_FIXED,
        _ => &signature::ED25519,
    };
    signature::UnparsedPublicKey::new(alg, key)
        .verify(msg, sig)
        .map_err(|_| TrustError::Signature("node key signature does not verify".into()))
}

/// The city of the node at the other end of a peer-listener connection, derived from its
/// verified certificate by [`TrustBundle::identify_peer`]. Attached to every request of that
/// connection as an extension; nothing a client sends can set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub city: String,
    /// Raw public key of the peer's node certificate: verifies its caller assertions.
    pub public_key: Arc<Vec<u8>>,
    /// The connection's channel binding: the peer's caller assertions must name it.
    pub binding: Option<ChannelBinding>,
}

/// The exporter label (RFC 8446 §7.5) of the channel binding.
pub const BINDING_LABEL: &[u8] = b"EXPORTER-tongban-caller-assertion";

/// The exporter label (RFC 8446 §7.5) of the key of the caller assertions' MAC form.
pub const MAC_LABEL: &[u8] = b"EXPORTER-tongban-assertion-mac";

/// What binds an assertion to one TLS connection: base64url (no padding) of the SHA-256 of
/// 32 bytes exported from the connection with [`BINDING_LABEL`] and no context. Both ends of
/// the connection compute the same value; no other connection has it. With it, the key of
/// the assertions' MAC form: 32 bytes exported with [`MAC_LABEL`], known to the two ends of
/// the connection only.
#[derive(Clone)]
pub struct ChannelBinding {
    chb: String,
    mac_key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelBinding")
            .field("chb", &self.chb)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ChannelBinding {
    fn eq(&self, other: &Self) -> bool {
        self.chb == other.chb
    }
}

impl Eq for ChannelBinding {}

impl ChannelBinding {
    /// The binding of a rustls connection (client or server side); `None` before the
    /// handshake completed.
    pub fn of<D>(conn: &rustls::ConnectionCommon<D>) -> Option<ChannelBinding> {
        let exported = conn
            .export_keying_material([0u8; 32], BINDING_LABEL, None)
            .ok()?;
        let mac_key = conn
            .export_keying_material([0u8; 32], MAC_LABEL, None)
            .ok()?;
        Some(ChannelBinding {
            chb: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(exported)),
            mac_key: Arc::new(mac_key),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.chb
    }

    /// The key of the assertions' MAC form on this connection.
    pub fn mac_key(&self) -> &[u8; 32] {
        &self.mac_key
    }

    /// A made-up binding (its key derived from `s`), for tests of the checks.
    #[cfg(test)]
    pub(crate) fn for_tests(s: &str) -> ChannelBinding {
        ChannelBinding {
            chb: s.to_string(),
            mac_key: Arc::new(sha2::Sha256::digest(s.as_bytes()).into()),
        }
    }
}

/// A fresh Ed25519 node key for unit tests: its signer, its raw public key, its PKCS#8.
#[cfg(test)]
pub(crate) fn test_node_key() -> (NodeJwtSigner, std::sync::Arc<Vec<u8>>, Vec<u8>) {
    let der = generate_ed25519_pkcs8_v1().unwrap();
    let public = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    (
        NodeJwtSigner::from_pkcs8(&der),
        std::sync::Arc::new(public),
        der,
    )
}

#[cfg(test)]
mod cert_problem_tests {
    use super::CertProblem;
    use rustls::CertificateError as C;

    #[test]
    fn each_certificate_problem_is_named_as_such() {
        let of = |c: C| CertProblem::of(&rustls::Error::InvalidCertificate(c));
        assert_eq!(of(C::UnknownIssuer), CertProblem::UnknownIssuer);
        assert_eq!(of(C::BadSignature), CertProblem::BadSignature);
        assert_eq!(of(C::Expired), CertProblem::Expired);
        assert_eq!(of(C::NotValidYet), CertProblem::Expired);
        assert_eq!(of(C::InvalidPurpose), CertProblem::WrongKeyUsage);
        assert_eq!(of(C::NotValidForName), CertProblem::WrongName);
        assert!(CertProblem::UnknownIssuer
            .to_string()
            .starts_with("unknown issuer"));
        assert!(CertProblem::WrongKeyUsage
            .to_string()
            .starts_with("wrong key usage"));
    }
}
