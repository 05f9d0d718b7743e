//! The README's query examples parse: the documentation cannot drift from the parser.

use livetap::event::Catalogue;
use livetap::query::{parse_pairs, Limits};

/// The lines of the first fenced block after `marker` in the README.
fn block_after(readme: &str, marker: &str) -> Vec<String> {
    let rest = &readme[readme.find(marker).expect("marker in README")..];
    let start = rest.find("```").expect("a fenced block") + 3;
    let body = &rest[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("```").expect("closing fence");
    body[..end].lines().map(str::to_string).collect()
}

#[test]
fn readme_query_examples_parse() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (_, keys) = Catalogue::with_keys(1024);
    let examples = block_after(&readme, "Examples a mail admin would type");
    assert!(examples.len() >= 5);
    for line in examples {
        // An example is the text before its two-space comment; values are shown decoded, so
        // encode each value the way a client would before parsing it as a query string.
        let example = line.split("   ").next().unwrap().trim();
        let encoded: Vec<String> = example
            .split('&')
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap();
                format!("{k}={}", form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>())
            })
            .collect();
        let q = parse_pairs(&encoded.join("&"), &keys, &Limits::default());
        assert!(q.is_ok(), "README example `{example}`: {}", q.unwrap_err());
        assert!(!q.unwrap().expr.is_true(), "{example}");
    }
}

#[test]
fn readme_alert_examples_are_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // The example configuration loads and its alerts pass validation.
    let toml = block_after(&readme, "### Example alerts").join("\n");
    let config = livetap::Config::from_toml(&toml).unwrap_or_else(|e| panic!("README alert example: {e}"));
    assert_eq!(config.alert.len(), 2);
    config.validate_alerts(Some(&toml)).unwrap_or_else(|e| panic!("README alert example: {e}"));
    // The example conditions parse against the catalogue's metric names.
    let kinds = livetap::alert::CatalogueKinds::new(&Catalogue::embedded());
    let conditions = block_after(&readme, "### Conditions");
    assert!(conditions.len() >= 2);
    for c in conditions {
        livetap::alert::expr::parse(&c, &kinds).unwrap_or_else(|e| panic!("README condition `{c}`: {e}"));
    }
}
