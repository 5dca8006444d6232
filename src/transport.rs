//! Every gRPC connection raftkv makes or accepts is built here: peer and forwarding channels,
//! client channels (CLI, bench, playground), and the server with its listener. Transport
//! settings (TCP_NODELAY, keep-alive, time limits, TLS) therefore have one place each.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::{Router, Server, TcpIncoming};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

/// How long a peer or forwarding connection may take to open.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a client could not get a channel.
#[derive(Debug)]
pub enum ConnectError {
    /// The address is not a valid endpoint; retrying will not help.
    Invalid(String),
    /// Nothing answered at the address.
    Unreachable(String),
}

/// Checks that an address is `host:port` with a non-empty host and a valid port.
pub fn parse_host_port(text: &str) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("address {text:?} has no port; expected host:port"))?;
    if host.is_empty() {
        return Err(format!("address {text:?} has no host; expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(text.to_string()),
        _ => Err(format!(
            "address {text:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}

/// The source address for this node's outgoing peer and forwarding connections: the IP that
/// `--peer-listen` names, or `None` (the kernel picks) when it listens on every address.
///
/// Without it, a node listening on 127.0.0.2 connects to its peers from 127.0.0.1, as every
/// other node does, and a firewall rule cannot tell which node a packet comes from: the
/// partition tests give each node its own loopback address and cut the traffic between two of
/// them by source and destination. On a host with several interfaces it also makes peers see
/// the address the node is known by. The flip side: a node bound to one address must reach its
/// peers from there; when they are reachable only through another interface, listen on 0.0.0.0
/// (as the Docker setup does).
pub fn source_ip(listen: SocketAddr) -> Option<IpAddr> {
    Some(listen.ip()).filter(|ip| !ip.is_unspecified())
}

/// The endpoint for `address` (`host:port`, or a URI with its scheme), with small requests
/// sent at once rather than held back by Nagle's algorithm.
///
/// With `tls` the connection is TLS (`https`), verified against its CA and presenting its
/// identity when it has one; an `https://` address without `tls` is refused rather than sent
/// in plain text.
fn endpoint(
    address: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, String> {
    let uri = match (address.split_once("://"), tls) {
        (Some(("https", _)), None) => {
            return Err("an https:// endpoint needs --cacert (the CA that signed it)".into())
        }
        (Some((_, rest)), Some(_)) => format!("https://{rest}"),
        (Some(_), None) => address.to_string(),
        (None, Some(_)) => format!("https://{address}"),
        (None, None) => format!("http://{address}"),
    };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()).map_err(|e| e.to_string()),
        None => Ok(endpoint),
    }
}

/// Reads a PEM file named by a flag, saying which flag when it cannot.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{flag} {} is not a PEM file", path.display()));
    }
    Ok(bytes)
}

/// TLS for a client (or a node dialling its peers): the CA to verify servers against, and the
/// certificate and key to present when the server asks for one.
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    flags: [&str; 3],
) -> Result<ClientTlsConfig, String> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(flags[0], ca)?));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            read_pem(flags[1], cert)?,
            read_pem(flags[2], key)?,
        ));
    }
    Ok(tls)
}

/// TLS for a server port: its certificate and key, and with `client_ca` the CA every client
/// (or peer) must present a certificate from. `flags` name the three files in errors.
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    flags: [&str; 3],
) -> Result<ServerTlsConfig, String> {
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read_pem(flags[0], cert)?,
        read_pem(flags[1], key)?,
    ));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem(flags[2], ca)?));
    }
    Ok(tls)
}

