//! Heartbeats in the overlay task: one heartbeat topic per followed federation, subscribed
//! with its ad topic; heartbeats from gossip judged ([`capability_schema::heartbeat::check`])
//! and handed to the daemon as [`HeartbeatEvent`]s; this node's own published.
//!
//! How a heartbeat flows: a node signs one every few seconds → [`Runner::publish_heartbeat`]
//! puts it on its federation's heartbeat topic → each receiving overlay takes it only from a
//! node whose valid ad it holds (its `seq` table), newer than the last taken from it and sent
//! within the skew window of its clock; then it is relayed (accepted), else dropped (ignored,
//! or rejected at the relaying peer's expense when forged) → agents and brokers count the node
//! alive from the arrival.

use std::collections::HashMap;

use capability_schema::heartbeat::{self, Heartbeat};
use capability_schema::{PublicKey, Signed};
use libp2p::PeerId;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
use tokio::sync::broadcast;

use super::super::handle::HeartbeatEvent;
use super::super::seq::SeqTracker;
use super::super::{OverlayError, swarm};
use super::Runner;

/// The heartbeat side of the overlay task.
#[derive(Debug)]
pub(crate) struct Beats {
    /// Subscribed heartbeat topics and their federation's authority.
    topics: HashMap<TopicHash, PublicKey>,
    /// Per node: the last heartbeat `seq` taken (bounded like the ads' table).
    last: SeqTracker,
    /// Where accepted heartbeats go.
    events: broadcast::Sender<HeartbeatEvent>,
    /// Heartbeats taken, ignored, and rejected as forged, since start.
    pub(crate) counts: (u64, u64, u64),
}

impl Beats {
    pub(crate) fn new(events: broadcast::Sender<HeartbeatEvent>, max_nodes: usize) -> Beats {
        Beats {
            topics: HashMap::new(),
            last: SeqTracker::new(max_nodes),
            events,
            counts: (0, 0, 0),
        }
    }

    /// Whether `topic` is a heartbeat topic this overlay follows.
    pub(crate) fn owns(&self, topic: &TopicHash) -> bool {
        self.topics.contains_key(topic)
    }
}

/// The gossip topic of the heartbeats of `authority`'s federation.
pub(crate) fn topic(authority: &PublicKey) -> IdentTopic {
    IdentTopic::new(heartbeat::heartbeat_topic(authority))
}

impl Runner {
    /// Follows the heartbeats of the federation of `authority` (with its ad topic).
    pub(super) fn subscribe_heartbeats(
        &mut self,
        federation: &str,
        authority: PublicKey,
    ) -> Result<(), OverlayError> {
        let topic = topic(&authority);
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        gossipsub
            .subscribe(&topic)
            .map_err(|e| OverlayError::Setup(format!("subscribe {federation} heartbeats: {e}")))?;
        if gossipsub.get_topic_params(&topic).is_none() {
            gossipsub
                .set_topic_params(topic.clone(), swarm::topic_score_params())
                .map_err(|e| OverlayError::Setup(format!("score parameters: {e}")))?;
        }
        self.beats.topics.insert(topic.hash(), authority);
        Ok(())
    }

    /// Stops following the heartbeats of the federation of `authority`.
    pub(super) fn unsubscribe_heartbeats(&mut self, authority: &PublicKey) {
        let topic = topic(authority);
        self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
        self.beats.topics.remove(&topic.hash());
    }

    /// Publishes this node's heartbeat on its federation's (`authority`'s) heartbeat topic.
    pub(super) fn publish_heartbeat(
        &mut self,
        authority: PublicKey,
        signed: &Signed<Heartbeat>,
    ) -> Result<(), OverlayError> {
        let bytes = signed.to_bytes();
        if bytes.len() > heartbeat::MAX_HEARTBEAT_BYTES {
            return Err(OverlayError::Publish(format!(
                "the heartbeat is {} bytes, over the {}-byte limit",
                bytes.len(),
                heartbeat::MAX_HEARTBEAT_BYTES
            )));
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic(&authority), bytes)
        {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(OverlayError::NoPeers {
                federation: authority.to_string(),
            }),
            Err(e) => Err(OverlayError::Publish(e.to_string())),
        }
    }

    /// Judges a heartbeat from gossip: taken and relayed, ignored, or rejected (forged: the
    /// relaying peer pays gossip score, and is blocked under the graylist threshold).
    pub(super) fn on_heartbeat_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        data: &[u8],
    ) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (seqs, last) = (&self.seqs, &self.beats.last);
        let verdict = heartbeat::check(
            data,
            |node| seqs.last(node).is_some(),
            |node| last.last(node),
            now_ms,
        );
        let acceptance = match &verdict {
            Ok(_) => MessageAcceptance::Accept,
            Err(refusal) if refusal.is_misbehaviour() => MessageAcceptance::Reject,
            Err(_) => MessageAcceptance::Ignore,
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &source, acceptance);
        match verdict {
            Ok((node, beat)) => {
                self.beats.counts.0 += 1;
                // Kept about as long as an entry is useful: a minute past its sending.
                let expires = beat.seq / 1000 + 60;
                self.beats
                    .last
                    .record(node, beat.seq, expires, now_ms / 1000);
                let _ = self.beats.events.send(HeartbeatEvent {
                    node,
                    heartbeat: beat,
                });
            }
            Err(refusal) => {
                tracing::debug!(peer = %source, %refusal, "heartbeat dropped");
                if refusal.is_misbehaviour() {
                    self.beats.counts.2 += 1;
                    self.punish(source);
                } else {
                    self.beats.counts.1 += 1;
                }
            }
        }
    }
}
