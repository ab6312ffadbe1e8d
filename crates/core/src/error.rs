//! The core error type: an errcode kind plus a message. `http` alone turns kinds into statuses.

use serde_json::{Map, Value};

/// What went wrong, as a client will be told. Each variant's doc names the status `http` uses.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// 403 `M_FORBIDDEN`.
    Forbidden,
    /// 403 with a module-chosen errcode (a spam-checker denial).
    Denied(String),
    /// 404 `M_NOT_FOUND`.
    NotFound,
    /// 404 `M_UNRECOGNIZED` (unknown endpoint); 405 is chosen by `http` itself.
    Unrecognized,
    /// 400 `M_BAD_JSON`.
    BadJson,
    /// 400 `M_NOT_JSON`.
    NotJson,
    /// 400 `M_INVALID_PARAM`.
    InvalidParam,
    /// 400 `M_MISSING_PARAM`.
    MissingParam,
    /// 400 `M_INVALID_USERNAME`.
    InvalidUsername,
    /// 400 `M_USER_IN_USE`.
    UserInUse,
    /// 400 `M_ROOM_IN_USE`.
    RoomInUse,
    /// 400 `M_UNSUPPORTED_ROOM_VERSION`.
    UnsupportedRoomVersion,
    /// 401 `M_MISSING_TOKEN`.
    MissingToken,
    /// 401 `M_UNKNOWN_TOKEN`.
    UnknownToken,
    /// 401 `M_UNAUTHORIZED`: a server-server request whose `X-Matrix` signature does not check.
    Unauthorized,
    /// 401 user-interactive auth is needed; the body is `fields` (flows, session, ...).
    UserInteractiveAuth,
    /// 403 `M_USER_DEACTIVATED`.
    UserDeactivated,
    /// 413 `M_TOO_LARGE`.
    TooLarge,
    /// 429 `M_LIMIT_EXCEEDED`.
    LimitExceeded,
    /// 429 `M_UNKNOWN` "Rate limited": how Synapse disguises a registration spam denial.
    RegistrationDenied,
    /// 400 `M_UNKNOWN`: a media upload refused by a spam checker ("Bad content").
    BadContent,
    /// 400 `M_UNKNOWN` for other bad requests.
    BadRequest,
    /// Any status and errcode, chosen by a module (Synapse's `SynapseError`).
    Module {
        /// HTTP status.
        status: u16,
        /// Errcode.
        errcode: String,
    },
    /// 500 `M_UNKNOWN` "Internal server error"; the message is logged, never sent.
    Internal,
}

/// A failed operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    /// The kind (errcode and status).
    pub kind: ErrorKind,
    /// The `error` text.
    pub message: String,
    /// Extra top-level fields of the error body.
    pub fields: Map<String, Value>,
    /// Why an internal error happened (never sent to the client). It is logged once, where
    /// the error becomes a response (`http`), or by whoever handles it instead.
    pub cause: Option<String>,
}

/// Result alias for core operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), fields: Map::new(), cause: None }
    }
    /// Adds extra body fields.
    pub fn with_fields(mut self, fields: Map<String, Value>) -> Self {
        self.fields.extend(fields);
        self
    }
    /// 403 `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }
    /// 404 `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    /// 400 `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParam, message)
    }
    /// 400 `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadJson, message)
    }
    /// 500 with `context` as its cause. Not logged here: a handled error is no error, and one
    /// that reaches a client is logged once, with its request's span, by `http`.
    pub fn internal(context: impl std::fmt::Display) -> Self {
        Error { cause: Some(context.to_string()), ..Self::new(ErrorKind::Internal, "Internal server error") }
    }
    /// The Matrix errcode for this error.
    pub fn errcode(&self) -> &str {
        match &self.kind {
            ErrorKind::Forbidden => "M_FORBIDDEN",
            ErrorKind::Denied(code) => code,
            ErrorKind::NotFound => "M_NOT_FOUND",
            ErrorKind::Unrecognized => "M_UNRECOGNIZED",
            ErrorKind::BadJson => "M_BAD_JSON",
            ErrorKind::NotJson => "M_NOT_JSON",
            ErrorKind::InvalidParam => "M_INVALID_PARAM",
            ErrorKind::MissingParam => "M_MISSING_PARAM",
            ErrorKind::InvalidUsername => "M_INVALID_USERNAME",
            ErrorKind::UserInUse => "M_USER_IN_USE",
            ErrorKind::RoomInUse => "M_ROOM_IN_USE",
            ErrorKind::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            ErrorKind::MissingToken => "M_MISSING_TOKEN",
            ErrorKind::UnknownToken => "M_UNKNOWN_TOKEN",
            ErrorKind::Unauthorized => "M_UNAUTHORIZED",
            ErrorKind::UserInteractiveAuth => "M_FORBIDDEN",
            ErrorKind::UserDeactivated => "M_USER_DEACTIVATED",
            ErrorKind::TooLarge => "M_TOO_LARGE",
            ErrorKind::LimitExceeded => "M_LIMIT_EXCEEDED",
            ErrorKind::Module { errcode, .. } => errcode,
            ErrorKind::RegistrationDenied | ErrorKind::BadContent | ErrorKind::BadRequest | ErrorKind::Internal => {
                "M_UNKNOWN"
            }
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.errcode(), self.message)?;
        match &self.cause {
            Some(cause) => write!(f, " ({cause})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

impl From<myelin_storage::StorageError> for Error {
    fn from(e: myelin_storage::StorageError) -> Self {
        match e {
            myelin_storage::StorageError::DiskFull => Error::disk_full(),
            e => Error::internal(e),
        }
    }
}

impl Error {
    /// 507 `M_UNKNOWN` "The server's disk is full": a write that could not be stored (nothing
    /// of it was). Logged at most once a minute, however many requests hit it.
    pub fn disk_full() -> Error {
        static LAST_LOGGED: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        let now = crate::server::now_ms();
        let last = LAST_LOGGED.load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= 60_000
            && LAST_LOGGED
                .compare_exchange(last, now, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!("the disk is full: writes are refused (507) until space is freed; reads carry on");
        }
        Error::new(
            ErrorKind::Module { status: 507, errcode: "M_UNKNOWN".into() },
            "The server's disk is full; try again later",
        )
    }

    /// An I/O error writing a file: [`Error::disk_full`] when the disk or quota is full.
    pub fn from_io(e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) || e.raw_os_error() == Some(122)
        {
            Error::disk_full()
        } else {
            Error::internal(e)
        }
    }
}

impl From<myelin_module_api::ModuleError> for Error {
    /// A module's `SynapseError` passes through; anything else is a 500.
    fn from(e: myelin_module_api::ModuleError) -> Self {
        match e {
            myelin_module_api::ModuleError::Matrix { status, errcode, message, fields } => {
                Error { kind: ErrorKind::Module { status, errcode }, message, fields, cause: None }
            }
            other => Error::internal(format!("module error: {other}")),
        }
    }
}
