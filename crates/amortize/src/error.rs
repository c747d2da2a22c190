//! The library's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the library. The CLI prints the chain with `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch inside a formula, unsupported dtype, ...).
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A user input (contexts, labels, configuration values) is not acceptable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A checkpoint is missing, corrupt, or belongs to another problem or model.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint's folder or file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A value became NaN or infinite during training or solving.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// Which quantity (loss, gradient norm, parameter ...).
        what: String,
        /// The training step or iteration.
        step: usize,
    },
    /// (De)serialising JSON failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
