//! How a request becomes a [`Principal`].

use async_trait::async_trait;
use axum::http::StatusCode;
use axum::http::request::Parts;

use crate::model::Principal;

/// Turns a request into the [`Principal`] it acts for. The host implements
/// it over its own authentication (a session, a verified JWT, what its
/// middleware stored in the request's extensions).
///
/// Any `Fn(&Parts) -> Result<Principal, AuthError>` closure is a resolver.
#[async_trait]
pub trait PrincipalResolver: Send + Sync + 'static {
    /// The principal of `request` (method, URI, headers, extensions).
    ///
    /// # Errors
    ///
    /// An [`AuthError`], answered as a JSON:API error with its status.
    async fn resolve(&self, request: &Parts) -> Result<Principal, AuthError>;
}

#[async_trait]
impl<F> PrincipalResolver for F
where
    F: Fn(&Parts) -> Result<Principal, AuthError> + Send + Sync + 'static,
{
    async fn resolve(&self, request: &Parts) -> Result<Principal, AuthError> {
        self(request)
    }
}

/// Why a request has no principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub(crate) status: StatusCode,
    pub(crate) detail: String,
}

impl AuthError {
    /// 401: the request does not say who it is.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        AuthError {
            status: StatusCode::UNAUTHORIZED,
            detail: detail.into(),
        }
    }

    /// 403: the caller is known but may not use this API at all.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        AuthError {
            status: StatusCode::FORBIDDEN,
            detail: detail.into(),
        }
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

impl std::error::Error for AuthError {}

/// Trusts the `X-User` header for the name and `X-Roles` (comma-separated)
/// for roles. **For examples and tests only**: any client can claim to be
/// anyone.
#[derive(Debug, Clone, Default)]
pub struct HeaderPrincipal;

impl HeaderPrincipal {
    /// The header with the principal's name.
    pub const USER: &'static str = "x-user";
    /// The header with the principal's comma-separated roles.
    pub const ROLES: &'static str = "x-roles";
}

#[async_trait]
impl PrincipalResolver for HeaderPrincipal {
    async fn resolve(&self, request: &Parts) -> Result<Principal, AuthError> {
        let name = request
            .headers
            .get(Self::USER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|name| !name.is_empty() && name.len() <= 200)
            .ok_or_else(|| {
                AuthError::unauthorized(
                    "send the principal's name in the X-User header (1-200 visible ASCII characters)",
                )
            })?;
        let mut principal = Principal::new(name);
        if let Some(roles) = request.headers.get(Self::ROLES) {
            let roles = roles
                .to_str()
                .map_err(|_| AuthError::unauthorized("X-Roles must be visible ASCII"))?;
            for role in roles.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                principal = principal.with_role(role);
            }
        }
        Ok(principal)
    }
}
