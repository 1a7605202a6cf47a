//! The testnet's stand-in for the Internet: on a namespaced testnet, one more network namespace
//! on the bridge (`pmtn-<tag>-inet`, [`ADDRESS`], which no generated host uses) runs
//! `testnet internet-host`, a small service that tells each peer the address it came from —
//! HTTP (`GET /` answers [`greeting`]) and UDP echo ([`echo_reply`]).
//!
//! A sliver that reaches it shows its node's egress works: its traffic leaves through the
//! node's uplink, so the source the internet host sees is the node's public address (the
//! node's bridge address in a testnet), never the sliver's own. `testnet demo` and the
//! `egress` scenario check exactly that; [`seen_peer`] reads the address back from an answer.
//!
//! The service is bounded: at most [`MAX_CONNECTIONS`] connections at once (more wait in the
//! listen backlog), a request head of at most [`MAX_REQUEST_HEAD`] bytes read within
//! [`READ_TIMEOUT`], an answer written within [`WRITE_TIMEOUT`], UDP payloads cut at
//! [`MAX_DATAGRAM`] bytes.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

/// The internet host's address on the testnet bridge (10.250.0.0/16: hosts get
/// `10.250.<n / 250>.<n % 250 + 2>`, so a last octet of 254 is never a host's).
pub const ADDRESS: &str = "10.250.255.254";
/// Its HTTP port.
pub const HTTP_PORT: u16 = 80;
/// Its UDP echo port.
pub const UDP_PORT: u16 = 7;
/// HTTP connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// The largest request head read (request line and headers).
pub const MAX_REQUEST_HEAD: usize = 8 << 10;
/// Longest wait for a whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait to write an answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest UDP payload echoed (the rest of a longer datagram is dropped).
pub const MAX_DATAGRAM: usize = 1024;

/// What `GET /` answers a peer: a line naming the address it came from.
pub fn greeting(peer: SocketAddr) -> String {
    format!("hello from the internet host; you are {peer}\n")
}

/// What the UDP echo answers a datagram: `<peer ip> <payload>`.
pub fn echo_reply(peer: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut reply = format!("{peer} ").into_bytes();
    reply.extend_from_slice(&payload[..payload.len().min(MAX_DATAGRAM)]);
    reply
}

/// The peer address a [`greeting`] names, anywhere in `answer` (an HTTP answer with its head).
pub fn seen_peer(answer: &str) -> Option<SocketAddr> {
    let (_, rest) = answer.split_once("; you are ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A bash script (its `/dev/tcp`) that GETs `http://ADDRESS:port/` with HTTP/1.0 and prints
/// the whole answer; run it under `timeout`, as a connection nobody answers waits for minutes.
pub fn fetch_script(address: &str, port: u16) -> String {
    format!(
        "exec 3<>/dev/tcp/{address}/{port} || exit 7\n\
         printf \"GET / HTTP/1.0\\r\\nHost: {address}\\r\\nConnection: close\\r\\n\\r\\n\" >&3\n\
         cat <&3"
    )
}

/// What a request head asked for, as far as this service cares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    /// `GET` (any path): the greeting.
    Get,
    /// `HEAD`: the greeting's head only.
    Head,
    /// Another method.
    Other(String),
    /// Not an HTTP request line.
    Malformed,
    /// No end of the head within [`MAX_REQUEST_HEAD`] bytes.
    TooLarge,
    /// No whole head within [`READ_TIMEOUT`].
    TimedOut,
}

impl Request {
    /// How the log names it.
    fn label(&self) -> &str {
        match self {
            Request::Get => "GET",
            Request::Head => "HEAD",
            Request::Other(method) => method,
            Request::Malformed => "not HTTP",
            Request::TooLarge => "head too large",
            Request::TimedOut => "no whole head in time",
        }
    }
}

/// Reads one request line from a complete head.
fn parse_request(head: &[u8]) -> Request {
    let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = first.strip_suffix(b"\r").unwrap_or(first);
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Malformed;
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Request::Malformed;
    };
    if target.is_empty() || !version.starts_with("HTTP/1.") {
        return Request::Malformed;
    }
    match method {
        "GET" => Request::Get,
        "HEAD" => Request::Head,
        other if !other.is_empty() && other.bytes().all(|b| b.is_ascii_uppercase()) => {
            Request::Other(other.to_owned())
        }
        _ => Request::Malformed,
    }
}

