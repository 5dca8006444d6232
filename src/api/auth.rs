//! Bearer tokens for clients without certificates (`raftkv serve --auth-token-file PATH`).
//!
//! With a token file, every call to the client services `raftkv.v1.KV` and `raftkv.v1.Cluster`,
//! and every `/kv…` and `/metrics` request of the HTTP gateway, must carry
//! `authorization: Bearer <token>` with one of the file's tokens; anything else is refused with
//! UNAUTHENTICATED (HTTP 401) before the service sees it, so nothing changes. What stays open, on
//! purpose: `grpc.health.v1.Health` and `/health` (liveness probes carry no secrets), server
//! reflection (`grpcurl list` tells nothing that the proto files do not), and the node-to-node
//! services `raftkv.raft.v1.Raft` and `Forward`, which belong to the peer port and its mTLS.
//!
//! The token set lives behind one [`Tokens`] handle that the gRPC interceptor ([`require`]),
//! the HTTP gateway and the SIGHUP reloader ([`reload_on_sighup`]) share: a SIGHUP re-reads the
//! file; a re-read that fails (unreadable, no tokens) keeps the tokens loaded before, so a
//! botched edit never locks every client out. Tokens are compared in constant time (the
//! `subtle` crate) against every loaded token, so the answer's timing tells nothing about how
//! much of a guess was right. No token is ever logged.
//!
//! File format: one token per line; blank lines and lines starting with `#` are ignored and
//! surrounding whitespace is trimmed. A token is printable ASCII without spaces (anything else
//! could not travel in a header).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

/// The message of every refusal, on gRPC (UNAUTHENTICATED) and HTTP (401) alike.
pub const REFUSED: &str = "missing or wrong bearer token: send `authorization: Bearer <token>` \
                           with a token from the node's --auth-token-file";

/// The flag that names the token file, for messages.
const FLAG: &str = "--auth-token-file";

/// The bearer tokens a node accepts; cheap to clone, every clone sees reloads.
///
/// [`Tokens::none`] (no `--auth-token-file`) accepts every call.
#[derive(Clone, Default)]
pub struct Tokens {
    file: Option<Arc<TokenFile>>,
}

struct TokenFile {
    path: PathBuf,
    tokens: RwLock<Vec<Box<[u8]>>>,
}

impl std::fmt::Debug for Tokens {
    /// Says where the tokens come from and how many there are, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            None => f.write_str("Tokens(none)"),
            Some(file) => write!(f, "Tokens({}, {} loaded)", file.path.display(), file.len()),
        }
    }
}

impl TokenFile {
    fn len(&self) -> usize {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Tokens {
    /// No token file: every call is accepted.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads the token file at start. A file that cannot be read, holds no token or holds a
    /// line that cannot be a token is a one-line error naming `--auth-token-file`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let tokens = read_tokens(path)?;
        Ok(Self {
            file: Some(Arc::new(TokenFile {
                path: path.to_path_buf(),
                tokens: RwLock::new(tokens),
            })),
        })
    }

    /// [`Tokens::load`] when a file is named, else [`Tokens::none`].
    pub fn from_flag(path: Option<&Path>) -> Result<Self, String> {
        path.map_or_else(|| Ok(Self::none()), Self::load)
    }

    /// Whether calls need a token.
    pub fn required(&self) -> bool {
        self.file.is_some()
    }

    /// Re-reads the token file: on success the new tokens replace the old ones and their
    /// number is returned; on failure the old tokens stay. `Ok(0)` without a token file.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(file) = &self.file else {
            return Ok(0);
        };
        let tokens = read_tokens(&file.path)?;
        let count = tokens.len();
        *file.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(count)
    }

    /// Whether an `authorization` header value admits the call: always without a token file,
    /// else only `Bearer <token>` with a loaded token (the scheme's case does not matter).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(file) = &self.file else {
            return true;
        };
        let Some(presented) = authorization.and_then(bearer_token) else {
            return false;
        };
        let tokens = file.tokens.read().unwrap_or_else(|p| p.into_inner());
        // Every token is compared, so the time taken does not depend on which one matched.
        let matched = tokens.iter().fold(subtle::Choice::from(0), |found, token| {
            found | token.as_ref().ct_eq(presented)
        });
        matched.into()
    }
}

/// The token of a `Bearer <token>` header value.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The tokens of a token file (see the module docs for its format).
fn read_tokens(path: &Path) -> Result<Vec<Box<[u8]>>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {FLAG} {}: {e}", path.display()))?;
    let tokens = parse_tokens(&text).map_err(|e| format!("{FLAG} {}: {e}", path.display()))?;
    if tokens.is_empty() {
        return Err(format!(
            "{FLAG} {} holds no token (one per line; blank lines and # comments are ignored)",
            path.display()
        ));
    }
    Ok(tokens)
}

/// The tokens of a token file's text, or the line number of one that cannot be a token (the
/// line itself is never repeated: it may be a secret with a typo).
pub fn parse_tokens(text: &str) -> Result<Vec<Box<[u8]>>, String> {
    let mut tokens = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "line {} is not a token: a token is printable ASCII without spaces",
                number + 1
            ));
        }
        tokens.push(line.as_bytes().into());
    }
    Ok(tokens)
}

