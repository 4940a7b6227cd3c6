//! `tongban certs init`: a development PKI for a federation — one CA per city, one node
//! certificate per city carrying the city's node name, and the trust bundle listing them.
//!
//! Keys are Ed25519 by default, or ECDSA P-256 (`--key-type p256`) for federations whose
//! peers run TLS stacks without Ed25519 certificates. Private keys are written as PKCS#8 v1,
//! which OpenSSL 3 and Python `cryptography` read. CA keys are written too (mode 0600) so
//! that an operator can issue more node certificates; in production the CA key stays with
//! the city's PKI, not the node.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
};
use rustls::pki_types::PrivatePkcs8KeyDer;

use crate::idp::DevIdp;
use tongban_gateway::config::validate_city_id;
use tongban_gateway::trust::{node_name, org_name, CityEntryFile, NodeKeyType, TrustBundleFile};

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{0}")]
    BadCity(String),
    #[error("at least one --city is needed")]
    NoCity,
    #[error("{path} already exists (pass --force to overwrite)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What `init` produced for one city.
#[derive(Debug, Clone)]
pub struct CityFiles {
    pub city: String,
    pub ca_cert: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    /// The dev identity provider's signing key and its JWKS.
    pub idp_key: PathBuf,
    pub jwks: PathBuf,
    /// Signing certificate and key of each organisation of the catalog, by organisation id
    /// (`orgs/<org>.pem`, `orgs/<org>.key`): they sign the electronic certificates it issues.
    pub orgs: std::collections::BTreeMap<String, (PathBuf, PathBuf)>,
}

/// What `init` produced.
#[derive(Debug, Clone)]
pub struct Generated {
    pub trust_bundle: PathBuf,
    pub cities: Vec<CityFiles>,
}

impl Generated {
    pub fn city(&self, city: &str) -> Option<&CityFiles> {
        self.cities.iter().find(|c| c.city == city)
    }
}

const DAY: time::Duration = time::Duration::days(1);

/// A new key pair of `kind`; Ed25519 keys are made as PKCS#8 v1 so that they are written so.
fn new_key(kind: NodeKeyType) -> Result<KeyPair, CertsError> {
    match kind {
        NodeKeyType::Ed25519 => {
            let der = tongban_gateway::trust::generate_ed25519_pkcs8_v1()
                .map_err(|e| CertsError::BadCity(e.to_string()))?;
            Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(der),
                &PKCS_ED25519,
            )?)
        }
        NodeKeyType::P256 => Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?),
    }
}

