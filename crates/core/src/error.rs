//! The one error type of oxinfer's libraries, and how each cause maps to the protocol.

/// A protocol-level error class: what a client is told, over REST (an HTTP status) or gRPC
/// (a status code). Follows Triton's mapping, which tritonclient and the kserve SDK expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed or does not fit the model (HTTP 400, gRPC `INVALID_ARGUMENT`).
    InvalidArgument,
    /// No such model or version (HTTP 404, gRPC `NOT_FOUND`).
    NotFound,
    /// The model or server cannot take the request now (HTTP 503, gRPC `UNAVAILABLE`).
    Unavailable,
    /// The request is larger than the server accepts (HTTP 413, gRPC `RESOURCE_EXHAUSTED`).
    ResourceExhausted,
    /// The request's deadline passed before it could run (HTTP 504, gRPC `DEADLINE_EXCEEDED`).
    DeadlineExceeded,
    /// The server holds as many bytes for requests in flight as it may; retry later (HTTP 503,
    /// gRPC `RESOURCE_EXHAUSTED`).
    OverBudget,
    /// The server or a runtime failed (HTTP 500, gRPC `INTERNAL`).
    Internal,
}

impl ErrorCode {
    /// The HTTP status code for this class.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Unavailable => 503,
            ErrorCode::ResourceExhausted => 413,
            ErrorCode::DeadlineExceeded => 504,
            ErrorCode::OverBudget => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// Everything that can go wrong in oxinfer's libraries, one documented variant per cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client's request is malformed or does not match the model: bad JSON, wrong datatype,
    /// a shape that does not match the data, a missing or unknown tensor, ...
    #[error("{0}")]
    InvalidInput(String),
    /// What the client named does not exist: a model, a version of it, or an endpoint.
    #[error("{0}")]
    NotFound(String),
    /// The model exists but is not ready to serve (loading, unloaded, shutting down).
    #[error("{0}")]
    ModelNotReady(String),
    /// The request body is larger than the configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// The model's queue is full: the request is refused at once rather than queued without
    /// bound (backpressure; the client may retry).
    #[error("{0}")]
    Overloaded(String),
    /// The server cannot serve requests now for a reason of its own (not the model's): the
    /// inference log cannot be written and its policy is to refuse requests meanwhile.
    #[error("{0}")]
    Unavailable(String),
    /// The request's timeout passed while it waited in the queue; it was not executed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Taking the request would put the bytes held by requests in flight over the server's
    /// budget (`[server] max_inflight_bytes`); the client may retry.
    #[error("{0}")]
    OverBudget(String),
    /// The manifest is invalid: unknown key, unknown runtime, missing file, duplicate model, ...
    /// Only raised at startup or by `oxinfer check`; never sent to a client.
    #[error("{0}")]
    Manifest(String),
    /// A runtime could not load a model (bad file, unsupported operator, bad option).
    #[error("{0}")]
    Load(String),
    /// A runtime failed while executing a request that had passed validation.
    #[error("model execution failed: {0}")]
    Execution(String),
    /// A bug or an unexpected state inside the server.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The protocol class of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidInput(_) => ErrorCode::InvalidArgument,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::ModelNotReady(_) | Error::Overloaded(_) | Error::Unavailable(_) => {
                ErrorCode::Unavailable
            }
            Error::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            Error::TooLarge(_) => ErrorCode::ResourceExhausted,
            Error::OverBudget(_) => ErrorCode::OverBudget,
            Error::Manifest(_) | Error::Load(_) | Error::Execution(_) | Error::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }
}

/// `Result` with oxinfer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_maps_to_the_protocol_status() {
        assert_eq!(Error::invalid("x").code().http_status(), 400);
        assert_eq!(Error::NotFound("x".into()).code().http_status(), 404);
        assert_eq!(Error::ModelNotReady("x".into()).code().http_status(), 503);
        assert_eq!(Error::TooLarge("x".into()).code().http_status(), 413);
        assert_eq!(Error::Execution("x".into()).code().http_status(), 500);
        assert_eq!(Error::Internal("x".into()).code().http_status(), 500);
        assert_eq!(Error::Overloaded("x".into()).code().http_status(), 503);
        assert_eq!(
            Error::DeadlineExceeded("x".into()).code().http_status(),
            504
        );
    }
}