/// TLS for the HTTP gateway, from the same PEM files as [`server_tls`]: tonic's
/// `ServerTlsConfig` is opaque, so the gateway gets a rustls config of its own (ring, as tonic
/// uses, no OpenSSL). It presents the certificate chain of `cert` with the key of `key`; with
/// `client_ca` every client must present a certificate signed by it (`--client-cert-auth`).
/// ALPN offers HTTP/2 and HTTP/1.1.
pub fn http_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;

    let certificates = |flag: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let found = CertificateDer::pem_slice_iter(&read_pem(flag, path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        if found.is_empty() {
            return Err(format!("{flag} {} holds no certificate", path.display()));
        }
        Ok(found)
    };
    let chain = certificates("--cert-file", cert)?;
    let private_key = PrivateKeyDer::from_pem_slice(&read_pem("--key-file", key)?)
        .map_err(|e| format!("--key-file {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS for the HTTP gateway: {e}"))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates("--trusted-ca-file", ca)? {
                roots
                    .add(certificate)
                    .map_err(|e| format!("--trusted-ca-file {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("--trusted-ca-file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private_key)
        .map_err(|e| format!("--cert-file and --key-file do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How a node reaches its peers and the leader: from which source address, and with which TLS.
#[derive(Clone, Default)]
pub struct Dialer {
    /// See [`source_ip`].
    pub source: Option<IpAddr>,
    /// The node's TLS as a client of its peers, when its peer port speaks TLS.
    pub tls: Option<ClientTlsConfig>,
}

impl Dialer {
    /// A channel to a peer or leader that connects on first use and reconnects by itself after
    /// failures. HTTP/2 keep-alive notices a peer that vanished without closing the connection.
    pub fn lazy_channel(&self, address: &str) -> Result<Channel, String> {
        endpoint(address, PEER_CONNECT_TIMEOUT, self.tls.as_ref())
            .map(|endpoint| {
                endpoint
                    .local_address(self.source)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy()
            })
            .map_err(|e| format!("invalid address {address:?}: {e}"))
    }
}

/// A client's channel to `address`, connected now.
pub async fn connect(
    address: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, ConnectError> {
    endpoint(address, connect_timeout, tls)
        .map_err(|e| ConnectError::Invalid(format!("bad endpoint {address:?}: {e}")))?
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable(format!("cannot connect to {address}: {e}")))
}

/// The gRPC server every node runs, with TLS when given; services are added by the caller.
pub fn server(tls: Option<ServerTlsConfig>) -> Result<Server, String> {
    let builder = Server::builder();
    match tls {
        Some(tls) => builder
            .tls_config(tls)
            .map_err(|e| format!("invalid TLS settings: {e}")),
        None => Ok(builder),
    }
}

/// Serves `router` on `listener` until `shutdown` resolves. Accepted sockets get TCP_NODELAY:
/// Nagle's algorithm with delayed ACKs adds ~40 ms to small replies.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_needs_both_parts_and_a_real_port() {
        assert!(parse_host_port("127.0.0.1:7001").is_ok());
        assert!(parse_host_port("node1:7001").is_ok());
        assert!(parse_host_port("7001").is_err());
        assert!(parse_host_port(":7001").is_err());
        assert!(parse_host_port("host:0").is_err());
        assert!(parse_host_port("host:99999").is_err());
    }

    #[test]
    fn addresses_get_a_scheme_unless_they_have_one() {
        let plain =
            endpoint("127.0.0.1:7001", PEER_CONNECT_TIMEOUT, None).map(|e| e.uri().to_string());
        assert_eq!(plain.as_deref(), Ok("http://127.0.0.1:7001/"));
        let given =
            endpoint("http://node1:7001", PEER_CONNECT_TIMEOUT, None).map(|e| e.uri().to_string());
        assert_eq!(given.as_deref(), Ok("http://node1:7001/"));
        assert!(endpoint("not an address", PEER_CONNECT_TIMEOUT, None).is_err());
    }

    #[test]
    fn peer_connections_leave_from_the_listen_ip_unless_it_is_a_wildcard() {
        let source = |listen: &str| source_ip(listen.parse().expect("socket address"));
        assert_eq!(source("127.0.0.3:7001"), "127.0.0.3".parse().ok());
        assert_eq!(source("[::1]:7001"), "::1".parse().ok());
        assert_eq!(source("0.0.0.0:7001"), None);
        assert_eq!(source("[::]:7001"), None);
    }
}