/// The whole answer to `request` from `peer`, and its status for the log.
fn response(request: &Request, peer: SocketAddr) -> (u16, Vec<u8>) {
    let (status, reason, body, extra) = match request {
        Request::Get | Request::Head => (200, "OK", greeting(peer), ""),
        Request::Other(_) => (
            405,
            "Method Not Allowed",
            "only GET and HEAD\n".to_owned(),
            "Allow: GET, HEAD\r\n",
        ),
        Request::Malformed => (400, "Bad Request", "not an HTTP request\n".to_owned(), ""),
        Request::TooLarge => (
            431,
            "Request Header Fields Too Large",
            format!("request head over {MAX_REQUEST_HEAD} bytes\n"),
            "",
        ),
        Request::TimedOut => (
            408,
            "Request Timeout",
            format!("no whole request within {} s\n", READ_TIMEOUT.as_secs()),
            "",
        ),
    };
    let mut out = format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if *request != Request::Head {
        out.extend_from_slice(body.as_bytes());
    }
    (status, out)
}

/// Reads a request head (up to the blank line) of at most [`MAX_REQUEST_HEAD`] bytes.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Request> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Request::Malformed);
        }
        head.extend_from_slice(&chunk[..n]);
        let end = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .or_else(|| head.windows(2).position(|w| w == b"\n\n"));
        if let Some(end) = end
            && end <= MAX_REQUEST_HEAD
        {
            return Ok(parse_request(&head[..end]));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(Request::TooLarge);
        }
    }
}

/// Answers one HTTP connection from `peer`; returns the request and status, for the log.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
) -> io::Result<(Request, u16)> {
    let request = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .unwrap_or(Ok(Request::TimedOut))?;
    let (status, bytes) = response(&request, peer);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "writing the answer"))??;
    Ok((request, status))
}

/// Accepts HTTP connections, at most [`MAX_CONNECTIONS`] served at once.
async fn accept_loop(listener: TcpListener) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Dropped (every connection task aborted) when the service stops.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("internet host: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.spawn(async move {
            let _permit = permit;
            match answer(stream, peer).await {
                Ok((request, status)) => eprintln!("http {peer}: {} → {status}", request.label()),
                Err(e) => eprintln!("http {peer}: {e}"),
            }
        });
    }
}

/// Echoes every datagram to its sender, prefixed with the sender's address.
async fn echo_loop(socket: UdpSocket) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                eprintln!("udp: receiving: {e}");
                continue;
            }
        };
        eprintln!("udp {peer}: {n} bytes echoed");
        if let Err(e) = socket
            .send_to(&echo_reply(peer.ip(), &buf[..n]), peer)
            .await
        {
            eprintln!("udp {peer}: {e}");
        }
    }
}

/// Serves HTTP on `http` and UDP echo on `udp` until `shutdown` completes.
pub async fn serve(
    http: TcpListener,
    udp: UdpSocket,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    tokio::select! {
        served = accept_loop(http) => served,
        echoed = echo_loop(udp) => echoed,
        () = shutdown => Ok(()),
    }
}

