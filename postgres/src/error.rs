//! The crate's error.

use std::fmt;
use std::sync::Arc;

/// Why a step of the protocol did not happen, or may not have.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Error {
    /// The database reported an error, or the connection failed. If the
    /// statement had been sent, its outcome is **unknown**: a request may
    /// have been recorded. Retrying a request is safe (duplicates
    /// coalesce).
    /// Shared (`Arc`): one statement can answer many coalesced requests.
    Db(Arc<tokio_postgres::Error>),
    /// No connection could be taken from the pool.
    Pool(String),
    /// A key or namespace the protocol cannot store; nothing was sent.
    InvalidKey(InvalidKey),
    /// The cycle's claim is no longer the key's: a later claim (a takeover
    /// after its lease expired) drew a higher fencing epoch. Nothing was
    /// changed; effects must not be committed.
    Fenced,
    /// The replica is shut down (or shutting down): nothing was sent.
    Closed,
}

/// What is wrong with a key or namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// It contains a NUL character, which PostgreSQL's `text` cannot hold.
    Nul,
    /// It is longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES) bytes
    /// (the index that orders the rows has a size limit per entry).
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// An empty namespace.
    EmptyNamespace,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(e) => write!(f, "database error (outcome unknown if sent): {e}"),
            Error::Pool(e) => write!(f, "no database connection: {e}"),
            Error::InvalidKey(InvalidKey::Nul) => f.write_str("key contains a NUL character"),
            Error::InvalidKey(InvalidKey::TooLong { len }) => {
                write!(f, "key is {len} bytes, more than {}", crate::MAX_KEY_BYTES)
            }
            Error::InvalidKey(InvalidKey::EmptyNamespace) => f.write_str("empty namespace"),
            Error::Fenced => f.write_str("fenced: a later claim owns the key"),
            Error::Closed => f.write_str("the replica is shut down"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Db(e) => Some(&**e),
            _ => None,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(Arc::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Error::Db(Arc::new(e)),
            other => Error::Pool(other.to_string()),
        }
    }
}
