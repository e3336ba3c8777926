//! One group member as the coordinator sees it, and the replies parked requests wait for.

use std::time::{Duration, Instant};

use bytes::Bytes;

/// Identifies a parked JoinGroup or SyncGroup request (unique per coordinator).
pub type WaiterId = u64;

/// A member of a classic group.
#[derive(Clone, Debug)]
pub struct Member {
    /// Coordinator-assigned member id.
    pub id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    /// Client id of the connection that joined.
    pub client_id: String,
    /// Peer address of that connection.
    pub client_host: String,
    /// Expelled when no request arrives within this time.
    pub session_timeout: Duration,
    /// How long a rebalance waits for this member to rejoin.
    pub rebalance_timeout: Duration,
    /// Supported protocols (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// The assignment the leader gave this member in the current generation.
    pub assignment: Bytes,
    /// A JoinGroup waiting for the rebalance to complete.
    pub join_waiter: Option<WaiterId>,
    /// A SyncGroup waiting for the leader's assignment.
    pub sync_waiter: Option<WaiterId>,
    /// When the member is expelled unless it is heard from.
    pub expires: Instant,
}

impl Member {
    /// The metadata this member gave for `protocol` (empty if it does not support it).
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    /// Whether the member supports `protocol`.
    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(n, _)| n == protocol)
    }

    /// Whether the session timeout runs: not while a JoinGroup or SyncGroup is parked (the
    /// member waits for the coordinator, as Kafka's `shouldKeepAlive`).
    pub fn expires_silently(&self) -> bool {
        self.join_waiter.is_none() && self.sync_waiter.is_none()
    }

    /// Pushes the session deadline out from `now`.
    pub fn heard_from(&mut self, now: Instant) {
        self.expires = now + self.session_timeout;
    }
}

/// A member entry in the leader's JoinGroup response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static instance id.
    pub instance_id: Option<String>,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// What a JoinGroup is answered with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinReply {
    /// Kafka error code (0: none).
    pub error: i16,
    /// The new generation.
    pub generation: i32,
    /// Protocol type of the group.
    pub protocol_type: Option<String>,
    /// Chosen protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member's own id.
    pub member_id: String,
    /// Every member with its metadata, for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinReply {
    /// A reply with only an error (and the member id, which MEMBER_ID_REQUIRED carries).
    pub fn error(error: i16, member_id: &str) -> Self {
        JoinReply {
            error,
            generation: -1,
            member_id: member_id.to_string(),
            ..JoinReply::default()
        }
    }
}

/// What a SyncGroup is answered with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReply {
    /// Kafka error code (0: none).
    pub error: i16,
    /// Protocol type of the group.
    pub protocol_type: Option<String>,
    /// Chosen protocol.
    pub protocol_name: Option<String>,
    /// The member's assignment, as the leader encoded it.
    pub assignment: Bytes,
}

impl SyncReply {
    /// A reply with only an error.
    pub fn error(error: i16) -> Self {
        SyncReply {
            error,
            ..SyncReply::default()
        }
    }
}

/// A delayed reply to a parked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// To a JoinGroup.
    Join(JoinReply),
    /// To a SyncGroup.
    Sync(SyncReply),
}

/// The answer to a JoinGroup or SyncGroup: now, or later under a waiter id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Answer now.
    Now(T),
    /// Park the request; the reply comes from [`super::Coordinator::take_reply`].
    Wait(WaiterId),
}
