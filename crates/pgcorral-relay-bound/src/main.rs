//! The least work any pooler's relay must do, as a reference point for `scripts/bench.sh`.
//!
//! A pooler's throughput target ("1.2 times PgBouncer") only means something next to what the
//! machine allows. This program does the minimum any pooler in front of PostgreSQL must do per
//! message, and nothing else, in one process with one edge-triggered epoll, as PgBouncer does:
//!
//! - `forward`: every client gets its own server connection, and bytes are copied both ways. This is
//!   the bound for session pooling.
//! - `transaction`: clients share a fixed set of server connections opened at start. A client takes
//!   a free one (or waits, first come first served) when it sends a message, and gives it back at the
//!   server's ReadyForQuery with status `I`. This is the bound for transaction pooling.
//!
//! **It is not a pooler.** It authenticates nobody (any client is let in; the server must trust the
//! one configured user), it has no TLS, no cancel, no session-state tracking or reset, no prepared
//! statement mapping and no limits, and a client that leaves mid-transaction costs the server
//! connection. It is for pgbench on loopback, never for real traffic.

use clap::{Parser, Subcommand};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use pgcorral_wire::{FrameEvent, FrameTracker, MAX_MESSAGE_LENGTH};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "pgcorral-relay-bound",
    about = "The least work a pooler's relay must do (a benchmark reference, not a pooler)"
)]
struct Args {
    /// Address to accept clients on (loopback only is sensible: nobody is authenticated).
    #[arg(long)]
    listen: SocketAddr,
    /// The PostgreSQL server.
    #[arg(long)]
    server: SocketAddr,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// A server connection per client, bytes copied both ways (the session pooling bound).
    Forward,
    /// Clients share POOL server connections, each held for one transaction (the transaction
    /// pooling bound).
    Transaction {
        /// User the server connections log in as (the server must trust it).
        #[arg(long)]
        user: String,
        /// Database of the server connections.
        #[arg(long)]
        database: String,
        /// Number of server connections.
        #[arg(long, default_value_t = 20)]
        pool: usize,
    },
}

const LISTENER: Token = Token(usize::MAX);
const BUFFER: usize = 32 * 1024;
/// Largest startup packet accepted from a client (PostgreSQL's own limit).
const MAX_STARTUP: usize = 10_000;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const PROTOCOL_3: u32 = 196_608;

fn main() {
    let args = Args::parse();
    let result = match args.mode {
        Mode::Forward => forward(args.listen, args.server),
        Mode::Transaction {
            user,
            database,
            pool,
        } => transaction(args.listen, args.server, &user, &database, pool),
    };
    if let Err(e) = result {
        eprintln!("pgcorral-relay-bound: {e}");
        std::process::exit(1);
    }
}

/// Writes all of `bytes`. Socket buffers on loopback hold pgbench's messages whole, so a full buffer
/// is rare; when it happens this waits for room rather than keeping a queue (a bound, not a pooler).
fn write_all(stream: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
                nix::poll::poll(&mut fds, PollTimeout::NONE).map_err(io::Error::from)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One read: `Some(n)` bytes (0 means the peer closed), `None` when nothing is there.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    loop {
        match stream.read(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(_) => return Some(0),
        }
    }
}

fn listen(addr: SocketAddr, poll: &Poll) -> io::Result<TcpListener> {
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    Ok(listener)
}

fn connect(server: SocketAddr) -> io::Result<std::net::TcpStream> {
    let stream = std::net::TcpStream::connect(server)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Waits for events; a signal's interruption is not an error, it is an empty wake-up.
fn wait(poll: &mut Poll, events: &mut Events) -> io::Result<()> {
    match poll.poll(events, None) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other,
    }
}

// ---- forward ---------------------------------------------------------------------------------

