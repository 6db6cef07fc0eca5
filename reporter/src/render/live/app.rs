//! Runs the live view on a terminal: a reader thread folds the stream into a
//! [`LiveState`] and publishes a [`Snapshot`] a few times a second; the UI thread redraws
//! the latest one at a fixed rate and handles keys. A process allocating millions of
//! times a second only keeps the reader thread busy: keys act on the snapshot already
//! on screen.

use std::io::{self, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use memray_capture::Reader;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEvent, KeyEventKind};
use ratatui::widgets::Paragraph;
use ratatui::DefaultTerminal;

use crate::engine::records::{CaptureCursor, Event};
use crate::render::live::snapshot::{Snapshot, StreamStatus};
use crate::render::live::state::LiveState;
use crate::render::live::view::{render, text, ViewState};

/// Least time between two snapshots.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// Redraw period (also the longest a key waits to be seen).
const FRAME: Duration = Duration::from_millis(100);
/// How often the key thread looks at `gone`.
const INPUT_POLL: Duration = Duration::from_millis(50);

/// How the view ended.
pub struct Outcome {
    /// The last snapshot received (its status says whether the stream ended).
    pub last: Option<Arc<Snapshot>>,
}

#[derive(Default)]
struct Shared {
    latest: Mutex<Option<Arc<Snapshot>>>,
    stop: AtomicBool,
}

impl Shared {
    fn publish(&self, snap: Snapshot) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(snap));
    }

    fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Shows the stream read by `reader` until the user quits or `gone()` says the terminal
/// went away (a hangup: crossterm then reads end-of-file forever and never reports it).
/// Without a terminal on stdout (a script, CI, a pipe), follows the stream until it ends
/// or `gone()`, then prints the view once as plain text. The reader thread is left to end
/// by itself when its input closes: the caller closes the connection after this returns.
pub fn run<R: Read + Send + 'static>(reader: Reader<R>, gone: fn() -> bool) -> io::Result<Outcome> {
    let shared = Arc::new(Shared::default());
    let for_reader = Arc::clone(&shared);
    std::thread::Builder::new().name("memray-live-reader".into()).spawn(move || read_stream(reader, &for_reader))?;
    let result = if io::stdout().is_terminal() {
        let mut terminal = ratatui::try_init()?;
        let result = ui_loop(&mut terminal, &shared, gone);
        ratatui::restore();
        result
    } else {
        headless(&shared, gone)
    };
    shared.stop.store(true, Ordering::Release);
    result?;
    Ok(Outcome { last: shared.latest() })
}

/// The size of the text printed without a terminal: $COLUMNS × $LINES, else 100 × 40.
fn headless_size() -> (u16, u16) {
    let get = |name: &str, default: u16| {
        std::env::var(name).ok().and_then(|v| v.trim().parse::<u16>().ok()).filter(|&n| (10..=1000).contains(&n)).unwrap_or(default)
    };
    (get("COLUMNS", 100), get("LINES", 40))
}

fn headless(shared: &Shared, gone: fn() -> bool) -> io::Result<()> {
    while !gone() && shared.latest().is_none_or(|s| s.status == StreamStatus::Live) {
        std::thread::sleep(FRAME);
    }
    let Some(last) = shared.latest() else { return Ok(()) };
    let (width, height) = headless_size();
    let mut lines: Vec<String> = text(&last, &ViewState::default(), width, height).iter().map(|l| l.trim_end().to_string()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = io::stdout().lock();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()
}

fn read_stream<R: Read>(reader: Reader<R>, shared: &Shared) {
    let mut cursor = CaptureCursor::new(reader, false);
    let mut state = LiveState::new(cursor.header());
    let mut every = PUBLISH_EVERY;
    let publish = |state: &mut LiveState, cursor: &mut CaptureCursor<R>, status: StreamStatus| -> Duration {
        let started = Instant::now();
        let snap = state.snapshot(&mut cursor.stacks, &cursor.thread_names, status);
        shared.publish(snap);
        started.elapsed()
    };
    publish(&mut state, &mut cursor, StreamStatus::Live);
    let mut last = Instant::now();
    let mut n: u32 = 0;
    let status = loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match cursor.next_event() {
            Ok(Some(ev)) => {
                let sample = matches!(ev, Event::Memory { .. });
                state.feed(&ev);
                n = n.wrapping_add(1);
                if (sample || n.is_multiple_of(4096)) && last.elapsed() >= every {
                    // Keep snapshots to a fifth of the reader's time when they get costly.
                    let cost = publish(&mut state, &mut cursor, StreamStatus::Live);
                    every = PUBLISH_EVERY.max(cost * 5);
                    last = Instant::now();
                }
            }
            Ok(None) if cursor.reached_trailer() => break StreamStatus::Finished,
            Ok(None) => break StreamStatus::Lost("the stream ended without its end marker (was the process killed?)".into()),
            Err(e) => {
                let why = match e {
                    crate::ReportError::Capture(ref c) if c.is_truncation() => {
                        "the stream ended inside a record (was the process killed?)".to_string()
                    }
                    other => other.to_string(),
                };
                break StreamStatus::Lost(why);
            }
        }
    };
    publish(&mut state, &mut cursor, status);
}

/// Keys arrive from their own thread: crossterm reads a hung-up terminal's end-of-file in
/// a loop that never returns, which must not take the drawing loop (and the caller's
/// clean-up after it) down with it. Checking `gone` first keeps it out of that loop.
fn spawn_input(shared: Arc<Shared>, gone: fn() -> bool) -> io::Result<mpsc::Receiver<KeyEvent>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new().name("memray-live-keys".into()).spawn(move || loop {
        if shared.stop.load(Ordering::Acquire) || gone() {
            return;
        }
        match event::poll(INPUT_POLL) {
            Ok(true) => match event::read() {
                Ok(TermEvent::Key(key)) if key.kind != KeyEventKind::Release => {
                    if tx.send(key).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            Ok(false) => {}
            Err(_) => return,
        }
    })?;
    Ok(rx)
}

fn ui_loop(terminal: &mut DefaultTerminal, shared: &Arc<Shared>, gone: fn() -> bool) -> io::Result<()> {
    let keys = spawn_input(Arc::clone(shared), gone)?;
    let mut view = ViewState::default();
    let mut shown: Option<Arc<Snapshot>> = None;
    loop {
        if let Some(latest) = shared.latest() {
            // Pausing freezes the figures, but the end of the stream is always shown.
            let ended = latest.status != StreamStatus::Live;
            if shown.is_none() || !view.paused || ended {
                shown = Some(latest);
            }
        }
        terminal.draw(|f| match &shown {
            Some(s) => render(f, s, &view),
            None => f.render_widget(Paragraph::new("waiting for data..."), f.area()),
        })?;
        match keys.recv_timeout(FRAME) {
            Ok(key) => {
                let n_threads = shown.as_ref().map_or(0, |s| s.threads.len());
                view.on_key(key, n_threads);
                // Several keys typed at once act before the next frame.
                while let Ok(key) = keys.try_recv() {
                    view.on_key(key, n_threads);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if view.quit || gone() {
            return Ok(());
        }
    }
}
