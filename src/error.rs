//! One error type for everything that can fail on user input: each message names the input
//! (file, flag, shape) and, where there is one, the command that fixes it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// A file was read but its content is not what it should be.
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    /// An argument or a combination of arguments is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The compute device could not be set up or failed.
    #[error("device: {0}")]
    Device(String),
    /// The user asked the job to stop (Ctrl-C); what was done is saved.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, err: impl std::fmt::Display) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), message: err.to_string() }
    }

    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().display().to_string(), message: message.into() }
    }
}
