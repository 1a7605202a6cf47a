//! The service manager's side of the network: one overlay client for the whole command.
//!
//! - acquisition through brokers (`/planetmesh/broker/1`, with the principal's certificate
//!   and an ask the principal signs for the broker asked), healthiest first, moving on to the
//!   next when one fails to serve ([`crate::brokers`]; brokers found on the overlay when none
//!   is given), or in-process with `--agent` (the paper's integrated broker:
//!   [`broker::acquire`] over the same overlay, the ask signed for the principal's own key,
//!   which the agents see as the caller), the last resort when no broker answers;
//! - node calls (`Redeem`, `Renew`, `Release`, `Exec`, …), each bounded by the timeout, fanned
//!   out over many nodes with at most `concurrency` in flight;
//! - `Released` to agents for tickets that will not be redeemed (best effort: unredeemed
//!   tickets lapse anyway).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use broker::acquire::{AcquireSettings, Acquirer, AgentClient, CallError, OverlayAgents};
use broker::wire::{BrokerAnswer, BrokerAnswerProtocol, BrokerCall, BrokerCallProtocol, SliceAsk};
use capability_schema::ask::{DEFAULT_ASK_VALIDITY_SECS, MAX_ASK_VALIDITY_SECS};
use capability_schema::protocol::{
    AcquiredSlice, BrokerFailure, BrokerResponse, NodeRequest, NodeResponse, SlicePlan,
};
use capability_schema::{AskGrant, ErrorReply, PublicKey, Signed, SliceRequest};
use federation::overlay::{Multiaddr, NodeProtocol, Protocol};
use federation::{Overlay, OverlayConfig, OverlayHandle};
use futures::StreamExt;

use crate::config::{Identity, TrustedFederation};
use crate::exit::ExitClass;

/// Errors talking to brokers, agents and nodes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The client could not be set up (addresses, overlay).
    #[error("{0}")]
    Setup(String),
    /// A broker or agent refused, with its reason.
    #[error("{0}")]
    Refused(ErrorReply),
    /// An acquisition returned nothing: the refusal, with the plan as it stood at the end and
    /// what happened, line by line and as typed events (the plan and the report are absent
    /// when an older broker sent the refusal alone, the events when it predates them).
    #[error("{0}")]
    NotAcquired(Box<BrokerFailure>),
    /// The peer given as a broker does not serve the broker protocol.
    #[error("{0}")]
    NotABroker(String),
    /// A broker could not be reached, or did not answer in time.
    #[error("{party} {detail}")]
    Unreachable {
        /// Who.
        party: String,
        /// What happened.
        detail: String,
    },
}

impl ClientError {
    /// The exit class.
    pub fn class(&self) -> ExitClass {
        match self {
            ClientError::Setup(_) | ClientError::NotABroker(_) => ExitClass::Setup,
            ClientError::Refused(reply) => ExitClass::of_rejection(&reply.reason),
            ClientError::NotAcquired(failure) => ExitClass::of_rejection(&failure.reply.reason),
            ClientError::Unreachable { .. } => ExitClass::Unreachable,
        }
    }
}

/// The class of a failed node call.
pub fn call_class(e: &CallError) -> ExitClass {
    match e {
        CallError::Refused(reply) => ExitClass::of_rejection(&reply.reason),
        CallError::Timeout(_) | CallError::Unreachable(_) => ExitClass::Unreachable,
        CallError::TooLarge(_) | CallError::Unexpected(_) => ExitClass::Internal,
    }
}

/// Whether a failed node call may succeed later (the node was down or slow).
pub fn retryable(e: &CallError) -> bool {
    match e {
        CallError::Timeout(_) | CallError::Unreachable(_) => true,
        CallError::Refused(reply) => matches!(
            reply.reason.code(),
            "unavailable" | "unreachable" | "over_capacity" | "over_share" | "internal"
        ),
        CallError::TooLarge(_) | CallError::Unexpected(_) => false,
    }
}

