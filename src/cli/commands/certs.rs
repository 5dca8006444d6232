//! `raftkv certs init DIR`: a CA and certificates for trying TLS, written with rcgen.
//!
//! Writes `ca.pem` and `ca-key.pem`, one `nodeN.pem` / `nodeN-key.pem` per node (valid for
//! server and client use, so a node presents the same certificate to clients and to its peers)
//! and `client.pem` / `client-key.pem`. Every node certificate names every `--hosts` entry, so
//! any of them may run on any of those names. Meant for trying raftkv out and for tests: the
//! certificates do not expire (rcgen's default validity runs to the year 4096) and the CA key
//! sits beside them.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::emit_line;
use crate::cli::client::CliError;
use crate::cli::exit;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Write a new CA, node certificates and a client certificate into DIR.
    Init(CertsInitArgs),
}

#[derive(Args, Debug)]
pub struct CertsInitArgs {
    /// Directory to write into; created if missing. Existing certificates are never overwritten.
    pub dir: PathBuf,

    /// Node certificates to write: node1.pem … nodeN.pem.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,

    /// Names and IP addresses every node certificate is valid for, comma-separated
    /// (default: 127.0.0.1, localhost and node1 … nodeN).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
}

pub async fn certs(command: CertsCommand) -> Result<(), CliError> {
    match command {
        CertsCommand::Init(args) => init(&args),
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(exit::UNAVAILABLE, format!("cannot {what}: {e}"))
}

fn init(args: &CertsInitArgs) -> Result<(), CliError> {
    if args.nodes == 0 || args.nodes > 100 {
        return Err(CliError::new(exit::USAGE, "--nodes must be from 1 to 100"));
    }
    let hosts: Vec<String> = if args.hosts.is_empty() {
        default_hosts(args.nodes)
    } else {
        args.hosts
            .iter()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect()
    };
    if hosts.is_empty() {
        return Err(CliError::new(exit::USAGE, "--hosts is empty"));
    }
    let summary = generate(&args.dir, args.nodes, &hosts)?;
    emit_line(&summary)
}

/// The names every node certificate is valid for unless told otherwise: 127.0.0.1, localhost
/// and node1 … nodeN.
pub fn default_hosts(nodes: u32) -> Vec<String> {
    ["127.0.0.1".to_string(), "localhost".to_string()]
        .into_iter()
        .chain((1..=nodes).map(|i| format!("node{i}")))
        .collect()
}

/// Writes a CA, `nodes` node certificates valid for `hosts`, and a client certificate into
/// `dir`; refuses to overwrite. Returns a one-line summary.
pub fn generate(dir: &Path, nodes: u32, hosts: &[String]) -> Result<String, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| failed(&format!("create {}", dir.display()), e))?;
    let existing = dir.join("ca.pem");
    if existing.exists() {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "{} already exists; certs init never overwrites certificates (use another DIR)",
                existing.display()
            ),
        ));
    }

    let ca_key = KeyPair::generate().map_err(|e| failed("generate a key", e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| failed("make the CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "raftkv CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params
        .self_signed(&ca_key)
        .map_err(|e| failed("sign the CA", e))?;
    write(dir, "ca", &ca, &ca_key)?;

    for i in 1..=nodes {
        let name = format!("node{i}");
        let (cert, key) = leaf(&name, hosts, &ca, &ca_key)?;
        write(dir, &name, &cert, &key)?;
    }
    let (cert, key) = leaf("client", &[], &ca, &ca_key)?;
    write(dir, "client", &cert, &key)?;
    Ok(format!(
        "wrote ca.pem, node1.pem … node{nodes}.pem and client.pem (each with its -key.pem) to \
         {}; node certificates are valid for {}",
        dir.display(),
        hosts.join(", ")
    ))
}

/// A certificate signed by the CA, for server and client use.
fn leaf(
    name: &str,
    hosts: &[String],
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(Certificate, KeyPair), CliError> {
    let key = KeyPair::generate().map_err(|e| failed("generate a key", e))?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .map_err(|e| failed(&format!("make {name}'s certificate"), e))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = params
        .signed_by(&key, ca, ca_key)
        .map_err(|e| failed(&format!("sign {name}'s certificate"), e))?;
    Ok((cert, key))
}

/// Writes `NAME.pem` and `NAME-key.pem`, the key readable by its owner only.
fn write(dir: &Path, name: &str, cert: &Certificate, key: &KeyPair) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert.pem())
        .map_err(|e| failed(&format!("write {}", cert_path.display()), e))?;
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
        .map_err(|e| failed(&format!("write {}", key_path.display()), e))
}
