//! A cluster member as membership entries record it: the two addresses it is reached at.
//!
//! Peers reach a member's **peer port** (the internal Raft and Forward services); clients reach
//! its **client port** (KV, Cluster, health, reflection). Both travel in the membership, so that
//! every node can send its Raft messages to the one and tell clients about the other.
//!
//! On disk and on the wire a member is one string, `"PEER CLIENT"`. Data dirs written when a
//! node served everything on one port hold a single `host:port` there (openraft's `BasicNode`
//! encodes as that one string); such a member decodes with that address as its client address
//! and, as its peer address, the same host with the port [`DEFAULT_PEER_PORT_OFFSET`] higher:
//! where `raftkv serve` puts the peer port unless told otherwise. So an existing data dir opens
//! unchanged, and a node that was started with another `--peer-listen` corrects its own entry
//! once a leader is elected (see `server::membership::publish_addresses`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How far above the client port the peer port is unless `--peer-listen` says otherwise:
/// 7001 → 9001. (Client port + 1000 is where the playground and docker-compose put the HTTP
/// gateway, 8001.)
pub const DEFAULT_PEER_PORT_OFFSET: u16 = 2000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// `host:port` of the member's peer port (Raft, Forward).
    pub peer_address: String,
    /// `host:port` of the member's client port; empty while not yet known (a member named only
    /// by its peer address in `--initial-cluster` or `cluster add-learner`, until it publishes).
    pub client_address: String,
}

impl Member {
    pub fn new(peer_address: impl Into<String>, client_address: impl Into<String>) -> Self {
        Self {
            peer_address: peer_address.into(),
            client_address: client_address.into(),
        }
    }

    /// The member a single-address record names (see the module doc).
    fn from_shared_port(address: &str) -> Self {
        Self {
            peer_address: offset_port(address, DEFAULT_PEER_PORT_OFFSET as i32)
                .unwrap_or_else(|| address.to_string()),
            client_address: address.to_string(),
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "peer {} client {}",
            self.peer_address, self.client_address
        )
    }
}

/// `host:port` with the port moved by `delta`, when the result is a valid port (1-65535).
pub fn offset_port(address: &str, delta: i32) -> Option<String> {
    let (host, port) = address.rsplit_once(':')?;
    let port: i32 = port.parse().ok()?;
    let moved = u16::try_from(port + delta).ok().filter(|p| *p > 0)?;
    Some(format!("{host}:{moved}"))
}

impl Serialize for Member {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{} {}", self.peer_address, self.client_address))
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.split_once(' ') {
            Some((peer, client)) => Member::new(peer, client),
            None => Member::from_shared_port(&text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::codec;

    #[test]
    fn a_member_survives_the_codec() {
        for member in [
            Member::new("10.0.0.1:9001", "10.0.0.1:7001"),
            Member::new("node2:9001", ""),
        ] {
            let bytes = codec::encode(&member).expect("encodes");
            assert_eq!(codec::decode::<Member>(&bytes).expect("decodes"), member);
        }
    }

    #[test]
    fn a_single_address_record_gets_the_default_peer_port() {
        let old = codec::encode(&openraft::BasicNode::new("node1:7001")).expect("encodes");
        let member: Member = codec::decode(&old).expect("an old record decodes");
        assert_eq!(member, Member::new("node1:9001", "node1:7001"));
        let high = codec::encode(&openraft::BasicNode::new("h:64000")).expect("encodes");
        let member: Member = codec::decode(&high).expect("decodes");
        assert_eq!(member, Member::new("h:64000", "h:64000"));
    }

    #[test]
    fn ports_move_only_within_range() {
        assert_eq!(offset_port("h:7001", 1000).as_deref(), Some("h:8001"));
        assert_eq!(
            offset_port("[::1]:7001", -1000).as_deref(),
            Some("[::1]:6001")
        );
        assert_eq!(offset_port("h:500", -1000), None);
        assert_eq!(offset_port("h:65000", 1000), None);
        assert_eq!(offset_port("h", 1), None);
    }
}
