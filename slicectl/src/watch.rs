//! Watching a slice as it runs: `slice logs --follow` (each sliver's spawn log streamed as it
//! grows) and `slice status --watch` (the slice's status again and again, shown when it
//! changes).
//!
//! Following, per sliver:
//! 1. `LogsFrom` past any end answers the log's size; reading starts `tail` bytes before it;
//! 2. every [`FOLLOW_POLL`] each sliver still followed is asked for what follows its offset
//!    (in parallel); complete lines are written as they arrive, prefixed by node, and a
//!    partial line waits for its end (at most one more poll... or until the lease ends);
//! 3. a sliver leaves the follow when its node says the lease is over (released, reaped,
//!    revoked: the node's sentence is shown) or its end has passed; when none is left, the
//!    follow ends saying so. A node that cannot be reached is retried (said once); one that
//!    predates `LogsFrom` is said and left.
//!
//! Both run until `stop` completes (the binary passes Ctrl-C) and write through a
//! [`Sink`]: lines for people, or one JSON object per line with `--json`. Neither keeps the
//! local state open while it waits (following reads the leases once; watching opens the
//! state for each round), so other `slicectl` commands run meanwhile on the same state.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use broker::acquire::CallError;
use capability_schema::Rejection;
use capability_schema::protocol::{LogChunk, NodeRequest, NodeResponse};
use federation::unix_now;
use serde_json::{Value, json};

use crate::client::Session;
use crate::exit::ExitClass;
use crate::ops::{Manager, OpError, Outcome, Progress};
use crate::state::{LeaseEntry, State};

/// How often a followed log is read: the most a line waits before it is shown, plus one call.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// The most bytes one read of a followed log asks for.
const FOLLOW_CHUNK: u64 = 256 * 1024;

/// Where watching writes: a line for people and its JSON form, one per event.
pub trait Sink: Send {
    /// Writes one event.
    fn emit(&mut self, json: Value, line: String);
}

/// Standard output: the JSON form (one object per line) or the line.
#[derive(Debug, Clone, Copy)]
pub struct Stdout {
    /// Whether to write JSON.
    pub json: bool,
}

impl Sink for Stdout {
    fn emit(&mut self, json: Value, line: String) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) ends the output, not the process.
        let _ = if self.json {
            writeln!(out, "{json}")
        } else {
            writeln!(out, "{line}")
        };
        let _ = out.flush();
    }
}

/// Collects what is emitted (for tests and for callers that render it themselves).
#[derive(Debug, Default, Clone)]
pub struct Collect(pub std::sync::Arc<std::sync::Mutex<Vec<(Value, String)>>>);

impl Sink for Collect {
    fn emit(&mut self, json: Value, line: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((json, line));
    }
}

/// How watching ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `stop` completed (Ctrl-C).
    Stopped,
    /// Nothing is left to watch (every lease is over).
    Done,
}

/// One sliver being followed.
struct Followed {
    lease: LeaseEntry,
    offset: u64,
    /// Bytes of a line whose end has not arrived yet.
    partial: Vec<u8>,
    /// Whether the node was unreachable at the last read (said once).
    unreachable: bool,
}

/// Why a sliver's follow ends, from its node's answer.
fn lease_over(e: &CallError) -> Option<String> {
    let CallError::Refused(reply) = e else {
        return None;
    };
    match &reply.reason {
        Rejection::UnknownLease { .. } => {
            Some("the node no longer holds the lease (released, reaped at its end, or lost)".into())
        }
        Rejection::Policy { rule, detail } if rule == "lease_ended" => Some(detail.clone()),
        Rejection::NotHolder { .. } => Some(reply.message.clone()),
        _ => None,
    }
}

/// Whether the node predates `LogsFrom` (it could not decode the request).
fn predates(e: &CallError) -> bool {
    matches!(e, CallError::Refused(reply) if matches!(reply.reason, Rejection::Malformed { .. }))
}

/// The leases of slice `name` to follow, from `state`.
pub fn leases_to_follow(state: &State, name: &str) -> Result<Vec<LeaseEntry>, OpError> {
    state.slice(name)?;
    Ok(state.leases(name)?)
}

/// Following logs over a session.
#[derive(Debug, Clone, Copy)]
pub struct Follower<'a> {
    /// The network client.
    pub session: &'a Session,
}

