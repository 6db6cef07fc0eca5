//! Module names from file names, as Memray 1.20's `ModuleResolver` derives them from the
//! tracked interpreter's paths (recorded in the header): site-packages first, then the
//! standard library, then `sys.path`, else the file's own name.

use std::collections::HashMap;

use memray_capture::Header;

/// What kind of module a file belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    Stdlib,
    SitePackages,
    Project,
    Unknown,
}

/// A path split the way `pathlib.PurePosixPath` splits it: an anchor ("", "/" or "//")
/// and the non-empty, non-"." components.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PosixPath {
    root: String,
    parts: Vec<String>,
}

impl PosixPath {
    fn parse(path: &str) -> PosixPath {
        let root = if path.starts_with("//") && !path.starts_with("///") {
            "//"
        } else if path.starts_with('/') {
            "/"
        } else {
            ""
        };
        let parts = path.split('/').filter(|p| !p.is_empty() && *p != ".").map(str::to_string).collect();
        PosixPath { root: root.to_string(), parts }
    }

    /// `self.relative_to(base)` when `self` is `base` or below it.
    fn relative_to(&self, base: &PosixPath) -> Option<Vec<String>> {
        if self.root != base.root || !self.parts.starts_with(&base.parts) {
            return None;
        }
        Some(self.parts[base.parts.len()..].to_vec())
    }
}

/// `_path_to_module`: a relative path's parts to a dotted name.
fn path_to_module(mut parts: Vec<String>) -> String {
    if let Some(name) = parts.last() {
        if name == "__init__.py" {
            parts.pop();
        } else if let Some(i) = name.rfind('.') {
            // pathlib's suffix: a dot that is neither the first nor the last character.
            if i > 0 && i < name.len() - 1 && &name[i..] == ".py" {
                let stem = name[..i].to_string();
                parts.pop();
                parts.push(stem);
            }
        }
    }
    parts.join(".")
}

/// Resolves file names to (module, kind), caching per file name.
pub struct ModuleResolver {
    stdlib: Option<PosixPath>,
    site_packages: Vec<PosixPath>,
    sys_path: Vec<PosixPath>,
    cache: HashMap<String, (String, ModuleKind)>,
}

impl ModuleResolver {
    pub fn new(stdlib: Option<&str>, site_packages: &[String], sys_path: &[String]) -> Self {
        ModuleResolver {
            stdlib: stdlib.filter(|s| !s.is_empty()).map(PosixPath::parse),
            site_packages: site_packages.iter().map(|p| PosixPath::parse(p)).collect(),
            sys_path: sys_path.iter().map(|p| PosixPath::parse(p)).collect(),
            cache: HashMap::new(),
        }
    }

    /// The paths recorded in a capture's header.
    pub fn from_header(header: &Header) -> Self {
        Self::new(Some(&header.libdest), &header.site_packages, &header.sys_path)
    }

    pub fn module(&mut self, filename: &str) -> (String, ModuleKind) {
        if let Some(hit) = self.cache.get(filename) {
            return hit.clone();
        }
        let result = self.resolve(filename);
        self.cache.insert(filename.to_string(), result.clone());
        result
    }

    fn resolve(&self, filename: &str) -> (String, ModuleKind) {
        if filename.is_empty() {
            return ("unknown".into(), ModuleKind::Unknown);
        }
        if let Some(rest) = filename.strip_prefix("<frozen ") {
            // `filename[len("<frozen "):-1]`: drops the last character, whatever it is.
            let mut name = rest.to_string();
            name.pop();
            return (name, ModuleKind::Stdlib);
        }
        let path = PosixPath::parse(filename);
        for base in &self.site_packages {
            if let Some(rel) = path.relative_to(base) {
                return (path_to_module(rel), ModuleKind::SitePackages);
            }
        }
        if let Some(rel) = self.stdlib.as_ref().and_then(|base| path.relative_to(base)) {
            return (path_to_module(rel), ModuleKind::Stdlib);
        }
        for base in &self.sys_path {
            if let Some(rel) = path.relative_to(base) {
                return (path_to_module(rel), ModuleKind::Project);
            }
        }
        let name = path.parts.last().cloned().into_iter().collect();
        (path_to_module(name), ModuleKind::Unknown)
    }

    /// The top-level package of the innermost frame outside the standard library;
    /// `<root>` if there is none or it is memray itself. `filenames` is innermost first.
    pub fn module_for_stack<'a>(&mut self, filenames: impl IntoIterator<Item = &'a str>) -> String {
        for filename in filenames {
            let (module, kind) = self.module(filename);
            if kind != ModuleKind::Stdlib {
                let top = module.split('.').next().unwrap_or("").to_string();
                if top == "memray" {
                    return "<root>".into();
                }
                return top;
            }
        }
        "<root>".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> ModuleResolver {
        ModuleResolver::new(
            Some("/usr/lib/python3.12"),
            &["/venv/lib/python3.12/site-packages".into()],
            &["/srv/proj".into(), "/usr/lib/python3.12".into()],
        )
    }

    #[test]
    fn module_names() {
        let mut r = resolver();
        assert_eq!(r.module("/venv/lib/python3.12/site-packages/numpy/core/__init__.py"), ("numpy.core".into(), ModuleKind::SitePackages));
        assert_eq!(r.module("/usr/lib/python3.12/json/decoder.py"), ("json.decoder".into(), ModuleKind::Stdlib));
        assert_eq!(r.module("<frozen importlib._bootstrap>"), ("importlib._bootstrap".into(), ModuleKind::Stdlib));
        assert_eq!(r.module("/srv/proj//app/./main.py"), ("app.main".into(), ModuleKind::Project));
        assert_eq!(r.module("s1.py"), ("s1".into(), ModuleKind::Unknown));
        assert_eq!(r.module("/elsewhere/tool.pyx"), ("tool.pyx".into(), ModuleKind::Unknown));
        assert_eq!(r.module("<string>"), ("<string>".into(), ModuleKind::Unknown));
        assert_eq!(r.module(""), ("unknown".into(), ModuleKind::Unknown));
        assert_eq!(r.module("/srv/projector/x.py"), ("x".into(), ModuleKind::Unknown));
    }

    #[test]
    fn stacks() {
        let mut r = resolver();
        assert_eq!(r.module_for_stack(["/usr/lib/python3.12/json/decoder.py", "/srv/proj/app/main.py"]), "app");
        assert_eq!(r.module_for_stack(["/venv/lib/python3.12/site-packages/memray/commands/run.py"]), "<root>");
        assert_eq!(r.module_for_stack(["<frozen runpy>"]), "<root>");
        assert_eq!(r.module_for_stack(std::iter::empty()), "<root>");
    }
}
