//! Reading and writing signed trust objects as files (certificates, agreements, revocation
//! lists, anchors), as `fedctl` writes them and daemons load them from their configuration.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use capability_schema::{DecodeError, Signed, SignedType};

/// Why a file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a signed object of the expected kind.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The error.
        source: DecodeError,
    },
    /// The file holds another kind of signed object.
    #[error("{path}: holds a {found:?}, expected a {expected:?}")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// The domain tag expected.
        expected: &'static str,
        /// The domain tag found.
        found: String,
    },
}

/// Reads a signed object of type `T` (its signature is not checked here: a trust store
/// checks it when the object is added or used).
pub fn read_signed<T: SignedType>(path: &Path) -> Result<Signed<T>, FileError> {
    let bytes = fs::read(path).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let signed = Signed::<T>::from_bytes(&bytes).map_err(|source| FileError::Decode {
        path: path.to_owned(),
        source,
    })?;
    if signed.domain != T::DOMAIN {
        return Err(FileError::WrongKind {
            path: path.to_owned(),
            expected: T::DOMAIN,
            found: signed.domain,
        });
    }
    Ok(signed)
}

/// Writes a signed object to a new file; never overwrites an existing one.
pub fn write_signed<T: SignedType>(path: &Path, signed: &Signed<T>) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    file.write_all(&signed.to_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::{MembershipCert, RevocationList, Role};

    use super::*;
    use crate::trust::{Authority, Validity};

    #[test]
    fn signed_files_round_trip_and_kinds_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.cbor");
        let mut authority = Authority::with_key("f1", test_key(1)).unwrap();
        let cert = authority.certify(
            test_key(2).public(),
            Role::Node,
            "s",
            "n",
            Validity::days(0, 1),
        );
        write_signed(&path, &cert).unwrap();
        assert!(matches!(
            write_signed(&path, &cert),
            Err(FileError::Io { .. })
        ));
        let back = read_signed::<MembershipCert>(&path).unwrap();
        assert_eq!(back.to_bytes(), cert.to_bytes());
        assert!(matches!(
            read_signed::<RevocationList>(&path),
            Err(FileError::WrongKind { .. })
        ));
        fs::write(&path, b"junk").unwrap();
        assert!(matches!(
            read_signed::<MembershipCert>(&path),
            Err(FileError::Decode { .. })
        ));
    }
}
