//! Authentication of API requests. Until identity exists, the only principal is the bootstrap
//! admin, proven by the token from the controller's config (compared in constant time).
use std::sync::Arc;

use tonic::{Request, Status};

/// Who made a request; handlers read it from the request extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
}

#[derive(Clone)]
pub struct Authenticator {
    admin_token: Arc<str>,
}

impl Authenticator {
    pub fn new(admin_token: &str) -> Self {
        Authenticator {
            admin_token: admin_token.into(),
        }
    }

    /// A tonic interceptor: checks `authorization: Bearer <token>` and attaches the principal.
    pub fn intercept(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "missing credentials: send `authorization: Bearer <token>` (CLI: --token or \
                     FLOTILLA_TOKEN)",
                )
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not valid text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        if !constant_time_eq(token.trim().as_bytes(), self.admin_token.as_bytes()) {
            return Err(Status::unauthenticated("the token is not valid"));
        }
        req.extensions_mut().insert(Principal {
            name: "bootstrap-admin".into(),
        });
        Ok(req)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The principal attached by [`Authenticator::intercept`].
pub fn principal<T>(req: &Request<T>) -> Result<String, Status> {
    req.extensions()
        .get::<Principal>()
        .map(|p| p.name.clone())
        .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
}
