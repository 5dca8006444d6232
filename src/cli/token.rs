//! The bearer token a client command sends to nodes started with `--auth-token-file`
//! (`--token-file PATH` or `--token TOKEN`, see [`super::TokenOpts`]), as
//! `authorization: Bearer <token>` metadata on every call.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::client::CliError;
use super::exit;

/// A token given on the command line or in the environment. Its `Debug` never shows it, so
/// neither does a debug print of the parsed command line.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn parse(text: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token is printable ASCII without spaces".into());
        }
        Ok(Self(token.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Adds the command's `authorization: Bearer <token>` to every call; adds nothing without a
/// token.
#[derive(Clone, Default)]
pub struct SendToken(Option<MetadataValue<Ascii>>);

impl SendToken {
    /// The token of `--token-file` (its first token: the file has the server's format, one
    /// token per line, blank lines and `#` comments ignored) or of `--token`.
    pub fn load(file: Option<&Path>, token: Option<&Secret>) -> Result<Self, CliError> {
        let usage = |message: String| CliError::new(exit::USAGE, message);
        let token = match (file, token) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    usage(format!("cannot read --token-file {}: {e}", path.display()))
                })?;
                let tokens = crate::api::auth::parse_tokens(&text)
                    .map_err(|e| usage(format!("--token-file {}: {e}", path.display())))?;
                let first = tokens.into_iter().next().ok_or_else(|| {
                    usage(format!("--token-file {} holds no token", path.display()))
                })?;
                // parse_tokens admits printable ASCII only, which is valid UTF-8.
                String::from_utf8_lossy(&first).into_owned()
            }
            (None, Some(secret)) => secret.0.clone(),
            (None, None) => return Ok(Self(None)),
        };
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| usage("a token is printable ASCII without spaces".into()))?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_gives_its_first_token() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("token");
        std::fs::write(&path, "# mine\n\n  s3cret-1 \nother\n").expect("write token file");
        let mut send = SendToken::load(Some(&path), None).expect("loads");
        let request = send.call(Request::new(())).expect("passes");
        let sent = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        assert_eq!(sent, Some("Bearer s3cret-1"));

        std::fs::write(&path, "# nothing\n").expect("write token file");
        let empty = SendToken::load(Some(&path), None).err().expect("no token");
        assert_eq!(empty.code, exit::USAGE);
        assert!(empty.message.contains("--token-file"), "{}", empty.message);
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        assert!(Secret::parse("with space").is_err());
        assert!(Secret::parse("").is_err());
        let secret = Secret::parse("hunter2").expect("valid");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let mut none = SendToken::load(None, None).expect("no token");
        let request = none.call(Request::new(())).expect("passes");
        assert!(request.metadata().get("authorization").is_none());
    }
}
