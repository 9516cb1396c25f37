//! The library's error type: every failure names what was wrong and where.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes or dtypes of an op's operands do not fit together.
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    /// A file could not be read or written.
    /// The reason is part of the message (not a `source`), so a report prints it once.
    #[error("{}: {reason}", path.display())]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// A file was read but its content is not what was expected.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// The CUDA driver, cuBLAS or a kernel launch failed, or CUDA is unavailable.
    #[error("CUDA: {0}")]
    Cuda(String),
    /// A numeric failure such as a NaN loss.
    #[error("numeric: {0}")]
    Numeric(String),
    /// Anything else, with a message that says what to do.
    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            reason: source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Returns early with a [`Error::Shape`] when `cond` does not hold.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::shape($op, format!($($fmt)+)));
        }
    };
}
