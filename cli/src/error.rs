//! The one error type of the CLI and how it is reported to the operator.

use std::path::PathBuf;
use std::time::Duration;

use tonic::{Code, Status};

/// Everything that can make a `flotilla` command fail. Each variant prints as one sentence;
/// [`report`] appends the chain of sources.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Invalid or missing settings (endpoints, TLS files, config file).
    #[error("{0}")]
    Config(String),

    #[error("cannot read config file {path}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid config file {path}")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },

    #[error("cannot read {what} {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A local file (other than a settings file) could not be opened, written, renamed or
    /// removed.
    #[error("cannot {action} {path}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An image upload ended without the image becoming active. `cause` is part of the message
    /// (not a source) so the advice on what to do next comes last.
    #[error(
        "upload of image {image} failed after sending {sent} of {total} bytes: {cause}; {advice}"
    )]
    Upload {
        image: String,
        sent: u64,
        total: u64,
        cause: String,
        advice: String,
    },

    /// Downloaded content differs from the image's recorded size or digest.
    #[error("the downloaded {what} of image {image} is {actual} but the image's is {expected}; {disposal}")]
    Mismatch {
        image: String,
        what: &'static str,
        actual: String,
        expected: String,
        /// What became of the data (removed, or already written to standard output).
        disposal: String,
    },

    /// The controller answered with a status that is not retried.
    #[error("{}", status_text(.0))]
    Status(Status),

    /// Every attempt failed with a retryable error until the overall deadline.
    #[error("gave up after {:.1}s and {attempts} attempt(s); last error from {address}: {last}", .elapsed.as_secs_f64())]
    GaveUp {
        elapsed: Duration,
        attempts: u32,
        address: String,
        last: String,
    },

    /// The controller answered with something the CLI cannot make sense of.
    #[error("{0}")]
    Protocol(String),

    /// An operation the command followed (`--wait`, `operation watch`) ended without
    /// succeeding. `reason` is the operation's error, with the resource's fault when it adds
    /// something.
    #[error("{subject}: {action} {outcome}: {reason}")]
    OperationFailed {
        /// What was acted on, e.g. `server "web-1"`.
        subject: String,
        /// The operation's kind, e.g. `boot`.
        action: String,
        /// `failed`, `was cancelled`, ...
        outcome: String,
        reason: String,
    },

    /// Ctrl-C while waiting for an operation, which goes on without the CLI.
    #[error(
        "interrupted while waiting for operation {operation}; it goes on: follow it with \
         `flotilla operation watch {operation}`"
    )]
    Interrupted { operation: String },

    /// A local check failed before anything was sent (e.g. user data too large).
    #[error("{0}")]
    Invalid(String),

    /// Writing the output failed (for example a closed pipe).
    #[error("cannot write output")]
    Output(#[from] std::io::Error),

    #[error("cannot serialize output")]
    Json(#[from] serde_json::Error),

    #[error("cannot serialize output")]
    Yaml(#[from] serde_yaml::Error),

    /// Several independent operations (e.g. `delete A B C`) failed; each was already reported.
    #[error("{failed} of {total} operations failed")]
    Partial { failed: usize, total: usize },
}

impl CliError {
    /// True when the error is a closed stdout, which ends the program quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// The operator-facing text of an error: the message followed by its sources, `: `-separated.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// `message [CODE_NAME]`, the way every status is shown to operators.
pub fn status_text(status: &Status) -> String {
    let message = status.message().trim();
    if message.is_empty() {
        format!("[{}]", code_name(status.code()))
    } else {
        format!("{message} [{}]", code_name(status.code()))
    }
}

/// The canonical gRPC name of a status code, as in the gRPC specification.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_shown_with_its_code_name() {
        let err = CliError::Status(Status::not_found("project \"x\" not found"));
        assert_eq!(report(&err), "project \"x\" not found [NOT_FOUND]");
        let err = CliError::Status(Status::unavailable(""));
        assert_eq!(report(&err), "[UNAVAILABLE]");
    }

    #[test]
    fn report_appends_sources() {
        let err = CliError::ReadFile {
            what: "CA certificate",
            path: "/nope/ca.pem".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"),
        };
        assert_eq!(
            report(&err),
            "cannot read CA certificate /nope/ca.pem: No such file"
        );
    }
}
