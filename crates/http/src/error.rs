//! What goes wrong in a request, and the response it becomes: JSON
//! (`{"error": "..."}`) under `/api/`, a small HTML page elsewhere, a
//! redirect to the sign-in page for a page that needs a session.
//!
//! Messages come from the core's errors, which are written for
//! administrators; they are only shown to signed-in users (an anonymous
//! visitor gets 401, a redirect, 403 or 404 with a fixed text).

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use postoffice_core::admin::AdminError;
use postoffice_directory::Error as DirError;
use postoffice_queue::QueueError;
use postoffice_store::StoreError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// No (valid) session on an API route: 401.
    #[error("sign in first")]
    Unauthenticated,
    /// No (valid) session on a page: a redirect to the sign-in page.
    #[error("sign in first")]
    SignIn,
    /// A session of the wrong kind (a user on an administrator's route):
    /// 403.
    #[error("not allowed")]
    Forbidden,
    /// A missing or wrong CSRF token: 403.
    #[error("missing or invalid CSRF token; reload the page and try again")]
    Csrf,
    /// A request from another site (`Origin` not this host): 403.
    #[error("cross-site request refused")]
    CrossSite,
    /// Sign-in refused (whatever the reason: wrong name, password,
    /// throttled): 401 with one fixed text.
    #[error("sign-in failed")]
    SignInFailed,
    /// Nothing here: 404.
    #[error("not found")]
    NotFound,
    /// A request the server cannot use: 400.
    #[error("{0}")]
    BadRequest(String),
    /// A state that forbids the change (exists already, still in use):
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// A body over `max_body_bytes`: 413.
    #[error("request body too large")]
    TooLarge,
    /// The request took longer than `request_timeout_secs`: 408.
    #[error("request timed out")]
    Timeout,
    /// The server failed: 500 (the detail goes to the log only).
    #[error("internal error")]
    Internal(String),
}

impl WebError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::Unauthenticated | WebError::SignInFailed => StatusCode::UNAUTHORIZED,
            WebError::SignIn => StatusCode::SEE_OTHER,
            WebError::Forbidden | WebError::Csrf | WebError::CrossSite => StatusCode::FORBIDDEN,
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::Timeout => StatusCode::REQUEST_TIMEOUT,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response for the API.
    pub(crate) fn json(self) -> Response {
        if let WebError::Internal(detail) = &self {
            tracing::warn!(error = %detail, "web request failed");
        }
        let status = match self {
            WebError::SignIn => StatusCode::UNAUTHORIZED,
            ref e => e.status(),
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }

    /// The response for a page.
    pub(crate) fn page(self) -> Response {
        match self {
            WebError::SignIn => (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, "/login")],
                "sign in first",
            )
                .into_response(),
            e => {
                if let WebError::Internal(detail) = &e {
                    tracing::warn!(error = %detail, "web request failed");
                }
                let status = e.status();
                (
                    status,
                    crate::pages::layout::error_page(status, &e.to_string()),
                )
                    .into_response()
            }
        }
    }
}

impl From<AdminError> for WebError {
    fn from(e: AdminError) -> WebError {
        let text = e.to_string();
        match e {
            AdminError::Directory(d) => match d {
                DirError::UserNotFound(_)
                | DirError::DomainNotFound(_)
                | DirError::AdminNotFound(_) => WebError::NotFound,
                DirError::DomainExists(_)
                | DirError::UserExists(_)
                | DirError::AdminExists(_)
                | DirError::DomainHasUsers { .. } => WebError::Conflict(text),
                DirError::Io { .. } | DirError::Serialize(_) | DirError::Hash(_) => {
                    WebError::Internal(text)
                }
                _ => WebError::BadRequest(text),
            },
            AdminError::Store(s) => store_error(s),
            AdminError::InvalidValue { .. } | AdminError::InvalidPassword(_) => {
                WebError::BadRequest(text)
            }
            AdminError::NoSuchUser(_) => WebError::NotFound,
        }
    }
}

fn store_error(e: StoreError) -> WebError {
    let text = e.to_string();
    match e {
        StoreError::NoSuchUid(_) | StoreError::NoSuchMessage(_) => WebError::NotFound,
        StoreError::Locked => WebError::Conflict(
            "the maildrop is in use by a POP3 session; try again when it has ended".into(),
        ),
        StoreError::InvalidMailbox(_) => WebError::BadRequest(text),
        _ => WebError::Internal(text),
    }
}

impl From<QueueError> for WebError {
    fn from(e: QueueError) -> WebError {
        match e {
            QueueError::NotFound(_) | QueueError::InvalidId(_) => WebError::NotFound,
            e @ QueueError::NotHeld(_) => WebError::Conflict(e.to_string()),
            e => WebError::Internal(e.to_string()),
        }
    }
}

/// An error on a page route.
#[derive(Debug)]
pub(crate) struct PageError(pub WebError);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        self.0.page()
    }
}

impl<E: Into<WebError>> From<E> for PageError {
    fn from(e: E) -> PageError {
        PageError(e.into())
    }
}

/// An error on an API route.
#[derive(Debug)]
pub(crate) struct ApiError(pub WebError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.json()
    }
}

impl<E: Into<WebError>> From<E> for ApiError {
    fn from(e: E) -> ApiError {
        ApiError(e.into())
    }
}