/// Why a dial failed, in a few words when the OS said it ("connection refused"); libp2p's
/// own text repeats the address and spans lines.
fn dial_cause(e: &federation::overlay::OverlayError) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    for (needle, cause) in [
        ("connection refused", "connection refused"),
        ("timed out", "connection timed out"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network is unreachable"),
    ] {
        if lower.contains(needle) {
            return cause.to_owned();
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The longest a connection to a broker may take to set up (TCP or QUIC, then the handshake),
/// when the call timeout is longer: a broker that takes longer is left for the next.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Limits of remote calls.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest one remote call may take (an acquisition through a broker: three times).
    pub timeout: Duration,
    /// Remote calls in flight at once.
    pub concurrency: usize,
}

impl Settings {
    /// The longest a connection to a broker may take: the call timeout, at most
    /// [`CONNECT_TIMEOUT`].
    pub fn connect_timeout(&self) -> Duration {
        self.timeout.min(CONNECT_TIMEOUT)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeout: Duration::from_secs(20),
            concurrency: 32,
        }
    }
}

/// A broker to ask: its key, and its address unless it was found on the overlay (then the
/// overlay looks its address up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAt {
    /// Its key.
    pub key: PublicKey,
    /// Its multiaddress with `/p2p/`.
    pub addr: Option<Multiaddr>,
}

impl std::fmt::Display for BrokerAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.addr {
            Some(addr) => write!(f, "broker {addr}"),
            None => write!(f, "broker {} (announced on the overlay)", self.key.short()),
        }
    }
}

/// A connected client.
#[derive(Debug)]
pub struct Session {
    overlay: OverlayHandle,
    identity: Identity,
    /// The brokers given, healthiest first; `None` until looked up on the overlay.
    brokers: tokio::sync::OnceCell<Vec<BrokerAt>>,
    /// Whether to look brokers up on the overlay (none was given).
    discover: bool,
    /// The integrated broker: the agents to ask when no broker answers (or none is given).
    fallback: Option<(Vec<PublicKey>, Acquirer<OverlayAgents>)>,
    /// Each broker's last outcome.
    health: Mutex<crate::brokers::Health>,
    /// Every agent the endpoints name (also beside a broker): asked for ads to learn nodes'
    /// names.
    agents: Vec<PublicKey>,
    settings: Settings,
    known: Mutex<HashSet<PublicKey>>,
}

/// The peer key of a multiaddress ending in `/p2p/<peer id>`.
pub fn peer_of(addr: &Multiaddr) -> Option<PublicKey> {
    federation::overlay::addr_peer(addr)
}

fn parse_peer_addr(text: &str, what: &str) -> Result<(Multiaddr, PublicKey), ClientError> {
    let addr: Multiaddr = text
        .parse()
        .map_err(|e| ClientError::Setup(format!("{what} {text:?}: {e}")))?;
    let key = peer_of(&addr).ok_or_else(|| {
        ClientError::Setup(format!(
            "{what} {text:?} needs a /p2p/<peer id> suffix naming the {what}"
        ))
    })?;
    Ok((addr, key))
}

/// Where to connect (see [`crate::brokers::choose`]).
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// Brokers' multiaddresses with `/p2p/`, tried healthiest first.
    pub brokers: Vec<String>,
    /// Agents' multiaddresses with `/p2p/` (integrated broker): the last resort after the
    /// brokers, or the only way without them.
    pub agents: Vec<String>,
    /// Agents asked only for their ads (node names).
    pub ads_from: Vec<String>,
    /// With no broker and no agent: look up the brokers announced on the overlay.
    pub discover: bool,
    /// The state directory, where each broker's last outcome is kept (none: not kept).
    pub state_dir: Option<std::path::PathBuf>,
    /// Peers to join through.
    pub bootstrap: Vec<String>,
    /// Trusted federation authorities (needed with agents).
    pub trust: Vec<TrustedFederation>,
}

