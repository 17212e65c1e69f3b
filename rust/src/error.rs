//! The crate's one error type. Every variant carries what a user needs to act: the entry path,
//! the digest, the limit with its configured maximum. The bindings (rust/py) hand each variant's
//! kind and fields to `fastdist.errors.from_native`, which makes them the attributes of a
//! fastdist.errors class; nothing in this crate knows about Python.

use std::io;

/// Errors of the native core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not `sha256:` + 64 lowercase hex.
    #[error("invalid digest {0:?}: expected \"sha256:\" followed by 64 lowercase hex digits")]
    InvalidDigest(String),

    /// Well-formed `algo:hex` with an algorithm we refuse.
    #[error("unsupported digest algorithm in {0:?}: only sha256 is accepted")]
    UnsupportedAlgorithm(String),

    /// A layer media type we do not decompress/apply.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),

    /// A computed digest (compressed `digest` or uncompressed `diff_id`) differs.
    #[error("{what} mismatch: expected {expected}, computed {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },

    /// The byte count differs from the descriptor's size.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },

    /// A tar entry that would escape the root or misuse a link/whiteout.
    #[error("unsafe layer entry {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },

    /// Malformed compression stream or tar archive.
    #[error("corrupt layer{}: {reason}", entry.as_ref().map(|e| format!(" at entry {e:?}")).unwrap_or_default())]
    Corrupt {
        reason: String,
        entry: Option<String>,
    },

    /// A configured limit was exceeded.
    #[error("limit exceeded: {limit} is {actual}, the maximum is {max}")]
    Limit {
        limit: &'static str,
        max: u64,
        actual: u64,
    },

    /// An I/O error on the destination tree or a local file.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },

    /// Misuse of a streaming object (write after finish, worker gone).
    #[error("{0}")]
    State(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(reason: impl Into<String>, entry: Option<&str>) -> Self {
        Error::Corrupt {
            reason: reason.into(),
            entry: entry.map(str::to_owned),
        }
    }

    /// A copy of this error for a second caller (a failed `write` and the later `finish` both
    /// report it); an I/O source keeps its kind and message.
    #[cold]
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Error::InvalidDigest(s) => Error::InvalidDigest(s.clone()),
            Error::UnsupportedAlgorithm(s) => Error::UnsupportedAlgorithm(s.clone()),
            Error::UnsupportedMediaType(s) => Error::UnsupportedMediaType(s.clone()),
            Error::DigestMismatch {
                what,
                expected,
                actual,
            } => Error::DigestMismatch {
                what,
                expected: expected.clone(),
                actual: actual.clone(),
            },
            Error::SizeMismatch { expected, actual } => Error::SizeMismatch {
                expected: *expected,
                actual: *actual,
            },
            Error::UnsafePath { path, reason } => Error::UnsafePath {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Corrupt { reason, entry } => Error::Corrupt {
                reason: reason.clone(),
                entry: entry.clone(),
            },
            Error::Limit { limit, max, actual } => Error::Limit {
                limit,
                max: *max,
                actual: *actual,
            },
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            Error::State(s) => Error::State(s.clone()),
        }
    }

    pub(crate) fn unsafe_path(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::UnsafePath {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