impl Follower<'_> {
    /// `slice logs --follow`: writes the spawn log of each of `leases` (slice `name`'s) from
    /// `tail` bytes before its end, then what is appended, until `stop` completes or every
    /// lease is over (see the module docs).
    pub async fn follow_logs(
        &self,
        name: &str,
        leases: Vec<LeaseEntry>,
        tail: u64,
        sink: &mut dyn Sink,
        stop: impl Future<Output = ()>,
    ) -> Result<(Ended, ExitClass), OpError> {
        if leases.is_empty() {
            return Err(OpError::Usage(format!(
                "slice {name} holds no sliver to follow (see `slicectl slice status {name}`)"
            )));
        }
        tokio::pin!(stop);
        let mut class = ExitClass::Ok;
        // Where each log ends now: reading starts `tail` bytes before.
        let sizes = self
            .session
            .fan_out(&leases, |l| self.read_log(l, u64::MAX, 1))
            .await;
        let mut followed = Vec::new();
        for (l, answer) in sizes {
            let mut f = Followed {
                lease: l.clone(),
                offset: 0,
                partial: Vec::new(),
                unreachable: false,
            };
            match answer {
                Ok(chunk) => {
                    f.offset = chunk.size.saturating_sub(tail);
                    followed.push(f);
                }
                Err(e) => {
                    if let Some(c) = self.follow_failed(&mut f, &e, sink) {
                        class = class.worst(c);
                        followed.push(f);
                    }
                }
            }
        }
        followed.sort_by_key(|f| f.lease.label());
        let mut tick = tokio::time::interval(FOLLOW_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if followed.is_empty() {
                sink.emit(
                    json!({"slice": name, "ended": true}),
                    format!("every lease of slice {name} is over; stopped following"),
                );
                return Ok((Ended::Done, class));
            }
            tokio::select! {
                () = &mut stop => {
                    for f in &mut followed {
                        flush_partial(f, sink);
                    }
                    return Ok((Ended::Stopped, class));
                }
                _ = tick.tick() => {}
            }
            let now = unix_now();
            let reads = {
                let slice: &[Followed] = &followed;
                let reads = self
                    .session
                    .fan_out(slice, |f| self.read_log(&f.lease, f.offset, FOLLOW_CHUNK))
                    .await;
                reads
                    .into_iter()
                    .map(|(f, r)| (f.lease.lease.lease_id.clone(), r))
                    .collect::<BTreeMap<_, _>>()
            };
            let mut reads = reads;
            let mut keep = Vec::with_capacity(followed.len());
            for mut f in followed {
                let Some(answer) = reads.remove(&f.lease.lease.lease_id) else {
                    keep.push(f);
                    continue;
                };
                match answer {
                    Ok(chunk) => {
                        if f.unreachable {
                            f.unreachable = false;
                            sink.emit(
                                json!({"node": f.lease.lease.node.to_string(), "site": f.lease.site, "reachable": true}),
                                format!("[{}] reachable again", f.lease.label()),
                            );
                        }
                        if chunk.size < f.offset {
                            sink.emit(
                                json!({"node": f.lease.lease.node.to_string(), "site": f.lease.site, "restarted": true}),
                                format!("[{}] (the log was cut; reading it from its start)", f.lease.label()),
                            );
                            f.offset = 0;
                            f.partial.clear();
                            keep.push(f);
                            continue;
                        }
                        f.offset = f.offset.saturating_add(chunk.bytes.len() as u64);
                        f.partial.extend_from_slice(&chunk.bytes);
                        emit_lines(&mut f, sink);
                        if f.lease.lease.end <= now {
                            flush_partial(&mut f, sink);
                            lease_ended(
                                &f,
                                &format!(
                                    "its end ({}) has passed",
                                    crate::human::local_time(f.lease.lease.end)
                                ),
                                sink,
                            );
                            continue;
                        }
                        keep.push(f);
                    }
                    Err(e) => {
                        if let Some(c) = self.follow_failed(&mut f, &e, sink) {
                            class = class.worst(c);
                            keep.push(f);
                        }
                    }
                }
            }
            followed = keep;
        }
    }

    /// Handles a failed read of `f`'s log: answers the class to keep following with, or
    /// `None` when the sliver leaves the follow (said in `sink`).
    fn follow_failed(
        &self,
        f: &mut Followed,
        e: &CallError,
        sink: &mut dyn Sink,
    ) -> Option<ExitClass> {
        let label = f.lease.label();
        let node = f.lease.lease.node.to_string();
        if let Some(why) = lease_over(e) {
            flush_partial(f, sink);
            lease_ended(f, &why, sink);
            return None;
        }
        if predates(e) {
            sink.emit(
                json!({"node": node, "site": f.lease.site, "error": "the node cannot stream its log", "following": false}),
                format!(
                    "[{label}] this node cannot stream its log (it predates `slice logs --follow`); \
                     `slicectl slice logs` shows its end, or upgrade the node"
                ),
            );
            return None;
        }
        if f.lease.lease.end <= unix_now() {
            lease_ended(
                f,
                &format!(
                    "its end ({}) has passed",
                    crate::human::local_time(f.lease.lease.end)
                ),
                sink,
            );
            return None;
        }
        if !f.unreachable {
            f.unreachable = true;
            sink.emit(
                json!({"node": node, "site": f.lease.site, "error": e.to_string(), "following": true}),
                format!("[{label}] cannot read the log now ({e}); trying again"),
            );
        }
        Some(crate::client::call_class(e))
    }

    /// `LogsFrom` at `l`'s node.
    async fn read_log(
        &self,
        l: &LeaseEntry,
        offset: u64,
        max_bytes: u64,
    ) -> Result<LogChunk, CallError> {
        let request = NodeRequest::LogsFrom {
            lease_id: l.lease.lease_id.clone(),
            offset,
            max_bytes,
        };
        match self
            .session
            .node_call(l.lease.node, &l.addresses, request)
            .await?
        {
            NodeResponse::LogChunk(chunk) => Ok(chunk),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Watching a slice's status over a session, opening the state in `state_dir` for each round.
#[derive(Debug)]
pub struct StatusWatch {
    /// The network client (handed back by [`StatusWatch::into_session`]).
    session: Option<Session>,
    /// Where the local state lives.
    state_dir: std::path::PathBuf,
}

impl StatusWatch {
    /// A watch over `session` and the state in `state_dir`.
    pub fn new(session: Session, state_dir: &std::path::Path) -> StatusWatch {
        StatusWatch {
            session: Some(session),
            state_dir: state_dir.to_owned(),
        }
    }

    /// The session back, for its shutdown.
    pub fn into_session(self) -> Option<Session> {
        self.session
    }

    /// One `slice status` with the state opened for it alone.
    async fn status_once(&mut self, name: &str) -> Result<Outcome, OpError> {
        let state = State::open(&self.state_dir)?;
        let Some(session) = self.session.take() else {
            return Err(OpError::Internal(
                "the status watch lost its session".into(),
            ));
        };
        let m = Manager {
            session,
            state,
            progress: Progress { visible: false },
        };
        let result = m.status(name).await;
        self.session = Some(m.session);
        result
    }

    /// `slice status --watch`: the slice's status every `every`, written when it changes,
    /// until `stop` completes or the slice cannot be read. On a terminal (`redraw`) the screen is cleared and the whole
    /// status drawn again; otherwise one line per sliver whose state changed (the first
    /// round: every sliver), each with the local time.
    pub async fn watch_status(
        &mut self,
        name: &str,
        every: Duration,
        redraw: bool,
        sink: &mut dyn Sink,
        stop: impl Future<Output = ()>,
    ) -> Result<(Ended, ExitClass), OpError> {
        tokio::pin!(stop);
        let mut shown: Option<Vec<String>> = None;
        let mut states: BTreeMap<String, String> = BTreeMap::new();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return Ok((Ended::Stopped, ExitClass::Ok)),
                _ = tick.tick() => {}
            }
            let o: Outcome = self.status_once(name).await?;
            let now = unix_now();
            if redraw {
                if shown.as_ref() != Some(&o.lines) {
                    let mut lines = vec![format!(
                        "\x1b[2J\x1b[H{}  (every {}; Ctrl-C to stop)",
                        crate::human::local_time(now),
                        crate::human::duration(every.as_secs().max(1))
                    )];
                    lines.extend(o.lines.iter().cloned());
                    sink.emit(o.json.clone(), lines.join("\n"));
                    shown = Some(o.lines);
                }
                continue;
            }
            for (key, state, sliver) in sliver_states(&o.json) {
                if states.get(&key) == Some(&state) {
                    continue;
                }
                let before = states.insert(key.clone(), state.clone());
                let site = sliver["site"].as_str().unwrap_or_default();
                let label = key
                    .parse()
                    .map_or_else(|_| key.clone(), |node| crate::nodes::label(site, &node));
                let line = match &before {
                    Some(b) => format!("{} {label}: {b} -> {state}", crate::human::local_time(now)),
                    None => format!("{} {label}: {state}", crate::human::local_time(now)),
                };
                sink.emit(
                    json!({"at": now, "slice": name, "sliver": sliver, "state": state, "was": before}),
                    line,
                );
            }
        }
    }
}

