//! Node secrets (the subject pseudonym key) behind a small trait: a file per secret in the
//! data dir (mode 0600), created with random bytes on first start; or a file provisioned by
//! the operator and never created here (a Kubernetes Secret mounted into every replica of a
//! city, which must all derive the same pseudonyms).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SecureRandom as _;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the secret {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("secret {0} does not have the expected length")]
    Length(String),
    #[error("no randomness for a new secret")]
    Random,
}

/// Where a node keeps its secrets.
pub trait SecretSource {
    /// The secret `name` of `len` bytes, created at random when it does not exist yet.
    fn secret(&self, name: &str, len: usize) -> Result<Vec<u8>, SecretError>;
}

/// Secrets as files in a directory.
pub struct FileSecrets {
    dir: PathBuf,
}

impl FileSecrets {
    pub fn new(dir: &Path) -> Self {
        FileSecrets {
            dir: dir.to_path_buf(),
        }
    }
}

impl SecretSource for FileSecrets {
    fn secret(&self, name: &str, len: usize) -> Result<Vec<u8>, SecretError> {
        let path = self.dir.join(name);
        let io = |source| SecretError::Io {
            path: path.display().to_string(),
            source,
        };
        let secret = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.dir).map_err(io)?;
                let mut b = vec![0u8; len];
                aws_lc_rs::rand::SystemRandom::new()
                    .fill(&mut b)
                    .map_err(|_| SecretError::Random)?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&path).map_err(io)?;
                f.write_all(&b).map_err(io)?;
                f.sync_all().map_err(io)?;
                b
            }
            Err(e) => return Err(io(e)),
        };
        if secret.len() != len {
            return Err(SecretError::Length(path.display().to_string()));
        }
        Ok(secret)
    }
}

/// One secret in a file the operator provides (every replica of a city mounts the same one).
/// It is read, never created: a missing file stops the node rather than giving it a key of
/// its own, whose pseudonyms no other replica would share.
pub struct ProvisionedSecret {
    path: PathBuf,
}

impl ProvisionedSecret {
    pub fn new(path: &Path) -> Self {
        ProvisionedSecret {
            path: path.to_path_buf(),
        }
    }
}

impl SecretSource for ProvisionedSecret {
    fn secret(&self, _name: &str, len: usize) -> Result<Vec<u8>, SecretError> {
        let secret = std::fs::read(&self.path).map_err(|source| SecretError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        if secret.len() != len {
            return Err(SecretError::Length(self.path.display().to_string()));
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provisioned_secret_is_read_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let made = FileSecrets::new(dir.path())
            .secret("subject.key", 32)
            .unwrap();
        let shared = ProvisionedSecret::new(&dir.path().join("subject.key"));
        assert_eq!(shared.secret("subject.key", 32).unwrap(), made);
        let missing = ProvisionedSecret::new(&dir.path().join("absent.key"));
        assert!(matches!(
            missing.secret("subject.key", 32),
            Err(SecretError::Io { .. })
        ));
        assert!(!dir.path().join("absent.key").exists());
        assert!(matches!(
            shared.secret("subject.key", 16),
            Err(SecretError::Length(_))
        ));
    }
}