/// A city's CA: its certificate PEM and the issuer that signs node certificates.
pub struct CityCa {
    pub city: String,
    pub kind: NodeKeyType,
    pub cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CityCa {
    pub fn generate(city: &str) -> Result<CityCa, CertsError> {
        Self::generate_with(city, NodeKeyType::Ed25519)
    }

    /// A CA whose key, and the node keys it issues, are of `kind`.
    pub fn generate_with(city: &str, kind: NodeKeyType) -> Result<CityCa, CertsError> {
        validate_city_id(city).map_err(CertsError::BadCity)?;
        let key = new_key(kind)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("tongban {city} ca"));
        params.distinguished_name.push(
            DnType::OrganizationName,
            format!("tongban federation: {city}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - DAY;
        params.not_after = now + DAY * 3650;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CityCa {
            city: city.to_string(),
            kind,
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a node certificate for `cert_city` (normally the CA's own city; a different one
    /// only in tests that check a CA cannot vouch for another city). Returns (cert, key) PEM.
    pub fn issue_node(&self, cert_city: &str) -> Result<(String, String), CertsError> {
        let key = new_key(self.kind)?;
        let mut params = CertificateParams::new(vec![node_name(cert_city)])?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_name(cert_city));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - DAY;
        params.not_after = now + DAY * 365;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues the signing certificate of organisation `org` of this CA's city, named
    /// [`org_name`]. It carries the server-auth usage only because the trust bundle's
    /// verifier (webpki's) checks names and chains for that usage; it is never used for TLS.
    /// Returns (cert, key) PEM.
    pub fn issue_org(&self, org: &str) -> Result<(String, String), CertsError> {
        let key = new_key(self.kind)?;
        let name = org_name(&self.city, org);
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::ContentCommitment,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - DAY;
        params.not_after = now + DAY * 365 * 3;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Builds the text of a trust bundle listing `cas`.
pub fn trust_bundle_text(cas: &[&CityCa]) -> String {
    let file = TrustBundleFile {
        cities: cas
            .iter()
            .map(|ca| CityEntryFile {
                id: ca.city.clone(),
                node_name: node_name(&ca.city),
                ca_pem: ca.cert_pem.clone(),
            })
            .collect(),
    };
    let body = toml::to_string(&file).unwrap_or_default();
    format!("# tongban federation trust bundle: one ca certificate per city\n{body}")
}

/// The organisations of the embedded catalog: each gets a signing certificate.
fn catalog_orgs() -> Vec<String> {
    tongban_catalog::Catalog::embedded()
        .map(|c| c.organisations.keys().cloned().collect())
        .unwrap_or_default()
}

/// Generates the PKI of a federation of `cities` under `out` (Ed25519 keys).
pub fn init(out: &Path, cities: &[String], force: bool) -> Result<Generated, CertsError> {
    init_with(out, cities, force, NodeKeyType::Ed25519)
}

/// [`init`] with CA and node keys of `kind`.
pub fn init_with(
    out: &Path,
    cities: &[String],
    force: bool,
    kind: NodeKeyType,
) -> Result<Generated, CertsError> {
    if cities.is_empty() {
        return Err(CertsError::NoCity);
    }
    let mut cas = Vec::new();
    for c in cities {
        if cas.iter().any(|ca: &CityCa| &ca.city == c) {
            return Err(CertsError::BadCity(format!("city `{c}` is given twice")));
        }
        cas.push(CityCa::generate_with(c, kind)?);
    }
    let trust_bundle = out.join("trust-bundle.toml");
    let mut files = Vec::new();
    for ca in &cas {
        let dir = out.join(&ca.city);
        let (node_cert, node_key) = ca.issue_node(&ca.city)?;
        let mut f = CityFiles {
            city: ca.city.clone(),
            ca_cert: dir.join("ca.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
            idp_key: dir.join("idp.key"),
            jwks: dir.join("jwks.json"),
            orgs: std::collections::BTreeMap::new(),
        };
        for org in catalog_orgs() {
            let (cert, key) = ca.issue_org(&org)?;
            let (cp, kp) = (
                dir.join("orgs").join(format!("{org}.pem")),
                dir.join("orgs").join(format!("{org}.key")),
            );
            write(&cp, &cert, false, force)?;
            write(&kp, &key, true, force)?;
            f.orgs.insert(org, (cp, kp));
        }
        let idp = DevIdp::generate(&ca.city, &crate::idp::kid(&ca.city, 1))
            .map_err(|e| CertsError::BadCity(e.to_string()))?;
        write(&f.idp_key, &idp.key_pem(), true, force)?;
        write(&f.jwks, &DevIdp::jwks(&[&idp]), false, force)?;
        write(&f.ca_cert, &ca.cert_pem, false, force)?;
        write(&dir.join("ca.key"), &ca.key_pem, true, force)?;
        write(&f.node_cert, &node_cert, false, force)?;
        write(&f.node_key, &node_key, true, force)?;
        files.push(f);
    }
    let refs: Vec<&CityCa> = cas.iter().collect();
    write(&trust_bundle, &trust_bundle_text(&refs), false, force)?;
    Ok(Generated {
        trust_bundle,
        cities: files,
    })
}

fn write(path: &Path, text: &str, secret: bool, force: bool) -> Result<(), CertsError> {
    let err = |source| CertsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() && !force {
        return Err(CertsError::Exists {
            path: path.to_path_buf(),
        });
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tongban_gateway::trust::{NodeIdentity, TrustBundle};

    #[test]
    fn generated_pki_loads_and_identifies_cities() {
        let dir = tempfile::tempdir().unwrap();
        let g = init(dir.path(), &["jinan".into(), "qingdao".into()], false).unwrap();
        let bundle = TrustBundle::load(&g.trust_bundle).unwrap();
        for c in &g.cities {
            let id = NodeIdentity::load(&c.city, &c.node_cert, &c.node_key, &bundle).unwrap();
            assert_eq!(bundle.identify_peer(&id.chain).unwrap(), c.city);
        }
        // refusing to overwrite without --force
        assert!(matches!(
            init(dir.path(), &["jinan".into()], false),
            Err(CertsError::Exists { .. })
        ));
    }

    #[test]
    fn a_city_ca_cannot_vouch_for_another_city() {
        let jinan = CityCa::generate("jinan").unwrap();
        let qingdao = CityCa::generate("qingdao").unwrap();
        let bundle = TrustBundle::parse(&trust_bundle_text(&[&jinan, &qingdao])).unwrap();
        let (cert, key) = jinan.issue_node("qingdao").unwrap();
        let err = NodeIdentity::from_pem("qingdao", cert.as_bytes(), key.as_bytes(), &bundle)
            .unwrap_err();
        assert!(err.to_string().contains("qingdao"), "{err}");
        let chain: Vec<_> = rustls::pki_types::pem::PemObject::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<rustls::pki_types::CertificateDer<'static>>, _>>()
            .unwrap();
        assert!(bundle.identify_peer(&chain).is_err());
    }

    #[test]
    fn bad_city_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            init(dir.path(), &["Jinan".into()], false),
            Err(CertsError::BadCity(_))
        ));
        assert!(matches!(
            init(dir.path(), &[], false),
            Err(CertsError::NoCity)
        ));
    }
}
