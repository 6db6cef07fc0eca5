//! The pages' markup. Nothing from the capture is written here except through the JSON
//! data element, escaped by [`script_json`].

const CSS: &str = include_str!("../../../assets/report.css");
const COMMON_JS: &str = include_str!("../../../assets/common.js");
const FLAMEGRAPH_JS: &str = include_str!("../../../assets/flamegraph.js");
const TABLE_JS: &str = include_str!("../../../assets/table.js");

/// JSON made safe inside a `<script>` element: no `</script>` or `<!--` can form, and
/// the line separators JavaScript once rejected in strings are escaped. The characters
/// replaced only occur inside JSON strings, where `\uXXXX` means the same.
pub fn script_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + json.len() / 64);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Our own text for `<title>` (titles are built from fixed words, escaped anyway).
fn escape_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn page(title: &str, body: &str, json: &str, script: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
{CSS}
</style>
</head>
<body>
{body}
<script type="application/json" id="report-data">{data}</script>
<script>
{COMMON_JS}
</script>
<script>
{script}
</script>
</body>
</html>
"#,
        title = escape_text(title),
        data = script_json(json),
    )
}

const HEADER: &str = r#"<header class="topbar">
  <h1 id="title"></h1>
  <span id="subtitle" class="subtitle"></span>
</header>"#;

/// A sampled capture's notice under the header (styled inline: the shared style sheet,
/// and so every other page, stays as it is).
fn notice_html(notice: Option<&str>) -> String {
    match notice {
        Some(text) => format!(
            "\n<p id=\"sampling-notice\" role=\"note\" style=\"margin: 8px 0 0; padding: 6px 10px; border: 1px solid #d4a72c; \
             border-radius: 6px; background: #fff8c5;\">{}</p>",
            escape_text(text)
        ),
        None => String::new(),
    }
}

const SIDE: &str = r#"<section class="panels">
  <div class="panel chart-panel">
    <div class="panel-head"><h2>Memory over time</h2><span id="chart-help" class="hint"></span></div>
    <div id="memory-chart" class="memory-chart"></div>
  </div>
  <div class="panel stats-panel">
    <div class="panel-head"><h2>Statistics</h2></div>
    <dl id="stats"></dl>
  </div>
</section>"#;

pub fn flamegraph_page(title: &str, json: &str, notice: Option<&str>) -> String {
    let notice = notice_html(notice);
    let body = format!(
        r#"{HEADER}{notice}
{SIDE}
<section class="toolbar" id="toolbar">
  <button type="button" id="reset-zoom" disabled>Reset zoom</button>
  <input type="search" id="search" placeholder="Search functions and files" autocomplete="off" spellcheck="false">
  <span id="search-result" class="hint"></span>
  <label class="check"><input type="checkbox" id="hide-irrelevant" checked> Hide irrelevant frames</label>
  <label class="check"><input type="checkbox" id="hide-imports"> Hide import system frames</label>
  <label class="thread-filter" id="thread-filter-label" hidden>Thread <select id="thread-filter"></select></label>
  <span id="native-legend" class="legend" hidden><span class="swatch python-swatch"></span>Python frame <span class="swatch native-swatch"></span>native frame</span>
</section>
<div id="selection-info" class="selection-info"></div>
<div id="flamegraph" class="flamegraph" role="tree"></div>
<div id="tooltip" class="tooltip" hidden></div>"#
    );
    page(title, &body, json, FLAMEGRAPH_JS)
}

pub fn table_page(title: &str, json: &str, notice: Option<&str>) -> String {
    let notice = notice_html(notice);
    let body = format!(
        r#"{HEADER}{notice}
{SIDE}
<section class="toolbar">
  <input type="search" id="filter" placeholder="Filter rows" autocomplete="off" spellcheck="false">
  <span id="native-legend" class="legend" hidden><span class="swatch native-swatch"></span>native location</span>
  <span id="row-count" class="hint"></span>
  <span class="pager">
    <button type="button" id="prev-page">Previous</button>
    <span id="page-info"></span>
    <button type="button" id="next-page">Next</button>
  </span>
</section>
<table id="allocations" class="allocations">
  <thead><tr>
    <th data-col="0" data-type="text">Thread ID</th>
    <th data-col="1" data-type="num" class="num">Size</th>
    <th data-col="2" data-type="num" class="num">Allocations</th>
    <th data-col="3" data-type="text">Allocator</th>
    <th data-col="4" data-type="text">Location</th>
  </tr></thead>
  <tbody></tbody>
</table>"#
    );
    page(title, &body, json, TABLE_JS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_cannot_close_the_script() {
        let json = serde_json::to_string(&vec!["</script><script>alert(1)</script>", "a&b", "\u{2028}"]).unwrap();
        let safe = script_json(&json);
        assert!(!safe.contains('<') && !safe.contains('>') && !safe.contains('&'));
        assert!(!safe.contains('\u{2028}'));
        let back: Vec<String> = serde_json::from_str(&safe).unwrap();
        assert_eq!(back[0], "</script><script>alert(1)</script>");
        assert_eq!(back[2], "\u{2028}");
    }

    #[test]
    fn a_notice_is_shown_once_and_only_when_given() {
        let plain = table_page("t", "{}", None);
        assert!(!plain.contains("sampling-notice"));
        assert_eq!(plain, table_page("t", "{}", None));
        let page = flamegraph_page("t", "{}", Some("Sampled capture: one allocation recorded per 512.0KiB on average"));
        assert_eq!(page.matches("Sampled capture").count(), 1);
        assert!(page.contains("<header class=\"topbar\">"));
    }
}
