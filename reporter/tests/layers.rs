//! The reporter reads top to bottom as "read, compute, render" (docs/architecture.md):
//! no module imports from a layer above its own.

use std::path::Path;

/// Each layer, lowest first, with the layers it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("compat", &["compat"]),
    ("structures", &["structures"]),
    ("model", &["model", "structures", "compat"]),
    ("engine", &["engine", "model", "structures", "compat"]),
    ("render", &["render", "engine", "model", "structures", "compat"]),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_layer_imports_from_a_higher_one() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (layer, allowed) in LAYERS {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "no layer {layer}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for (other, _) in LAYERS {
                    if line.contains(&format!("crate::{other}::")) && !allowed.contains(other) {
                        wrong.push(format!("{}:{}: {layer} uses {other}", file.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports from a higher layer:\n{}", wrong.join("\n"));
}
