//! Developer tool: `inject PID LIBRARY ENTRY ARG` loads LIBRARY into PID and calls ENTRY(ARG).
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: inject PID LIBRARY ENTRY ARG");
        std::process::exit(2);
    }
    let pid: i32 = args[1].parse().unwrap_or(0);
    let log = |m: &str| eprintln!("inject: {m}");
    let opts = memray_injector::InjectOptions { timeout: Duration::from_secs(10), log: Some(&log), ..Default::default() };
    let t = std::time::Instant::now();
    let result = memray_injector::inspect(pid).and_then(|info| {
        eprintln!("inject: CPython {} in {} (inspect {:.1} ms)", info.python_version, info.python_object, t.elapsed().as_secs_f64() * 1e3);
        memray_injector::inject(&info, &args[2], &args[3], args[4].as_bytes(), &opts)
    });
    match result {
        Ok(r) => eprintln!("inject: ok, returned {} at {} in {:.1} ms", r.entry_return, r.safe_point, t.elapsed().as_secs_f64() * 1e3),
        Err(e) => {
            eprintln!("inject: error: {e}");
            std::process::exit(1);
        }
    }
}
