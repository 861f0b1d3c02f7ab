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
    /// Standard output could not be written: closed (a pipe whose reader has exited, see
    /// [`NablaError::is_broken_pipe`]), full (`/dev/full`, a full disk) or over the file-size
    /// limit.
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
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
    /// The operating-system error behind an I/O failure, if this is one.
    pub fn io_source(&self) -> Option<&std::io::Error> {
        match self {
            NablaError::Io { source, .. } | NablaError::Stdout(source) => Some(source),
            _ => None,
        }
    }
    /// Whether the output's reader has gone away (EPIPE): the command ends quietly with the
    /// status a shell reports for SIGPIPE, as `head` and `true` at the end of a pipe expect.
    pub fn is_broken_pipe(&self) -> bool {
        self.io_source()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    }
    /// What to do about an error the message of the operating system does not explain:
    /// "File too large" (EFBIG) comes from the per-process file-size limit far more often than
    /// from the file system.
    pub fn hint(&self) -> Option<&'static str> {
        match self.io_source()?.raw_os_error()? {
            libc::EFBIG => Some(
                "the file-size limit of this process (`ulimit -f`, RLIMIT_FSIZE) or of the file system was reached",
            ),
            libc::ENOSPC => Some("the disk (or the output device) is full"),
            libc::EDQUOT => Some("the disk quota is exhausted"),
            _ => None,
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