fn forward(listen_on: SocketAddr, server: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let listener = listen(listen_on, &poll)?;
    // Connection i: its client is token 2i, its server 2i+1.
    let mut pairs: Vec<Option<[TcpStream; 2]>> = Vec::new();
    let mut buf = vec![0u8; BUFFER];
    let mut events = Events::with_capacity(1024);
    loop {
        wait(&mut poll, &mut events)?;
        for event in events.iter() {
            if event.token() == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    client.set_nodelay(true)?;
                    let server = TcpStream::from_std(connect(server)?);
                    server.set_nodelay(true)?;
                    let i = pairs.iter().position(Option::is_none).unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let mut pair = [client, server];
                    for (side, stream) in pair.iter_mut().enumerate() {
                        poll.registry().register(
                            stream,
                            Token(2 * i + side),
                            Interest::READABLE,
                        )?;
                    }
                    pairs[i] = Some(pair);
                }
                continue;
            }
            let (i, from) = (event.token().0 / 2, event.token().0 % 2);
            let Some(Some(pair)) = pairs.get_mut(i) else {
                continue;
            };
            let (a, b) = pair.split_at_mut(1);
            let (src, dst) = if from == 0 {
                (&mut a[0], &mut b[0])
            } else {
                (&mut b[0], &mut a[0])
            };
            let mut closed = false;
            while let Some(n) = read_some(src, &mut buf) {
                if n == 0 || write_all(dst, &buf[..n]).is_err() {
                    closed = true;
                    break;
                }
                if n < buf.len() {
                    break;
                }
            }
            if closed {
                if let Some(mut pair) = pairs[i].take() {
                    for stream in pair.iter_mut() {
                        let _ = poll.registry().deregister(stream);
                    }
                }
            }
        }
    }
}

// ---- transaction -----------------------------------------------------------------------------

struct Backend {
    stream: TcpStream,
    tracker: FrameTracker,
    client: Option<usize>,
}

struct Client {
    stream: TcpStream,
    tracker: FrameTracker,
    backend: Option<usize>,
    /// Bytes went to `backend` since the client took it.
    sent: bool,
    waiting: bool,
}

struct Pool {
    server: SocketAddr,
    startup: Vec<u8>,
    /// The ParameterStatus messages of the first server login, replayed to every client.
    greeting: Vec<u8>,
    backends: Vec<Backend>,
    free: Vec<usize>,
    clients: Vec<Option<Client>>,
    waiting: VecDeque<usize>,
    buf: Vec<u8>,
}

fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

fn read_message(stream: &mut std::net::TcpStream) -> io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_STARTUP).contains(&len) {
        return Err(io::Error::other(format!(
            "server sent a login message of length {len}"
        )));
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body)?;
    Ok((header[0], body))
}

/// Logs a server connection in (trust only) and returns it with its ParameterStatus messages.
fn open_backend(server: SocketAddr, startup: &[u8]) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = connect(server)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(startup)?;
    let mut greeting = Vec::new();
    loop {
        let (tag, body) = read_message(&mut stream)?;
        match tag {
            b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => {}
            b'R' => {
                return Err(io::Error::other(
                    "the server asks for a password: configure it to trust this user",
                ))
            }
            b'E' => {
                return Err(io::Error::other(format!(
                    "the server refused the login: {}",
                    String::from_utf8_lossy(&body)
                )))
            }
            b'S' => {
                greeting.push(b'S');
                greeting.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                greeting.extend_from_slice(&body);
            }
            b'Z' => break,
            _ => {}
        }
    }
    stream.set_read_timeout(None)?;
    stream.set_nonblocking(true)?;
    Ok((TcpStream::from_std(stream), greeting))
}

