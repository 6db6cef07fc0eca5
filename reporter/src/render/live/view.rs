//! The live view's screen: what the user chose (sort, thread, merge, pause, scroll) and
//! how a [`Snapshot`] is drawn with ratatui. Pure functions of their inputs, so they are
//! tested against ratatui's in-memory backend.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;

use crate::render::format::{sampling_notice, size_fmt};
use crate::render::live::snapshot::{Site, Snapshot, StreamStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Total,
    Own,
    Count,
}

/// The user's choices.
#[derive(Clone, Debug)]
pub struct ViewState {
    pub sort: SortKey,
    /// Index into the snapshot's threads (when not merged).
    pub thread: usize,
    pub merged: bool,
    pub paused: bool,
    /// First table row shown.
    pub scroll: usize,
    pub quit: bool,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState { sort: SortKey::Total, thread: 0, merged: false, paused: false, scroll: 0, quit: false }
    }
}

impl ViewState {
    /// Applies one key press; `n_threads` is the number of threads in the snapshot shown.
    pub fn on_key(&mut self, key: KeyEvent, n_threads: usize) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            // Raw mode turns Ctrl-C into a key: honour it as quit.
            KeyCode::Char('c') if ctrl => self.quit = true,
            KeyCode::Char('t') => self.sort = SortKey::Total,
            KeyCode::Char('o') => self.sort = SortKey::Own,
            KeyCode::Char('a') => self.sort = SortKey::Count,
            KeyCode::Char('m') => {
                self.merged = !self.merged;
                self.scroll = 0;
            }
            KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Right | KeyCode::Char('>') | KeyCode::Char('.') => {
                if n_threads > 0 {
                    self.thread = if self.merged { self.thread.min(n_threads - 1) } else { (self.thread + 1) % n_threads };
                }
                self.merged = false;
                self.scroll = 0;
            }
            KeyCode::Left | KeyCode::Char('<') | KeyCode::Char(',') => {
                if n_threads > 0 {
                    self.thread = if self.merged { self.thread.min(n_threads - 1) } else { (self.thread + n_threads - 1) % n_threads };
                }
                self.merged = false;
                self.scroll = 0;
            }
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Home => self.scroll = 0,
            _ => {}
        }
    }

    /// The rows for the current choices, sorted; and a label for whose they are.
    pub fn rows<'a>(&self, snap: &'a Snapshot) -> (Vec<&'a Site>, String) {
        let (sites, label) = if self.merged || snap.threads.is_empty() {
            (&snap.merged, format!("all {} threads merged", snap.threads.len()))
        } else {
            let i = self.thread.min(snap.threads.len() - 1);
            let t = &snap.threads[i];
            let name = if t.name.is_empty() { String::new() } else { format!(" ({})", t.name) };
            (&t.sites, format!("thread {} of {}{name}", i + 1, snap.threads.len()))
        };
        let mut rows: Vec<&Site> = sites.iter().collect();
        let key = |s: &Site| match self.sort {
            SortKey::Total => (s.total, s.own, s.count),
            SortKey::Own => (s.own, s.total, s.count),
            SortKey::Count => (s.count, s.total, s.own),
        };
        rows.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.function.cmp(&b.function)));
        (rows, label)
    }
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}:{:02}.{}", s / 3600, s / 60 % 60, s % 60, ms % 1000 / 100)
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.2}%", part as f64 * 100.0 / whole as f64)
    }
}

/// Draws the whole screen.
pub fn render(frame: &mut Frame, snap: &Snapshot, view: &ViewState) {
    let notice = sampling_notice(&[snap.sampling_interval]);
    let header_height = if notice.is_some() { 6 } else { 5 };
    let [header, graph, table, footer] =
        Layout::vertical([Constraint::Length(header_height), Constraint::Length(5), Constraint::Min(3), Constraint::Length(1)])
            .areas(frame.area());
    let (rows, label) = view.rows(snap);
    render_header(frame, header, snap, view, &label, notice);
    render_graph(frame, graph, snap);
    render_table(frame, table, &rows, snap.heap, view);
    let keys =
        "q quit  \u{2190}/\u{2192} thread  m merge threads  t/o/a sort by total/own/allocations  space pause  \u{2191}/\u{2193} scroll";
    frame.render_widget(Paragraph::new(keys).style(Style::default().add_modifier(Modifier::DIM)), footer);
}

