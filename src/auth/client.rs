//! Client authentication (`client_auth_token`): the token type, its constant-time
//! comparison, and the per-connection state that decides whether a request may run.
//! It never sees sockets or logs; the server asks it once per request.

use super::AuthError;
use crate::protocol::types::ErrorReply;

/// The token (or tokens: `client_auth_token_file` may list several, one per client
/// or per rotation) that clients must present. Prints as `<redacted>` and has no
/// `PartialEq`: compare with [`ClientAuthToken::matches`].
#[derive(Clone)]
pub struct ClientAuthToken(Vec<Vec<u8>>);

impl ClientAuthToken {
    pub fn new(token: &[u8]) -> Result<ClientAuthToken, AuthError> {
        Self::any_of([token])
    }

    /// Accept any of `tokens` (at least one; none empty).
    pub fn any_of<'a>(
        tokens: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<ClientAuthToken, AuthError> {
        let tokens: Vec<Vec<u8>> = tokens.into_iter().map(<[u8]>::to_vec).collect();
        if tokens.is_empty() || tokens.iter().any(Vec::is_empty) {
            return Err(AuthError::EmptyToken);
        }
        Ok(ClientAuthToken(tokens))
    }

    /// Does `presented` equal one of the tokens? Every token is compared in constant
    /// time (see [`token_matches`]) and all are always compared, so the time taken does
    /// not say which one matched.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0
            .iter()
            .fold(false, |found, t| token_matches(t, presented) | found)
    }
}

impl std::fmt::Debug for ClientAuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for ClientAuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Whether `presented` equals `expected`, in time that does not depend on where they
/// first differ, nor on the expected token's length beyond one hash of it.
///
/// Both sides are hashed first and the digests compared in constant time: comparing the
/// raw bytes would at least leak the expected length through an early length check.
pub fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    // The digests are equal only if the inputs are (BLAKE3 is collision resistant).
    blake3::hash(expected) == blake3::hash(presented)
}

/// Why a client request was refused. Every variant answers the client with
/// `ErrorReply::Unauthorized`; the variants exist for the server's log and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The connection's first request was not an `Auth` op.
    TokenRequiredFirst,
    /// The `Auth` op carried the wrong token.
    WrongToken,
    /// The connection already failed authentication; it stays refused.
    AlreadyRejected,
}

impl Refusal {
    pub fn to_error_reply(self) -> ErrorReply {
        ErrorReply::Unauthorized
    }
}

impl From<Refusal> for ErrorReply {
    fn from(refusal: Refusal) -> ErrorReply {
        refusal.to_error_reply()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::TokenRequiredFirst => "first request was not auth",
            Refusal::WrongToken => "wrong client auth token",
            Refusal::AlreadyRejected => "connection already refused",
        })
    }
}

/// One client connection's authentication state.
///
/// ```text
///   NotRequired                        (client_auth_token unset: everything allowed)
///   Required{authenticated: false, rejected: false}
///        ├─ Auth op, right token ─→ Required{authenticated: true, ..}
///        ├─ Auth op, wrong token ─→ Required{rejected: true, ..}
///        └─ any other op ─────────→ Required{rejected: true, ..}
///   rejected is final: every later request gets Unauthorized.
/// ```
///
/// The server calls [`ClientAuthState::allows`] for every request, then, for an `Auth`
/// op, [`ClientAuthState::on_auth`] with the configured token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthState {
    NotRequired,
    Required { authenticated: bool, rejected: bool },
}

impl ClientAuthState {
    /// The state of a new connection under the configured token (None: auth is off).
    pub fn new(expected: Option<&ClientAuthToken>) -> ClientAuthState {
        match expected {
            None => ClientAuthState::NotRequired,
            Some(_) => ClientAuthState::Required {
                authenticated: false,
                rejected: false,
            },
        }
    }

    pub fn is_authenticated(&self) -> bool {
        match *self {
            ClientAuthState::NotRequired => true,
            ClientAuthState::Required {
                authenticated,
                rejected,
            } => authenticated && !rejected,
        }
    }

    /// May this request run? Called for every request, before [`Self::on_auth`].
    /// Takes `&mut self` because the first request decides: if it is not an `Auth` op
    /// the connection is rejected for good.
    pub fn allows(&mut self, op_is_auth: bool) -> Result<(), Refusal> {
        match *self {
            ClientAuthState::NotRequired => Ok(()),
            ClientAuthState::Required { rejected: true, .. } => Err(Refusal::AlreadyRejected),
            ClientAuthState::Required {
                authenticated: true,
                ..
            } => Ok(()),
            ClientAuthState::Required {
                authenticated: false,
                rejected: false,
            } => {
                if op_is_auth {
                    Ok(())
                } else {
                    self.reject();
                    Err(Refusal::TokenRequiredFirst)
                }
            }
        }
    }

