//! Subject ids: the PRC resident identity number of the citizen a call is about
//! (`x-tongban-subject`). It is validated (GB 11643 check digit) and never stored or logged in
//! clear: nodes keep a keyed hash (HMAC-SHA256 with a per-node secret in the data dir).

use std::path::Path;

use aws_lc_rs::hmac;

use crate::store::{FileSecrets, SecretSource};

/// Metadata naming the subject of a call.
pub use tongban_proto::metadata::SUBJECT as HEADER;

/// Checks an 18-character resident identity number. The error never repeats the id.
pub fn validate_resident_id(id: &str) -> Result<(), String> {
    tongban_proto::metadata::check_resident_id(id)
}

/// Computes the check digit of 17 digits (test data generation).
pub fn check_digit(first17: &str) -> Option<char> {
    tongban_proto::metadata::resident_id_check_digit(first17)
}

pub use crate::store::secret::SecretError as SubjectKeyError;

/// A resident id masked for display (`370***********002X`): enough for a person to recognise
/// their own number, never enough to recover it.
pub fn mask(id: &str) -> String {
    let n = id.chars().count();
    if n < 8 {
        return "*".repeat(n);
    }
    let head: String = id.chars().take(3).collect();
    let tail: String = id.chars().skip(n - 4).collect();
    format!("{head}{}{tail}", "*".repeat(n - 7))
}

/// The name of the pseudonym secret in the node's [`SecretSource`].
const SECRET: &str = "subject.key";

/// Keyed pseudonyms of subject ids.
pub struct Pseudonymizer {
    key: hmac::Key,
}

impl Pseudonymizer {
    /// Opens `data_dir/subject.key`, creating a random one (mode 0600) on first start.
    pub fn open(data_dir: &Path) -> Result<Pseudonymizer, SubjectKeyError> {
        Self::from_source(&FileSecrets::new(data_dir))
    }

    /// The node's pseudonym key from `source` (created on first start).
    pub fn from_source(source: &dyn SecretSource) -> Result<Pseudonymizer, SubjectKeyError> {
        let secret = source.secret(SECRET, 32)?;
        Ok(Pseudonymizer {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        })
    }

    /// The pseudonym of a (validated) subject id: 32 hex characters.
    pub fn pseudonym(&self, id: &str) -> String {
        let tag = hmac::sign(&self.key, id.to_ascii_uppercase().as_bytes());
        hex::encode(&tag.as_ref()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits_follow_gb_11643() {
        // The standard's worked example.
        assert_eq!(check_digit("11010519491231002"), Some('X'));
        assert!(validate_resident_id("11010519491231002X").is_ok());
        assert!(validate_resident_id("11010519491231002x").is_ok());
        let id = format!(
            "37010219900101123{}",
            check_digit("37010219900101123").unwrap()
        );
        assert!(validate_resident_id(&id).is_ok());
        for bad in [
            "",
            "123",
            "11010519491231002Y",
            "110105194912310021",
            "A1010519491231002X",
        ] {
            let e = validate_resident_id(bad).unwrap_err();
            assert!(
                !bad.is_empty() && !e.contains(bad) || bad.is_empty(),
                "error echoes the id"
            );
        }
    }

    #[test]
    fn pseudonyms_are_stable_per_node_and_differ_across_nodes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let p1 = Pseudonymizer::open(a.path())
            .unwrap()
            .pseudonym("11010519491231002X");
        let p2 = Pseudonymizer::open(a.path())
            .unwrap()
            .pseudonym("11010519491231002x");
        let p3 = Pseudonymizer::open(b.path())
            .unwrap()
            .pseudonym("11010519491231002X");
        assert_eq!(p1, p2);
        assert_ne!(p1, p3);
        assert_eq!(p1.len(), 32);
        assert!(!p1.contains("1101051949"));
    }
}