/// Each sliver of a status answer as (key, state text, its JSON), the state text holding
/// what a watcher wants told: live or gone (and why), the end, the condition.
fn sliver_states(status: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for s in status["slivers"].as_array().into_iter().flatten() {
        let key = s["node"].as_str().unwrap_or_default().to_owned();
        let mut state = s["state"].as_str().unwrap_or("unknown").to_owned();
        if let Some(why) = s["ended"].as_str() {
            state.push_str(&format!(" ({why})"));
        } else if let Some(end) = s["end"].as_u64() {
            state.push_str(&format!(", ends {}", crate::human::local_time(end)));
        }
        if let Some(c) = s["condition"].as_str() {
            state.push_str(&format!(", {c}"));
        }
        out.push((key, state, s.clone()));
    }
    for t in status["unredeemed"].as_array().into_iter().flatten() {
        let key = t["node"].as_str().unwrap_or_default().to_owned();
        out.push((key, "ticket not redeemed".to_owned(), t.clone()));
    }
    out
}

/// Writes the complete lines of `f`'s partial buffer.
fn emit_lines(f: &mut Followed, sink: &mut dyn Sink) {
    while let Some(i) = f.partial.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = f.partial.drain(..=i).collect();
        emit_line(f, &line[..line.len() - 1], sink);
    }
}

