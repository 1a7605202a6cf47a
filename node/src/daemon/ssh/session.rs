//! One SSH connection ([`Connection`], russh's per-client handler): who may log in (the
//! slice's sliver's authorized keys, under a live lease), and its channels.
//!
//! A session channel records its pty request and environment, then starts one program in
//! the sliver ([`crate::daemon::service::SliverBackend::start_session`], the path `Exec`
//! takes): `exec` runs `/bin/sh -c COMMAND`, `shell` runs `/bin/sh`, the `sftp` subsystem runs
//! the sliver's own `sftp-server`. Relays then carry the client's bytes to the program's
//! stdin (or the pty), its stdout and stderr (or the pty) back, and finally its exit status
//! or signal, EOF and close. A `direct-tcpip` channel is a byte pipe to a socket connected
//! inside the sliver's network namespace.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use capability_schema::Lease;
use federation::unix_now;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::keys::PublicKey;
use russh::server::{
    Auth, ChannelOpenHandle, Handle, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::pty::{self, PtyMaster, WindowSize};
use crate::daemon::service::NodeService;
use crate::ledger::LeaseState;

/// Where `sftp-server` is looked for inside a sliver, in order.
pub const SFTP_SERVERS: [&str; 4] = [
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/lib/sftp-server",
    "/usr/libexec/sftp-server",
];

/// Environment variables a client may set (`SendEnv`); anything else is refused.
fn env_allowed(name: &str) -> bool {
    name == "LANG" || name == "TZ" || name.starts_with("LC_")
}

/// Why a login was refused (logged by the node; the client sees only `Permission denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefusal {
    /// No lease of this slice on this node.
    #[error("slice {0:?} holds no lease on this node: check the slice name and node")]
    UnknownSlice(String),
    /// Its leases here are over (or not active yet).
    #[error("slice {0:?} has no live lease on this node: renew or acquire it again")]
    Expired(String),
    /// The lease's sliver is not running here.
    #[error("slice {0:?} has no sliver running on this node")]
    NoSliver(String),
    /// The key is not among the sliver's authorized keys.
    #[error("the key is not authorized for slice {0:?}: add it with `slicectl slice keys`")]
    KeyNotAuthorized(String),
    /// The node could not read its ledger.
    #[error("the node could not read its ledger: {0}")]
    Node(String),
}

/// Who a connection logged in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The slice (the user name).
    pub slice: String,
    /// Its sliver on this node.
    pub sliver_id: String,
    /// The lease that backs it.
    pub lease_id: String,
}

fn key_matches(line: &str, key: &PublicKey) -> bool {
    PublicKey::from_openssh(line.trim()).is_ok_and(|k| k.key_data() == key.key_data())
}

/// The login of `slice` with `key` on the node of `service` at `now`, or why not.
pub fn find_login(
    service: &NodeService,
    slice: &str,
    key: &PublicKey,
    now: u64,
) -> Result<Login, LoginRefusal> {
    let leases = service
        .ledger()
        .leases()
        .map_err(|e| LoginRefusal::Node(e.to_string()))?;
    let mut of_slice = leases.iter().filter(|r| r.lease.slice == slice).peekable();
    if of_slice.peek().is_none() {
        return Err(LoginRefusal::UnknownSlice(slice.to_owned()));
    }
    let live = |lease: &Lease| !lease.is_over(now);
    let record = of_slice
        .find(|r| r.state == LeaseState::Active && live(&r.lease))
        .ok_or_else(|| LoginRefusal::Expired(slice.to_owned()))?;
    let backend = service.backend();
    if !backend.live().contains(&record.sliver_id) {
        return Err(LoginRefusal::NoSliver(slice.to_owned()));
    }
    let keys = backend
        .list_keys(&record.sliver_id)
        .map_err(|_| LoginRefusal::NoSliver(slice.to_owned()))?;
    if !keys.iter().any(|line| key_matches(line, key)) {
        return Err(LoginRefusal::KeyNotAuthorized(slice.to_owned()));
    }
    Ok(Login {
        slice: slice.to_owned(),
        sliver_id: record.sliver_id.clone(),
        lease_id: record.lease.lease_id.clone(),
    })
}