/// `testnet internet-host`: serves on every address of its namespace, HTTP on `http_port` and
/// UDP echo on `udp_port`, until SIGTERM or SIGINT.
pub fn run(http_port: u16, udp_port: u16) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let http = TcpListener::bind(("0.0.0.0", http_port))
            .await
            .with_context(|| format!("listening on TCP port {http_port}"))?;
        let udp = UdpSocket::bind(("0.0.0.0", udp_port))
            .await
            .with_context(|| format!("binding UDP port {udp_port}"))?;
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        eprintln!("internet host: HTTP on TCP port {http_port}, UDP echo on port {udp_port}");
        serve(http, udp, async {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
        .await
        .context("serving")?;
        eprintln!("internet host: stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.250.0.3:41234".parse().unwrap()
    }

    /// What `answer` writes for `request` (written by a client through an in-memory pipe).
    async fn exchange(request: &[u8]) -> (Request, u16, String) {
        let (mut client, server) = tokio::io::duplex(64 << 10);
        client.write_all(request).await.unwrap();
        let (request, status) = answer(server, peer()).await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        (request, status, out)
    }

    #[test]
    fn the_greeting_names_the_peer_and_reads_back() {
        let text = greeting(peer());
        assert_eq!(
            text,
            "hello from the internet host; you are 10.250.0.3:41234\n"
        );
        let answer = format!("HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n{text}");
        assert_eq!(seen_peer(&answer), Some(peer()));
        assert_eq!(seen_peer("bash: connect: No route to host"), None);
    }

    #[test]
    fn udp_echo_prefixes_the_peer_and_caps_the_payload() {
        let ip: IpAddr = "10.250.0.7".parse().unwrap();
        assert_eq!(echo_reply(ip, b"ping"), b"10.250.0.7 ping");
        let long = vec![b'x'; MAX_DATAGRAM + 100];
        assert_eq!(
            echo_reply(ip, &long).len(),
            "10.250.0.7 ".len() + MAX_DATAGRAM
        );
    }

    #[test]
    fn request_lines() {
        assert_eq!(parse_request(b"GET / HTTP/1.0"), Request::Get);
        assert_eq!(parse_request(b"GET /x HTTP/1.1\r\nHost: a"), Request::Get);
        assert_eq!(parse_request(b"HEAD / HTTP/1.1\r"), Request::Head);
        assert_eq!(
            parse_request(b"POST / HTTP/1.1"),
            Request::Other("POST".into())
        );
        for bad in [
            &b"GET /"[..],
            b"",
            b"\xff / HTTP/1.1",
            b"get / HTTP/1.1",
            b"GET  HTTP/1.1",
        ] {
            assert_eq!(parse_request(bad), Request::Malformed, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn get_answers_200_naming_the_peer() {
        let (request, status, out) = exchange(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await;
        assert_eq!((request, status), (Request::Get, 200));
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.ends_with(&greeting(peer())), "{out}");
        assert_eq!(seen_peer(&out), Some(peer()));
    }

    #[tokio::test]
    async fn other_methods_bad_and_oversized_heads_are_refused() {
        let (_, status, out) = exchange(b"POST / HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 405);
        assert!(out.contains("Allow: GET, HEAD\r\n"), "{out}");
        let (_, status, _) = exchange(b"hello\n\n").await;
        assert_eq!(status, 400);
        let mut huge = b"GET / HTTP/1.1\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD + 10));
        let (request, status, _) = exchange(&huge).await;
        assert_eq!((request, status), (Request::TooLarge, 431));
        let (_, status, out) = exchange(b"HEAD / HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, 200);
        assert!(out.ends_with("\r\n\r\n"), "HEAD has no body: {out}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_head_gets_408() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = tokio::time::Instant::now();
        let (request, status) = answer(server, peer()).await.unwrap();
        assert_eq!((request, status), (Request::TimedOut, 408));
        assert_eq!(started.elapsed(), READ_TIMEOUT);
    }

    /// The real service on real sockets, in a network namespace of the test's own (a thread
    /// that unshared it; gone with the thread): HTTP and UDP each name the peer's address.
    /// Root only: skipped without root unless `CI` is set.
    #[test]
    fn the_service_names_each_peer_in_a_private_namespace() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "root tests run as root under CI"
            );
            eprintln!("skipped: needs root (a network namespace of its own)");
            return;
        }
        let outcome = std::thread::spawn(|| -> anyhow::Result<(String, SocketAddr, String)> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            // A child forked by this thread is in its namespace.
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()?;
            anyhow::ensure!(up.success(), "ip link set lo up: {up}");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let http = TcpListener::bind("127.0.0.1:0").await?;
                let udp = UdpSocket::bind("127.0.0.1:0").await?;
                let (http_at, udp_at) = (http.local_addr()?, udp.local_addr()?);
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::spawn(serve(http, udp, async {
                    let _ = stopped.await;
                }));
                let client = async {
                    let mut stream = tokio::net::TcpStream::connect(http_at).await?;
                    let local = stream.local_addr()?;
                    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer).await?;
                    let socket = UdpSocket::bind("127.0.0.1:0").await?;
                    socket.send_to(b"ping", udp_at).await?;
                    let mut buf = [0u8; 64];
                    let (n, _) = socket.recv_from(&mut buf).await?;
                    let echo = String::from_utf8_lossy(&buf[..n]).into_owned();
                    // The script slivers run (a child of this thread: in its namespace).
                    let fetched = tokio::process::Command::new("bash")
                        .arg("-c")
                        .arg(fetch_script("127.0.0.1", http_at.port()))
                        .output()
                        .await?;
                    let fetched = String::from_utf8_lossy(&fetched.stdout).into_owned();
                    anyhow::ensure!(
                        seen_peer(&fetched).is_some_and(|p| p.ip() == local.ip()),
                        "the fetch script got {fetched:?}"
                    );
                    anyhow::Ok((answer, local, echo))
                };
                let result = tokio::time::timeout(Duration::from_secs(10), client).await;
                let _ = stop.send(());
                server.await??;
                result?
            })
        })
        .join()
        .unwrap();
        let (answer, local, echo) = outcome.unwrap();
        assert_eq!(seen_peer(&answer), Some(local), "{answer}");
        assert_eq!(echo, "127.0.0.1 ping");
    }
}
