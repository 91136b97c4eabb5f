//! Access control (`[auth]`): bearer tokens, each declared by the SHA-256 of its secret, with
//! scopes (`read`, `infer`, `admin`, `metrics`) and optionally the models it may use.
//!
//! The front ends ask [`Access::check`] with what a call needs ([`Need`]) and the
//! `Authorization` header (REST) or metadata (gRPC). A missing or unknown token is
//! [`Denied::Unauthenticated`] (401 / `UNAUTHENTICATED`); a known token without the scope or
//! the model is [`Denied::Forbidden`] (403 / `PERMISSION_DENIED`), whether or not the model
//! exists. An allowed call carries a [`Grant`] in its extensions, whose name is the identity
//! recorded for it. The secret is hashed and compared with every token's digest in constant
//! time; it is never logged.

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use axum::http::HeaderValue;
use oxinfer_core::manifest::{AuthSettings, Scope};
use sha2::{Digest, Sha256};

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// A liveness or readiness probe: open, unless `protect_health` (then `read`).
    Health,
    /// A token with this scope.
    Scope(Scope),
}

/// A token allowed to make a call: who it is and which models it may use.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    /// The token's name: the caller's identity.
    pub(crate) name: Arc<str>,
    models: Option<Arc<[String]>>,
}

impl Grant {
    /// Whether the token may use `model`.
    pub(crate) fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }

    /// `Ok` if the token may use `model`; else the refusal, which says nothing about whether
    /// the model exists.
    pub(crate) fn check_model(&self, model: &str) -> Result<(), Denied> {
        if self.may_use(model) {
            Ok(())
        } else {
            Err(Denied::Forbidden(format!(
                "token '{}' may not use model '{model}'",
                self.name
            )))
        }
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No token, or one that is not declared: 401 / `UNAUTHENTICATED`.
    Unauthenticated(String),
    /// A known token without the scope or the model: 403 / `PERMISSION_DENIED`.
    Forbidden(String),
}

impl Denied {
    pub(crate) fn message(&self) -> &str {
        match self {
            Denied::Unauthenticated(m) | Denied::Forbidden(m) => m,
        }
    }

    /// The response: 401 with `WWW-Authenticate: Bearer`, or 403, and `{"error": ...}`.
    pub(crate) fn rest_response(&self) -> axum::response::Response {
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;
        let body = axum::Json(serde_json::json!({ "error": self.message() }));
        match self {
            Denied::Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                body,
            )
                .into_response(),
            Denied::Forbidden(_) => (StatusCode::FORBIDDEN, body).into_response(),
        }
    }

    /// The gRPC status: `UNAUTHENTICATED` or `PERMISSION_DENIED`.
    pub(crate) fn status(&self) -> tonic::Status {
        match self {
            Denied::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            Denied::Forbidden(m) => tonic::Status::permission_denied(m.clone()),
        }
    }
}

/// One declared token.
#[derive(Debug)]
struct Token {
    name: Arc<str>,
    digest: [u8; 32],
    scopes: Vec<Scope>,
    models: Option<Arc<[String]>>,
}

/// The tokens of one `[auth]` table.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<Token>,
    protect_health: bool,
}

impl Auth {
    /// The tokens of `[auth]` (already checked by the manifest).
    pub fn new(settings: &AuthSettings) -> Auth {
        let tokens = settings
            .tokens
            .iter()
            .map(|t| {
                let mut digest = [0u8; 32];
                // The manifest checked that it is 64 hex digits.
                hex::decode_to_slice(&t.sha256, &mut digest).unwrap_or_default();
                Token {
                    name: Arc::from(t.name.as_str()),
                    digest,
                    scopes: t.scopes.clone(),
                    models: t.models.clone().map(Arc::from),
                }
            })
            .collect();
        Auth {
            tokens,
            protect_health: settings.protect_health,
        }
    }