fn render_header(frame: &mut Frame, area: Rect, snap: &Snapshot, view: &ViewState, label: &str, notice: Option<String>) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let status = match (&snap.status, view.paused) {
        (StreamStatus::Live, false) => Span::styled("streaming", Style::default().fg(Color::Green)),
        (StreamStatus::Live, true) => Span::styled("PAUSED (space resumes)", Style::default().fg(Color::Yellow)),
        (StreamStatus::Finished, _) => {
            Span::styled("tracking ended (the process exited or stopped tracking)", Style::default().fg(Color::Cyan))
        }
        (StreamStatus::Lost(why), _) => Span::styled(format!("connection lost: {why}"), Style::default().fg(Color::Red)),
    };
    let mut lines = vec![
        Line::from(vec![
            Span::styled("PID: ", bold),
            Span::raw(snap.pid.to_string()),
            Span::raw("   "),
            Span::styled("CMD: ", bold),
            Span::raw(snap.command_line.clone()),
        ]),
        Line::from(vec![
            Span::styled("Current heap: ", bold),
            Span::raw(size_fmt(snap.heap)),
            Span::raw("   "),
            Span::styled("Peak heap: ", bold),
            Span::raw(size_fmt(snap.peak)),
            Span::raw("   "),
            Span::styled("RSS: ", bold),
            Span::raw(size_fmt(snap.rss)),
        ]),
        Line::from(vec![
            Span::styled("Duration: ", bold),
            Span::raw(duration(snap.duration_ms)),
            Span::raw("   "),
            Span::styled("Samples: ", bold),
            Span::raw(snap.samples.to_string()),
            Span::raw("   "),
            Span::styled("Records: ", bold),
            Span::raw(snap.records.to_string()),
        ]),
        Line::from(vec![Span::styled("Showing: ", bold), Span::raw(label.to_string()), Span::raw("   "), status]),
    ];
    if let Some(notice) = notice {
        lines.push(Line::from(Span::styled(notice, Style::default().fg(Color::Yellow))));
    }
    let block = Block::default().borders(Borders::TOP).title(Line::from(" memray live ").style(bold));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn render_graph(frame: &mut Frame, area: Rect, snap: &Snapshot) {
    let block = Block::default().borders(Borders::TOP).title(format!(
        " heap over time (peak {}, {:.1} s per column) ",
        size_fmt(snap.peak),
        snap.history_step_ms as f64 / 1000.0
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = inner.width as usize;
    let data = &snap.history[snap.history.len().saturating_sub(width)..];
    let spark = Sparkline::default().data(data.iter().copied()).max(snap.peak.max(1)).style(Style::default().fg(Color::Magenta));
    frame.render_widget(spark, inner);
}

fn render_table(frame: &mut Frame, area: Rect, rows: &[&Site], heap: u64, view: &ViewState) {
    let mark = |key: SortKey, title: &str| -> Cell<'static> {
        if view.sort == key {
            Cell::from(format!("{title} \u{25bc}")).style(Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
        } else {
            Cell::from(title.to_string())
        }
    };
    let header = Row::new(vec![
        Cell::from("Location"),
        mark(SortKey::Total, "Total Memory"),
        Cell::from("Total %"),
        mark(SortKey::Own, "Own Memory"),
        Cell::from("Own %"),
        mark(SortKey::Count, "Allocations"),
        Cell::from("File"),
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    // Fixed numeric columns; the rest is shared 2:3 by the function and its file, and a
    // long path keeps its end (the file name) rather than its start.
    let numeric: [u16; 5] = [15, 8, 13, 8, 13];
    let spacing = numeric.len() as u16 + 1;
    let flexible = area.width.saturating_sub(numeric.iter().sum::<u16>() + spacing);
    let location_width = flexible * 2 / 5;
    let file_width = flexible - location_width;
    let visible = area.height.saturating_sub(1) as usize;
    let first = view.scroll.min(rows.len().saturating_sub(1));
    let body = rows.iter().skip(first).take(visible).map(|s| {
        Row::new(vec![
            Cell::from(s.function.clone()),
            Cell::from(size_fmt(s.total)),
            Cell::from(percent(s.total, heap)),
            Cell::from(size_fmt(s.own)),
            Cell::from(percent(s.own, heap)),
            Cell::from(s.count.to_string()),
            Cell::from(keep_end(&s.file, file_width as usize)),
        ])
    });
    let widths = [
        Constraint::Length(location_width),
        Constraint::Length(numeric[0]),
        Constraint::Length(numeric[1]),
        Constraint::Length(numeric[2]),
        Constraint::Length(numeric[3]),
        Constraint::Length(numeric[4]),
        Constraint::Length(file_width),
    ];
    frame.render_widget(Table::new(body, widths).header(header).column_spacing(1), area);
}

/// `text` cut to `width` characters from the left, marked with an ellipsis.
fn keep_end(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width || width == 0 {
        return text.to_string();
    }
    let tail: String = text.chars().skip(n - (width - 1)).collect();
    format!("\u{2026}{tail}")
}

/// The view of `snap` as `height` lines of plain text `width` columns wide (trailing
/// blanks kept), for output that is not a terminal.
pub fn text(snap: &Snapshot, view: &ViewState, width: u16, height: u16) -> Vec<String> {
    // An in-memory terminal cannot fail (its error type is Infallible).
    let mut term = match ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height)) {
        Ok(term) => term,
        Err(never) => match never {},
    };
    let _ = term.draw(|f| render(f, snap, view));
    let buf = term.backend().buffer();
    (0..buf.area.height).map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::live::snapshot::ThreadSites;

    fn site(function: &str, total: u64, own: u64, count: u64) -> Site {
        Site { function: function.into(), file: format!("{function}.py"), total, own, count }
    }

    fn snapshot() -> Snapshot {
        let main = vec![site("big_total", 900, 10, 1), site("big_own", 500, 500, 2), site("many", 100, 100, 50)];
        let worker = vec![site("worker_site", 300, 300, 3)];
        Snapshot {
            pid: 777,
            command_line: "python busy.py".into(),
            sampling_interval: 0,
            heap: 1200,
            peak: 2000,
            rss: 1 << 20,
            duration_ms: 61_500,
            samples: 6150,
            records: 99,
            history: vec![1, 5, 9, 1200],
            history_step_ms: 100,
            merged: main.iter().chain(worker.iter()).cloned().collect(),
            threads: vec![
                ThreadSites { tid: 1, name: "MainThread".into(), sites: main },
                ThreadSites { tid: 2, name: "worker".into(), sites: worker },
            ],
            status: StreamStatus::Live,
        }
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn screen(snap: &Snapshot, view: &ViewState) -> String {
        let mut out = String::new();
        for line in super::text(snap, view, 120, 30) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn order(view: &ViewState, snap: &Snapshot) -> Vec<String> {
        view.rows(snap).0.iter().map(|s| s.function.clone()).collect()
    }

    #[test]
    fn sort_keys_reorder_rows() {
        let snap = snapshot();
        let mut v = ViewState::default();
        assert_eq!(order(&v, &snap), ["big_total", "big_own", "many"]);
        v.on_key(key(KeyCode::Char('o')), 2);
        assert_eq!(order(&v, &snap), ["big_own", "many", "big_total"]);
        v.on_key(key(KeyCode::Char('a')), 2);
        assert_eq!(order(&v, &snap), ["many", "big_own", "big_total"]);
        assert!(screen(&snap, &v).contains("Allocations \u{25bc}"));
    }

    #[test]
    fn threads_switch_wrap_and_merge() {
        let snap = snapshot();
        let mut v = ViewState::default();
        v.on_key(key(KeyCode::Right), 2);
        assert_eq!(order(&v, &snap), ["worker_site"]);
        assert!(screen(&snap, &v).contains("thread 2 of 2 (worker)"));
        v.on_key(key(KeyCode::Right), 2);
        assert_eq!(v.thread, 0, "wraps around");
        v.on_key(key(KeyCode::Left), 2);
        assert_eq!(v.thread, 1);
        v.on_key(key(KeyCode::Char('m')), 2);
        assert_eq!(order(&v, &snap).len(), 4);
        assert!(screen(&snap, &v).contains("all 2 threads merged"));
        v.on_key(key(KeyCode::Char('q')), 2);
        assert!(v.quit);
    }

    #[test]
    fn header_shows_process_and_heap() {
        let snap = snapshot();
        let mut v = ViewState::default();
        let text = screen(&snap, &v);
        assert!(text.contains("PID: 777"), "{text}");
        assert!(text.contains("CMD: python busy.py"));
        assert!(text.contains("Duration: 0:01:01.5"));
        assert!(text.contains("Total Memory \u{25bc}"));
        assert!(text.contains("big_total.py"));
        assert_eq!(keep_end("/usr/lib/python3.12/threading.py", 14), "\u{2026}/threading.py");
        v.on_key(key(KeyCode::Char(' ')), 2);
        assert!(screen(&snap, &v).contains("PAUSED"));
        assert!(!text.contains("Sampled"));
    }

    #[test]
    fn sampled_streams_say_so_once_in_the_header() {
        let snap = Snapshot { sampling_interval: 512 * 1024, ..snapshot() };
        let text = screen(&snap, &ViewState::default());
        assert_eq!(text.matches("Sampled capture: one allocation recorded per 512.0KiB on average").count(), 1, "{text}");
        assert!(text.contains("Showing: ") && text.contains("big_total.py"), "{text}");
    }
}