/// The client's side of the login, done blocking (pgbench connects before it starts timing):
/// refuses TLS and GSS encryption, reads the startup packet, and greets the client as the server
/// greeted the pooler.
fn greet_client(stream: std::net::TcpStream, greeting: &[u8]) -> io::Result<TcpStream> {
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let mut head = [0u8; 8];
        stream.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if !(8..=MAX_STARTUP).contains(&len) {
            return Err(io::Error::other("bad startup packet length"));
        }
        let mut rest = vec![0u8; len - 8];
        stream.read_exact(&mut rest)?;
        match code {
            SSL_REQUEST | GSSENC_REQUEST => stream.write_all(b"N")?,
            PROTOCOL_3 => break,
            _ => return Err(io::Error::other("unsupported startup request")),
        }
    }
    let mut reply = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
    reply.extend_from_slice(greeting);
    reply.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    stream.write_all(&reply)?;
    stream.set_read_timeout(None)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

fn client_token(i: usize, pool: usize) -> Token {
    Token(pool + i)
}

fn transaction(
    listen_on: SocketAddr,
    server: SocketAddr,
    user: &str,
    database: &str,
    size: usize,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let startup = startup_packet(user, database);
    let mut pool = Pool {
        server,
        startup,
        greeting: Vec::new(),
        backends: Vec::with_capacity(size),
        free: Vec::with_capacity(size),
        clients: Vec::new(),
        waiting: VecDeque::new(),
        buf: vec![0u8; BUFFER],
    };
    for b in 0..size.max(1) {
        let (mut stream, greeting) = open_backend(server, &pool.startup)?;
        poll.registry()
            .register(&mut stream, Token(b), Interest::READABLE)?;
        pool.greeting = greeting;
        pool.backends.push(Backend {
            stream,
            tracker: FrameTracker::new(MAX_MESSAGE_LENGTH, b"Z"),
            client: None,
        });
        // Taken from the end: the most recently freed backend is used first.
        pool.free.push(size - 1 - b);
    }
    let listener = listen(listen_on, &poll)?;
    let mut events = Events::with_capacity(1024);
    loop {
        wait(&mut poll, &mut events)?;
        for event in events.iter() {
            let token = event.token();
            if token == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    pool.admit(&poll, client);
                }
            } else if token.0 < pool.backends.len() {
                pool.server_readable(&poll, token.0)?;
            } else {
                pool.client_readable(&poll, token.0 - pool.backends.len())?;
            }
        }
    }
}

impl Pool {
    fn admit(&mut self, poll: &Poll, client: TcpStream) {
        let std_stream = std::net::TcpStream::from(OwnedFd::from(client));
        if std_stream.set_nonblocking(false).is_err() {
            return;
        }
        let Ok(mut stream) = greet_client(std_stream, &self.greeting) else {
            return;
        };
        let i = self
            .clients
            .iter()
            .position(Option::is_none)
            .unwrap_or_else(|| {
                self.clients.push(None);
                self.clients.len() - 1
            });
        let token = client_token(i, self.backends.len());
        if poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .is_err()
        {
            return;
        }
        self.clients[i] = Some(Client {
            stream,
            tracker: FrameTracker::new(MAX_MESSAGE_LENGTH, b""),
            backend: None,
            sent: false,
            waiting: false,
        });
    }

    /// A client has bytes: relays them on its backend, taking a free one first or waiting for one.
    fn client_readable(&mut self, poll: &Poll, c: usize) -> io::Result<()> {
        let Some(Some(client)) = self.clients.get_mut(c) else {
            return Ok(());
        };
        if client.backend.is_none() {
            if client.waiting {
                return Ok(());
            }
            match self.free.pop() {
                Some(b) => {
                    client.backend = Some(b);
                    self.backends[b].client = Some(c);
                }
                None => {
                    client.waiting = true;
                    self.waiting.push_back(c);
                    return Ok(());
                }
            }
        }
        self.relay_client(poll, c)
    }