    /// The token whose secret is `secret`, compared with every token in constant time.
    fn find(&self, secret: &[u8]) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(secret).into();
        let mut found = None;
        for token in &self.tokens {
            let difference = token
                .digest
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(token);
            }
        }
        found
    }

    fn check(&self, authorization: Option<&HeaderValue>, need: Need) -> Check {
        let scope = match need {
            Need::Health if !self.protect_health => return Check::Open,
            Need::Health => Scope::Read,
            Need::Scope(scope) => scope,
        };
        let Some(value) = authorization else {
            return Check::Denied(
                Denied::Unauthenticated(
                    "this server requires a token: send `Authorization: Bearer <token>`".into(),
                ),
                "missing",
                None,
            );
        };
        let secret = value
            .as_bytes()
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, secret)| secret.trim_ascii());
        let Some(token) = secret.and_then(|s| self.find(s)) else {
            return Check::Denied(
                Denied::Unauthenticated("the token is not valid for this server".into()),
                "unknown",
                None,
            );
        };
        if !token.scopes.contains(&scope) {
            return Check::Denied(
                Denied::Forbidden(format!(
                    "token '{}' does not have the '{}' scope",
                    token.name,
                    scope.as_str()
                )),
                "scope",
                Some(token.name.clone()),
            );
        }
        Check::Allowed(Grant {
            name: token.name.clone(),
            models: token.models.clone(),
        })
    }
}

enum Check {
    Open,
    Allowed(Grant),
    /// Refused: why, the metric's reason, and the token's name when it is known.
    Denied(Denied, &'static str, Option<Arc<str>>),
}

/// The access control the front ends share: the current tokens (replaced on reload) and the
/// count of refusals.
#[derive(Debug)]
pub(crate) struct Access {
    /// Read by every call without a lock (a read writes only the reading thread's own slot: a
    /// lock's read side wrote a line that every request shared); a reload swaps in new tokens.
    current: ArcSwapOption<Auth>,
    /// Refused calls by identity (the token's name, empty when unknown) and reason (missing,
    /// unknown, scope, model).
    pub(crate) failures: prometheus::IntCounterVec,
}

impl Default for Access {
    fn default() -> Self {
        let failures = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "oxinfer_auth_failures_total",
                "Calls refused by [auth], by identity (the token's name, empty when no valid \
                 token was sent) and reason: missing, unknown, scope, model.",
            ),
            &["identity", "reason"],
        )
        .expect("valid counter options");
        Access {
            current: ArcSwapOption::empty(),
            failures,
        }
    }
}

impl Access {
    /// Replaces the tokens (`None`: access control off).
    pub(crate) fn set(&self, auth: Option<Auth>) {
        let off = auth.is_none();
        let before = self.current.swap(auth.map(Arc::new));
        if before.is_some() && off {
            tracing::warn!("[auth] was removed: access control is off, anyone may call anything");
        }
    }

    /// Checks a call; `Ok(None)` when access control is off or the call is an open probe.
    /// A refusal is counted and logged with the client's address (never the secret).
    pub(crate) fn check(
        &self,
        authorization: Option<&HeaderValue>,
        need: Need,
        client: Option<std::net::SocketAddr>,
        what: &dyn std::fmt::Display,
    ) -> Result<Option<Grant>, Denied> {
        let auth = self.current.load();
        let Some(auth) = auth.as_deref() else {
            return Ok(None);
        };
        match auth.check(authorization, need) {
            Check::Open => Ok(None),
            Check::Allowed(grant) => Ok(Some(grant)),
            Check::Denied(denied, reason, name) => {
                self.refused(name.as_deref(), reason, client, what, &denied);
                Err(denied)
            }
        }
    }

    /// Counts and logs a refusal for a model the token may not use.
    pub(crate) fn check_model(
        &self,
        grant: Option<&Grant>,
        model: &str,
        client: Option<std::net::SocketAddr>,
        what: &dyn std::fmt::Display,
    ) -> Result<(), Denied> {
        let Some(grant) = grant else { return Ok(()) };
        grant.check_model(model).inspect_err(|denied| {
            self.refused(Some(&grant.name), "model", client, what, denied);
        })
    }