/// What the client sent a running program.
#[derive(Debug)]
enum Input {
    Data(Vec<u8>),
    Eof,
}

/// A session channel.
#[derive(Debug, Default)]
struct SessionChannel {
    /// The terminal asked for (`pty-req`): its type and size.
    pty: Option<(String, WindowSize)>,
    /// Variables the client set.
    env: Vec<(String, String)>,
    /// The program, once started.
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    input: mpsc::Sender<Input>,
    master: Option<Arc<PtyMaster>>,
    /// Its process group (the helper starts a session: group = its pid).
    group: Pid,
    /// Set once it was reaped: its group id may then be anyone's, and is never signalled.
    reaped: Arc<AtomicBool>,
}

impl Running {
    fn signal(&self, signal: Signal) {
        if !self.reaped.load(Ordering::Acquire) {
            let _ = killpg(self.group, signal);
        }
    }
}

/// One SSH connection.
#[derive(Debug)]
pub struct Connection {
    service: Arc<NodeService>,
    peer: Option<SocketAddr>,
    max_channels: usize,
    login: Option<Login>,
    /// Set once authenticated (the auth deadline reads it).
    authenticated: Arc<AtomicBool>,
    sessions: HashMap<ChannelId, SessionChannel>,
    /// Channels open (sessions and forwards).
    open_channels: Arc<AtomicUsize>,
}

impl Connection {
    /// A connection from `peer` to the node of `service`.
    pub fn new(
        service: Arc<NodeService>,
        peer: Option<SocketAddr>,
        max_channels: usize,
        authenticated: Arc<AtomicBool>,
    ) -> Self {
        Connection {
            service,
            peer,
            max_channels,
            login: None,
            authenticated,
            sessions: HashMap::new(),
            open_channels: Arc::default(),
        }
    }

    async fn check(&self, user: &str, key: &PublicKey) -> Result<Login, LoginRefusal> {
        let service = Arc::clone(&self.service);
        let (user, key) = (user.to_owned(), key.clone());
        tokio::task::spawn_blocking(move || find_login(&service, &user, &key, unix_now()))
            .await
            .unwrap_or_else(|e| Err(LoginRefusal::Node(e.to_string())))
    }