    /// An `Auth` op presented `presented`. `expected` must be the token the state was
    /// made with. With auth off the op succeeds whatever it carries. A wrong token
    /// rejects the connection for good, even one that had authenticated: presenting a
    /// wrong token is never harmless.
    pub fn on_auth(
        &mut self,
        expected: Option<&ClientAuthToken>,
        presented: &[u8],
    ) -> Result<(), Refusal> {
        match *self {
            ClientAuthState::NotRequired => Ok(()),
            ClientAuthState::Required { rejected: true, .. } => Err(Refusal::AlreadyRejected),
            ClientAuthState::Required { .. } => {
                // Fail closed if the caller lost the configured token.
                let matches = expected.is_some_and(|token| token.matches(presented));
                if matches {
                    *self = ClientAuthState::Required {
                        authenticated: true,
                        rejected: false,
                    };
                    Ok(())
                } else {
                    self.reject();
                    Err(Refusal::WrongToken)
                }
            }
        }
    }

    fn reject(&mut self) {
        *self = ClientAuthState::Required {
            authenticated: false,
            rejected: true,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ClientAuthToken {
        ClientAuthToken::new(b"s3cret-token").unwrap()
    }

    #[test]
    fn any_of_several_tokens_matches() {
        let tokens = ClientAuthToken::any_of([b"alpha".as_slice(), b"beta".as_slice()]).unwrap();
        assert!(tokens.matches(b"alpha") && tokens.matches(b"beta"));
        assert!(!tokens.matches(b"gamma") && !tokens.matches(b""));
        assert!(ClientAuthToken::any_of([b"ok".as_slice(), b"".as_slice()]).is_err());
        assert!(ClientAuthToken::any_of(std::iter::empty()).is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abc", b"abd"));
        assert!(!token_matches(b"abc", b"ab"));
        assert!(!token_matches(b"abc", b"abcd"));
        assert!(!token_matches(b"abc", b""));
        assert!(token().matches(b"s3cret-token"));
        assert!(!token().matches(b"s3cret-tokem"));
    }

    #[test]
    fn not_required_allows_everything() {
        let mut state = ClientAuthState::new(None);
        assert_eq!(state.allows(false), Ok(()));
        assert_eq!(state.allows(true), Ok(()));
        assert_eq!(state.on_auth(None, b"anything"), Ok(()));
        assert!(state.is_authenticated());
    }

    #[test]
    fn right_token_first_then_everything() {
        let expected = token();
        let mut state = ClientAuthState::new(Some(&expected));
        assert!(!state.is_authenticated());
        assert_eq!(state.allows(true), Ok(()));
        assert_eq!(state.on_auth(Some(&expected), b"s3cret-token"), Ok(()));
        assert!(state.is_authenticated());
        assert_eq!(state.allows(false), Ok(()));
        assert_eq!(state.allows(false), Ok(()));
    }

    #[test]
    fn other_op_first_rejects_for_good() {
        let expected = token();
        let mut state = ClientAuthState::new(Some(&expected));
        assert_eq!(state.allows(false), Err(Refusal::TokenRequiredFirst));
        assert_eq!(state.allows(true), Err(Refusal::AlreadyRejected));
        assert_eq!(
            state.on_auth(Some(&expected), b"s3cret-token"),
            Err(Refusal::AlreadyRejected)
        );
        assert_eq!(state.allows(false), Err(Refusal::AlreadyRejected));
        assert!(!state.is_authenticated());
        assert_eq!(
            Refusal::TokenRequiredFirst.to_error_reply(),
            ErrorReply::Unauthorized
        );
    }

    #[test]
    fn wrong_token_rejects_for_good() {
        let expected = token();
        let mut state = ClientAuthState::new(Some(&expected));
        assert_eq!(state.allows(true), Ok(()));
        assert_eq!(
            state.on_auth(Some(&expected), b"guess"),
            Err(Refusal::WrongToken)
        );
        assert_eq!(state.allows(false), Err(Refusal::AlreadyRejected));
        assert!(!state.is_authenticated());
    }

    #[test]
    fn wrong_token_after_success_rejects() {
        let expected = token();
        let mut state = ClientAuthState::new(Some(&expected));
        assert_eq!(state.on_auth(Some(&expected), b"s3cret-token"), Ok(()));
        assert_eq!(
            state.on_auth(Some(&expected), b"nope"),
            Err(Refusal::WrongToken)
        );
        assert_eq!(state.allows(false), Err(Refusal::AlreadyRejected));
    }

    #[test]
    fn missing_configured_token_fails_closed() {
        let expected = token();
        let mut state = ClientAuthState::new(Some(&expected));
        assert_eq!(
            state.on_auth(None, b"s3cret-token"),
            Err(Refusal::WrongToken)
        );
    }
}
