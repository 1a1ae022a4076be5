//! CSV of a profile: one row per configuration and path, the rows of the text tables.

use super::{ConfigProfile, PathKind, category_key};
use crate::backend::Category;
use std::fmt::Write;

/// Header and rows. Empty cells: not measured (for `measured_bytes`, `matches`, `seconds`) or
/// not applicable (`baseline_over_efficient` is given on baseline rows only). Category columns are
/// bytes at the planned peak.
pub fn render(profiles: &[ConfigProfile]) -> String {
    let mut out = String::from(
        "model,depth,growth,batch,height,width,precision,backend,path,planned_bytes,measured_bytes,run,matches,seconds,baseline_over_efficient",
    );
    for c in Category::ALL {
        out.push(',');
        out.push_str(category_key(c));
    }
    out.push('\n');
    for p in profiles {
        for x in &p.paths {
            let m = x.measured.as_ref();
            let ratio = match (x.path, p.ratio()) {
                (PathKind::BaselineTraining, Some((r, _))) => format!("{r:.4}"),
                _ => String::new(),
            };
            let _ = write!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                field(&p.name),
                p.depth,
                p.growth,
                p.batch,
                p.height,
                p.width,
                p.precision.name(),
                field(&p.backend),
                x.path.label(),
                x.planned_bytes,
                m.map_or(String::new(), |m| m.peak_bytes.to_string()),
                m.is_some(),
                x.matches().map_or(String::new(), |b| b.to_string()),
                m.map_or(String::new(), |m| format!("{:.3}", m.seconds)),
                ratio
            );
            for c in Category::ALL {
                let _ = write!(out, ",{}", x.planned_by_category.get(&c).copied().unwrap_or(0));
            }
            out.push('\n');
        }
    }
    out
}

/// A CSV field, quoted when it contains a separator, quote or line break (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(field("densenet121"), "densenet121");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
