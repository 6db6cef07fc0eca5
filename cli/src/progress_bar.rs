//! The progress bar reports draw on stderr while they read a capture (only when stderr is
//! a terminal: redirected output stays clean).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use memray_capture::{set_progress_sink, ProgressSink};

const WIDTH: usize = 30;

struct Bar {
    /// The last line drawn, to skip redrawing an unchanged one.
    last: Mutex<String>,
}

impl ProgressSink for Bar {
    fn update(&self, path: &Path, done: u64, total: u64) {
        let line = render(path, done, total);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if *last != line {
            // Best effort: a progress bar never fails a report.
            let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
            *last = line;
        }
    }

    fn finish(&self, _path: &Path) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if !last.is_empty() {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
            last.clear();
        }
    }
}

fn render(path: &Path, done: u64, total: u64) -> String {
    let fraction = if total == 0 { 1.0 } else { done as f64 / total as f64 };
    let filled = ((fraction * WIDTH as f64).round() as usize).min(WIDTH);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(
        "Reading {name} {}{} {:3.0}%  {:.1}/{:.1} MB",
        "━".repeat(filled),
        "╺".repeat((filled < WIDTH) as usize) + &" ".repeat(WIDTH - filled - (filled < WIDTH) as usize),
        fraction * 100.0,
        done as f64 / 1e6,
        total as f64 / 1e6
    )
}

/// Shows read progress on stderr from now on, if stderr is a terminal.
pub fn install() {
    if std::io::stderr().is_terminal() {
        set_progress_sink(Box::new(Bar { last: Mutex::new(String::new()) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_name_fill_and_sizes() {
        let line = render(Path::new("/tmp/cap.bin"), 50_000_000, 100_000_000);
        assert!(line.starts_with("Reading cap.bin "), "{line}");
        assert_eq!(line.matches('━').count(), WIDTH / 2, "{line}");
        assert!(line.contains(" 50%  50.0/100.0 MB"), "{line}");
        let full = render(Path::new("cap.bin"), 7, 7);
        assert_eq!(full.matches('━').count(), WIDTH, "{full}");
        assert!(full.contains("100%"), "{full}");
        let empty = render(Path::new("cap.bin"), 0, 0);
        assert!(empty.contains("100%"), "an empty file is read at once: {empty}");
    }
}
