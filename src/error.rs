//! The library's error type: every failure as one line that names the problem, sorted by what
//! failed ([`ErrorKind`]) so that a caller (the CLI's exit path, the server's status codes) can tell
//! a user's mistake from a broken disk or a bug.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("{path}: {source}")]
    Weights { path: PathBuf, source: crate::model::WeightsError },
    #[error(transparent)]
    TensorBoard(#[from] crate::tensorboard::TbError),
    /// A process group's failure: a rank gone, a rendezvous that cannot happen.
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A setting, argument or input that cannot work (the message names it).
    #[error("{0}")]
    Input(String),
    /// A failure no input explains (a worker thread gone, an encoder refusing a valid image).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's settings, arguments or uploaded input.
    Input,
    /// The user's data set or checkpoint files: unreadable, malformed, inconsistent.
    Data,
    /// Reading or writing files (permissions, a full disk).
    Io,
    /// Our own or libtorch's failure.
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        use crate::checkpoint::CheckpointError as C;
        use crate::data::DataError as D;
        match self {
            Error::Input(_) => ErrorKind::Input,
            Error::Data(D::Io { .. }) | Error::Checkpoint(C::Io { .. } | C::Write { .. }) => ErrorKind::Io,
            Error::Data(_) | Error::Checkpoint(_) | Error::Weights { .. } => ErrorKind::Data,
            Error::Write { .. } | Error::Read { .. } | Error::TensorBoard(_) | Error::Dist(_) => {
                ErrorKind::Io
            }
            Error::Torch(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
