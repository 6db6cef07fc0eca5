//! `memray live PORT`, and the viewer side that `run --live` and `attach` (without -o)
//! share: connect to the tracked process, greet it, read the stream's header, run the
//! terminal view.
//!
//! The tracked process is the server (python/memray/_tracking.py,
//! `open_socket_destination`): it listens, serves the first viewer that greets it and
//! then stops listening. The stream is the capture format, uncompressed.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use memray_capture::{CaptureError, Reader};
use memray_reporter::render::live::{self, StreamStatus};

/// What a viewer sends first (python/memray/_tracking.py checks it).
const GREETING: &[u8] = b"memray-live-viewer 1\n";
/// How long the header may take once connected: the tracked process writes it as
/// tracking starts and flushes it within its memory interval.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct LiveArgs {
    /// The port the tracked process listens on (`memray run --live-remote` prints it)
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The address to connect to
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
    /// Keep trying to connect for this many seconds
    #[arg(long, default_value_t = 10.0, value_parser = super::seconds::positive_seconds)]
    timeout: f64,
}

pub fn run(args: LiveArgs) -> Result<ExitCode> {
    let addr = resolve(&args.address, args.port)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let stream = connect(addr, deadline, || Ok(()))?;
    let outcome = view(stream, addr, terminal_gone)?;
    report_end(&outcome, None);
    Ok(ExitCode::SUCCESS)
}

pub fn resolve(address: &str, port: u16) -> Result<SocketAddr> {
    (address, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {address}"))?
        .next()
        .with_context(|| format!("{address} has no address"))
}

/// A port nobody listens on now, for a tracked process we start.
pub fn free_port(address: &str) -> Result<u16> {
    let listener = TcpListener::bind(resolve(address, 0)?).with_context(|| format!("cannot find a free port on {address}"))?;
    Ok(listener.local_addr()?.port())
}

/// Connects to the tracked process, retrying while nothing listens yet; `check` may end
/// the wait early (the process died, the attach failed).
pub fn connect(addr: SocketAddr, deadline: Instant, mut check: impl FnMut() -> Result<()>) -> Result<TcpStream> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                s.write_all(GREETING).with_context(|| format!("cannot greet the tracked process at {addr}"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                check()?;
                if Instant::now() >= deadline {
                    bail!(
                        "nothing is listening on {addr} (a tracked process waits for one viewer and stops \
                         listening once one connected)"
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
        }
    }
}

/// A connection the view reads: TCP to a tracked process, or one end of a Unix socket
/// pair whose other end `memray attach` handed to its target.
pub trait Stream: std::io::Read + Send + Sized + 'static {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
    fn try_clone(&self) -> std::io::Result<Self>;
    fn shutdown(&self, how: Shutdown) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn try_clone(&self) -> std::io::Result<Self> {
        TcpStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        TcpStream::shutdown(self, how)
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn try_clone(&self) -> std::io::Result<Self> {
        std::os::unix::net::UnixStream::try_clone(self)
    }
    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::shutdown(self, how)
    }
}

/// Reads the stream's header (with a time limit: whatever answers on the port may not
/// be a tracked process) and runs the view until the user quits. `addr` names the other
/// end in messages. `stop` ends the view early (a signal, a hung-up terminal):
/// [`terminal_gone`] or a function that also checks it.
pub fn view<S: Stream>(stream: S, addr: impl std::fmt::Display, stop: fn() -> bool) -> Result<live::Outcome> {
    stream.set_read_timeout(Some(HEADER_TIMEOUT))?;
    let reader = match Reader::new(stream.try_clone()?) {
        Ok(r) => r,
        Err(CaptureError::NotACapture | CaptureError::UnsupportedVersion(_)) => {
            bail!("{addr} is not a memray live stream (it sent something else)")
        }
        Err(CaptureError::Empty) => {
            bail!("{addr} closed the connection without sending anything (is it a tracked process? it may have refused us)")
        }
        Err(CaptureError::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            bail!("{addr} sent no memray stream within {} s (is it a tracked process?)", HEADER_TIMEOUT.as_secs())
        }
        Err(e) => bail!("cannot read the live stream from {addr}: {e}"),
    };
    // From here on the sampler sends something every few milliseconds; a quiet stream
    // means a stopped process, which the view shows, not an error.
    stream.set_read_timeout(None)?;
    hangup::install();
    let outcome = live::run(reader, stop).context("cannot run the live view")?;
    // Closing tells the tracked process that its viewer left: it stops tracking.
    let _ = stream.shutdown(Shutdown::Both);
    Ok(outcome)
}

/// Whether the view's terminal went away (SIGHUP/SIGTERM/SIGINT, or a hangup on stdin/stdout).
pub fn terminal_gone() -> bool {
    hangup::terminal_gone()
}

/// One line after the view closes, saying what became of the process.
pub fn report_end(outcome: &live::Outcome, after_quit: Option<&str>) {
    let Some(last) = &outcome.last else { return };
    let pid = last.pid;
    match &last.status {
        StreamStatus::Live => match after_quit {
            Some(text) => eprintln!("memray: {text}"),
            None => eprintln!("memray: viewer closed; process {pid} stops tracking and continues running"),
        },
        StreamStatus::Finished => eprintln!("memray: process {pid} finished tracking"),
        StreamStatus::Lost(why) => eprintln!("memray: lost process {pid}: {why}"),
    }
}

/// The view must end when its terminal goes away (the terminal emulator closed, tmux
/// killed): SIGHUP/SIGTERM set a flag, and a hangup seen on stdout counts too. Without a
/// terminal, SIGINT ends it the same way (in a terminal's raw mode Ctrl-C is a key).
mod hangup {
    use std::sync::atomic::{AtomicBool, Ordering};

    static GONE: AtomicBool = AtomicBool::new(false);

    extern "C" fn on_signal(_: libc::c_int) {
        GONE.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        for sig in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            // SAFETY: installs an async-signal-safe handler (one atomic store) with an
            // initialised sigaction.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }

    pub fn terminal_gone() -> bool {
        if GONE.load(Ordering::SeqCst) {
            return true;
        }
        let mut fds = [0, 1].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
        // SAFETY: poll on two initialised pollfds, without waiting.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        n > 0 && fds.iter().any(|f| f.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
    }
}
