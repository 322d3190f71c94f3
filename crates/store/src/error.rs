//! One error enum per family of operations. Constraint violations come back as typed
//! variants (`AlreadyExists`, `NotFound`); backend failures are wrapped in
//! [`BackendError`], whose message never carries SQL.

use std::fmt;

/// A failure inside the storage backend (disk, database engine, corruption). Callers treat
/// it as an internal error: log it, answer 5xx.
#[derive(thiserror::Error)]
#[error("storage backend failed: {message}")]
pub struct BackendError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A backend failure with its underlying cause (for backends' use).
    pub fn new(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A backend failure with no underlying error value.
    pub fn msg(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendError")
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The database file could not be opened or configured.
    #[error("cannot open the store")]
    Backend(#[from] BackendError),
    /// The file was written by a newer Gatehouse whose schema this one does not know.
    #[error("the store's schema is version {found}; this build knows up to {supported}")]
    TooNew {
        /// The file's schema version.
        found: u32,
        /// The newest version this build can use.
        supported: u32,
    },
    /// A migration failed; the file is left at `from`.
    #[error("migrating the store from schema version {from} failed")]
    Migration {
        /// The version the file was at.
        from: u32,
        /// What failed.
        #[source]
        source: BackendError,
    },
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A stored value does not parse (the database was altered outside Gatehouse).
    #[error("stored {what} is corrupt")]
    Corrupt {
        /// Which value.
        what: String,
    },
    /// A listing cursor that this store did not hand out.
    #[error("invalid cursor")]
    BadCursor,
}

/// Why a registry change was refused or failed. Nothing was written when it is returned
/// (the change and its audit record are one transaction).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Something the change refers to does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What is missing, e.g. `tenant acme`.
        what: String,
    },
    /// The thing to create exists already.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What, e.g. `device acme/pump-1`.
        what: String,
    },
    /// An input value is out of range.
    #[error("invalid {what}")]
    Invalid {
        /// Which value and why.
        what: String,
    },
    /// The device is revoked or blocked, so no certificate may be issued to it.
    #[error("device {device} is not active")]
    DeviceNotActive {
        /// The device, `tenant/id`.
        device: String,
    },
    /// The certificate was already revoked.
    #[error("certificate {serial} is already revoked")]
    AlreadyRevoked {
        /// Its serial.
        serial: String,
    },
    /// A stored value read during the change does not parse.
    #[error("stored {what} is corrupt")]
    Corrupt {
        /// Which value.
        what: String,
    },
    /// An incident or action state change that the lifecycle does not allow.
    #[error(transparent)]
    IllegalTransition(#[from] crate::incident::IllegalTransition),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<ReadError> for WriteError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Backend(b) => Self::Backend(b),
            ReadError::Corrupt { what } => Self::Corrupt { what },
            ReadError::BadCursor => Self::Invalid {
                what: "cursor".to_owned(),
            },
        }
    }
}

/// Why an enrollment token was not accepted. Log the variant; answer every client the same.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token has this id.
    #[error("unknown token")]
    Unknown,
    /// The secret does not match the token's hash.
    #[error("wrong token secret")]
    BadSecret,
    /// The token was revoked by an operator.
    #[error("token revoked")]
    Revoked,
    /// The token's expiry has passed.
    #[error("token expired")]
    Expired,
    /// The token has been used `max_uses` times.
    #[error("token used up")]
    Exhausted,
    /// A stored value does not parse.
    #[error("stored {what} is corrupt")]
    Corrupt {
        /// Which value.
        what: String,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<ReadError> for TokenError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Backend(b) => Self::Backend(b),
            ReadError::Corrupt { what } => Self::Corrupt { what },
            ReadError::BadCursor => Self::Corrupt {
                what: "cursor".to_owned(),
            },
        }
    }
}

/// Why an audit append or export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Writing the export failed.
    #[error("writing the audit export failed")]
    Io(#[from] std::io::Error),
    /// A stored value does not parse.
    #[error("stored {what} is corrupt")]
    Corrupt {
        /// Which value.
        what: String,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<ReadError> for AuditError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Backend(b) => Self::Backend(b),
            ReadError::Corrupt { what } => Self::Corrupt { what },
            ReadError::BadCursor => Self::Corrupt {
                what: "cursor".to_owned(),
            },
        }
    }
}

/// Why an enrollment with a token was not recorded: the token refused it, or the
/// enrollment could not be written. Either way nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenEnrollError {
    /// The token did not admit it (unknown, wrong secret, revoked, expired, used up).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The enrollment could not be written (the device exists, the token is for another
    /// tenant or model, ...).
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl From<BackendError> for TokenEnrollError {
    fn from(e: BackendError) -> Self {
        Self::Write(WriteError::Backend(e))
    }
}