/// The interceptor [`require`] puts in front of a service.
#[derive(Clone)]
pub struct RequireBearer {
    tokens: Tokens,
}

impl tonic::service::Interceptor for RequireBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        if self.tokens.admits(authorization) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(REFUSED))
        }
    }
}

/// `service` behind the bearer-token check: with a token file, a call without
/// `authorization: Bearer <token>` (or with a token not in the file) is answered
/// UNAUTHENTICATED before `service` sees it; with [`Tokens::none`] every call passes.
///
/// The server wiring wraps the client services with it, and only those:
///
/// ```ignore
/// router
///     .add_service(auth::require(tokens.clone(), KvService::server(kv)))
///     .add_service(auth::require(tokens.clone(), ClusterService::server(..)))
/// ```
///
/// Health, reflection, `Raft` and `Forward` are added without it (see the module docs). The
/// wrapped service keeps its gRPC name ([`tonic::server::NamedService`]).
pub fn require<S>(tokens: Tokens, service: S) -> InterceptedService<S, RequireBearer> {
    InterceptedService::new(service, RequireBearer { tokens })
}

/// Listens for SIGHUP and reloads `tokens` on each one, for as long as the returned future
/// runs (the node runs it as a background task). The handler is installed when this is
/// called, so from then on SIGHUP never stops the process, also without a token file (then
/// it is only logged).
///
/// A reload that fails keeps the tokens loaded before and logs a warning; one that works logs
/// how many tokens are loaded.
pub fn reload_on_sighup(tokens: Tokens) -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangups.recv().await.is_some() {
            match (&tokens.file, tokens.reload()) {
                (None, _) => tracing::info!("SIGHUP received: no {FLAG}, nothing to reload"),
                (Some(file), Ok(count)) => tracing::info!(
                    "SIGHUP: reloaded {FLAG} {}: {count} token(s) loaded",
                    file.path.display()
                ),
                (Some(file), Err(e)) => tracing::warn!(
                    "SIGHUP: {e}; keeping the {} token(s) loaded before",
                    file.len()
                ),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Tokens {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).expect("write token file");
        Tokens::load(&path).expect("token file loads")
    }

    #[test]
    fn token_files_skip_blanks_and_comments_and_trim() {
        let parsed =
            parse_tokens("# ops\n\n  alpha \t\nbeta\n   # indented comment\n").expect("valid file");
        assert_eq!(
            parsed,
            vec![b"alpha".as_slice().into(), b"beta".as_slice().into()]
        );
        let refused = parse_tokens("good\nwith space\n").expect_err("a space inside a token");
        assert!(refused.contains("line 2"), "{refused}");
        assert!(
            !refused.contains("with space"),
            "the line is not echoed: {refused}"
        );
        assert!(parse_tokens("caf\u{e9}\n").is_err());
    }

    #[test]
    fn an_empty_or_missing_file_is_an_error_naming_the_flag() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing here\n\n").expect("write token file");
        for path in [empty, dir.path().join("missing")] {
            let error = Tokens::load(&path).expect_err("no tokens");
            assert!(error.contains("--auth-token-file"), "{error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn only_a_loaded_bearer_token_is_admitted() {
        let tokens = tokens("alpha\nbeta\n");
        assert!(tokens.required());
        for good in ["Bearer alpha", "bearer beta", "BEARER  alpha "] {
            assert!(tokens.admits(Some(good.as_bytes())), "{good}");
        }
        for bad in [
            "",
            "alpha",
            "Bearer",
            "Bearer ",
            "Bearer alph",
            "Bearer alphaa",
            "Basic alpha",
            "Beareralpha",
            "Bearer gamma",
        ] {
            assert!(!tokens.admits(Some(bad.as_bytes())), "{bad:?}");
        }
        assert!(!tokens.admits(None));
        assert!(
            Tokens::none().admits(None),
            "no token file: everything passes"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "old-s3cret\n").expect("write token file");
        let tokens = Tokens::load(&path).expect("loads");
        std::fs::write(&path, "# emptied\n").expect("write token file");
        assert!(tokens.reload().is_err());
        assert!(tokens.admits(Some(b"Bearer old-s3cret")));
        std::fs::write(&path, "new-s3cret\n").expect("write token file");
        assert_eq!(tokens.reload(), Ok(1));
        assert!(tokens.admits(Some(b"Bearer new-s3cret")));
        assert!(!tokens.admits(Some(b"Bearer old-s3cret")));
        let shown = format!("{tokens:?}");
        assert!(
            !shown.contains("s3cret"),
            "Debug never shows a token: {shown}"
        );
    }

    #[test]
    fn the_interceptor_refuses_with_unauthenticated() {
        use tonic::service::Interceptor;
        let mut check = RequireBearer {
            tokens: tokens("alpha\n"),
        };
        let refused = check.call(Request::new(())).expect_err("no header");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), REFUSED);
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", "Bearer alpha".parse().expect("ASCII"));
        assert!(check.call(request).is_ok());
    }
}