/// Writes what is left of a line whose end will not come.
fn flush_partial(f: &mut Followed, sink: &mut dyn Sink) {
    if !f.partial.is_empty() {
        let line = std::mem::take(&mut f.partial);
        emit_line(f, &line, sink);
    }
}

fn emit_line(f: &Followed, line: &[u8], sink: &mut dyn Sink) {
    let text = String::from_utf8_lossy(line).into_owned();
    sink.emit(
        json!({"node": f.lease.lease.node.to_string(), "site": f.lease.site, "line": text}),
        format!("[{}] {text}", f.lease.label()),
    );
}

fn lease_ended(f: &Followed, why: &str, sink: &mut dyn Sink) {
    sink.emit(
        json!({
            "node": f.lease.lease.node.to_string(), "site": f.lease.site,
            "lease_id": f.lease.lease.lease_id, "lease_ended": why,
        }),
        format!(
            "[{}] lease ended: {why}; stopped following it",
            f.lease.label()
        ),
    );
}

/// A watching command as the command line asked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Not a watching command.
    Nothing,
    /// `slice status NAME --watch --interval DURATION`.
    Status {
        /// The slice.
        name: String,
        /// How often, as given (`2s`).
        interval: String,
    },
    /// `slice logs NAME --follow --tail BYTES`.
    Logs {
        /// The slice.
        name: String,
        /// Bytes of each log shown before following.
        tail: u64,
    },
}

/// A watching command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch(Asked);

impl Watch {
    /// The watch `asked` names, if it names one.
    pub fn of(asked: &Asked) -> Option<Watch> {
        match asked {
            Asked::Nothing => None,
            other => Some(Watch(other.clone())),
        }
    }

    /// Runs it on standard output until Ctrl-C (or, following logs, until every lease is
    /// over), over `session` and the state (closed while waiting, see the module docs);
    /// answers the session back for its shutdown. What it shows is written as it comes, so the outcome it answers has nothing
    /// left to print (`json` null, no lines), only the exit class: Ctrl-C is a normal end.
    pub async fn run(
        self,
        session: Session,
        state: State,
        state_dir: &std::path::Path,
        json: bool,
    ) -> (Option<Session>, Result<Outcome, OpError>) {
        let mut sink = Stdout { json };
        let stop = async {
            // Without a Ctrl-C handler there is no clean stop: watch until killed.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let (session, result) = match self.0 {
            Asked::Nothing => (
                Some(session),
                Err(OpError::Internal("nothing to watch".into())),
            ),
            Asked::Status { name, interval } => {
                // The state is opened again for each round.
                drop(state);
                let every = match crate::spec::parse_duration(&interval) {
                    Ok(secs) => Duration::from_secs(secs.max(1)),
                    Err(e) => return (Some(session), Err(e.into())),
                };
                let redraw = !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
                let mut watch = StatusWatch::new(session, state_dir);
                let result = watch
                    .watch_status(&name, every, redraw, &mut sink, stop)
                    .await;
                (watch.into_session(), result)
            }
            Asked::Logs { name, tail } => {
                let leases = leases_to_follow(&state, &name);
                // Following needs nothing more of the state: other commands may use it.
                drop(state);
                let result = match leases {
                    Ok(leases) => {
                        Follower { session: &session }
                            .follow_logs(&name, leases, tail, &mut sink, stop)
                            .await
                    }
                    Err(e) => Err(e),
                };
                (Some(session), result)
            }
        };
        let outcome = result.map(|(_, class)| Outcome {
            json: Value::Null,
            lines: Vec::new(),
            class,
        });
        (session, outcome)
    }
}
