//! Prints every record of a capture in the text format of `memray parse`, so the two can
//! be diffed: `cargo run -p memray-capture --example dump -- capture.bin`.

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: dump CAPTURE");
        std::process::exit(2);
    };
    let result = memray_capture::Reader::open(&path).and_then(|mut reader| {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        memray_capture::dump::memray_parse_dump(&mut reader, &mut out)
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
