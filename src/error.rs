//! One error type for the whole library: every fallible call on user input returns
//! `Result<_, NablaError>` whose message names the offending shapes, values or paths.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NablaError {
    #[error("shape error in {op}: {msg}")]
    Shape { op: String, msg: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("format error in {path}: {msg}")]
    Format { path: String, msg: String },
    #[error("non-finite value: {0}")]
    NonFinite(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, NablaError>;

impl NablaError {
    pub fn shape(op: impl Into<String>, msg: impl Into<String>) -> Self {
        NablaError::Shape {
            op: op.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        NablaError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    pub fn format(path: impl AsRef<std::path::Path>, msg: impl Into<String>) -> Self {
        NablaError::Format {
            path: path.as_ref().display().to_string(),
            msg: msg.into(),
        }
    }
}

/// `bail!(InvalidArgument, "...")`-style helper for argument checks.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => {
        $crate::error::NablaError::InvalidArgument(format!($($arg)*))
    };
}

/// Shape error helper: `shape_err!("matmul", "lhs {:?} rhs {:?}", a, b)`.
#[macro_export]
macro_rules! shape_err {
    ($op:expr, $($arg:tt)*) => {
        $crate::error::NablaError::shape($op, format!($($arg)*))
    };
}