impl Session {
    /// Starts the overlay client for `identity` and registers the broker or agents.
    pub async fn connect(
        identity: Identity,
        endpoints: &Endpoints,
        settings: Settings,
    ) -> Result<Session, ClientError> {
        let trust = federation::daemon::trust_store(&endpoints.trust)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let bootstrap = endpoints
            .bootstrap
            .iter()
            .map(|b| {
                b.parse()
                    .map_err(|e| ClientError::Setup(format!("bootstrap {b:?}: {e}")))
            })
            .collect::<Result<Vec<Multiaddr>, _>>()?;
        let brokers = endpoints
            .brokers
            .iter()
            .map(|b| parse_peer_addr(b, "broker"))
            .collect::<Result<Vec<_>, _>>()?;
        let agents = endpoints
            .agents
            .iter()
            .map(|a| parse_peer_addr(a, "agent"))
            .collect::<Result<Vec<_>, _>>()?;
        let ads_from = endpoints
            .ads_from
            .iter()
            .map(|a| parse_peer_addr(a, "agent"))
            .collect::<Result<Vec<_>, _>>()?;
        if !agents.is_empty() && endpoints.trust.is_empty() {
            return Err(ClientError::Setup(
                "--agent needs the federations to trust (--trust name=ed25519/… or [[trust]] in \
                 slicectl.toml): the in-process broker checks every ad"
                    .into(),
            ));
        }
        let config = OverlayConfig {
            listen: Vec::new(),
            bootstrap,
            federations: Vec::new(),
            request_timeout: settings.timeout * 3,
            ..OverlayConfig::default()
        };
        let overlay = Overlay::start(&identity.key, config, Arc::new(RwLock::new(trust)))
            .await
            .map_err(|e| ClientError::Setup(format!("starting the client: {e}")))?;
        for (addr, key) in brokers.iter().chain(&agents).chain(&ads_from) {
            overlay
                .add_addresses(key, vec![addr.clone()])
                .await
                .map_err(|e| ClientError::Setup(e.to_string()))?;
        }
        let mut agent_keys: Vec<PublicKey> = agents.iter().map(|(_, k)| *k).collect();
        let fallback = if agents.is_empty() {
            None
        } else {
            let acquirer = Acquirer::new(
                OverlayAgents::new(overlay.clone(), settings.timeout),
                Arc::clone(overlay.trust()),
                AcquireSettings {
                    call_timeout: settings.timeout,
                    concurrency: settings.concurrency,
                    ..AcquireSettings::default()
                },
            );
            Some((agent_keys.clone(), acquirer))
        };
        agent_keys.extend(ads_from.iter().map(|(_, k)| *k));
        let health = match &endpoints.state_dir {
            Some(dir) => crate::brokers::Health::load(dir),
            None => crate::brokers::Health::default(),
        };
        let mut brokers: Vec<BrokerAt> = brokers
            .into_iter()
            .map(|(addr, key)| BrokerAt {
                key,
                addr: Some(addr),
            })
            .collect();
        health.order(&mut brokers, |b| b.key);
        let discover = endpoints.discover && brokers.is_empty() && fallback.is_none();
        let known = tokio::sync::OnceCell::new();
        if !discover {
            let _ = known.set(brokers);
        }
        Ok(Session {
            overlay,
            identity,
            brokers: known,
            discover,
            fallback,
            health: Mutex::new(health),
            agents: agent_keys,
            settings,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// The principal.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The limits.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The overlay (for tests and tools).
    pub fn overlay(&self) -> &OverlayHandle {
        &self.overlay
    }

    fn nobody(&self) -> ClientError {
        let looked = if self.discover {
            "none is announced on the overlay (joined through --bootstrap or bootstrap in \
             slicectl.toml) and "
        } else {
            ""
        };
        ClientError::Setup(format!(
            "no broker and no agent to ask: {looked}give --broker <multiaddr/p2p/…> or --agent \
             <multiaddr/p2p/…> (or brokers/agents in slicectl.toml)"
        ))
    }

    /// The brokers to ask, healthiest first: those given, or those announced on the overlay
    /// (looked up once, for at most the connect timeout).
    pub async fn brokers(&self) -> &[BrokerAt] {
        self.brokers
            .get_or_init(|| async {
                let wait = self.settings.connect_timeout();
                let found = match self
                    .overlay
                    .providers(federation::overlay::rendezvous::BROKER_KEY, wait)
                    .await
                {
                    Ok(keys) => keys,
                    Err(e) => {
                        tracing::debug!(error = %e, "no broker lookup");
                        Vec::new()
                    }
                };
                let me = self.overlay.local_key();
                let mut brokers: Vec<BrokerAt> = found
                    .into_iter()
                    .filter(|k| *k != me)
                    .map(|key| BrokerAt { key, addr: None })
                    .collect();
                self.health().order(&mut brokers, |b| b.key);
                brokers
            })
            .await
    }

    fn health(&self) -> std::sync::MutexGuard<'_, crate::brokers::Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `call` on each broker in turn, healthiest first, until one answers (on the
    /// merits: a refusal of the request is its answer) and records each outcome; a broker that
    /// fails to serve ([`crate::brokers::moves_on`]) is left for the next, and stderr says
    /// which and why. `Err` carries every broker's failure when none answered.
    async fn through_brokers<T, F, Fut>(
        &self,
        call: F,
    ) -> Result<Result<T, ClientError>, Vec<(BrokerAt, ClientError)>>
    where
        F: Fn(BrokerAt) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let brokers = self.brokers().await;
        let mut left = Vec::new();
        for (i, broker) in brokers.iter().enumerate() {
            let outcome = call(broker.clone()).await;
            let now = federation::unix_now();
            match outcome {
                Err(e) if crate::brokers::moves_on(&e) => {
                    let why = crate::brokers::why(&e);
                    self.health().failed(broker.key, now, &why);
                    let next = match (brokers.get(i + 1), &self.fallback) {
                        (Some(next), _) => Some(next.to_string()),
                        (None, Some(_)) => {
                            Some("the agents in-process (the integrated broker)".to_owned())
                        }
                        (None, None) => None,
                    };
                    if let Some(next) = next {
                        eprintln!("slicectl: leaving {broker}: {why}; trying {next}");
                    }
                    left.push((broker.clone(), e));
                }
                answered => {
                    self.health().answered(broker.key, now);
                    return Ok(answered);
                }
            }
        }
        Err(left)
    }

    /// The error when no broker answered and no agent is there to fall back on: the one
    /// broker's own, or each broker's reason.
    fn none_answered(&self, mut left: Vec<(BrokerAt, ClientError)>) -> ClientError {
        match left.len() {
            0 => self.nobody(),
            1 => left.remove(0).1,
            n => ClientError::Unreachable {
                party: format!("none of the {n} brokers"),
                detail: format!(
                    "answered ({}); check that they run, or give --agent <multiaddr/p2p/…> \
                     (agents in slicectl.toml) to acquire without a broker",
                    left.iter()
                        .map(|(b, e)| format!("{b}: {}", crate::brokers::why(e)))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            },
        }
    }

    /// One call to `broker` over protocol `P`; a refusal stays the broker's error reply,
    /// anything else is the broker being unreachable (or not a broker).
    ///
    /// Connecting is bounded by the connect timeout (a broker that accepts the connection and
    /// never speaks, frozen, ends there with a message naming it); the whole call, connecting
    /// included, by one deadline of three call timeouts (an acquisition asks agents in turn).
    async fn broker_call<P: Protocol<Request = BrokerCall>>(
        &self,
        at: &BrokerAt,
        call: BrokerCall,
    ) -> Result<Result<P::Response, ErrorReply>, ClientError> {
        let broker = &at.key;
        let timeout = self.settings.timeout;
        let connect = self.settings.connect_timeout();
        let deadline = tokio::time::Instant::now() + timeout * 3;
        let party = at.to_string();
        let check = "check that the broker runs (and is not stopped), and its address (brokers \
                     in slicectl.toml, or --broker)";
        let connected = self
            .overlay
            .connected_peers()
            .await
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        if let Some(addr) = at.addr.as_ref().filter(|_| !connected.contains(broker)) {
            match tokio::time::timeout(connect, self.overlay.dial(addr.clone())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        party,
                        detail: format!("could not be reached ({}); {check}", dial_cause(&e)),
                    });
                }
                Err(_) => {
                    return Err(ClientError::Unreachable {
                        party,
                        detail: format!(
                            "could not be reached: no answer within the {}s timeout (it \
                             accepted the connection but never completed the handshake: \
                             frozen?); {check}, or give a longer --timeout",
                            connect.as_secs_f64()
                        ),
                    });
                }
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let not_a_broker = || {
            ClientError::NotABroker(format!(
                "{} does not serve the broker protocol ({}): it is not a broker (a node or an \
                 agent?); point --broker, or brokers in slicectl.toml, at a broker's address",
                at.addr
                    .as_ref()
                    .map_or_else(|| broker.to_string(), ToString::to_string),
                P::KIND
            ))
        };
        match self.overlay.request::<P>(broker, call, left).await {
            Ok(answer) => Ok(Ok(answer)),
            Err(federation::overlay::OverlayError::Unsupported { .. }) => Err(not_a_broker()),
            Err(e) => match CallError::from(e) {
                CallError::Refused(reply)
                    if matches!(
                        &reply.reason,
                        capability_schema::Rejection::Unavailable { detail }
                            if detail.contains("does not serve")
                    ) =>
                {
                    Err(not_a_broker())
                }
                CallError::Refused(reply) => Ok(Err(reply)),
                CallError::Timeout(_) => Err(ClientError::Unreachable {
                    party,
                    detail: format!(
                        "did not answer within {}s (three times the call timeout); {check}, or \
                         give a longer --timeout",
                        (timeout * 3).as_secs_f64()
                    ),
                }),
                other => Err(ClientError::Unreachable {
                    party,
                    detail: format!("did not answer ({other}); {check}"),
                }),
            },
        }
    }

    /// Asks every agent the endpoints name (`--agent`, or `agents` in the config, also beside
    /// a broker) for its nodes' ads and records each node's name, site and federation in the
    /// node directory ([`crate::nodes`]); answers how many ads were valid (0 with no agents
    /// named: the broker protocol carries no names).
    pub async fn discover_nodes(&self) -> usize {
        use broker::acquire::AgentClient;
        let client = OverlayAgents::new(self.overlay.clone(), self.settings.timeout);
        let answers: Vec<_> = futures::stream::iter(self.agents.iter().copied())
            .map(|agent| client.get_ads(agent, Default::default()))
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;
        let now = federation::unix_now();
        let trust = self
            .overlay
            .trust()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen = 0;
        for offer in answers.into_iter().flatten().flatten() {
            if let Ok(ad) = trust.validate_ad(&offer.ad, now, None) {
                crate::nodes::learn_ad(&ad);
                seen += 1;
            }
        }
        seen
    }

    /// Plans `request` (`FindSlice`): through the brokers, else the agents in-process.
    pub async fn find(&self, request: &SliceRequest) -> Result<SlicePlan, ClientError> {
        let tried = self
            .through_brokers(|broker| async move {
                let call = BrokerCall::FindSlice(SliceAsk::new(
                    request.clone(),
                    self.identity.cert.clone(),
                ));
                match self
                    .broker_call::<BrokerCallProtocol>(&broker, call)
                    .await?
                    .map_err(ClientError::Refused)?
                {
                    BrokerResponse::Plan(plan) => Ok(plan),
                    other => Err(ClientError::Setup(format!(
                        "the broker answered {other:?} to FindSlice"
                    ))),
                }
            })
            .await;
        match (tried, &self.fallback) {
            (Ok(answer), _) => answer,
            (Err(_), Some((agents, acquirer))) => Ok(acquirer.find(agents, request).await),
            (Err(left), None) => Err(self.none_answered(left)),
        }
    }

    /// The principal's signed ask for `request`, to be carried by `broker` (see
    /// [`capability_schema::ask`]): valid from now for [`DEFAULT_ASK_VALIDITY_SECS`], or for
    /// as long as a whole acquisition may take at this timeout, within what agents accept.
    pub fn sign_ask(&self, request: &SliceRequest, broker: PublicKey) -> Signed<AskGrant> {
        let whole = self.settings.timeout.as_secs().saturating_mul(3) + 60;
        let validity = whole.clamp(DEFAULT_ASK_VALIDITY_SECS, MAX_ASK_VALIDITY_SECS);
        let grant = AskGrant::for_request(request, broker, federation::unix_now(), validity);
        Signed::sign(&self.identity.key, &grant)
    }

    /// Obtains tickets for `request` (`AcquireSlice`) through the brokers, under an ask the
    /// principal signs for the broker asked; else in-process with the agents (the ask signed
    /// for itself: it carries the ask to the agents).
    pub async fn acquire(&self, request: &SliceRequest) -> Result<AcquiredSlice, ClientError> {
        let tried = self
            .through_brokers(|broker| async move {
                // Ask for the plan and the report with a failure, to show them.
                let call = BrokerCall::AcquireSlice(
                    SliceAsk::new(request.clone(), self.identity.cert.clone())
                        .with_detailed_failure()
                        .with_ask(self.sign_ask(request, broker.key)),
                );
                let answer = self
                    .broker_call::<BrokerAnswerProtocol>(&broker, call)
                    .await?;
                match BrokerAnswer::into_result(answer) {
                    Ok(BrokerResponse::Acquired(slice)) => Ok(slice),
                    Ok(other) => Err(ClientError::Setup(format!(
                        "the broker answered {other:?} to AcquireSlice"
                    ))),
                    Err(failure) => Err(ClientError::NotAcquired(failure)),
                }
            })
            .await;
        match (tried, &self.fallback) {
            (Ok(answer), _) => answer,
            (Err(_), Some((agents, acquirer))) => {
                let ask = self.sign_ask(request, self.identity.key.public());
                acquirer
                    .acquire_signed(agents, request, self.identity.cert.as_ref(), Some(&ask))
                    .await
                    .map_err(|f| ClientError::NotAcquired(Box::new(f.into())))
            }
            (Err(left), None) => Err(self.none_answered(left)),
        }
    }

    /// One call to a node reachable at `addresses`.
    pub async fn node_call(
        &self,
        node: PublicKey,
        addresses: &[String],
        request: NodeRequest,
    ) -> Result<NodeResponse, CallError> {
        let first_time = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node);
        if first_time {
            let addrs: Vec<Multiaddr> = addresses
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
                .map(|a| federation::overlay::addr_for_peer(a, &node))
                .collect();
            if !addrs.is_empty() {
                self.overlay
                    .add_addresses(&node, addrs)
                    .await
                    .map_err(CallError::from)?;
            }
        }
        Ok(self
            .overlay
            .request::<NodeProtocol>(&node, request, self.settings.timeout)
            .await?)
    }

    /// Runs `f` on every item with at most `concurrency` in flight; answers in completion
    /// order, each with its item.
    pub async fn fan_out<'a, T, R, F, Fut>(&self, items: &'a [T], f: F) -> Vec<(&'a T, R)>
    where
        F: Fn(&'a T) -> Fut,
        Fut: Future<Output = R> + 'a,
    {
        let f = &f;
        futures::stream::iter(items)
            .map(|item| async move { (item, f(item).await) })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await
    }

    /// Tells agents that tickets will not be redeemed (best effort); answers how many the
    /// agents knew.
    pub async fn release_tickets(&self, tickets: Vec<(PublicKey, String)>) -> u32 {
        let mut per_agent: BTreeMap<PublicKey, Vec<String>> = BTreeMap::new();
        for (agent, id) in tickets {
            per_agent.entry(agent).or_default().push(id);
        }
        let client = OverlayAgents::new(self.overlay.clone(), self.settings.timeout);
        let per_agent: Vec<(PublicKey, Vec<String>)> = per_agent.into_iter().collect();
        let answers = self
            .fan_out(&per_agent, |(agent, ids)| {
                client.released(*agent, ids.clone())
            })
            .await;
        answers
            .into_iter()
            .map(|(_, r)| match r {
                Ok(known) => known,
                Err(e) => {
                    tracing::debug!(error = %e, "agent not told of released tickets");
                    0
                }
            })
            .sum()
    }

    /// Stops the client.
    pub async fn shutdown(&self) {
        self.overlay.shutdown().await;
    }
}