    fn relay_client(&mut self, poll: &Poll, c: usize) -> io::Result<()> {
        let Some(Some(client)) = self.clients.get_mut(c) else {
            return Ok(());
        };
        let Some(b) = client.backend else {
            return Ok(());
        };
        loop {
            let Some(n) = read_some(&mut client.stream, &mut self.buf) else {
                if client.sent {
                    return Ok(());
                }
                // An edge-triggered wake-up whose bytes an earlier read already took: nothing
                // went to the backend, so it goes back (release unlinks it from this client)
                // rather than idle with it.
                return self.release(poll, b);
            };
            // Stop at a Terminate: the backend stays with the pool.
            let mut end = n;
            let mut terminated = false;
            let walk = client.tracker.feed(&self.buf[..n], |event| {
                if let FrameEvent::Start {
                    tag: b'X',
                    offset: Some(at),
                    ..
                } = event
                {
                    end = at;
                    terminated = true;
                    return false;
                }
                true
            });
            let gone = n == 0 || walk.is_err();
            if end > 0 {
                client.sent = true;
                if write_all(&mut self.backends[b].stream, &self.buf[..end]).is_err() {
                    return Err(io::Error::other("a server connection failed"));
                }
            }
            if gone || terminated {
                return self.close_client(poll, c);
            }
            if n < self.buf.len() {
                return Ok(());
            }
        }
    }

    fn server_readable(&mut self, poll: &Poll, b: usize) -> io::Result<()> {
        loop {
            let backend = &mut self.backends[b];
            let Some(n) = read_some(&mut backend.stream, &mut self.buf) else {
                return Ok(());
            };
            if n == 0 {
                return Err(io::Error::other("a server connection closed"));
            }
            let mut idle_at_end = false;
            backend
                .tracker
                .feed(&self.buf[..n], |event| {
                    if let FrameEvent::End { tag, prefix, end } = event {
                        idle_at_end = tag == b'Z' && prefix == b"I" && end == n;
                    }
                    true
                })
                .map_err(|e| io::Error::other(format!("server stream: {e}")))?;
            if let Some(c) = backend.client {
                let client_failed = match self.clients.get_mut(c) {
                    Some(Some(client)) => write_all(&mut client.stream, &self.buf[..n]).is_err(),
                    _ => false,
                };
                if client_failed {
                    self.close_client(poll, c)?;
                }
            }
            if idle_at_end {
                self.release(poll, b)?;
            }
            if n < self.buf.len() {
                return Ok(());
            }
        }
    }

    /// The backend finished a transaction: the first waiting client gets it.
    fn release(&mut self, poll: &Poll, b: usize) -> io::Result<()> {
        if let Some(c) = self.backends[b].client.take() {
            if let Some(Some(client)) = self.clients.get_mut(c) {
                client.backend = None;
                client.sent = false;
            }
        }
        while let Some(c) = self.waiting.pop_front() {
            if let Some(Some(client)) = self.clients.get_mut(c) {
                client.waiting = false;
                client.backend = Some(b);
                self.backends[b].client = Some(c);
                // Its bytes were left unread when it started waiting: no new edge will come.
                return self.relay_client(poll, c);
            }
        }
        self.free.push(b);
        Ok(())
    }

    fn close_client(&mut self, poll: &Poll, c: usize) -> io::Result<()> {
        let Some(mut client) = self.clients[c].take() else {
            return Ok(());
        };
        let _ = poll.registry().deregister(&mut client.stream);
        self.waiting.retain(|&w| w != c);
        if let Some(b) = client.backend.filter(|_| !client.sent) {
            // Nothing was sent on it since it was taken: it is as clean as it was.
            self.backends[b].client = None;
            self.release(poll, b)?;
        } else if let Some(b) = client.backend {
            // Left mid-transaction: the backend's state is unknown. Replace it.
            let _ = poll.registry().deregister(&mut self.backends[b].stream);
            let (mut stream, _) = open_backend(self.server, &self.startup)?;
            poll.registry()
                .register(&mut stream, Token(b), Interest::READABLE)?;
            self.backends[b] = Backend {
                stream,
                tracker: FrameTracker::new(MAX_MESSAGE_LENGTH, b"Z"),
                client: None,
            };
            self.release(poll, b)?;
        }
        Ok(())
    }
}