    fn refused(
        &self,
        name: Option<&str>,
        reason: &str,
        client: Option<std::net::SocketAddr>,
        what: &dyn std::fmt::Display,
        denied: &Denied,
    ) {
        self.failures
            .with_label_values(&[name.unwrap_or(""), reason])
            .inc();
        let client = client.map(|c| c.to_string()).unwrap_or_default();
        tracing::warn!(
            client,
            identity = name.unwrap_or(""),
            reason,
            "refused {what}: {}",
            denied.message()
        );
    }
}

/// A new token: a random secret (printed once) and its `[[auth.tokens]]` line.
pub fn new_token() -> std::io::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let secret = format!("oxi_{}", hex::encode(bytes));
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    Ok((secret, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxinfer_core::manifest::TokenEntry;

    fn auth() -> Auth {
        let token =
            |name: &str, secret: &str, scopes: Vec<Scope>, models: Option<Vec<&str>>| TokenEntry {
                name: name.into(),
                sha256: hex::encode(Sha256::digest(secret.as_bytes())),
                scopes,
                models: models.map(|m| m.into_iter().map(String::from).collect()),
            };
        Auth::new(&AuthSettings {
            tokens: vec![
                token(
                    "app",
                    "s3cret",
                    vec![Scope::Infer, Scope::Read],
                    Some(vec!["a"]),
                ),
                token("ops", "0ps", vec![Scope::Admin, Scope::Metrics], None),
            ],
            tokens_file: None,
            protect_health: false,
        })
    }

    fn bearer(secret: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {secret}")).unwrap()
    }

    #[test]
    fn tokens_scopes_and_models() {
        let auth = auth();
        assert!(matches!(auth.check(None, Need::Health), Check::Open));
        assert!(matches!(
            auth.check(None, Need::Scope(Scope::Read)),
            Check::Denied(Denied::Unauthenticated(_), "missing", None)
        ));
        assert!(matches!(
            auth.check(Some(&bearer("wrong")), Need::Scope(Scope::Read)),
            Check::Denied(Denied::Unauthenticated(_), "unknown", None)
        ));
        // Not a bearer token: the same as an unknown one.
        let basic = HeaderValue::from_static("Basic czNjcmV0");
        assert!(matches!(
            auth.check(Some(&basic), Need::Scope(Scope::Read)),
            Check::Denied(Denied::Unauthenticated(_), "unknown", None)
        ));
        let Check::Allowed(grant) = auth.check(Some(&bearer("s3cret")), Need::Scope(Scope::Infer))
        else {
            panic!("allowed")
        };
        assert_eq!(&*grant.name, "app");
        assert!(grant.may_use("a") && !grant.may_use("b"));
        assert_eq!(
            grant.check_model("b").unwrap_err(),
            Denied::Forbidden("token 'app' may not use model 'b'".into())
        );
        assert!(matches!(
            auth.check(Some(&bearer("s3cret")), Need::Scope(Scope::Admin)),
            Check::Denied(Denied::Forbidden(_), "scope", Some(_))
        ));
        // The scheme is case-insensitive, as RFC 7235 says.
        let lower = HeaderValue::from_static("bearer 0ps");
        assert!(matches!(
            auth.check(Some(&lower), Need::Scope(Scope::Metrics)),
            Check::Allowed(_)
        ));
    }

    #[test]
    fn protected_probes_need_read() {
        let mut auth = auth();
        auth.protect_health = true;
        assert!(matches!(
            auth.check(None, Need::Health),
            Check::Denied(Denied::Unauthenticated(_), "missing", None)
        ));
        assert!(matches!(
            auth.check(Some(&bearer("s3cret")), Need::Health),
            Check::Allowed(_)
        ));
    }

    #[test]
    fn new_tokens_are_random_and_their_digest_matches() {
        let (secret, digest) = new_token().unwrap();
        let (other, _) = new_token().unwrap();
        assert_ne!(secret, other);
        assert!(secret.starts_with("oxi_") && secret.len() == 68);
        assert_eq!(digest, hex::encode(Sha256::digest(secret.as_bytes())));
    }
}