    fn take_channel(&self) -> bool {
        let open = self.open_channels.fetch_add(1, Ordering::AcqRel);
        if open >= self.max_channels {
            self.open_channels.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Starts `argv` in the sliver for `channel` and its relays; the channel's request is
    /// answered here.
    async fn start(
        &mut self,
        channel: ChannelId,
        argv: Vec<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let (Some(login), Some(state)) = (&self.login, self.sessions.get_mut(&channel)) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        if state.running.is_some() {
            session.channel_failure(channel)?;
            return Ok(());
        }
        let mut env = state.env.clone();
        if let Some(peer) = self.peer {
            env.push((
                "SSH_CLIENT".into(),
                format!("{} {} 0", peer.ip(), peer.port()),
            ));
        }
        let mut master = None;
        let mut slave = None;
        if let Some((term, size)) = &state.pty {
            env.push(("TERM".into(), term.clone()));
            match pty::open(*size) {
                Ok((m, s)) => {
                    master = Some(Arc::new(m));
                    slave = Some(s);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ssh: cannot open a pty");
                    session.channel_failure(channel)?;
                    return Ok(());
                }
            }
        }
        let backend = Arc::clone(self.service.backend());
        let sliver = login.sliver_id.clone();
        let started =
            tokio::task::spawn_blocking(move || backend.start_session(&sliver, &argv, &env, slave))
                .await
                .unwrap_or_else(|e| {
                    Err(crate::daemon::service::BackendError::Host(format!(
                        "starting the program: {e}"
                    )))
                });
        session.channel_success(channel)?;
        let spawned = match started {
            Ok(spawned) => spawned,
            Err(e) => {
                tracing::info!(slice = %login.slice, error = %e, "ssh: program not started");
                let message =
                    format!("planetmesh: cannot start the program in the sliver: {e}\r\n");
                session.extended_data(channel, 1, message.into_bytes())?;
                session.exit_status_request(channel, 125)?;
                session.eof(channel)?;
                session.close(channel)?;
                return Ok(());
            }
        };
        let mut child = spawned.child;
        let pipes = Pipes::of(&mut child);
        let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let (input, inputs) = mpsc::channel(64);
        let reaped = Arc::new(AtomicBool::new(false));
        state.running = Some(Running {
            input,
            master: master.clone(),
            group,
            reaped: Arc::clone(&reaped),
        });
        let handle = session.handle();
        let exited = wait(child, reaped);
        match master {
            Some(master) => tokio::spawn(relay_pty(handle, channel, exited, master, inputs)),
            None => tokio::spawn(relay_pipes(handle, channel, pipes, exited, inputs)),
        };
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The client is gone: what it started hears so, as from a closed terminal.
        for state in self.sessions.values() {
            if let Some(running) = &state.running {
                running.signal(Signal::SIGHUP);
            }
        }
    }
}

/// Sends `data` of a program's output stream on `channel` (`ext`: stderr's code 1).
async fn copy_out(
    handle: Handle,
    channel: ChannelId,
    mut from: impl AsyncRead + Unpin,
    ext: Option<u32>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = buf[..n].to_vec();
        let sent = match ext {
            Some(code) => handle.extended_data(channel, code, chunk).await,
            None => handle.data(channel, chunk).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// The end of a program: its exit status (or signal), EOF, close.
async fn finish(handle: &Handle, channel: ChannelId, status: Option<std::process::ExitStatus>) {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => {
                let _ = handle
                    .exit_status_request(channel, u32::try_from(code).unwrap_or(255))
                    .await;
            }
            (None, Some(signal)) => {
                let _ = handle
                    .exit_signal_request(
                        channel,
                        sig_of(signal),
                        s.core_dumped(),
                        String::new(),
                        String::new(),
                    )
                    .await;
            }
            (None, None) => {}
        },
        None => {
            let _ = handle.exit_status_request(channel, 255).await;
        }
    }
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// The program's end, reaped on the blocking pool; `reaped` is set at once.
async fn wait(
    mut child: std::process::Child,
    reaped: Arc<AtomicBool>,
) -> Option<std::process::ExitStatus> {
    tokio::task::spawn_blocking(move || {
        let status = child.wait().ok();
        reaped.store(true, Ordering::Release);
        status
    })
    .await
    .ok()
    .flatten()
}

/// A program's piped standard streams, made asynchronous.
struct Pipes {
    stdin: Option<tokio::process::ChildStdin>,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
}

impl Pipes {
    fn of(child: &mut std::process::Child) -> Pipes {
        Pipes {
            stdin: child
                .stdin
                .take()
                .and_then(|s| tokio::process::ChildStdin::from_std(s).ok()),
            stdout: child
                .stdout
                .take()
                .and_then(|s| tokio::process::ChildStdout::from_std(s).ok()),
            stderr: child
                .stderr
                .take()
                .and_then(|s| tokio::process::ChildStderr::from_std(s).ok()),
        }
    }
}

async fn relay_pipes(
    handle: Handle,
    channel: ChannelId,
    pipes: Pipes,
    exited: impl Future<Output = Option<std::process::ExitStatus>>,
    mut inputs: mpsc::Receiver<Input>,
) {
    let Pipes {
        stdin,
        stdout,
        stderr,
    } = pipes;
    let writer = tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        while let Some(Input::Data(data)) = inputs.recv().await {
            if stdin.write_all(&data).await.is_err() {
                return;
            }
        }
        // EOF from the client (or the channel went): the program reads the end of input.
    });
    let out = stdout.map(|s| tokio::spawn(copy_out(handle.clone(), channel, s, None)));
    let err = stderr.map(|s| tokio::spawn(copy_out(handle.clone(), channel, s, Some(1))));
    let status = exited.await;
    // Everything the program wrote goes out before its exit status.
    for task in [out, err].into_iter().flatten() {
        let _ = task.await;
    }
    writer.abort();
    finish(&handle, channel, status).await;
}

async fn relay_pty(
    handle: Handle,
    channel: ChannelId,
    exited: impl Future<Output = Option<std::process::ExitStatus>>,
    master: Arc<PtyMaster>,
    mut inputs: mpsc::Receiver<Input>,
) {
    let writer = {
        let master = Arc::clone(&master);
        tokio::spawn(async move {
            while let Some(input) = inputs.recv().await {
                match input {
                    Input::Data(data) => {
                        if master.write_all(&data).await.is_err() {
                            return;
                        }
                    }
                    // A terminal has no end of input; `^D` is the user's to type.
                    Input::Eof => {}
                }
            }
        })
    };
    let mut reader = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match master.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if handle.data(channel, buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let status = exited.await;
    // What the program wrote last is still in the pty: drain it, unless something it left
    // behind keeps the terminal open.
    if tokio::time::timeout(Duration::from_secs(1), &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    writer.abort();
    finish(&handle, channel, status).await;
}

fn sig_of(signal: i32) -> Sig {
    match Signal::try_from(signal) {
        Ok(Signal::SIGABRT) => Sig::ABRT,
        Ok(Signal::SIGALRM) => Sig::ALRM,
        Ok(Signal::SIGFPE) => Sig::FPE,
        Ok(Signal::SIGHUP) => Sig::HUP,
        Ok(Signal::SIGILL) => Sig::ILL,
        Ok(Signal::SIGINT) => Sig::INT,
        Ok(Signal::SIGKILL) => Sig::KILL,
        Ok(Signal::SIGPIPE) => Sig::PIPE,
        Ok(Signal::SIGQUIT) => Sig::QUIT,
        Ok(Signal::SIGSEGV) => Sig::SEGV,
        Ok(Signal::SIGTERM) => Sig::TERM,
        Ok(Signal::SIGUSR1) => Sig::USR1,
        Ok(other) => Sig::Custom(other.as_str().trim_start_matches("SIG").to_owned()),
        Err(_) => Sig::Custom(signal.to_string()),
    }
}

fn signal_of(sig: &Sig) -> Option<Signal> {
    Some(match sig {
        Sig::ABRT => Signal::SIGABRT,
        Sig::ALRM => Signal::SIGALRM,
        Sig::FPE => Signal::SIGFPE,
        Sig::HUP => Signal::SIGHUP,
        Sig::ILL => Signal::SIGILL,
        Sig::INT => Signal::SIGINT,
        Sig::KILL => Signal::SIGKILL,
        Sig::PIPE => Signal::SIGPIPE,
        Sig::QUIT => Signal::SIGQUIT,
        Sig::SEGV => Signal::SIGSEGV,
        Sig::TERM => Signal::SIGTERM,
        Sig::USR1 => Signal::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => Signal::SIGUSR2,
            "WINCH" => Signal::SIGWINCH,
            "CONT" => Signal::SIGCONT,
            "STOP" => Signal::SIGSTOP,
            "TSTP" => Signal::SIGTSTP,
            _ => return None,
        },
    })
}

fn refuse() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

impl Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(refuse())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.check(user, offer.public_key).await {
            Ok(_) => Auth::Accept,
            Err(_) => refuse(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.check(user, key.public_key).await {
            Ok(login) => {
                tracing::info!(slice = %login.slice, lease = %login.lease_id, peer = ?self.peer, "ssh: logged in");
                self.login = Some(login);
                self.authenticated.store(true, Ordering::Release);
                Ok(Auth::Accept)
            }
            Err(why) => {
                tracing::info!(user, peer = ?self.peer, reason = %why, "ssh: login refused");
                Ok(refuse())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.login.is_none() || !self.take_channel() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        // Its requests come to this handler; the channel object is not read.
        self.sessions
            .insert(channel.id(), SessionChannel::default());
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let (Some(login), Ok(port)) = (&self.login, u16::try_from(port_to_connect)) else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if !self.take_channel() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let backend = Arc::clone(self.service.backend());
        let (sliver, host) = (login.sliver_id.clone(), host_to_connect.to_owned());
        let connected =
            tokio::task::spawn_blocking(move || backend.connect_inside(&sliver, &host, port))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .and_then(|s| {
                    s.set_nonblocking(true).map_err(|e| e.to_string())?;
                    tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
                });
        let open = Arc::clone(&self.open_channels);
        match connected {
            Ok(mut stream) => {
                reply.accept().await;
                tokio::spawn(async move {
                    let mut pipe = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut pipe, &mut stream).await;
                    open.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => {
                open.fetch_sub(1, Ordering::AcqRel);
                tracing::info!(slice = %login.slice, host = host_to_connect, port, error = %e, "ssh: forward refused");
                reply
                    .reject(ChannelOpenFailure::Other { code: 2, reason: e })
                    .await;
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(state) = self.sessions.remove(&channel) {
            self.open_channels.fetch_sub(1, Ordering::AcqRel);
            if let Some(running) = state.running {
                running.signal(Signal::SIGHUP);
            }
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(running) = self.sessions.get(&channel).and_then(|s| s.running.as_ref()) {
            let _ = running.input.send(Input::Eof).await;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(running) = self.sessions.get(&channel).and_then(|s| s.running.as_ref()) {
            // Bounded: a program that reads nothing slows this client only.
            let _ = running.input.send(Input::Data(data.to_vec())).await;
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.sessions.get_mut(&channel) {
            Some(state) if state.running.is_none() => {
                let term = if term.is_empty() || term.len() > 64 {
                    "xterm".to_owned()
                } else {
                    term.to_owned()
                };
                let size = WindowSize::from_request(col_width, row_height, pix_width, pix_height);
                state.pty = Some((term, size));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.sessions.get_mut(&channel) {
            Some(state) if env_allowed(variable_name) && state.env.len() < 32 => {
                state
                    .env
                    .push((variable_name.to_owned(), variable_value.to_owned()));
                session.channel_success(channel)?;
            }
            _ => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let size = WindowSize::from_request(col_width, row_height, pix_width, pix_height);
        if let Some(state) = self.sessions.get_mut(&channel) {
            if let Some((_, stored)) = &mut state.pty {
                *stored = size;
            }
            if let Some(master) = state.running.as_ref().and_then(|r| r.master.as_ref())
                && let Err(e) = master.resize(size)
            {
                tracing::debug!(error = %e, "ssh: window change not applied");
            }
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let (Some(running), Some(signal)) = (
            self.sessions.get(&channel).and_then(|s| s.running.as_ref()),
            signal_of(&signal),
        ) {
            running.signal(signal);
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), command];
        self.start(channel, argv, session).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, vec!["/bin/sh".to_owned()], session)
            .await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            session.channel_failure(channel)?;
            return Ok(());
        }
        // The sliver's own sftp-server, on the sliver's files; none: a clear error.
        let script = format!(
            "for p in {}; do [ -x \"$p\" ] && exec \"$p\"; done; \
             echo 'this sliver has no sftp-server (install openssh-sftp-server in its image)' >&2; \
             exit 127",
            SFTP_SERVERS.join(" ")
        );
        let argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script];
        self.start(channel, argv, session).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_harmless_variables_may_be_set() {
        assert!(env_allowed("LANG"));
        assert!(env_allowed("LC_ALL"));
        assert!(!env_allowed("LD_PRELOAD"));
        assert!(!env_allowed("PATH"));
    }

    #[test]
    fn signals_map_both_ways() {
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGKILL,
            Signal::SIGUSR2,
        ] {
            assert_eq!(signal_of(&sig_of(s as i32)), Some(s));
        }
        assert_eq!(signal_of(&Sig::Custom("BOGUS".into())), None);
    }

    #[test]
    fn keys_match_on_key_material_not_comment() {
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[3u8; 32]),
        );
        let line = key.public_key().to_openssh().unwrap();
        let blob = line.split_whitespace().nth(1).unwrap();
        assert!(key_matches(
            &format!("ssh-ed25519 {blob} alice@laptop"),
            key.public_key()
        ));
        let other = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[4u8; 32]),
        );
        assert!(!key_matches(&line, other.public_key()));
        assert!(!key_matches("not a key", key.public_key()));
    }
}
