//! The text report of `densenet profile`: one table per configuration (planned and measured
//! peak of each path, whether they agree, step time, bytes by category, baseline/efficient
//! ratio), then a summary over configurations.

use super::{ConfigProfile, PathProfile, RunLimit, format_bytes};
use crate::backend::Category;
use std::fmt::Write;

const LABEL: usize = 26;
const COLUMN: usize = 21;

/// The whole report.
pub fn render(profiles: &[ConfigProfile], limit: &RunLimit) -> String {
    let mut out = String::new();
    for p in profiles {
        config_table(&mut out, p);
        out.push('\n');
    }
    if profiles.len() > 1 {
        summary(&mut out, profiles);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Peaks are the allocator's bytes (1 MB = 10^6 B); paths planned above {} ({}) are not run.",
        format_bytes(limit.bytes),
        limit.reason
    );
    out
}

fn row(out: &mut String, label: &str, cells: impl IntoIterator<Item = String>) {
    row_with(out, LABEL, label, cells);
}

fn row_with(out: &mut String, width: usize, label: &str, cells: impl IntoIterator<Item = String>) {
    let _ = write!(out, "  {label:<width$}");
    for c in cells {
        let _ = write!(out, "{c:>COLUMN$}");
    }
    out.push('\n');
}

fn config_table(out: &mut String, p: &ConfigProfile) {
    let _ = writeln!(
        out,
        "{}: depth {}, growth {}, batch {}, {}x{}, {}, {} backend",
        p.name,
        p.depth,
        p.growth,
        p.batch,
        p.height,
        p.width,
        p.precision.name(),
        p.backend
    );
    if p.precision.storage() != crate::Dtype::F32 {
        let _ = writeln!(
            out,
            "  (efficient paths store activations in {}; the baseline stores f32)",
            p.precision.storage()
        );
    }
    row(out, "", p.paths.iter().map(|x| x.path.label().to_string()));
    row(out, "planned peak", p.paths.iter().map(|x| format_bytes(x.planned_bytes)));
    row(
        out,
        "measured peak",
        p.paths.iter().map(|x| x.measured.as_ref().map_or("not run".into(), |m| format_bytes(m.peak_bytes))),
    );
    row(out, "measured = planned", p.paths.iter().map(agreement));
    row(
        out,
        "step time",
        p.paths.iter().map(|x| x.measured.as_ref().map_or("-".into(), |m| format!("{:.2} s", m.seconds))),
    );
    let _ = writeln!(out, "  bytes by category at the planned peak:");
    for c in Category::ALL {
        if p.paths.iter().any(|x| x.planned_by_category.contains_key(&c)) {
            let cells = p
                .paths
                .iter()
                .map(|x| x.planned_by_category.get(&c).map_or("-".into(), |&b| format_bytes(b)));
            row(out, &format!("  {}", category_label(c)), cells);
        }
    }
    if let Some((ratio, measured)) = p.ratio() {
        let how = if measured { "measured" } else { "planned" };
        let _ = writeln!(out, "  baseline / efficient training peak: {ratio:.1}x ({how})");
    }
    for x in &p.paths {
        if let Some(why) = &x.not_run {
            let _ = writeln!(out, "  {} not run: {why}", x.path.label());
        }
    }
}

/// "yes" (to the byte and per category), "NO (…)" or "-" when not run.
fn agreement(x: &PathProfile) -> String {
    match (x.matches(), &x.measured) {
        (Some(true), _) => "yes, to the byte".into(),
        (Some(false), Some(m)) => {
            let diff = m.peak_bytes as i128 - x.planned_bytes as i128;
            format!("NO ({diff:+} B)")
        }
        _ => "-".into(),
    }
}

fn category_label(c: Category) -> &'static str {
    match c {
        Category::Baseline => "baseline activations",
        c => c.label(),
    }
}

/// One line per configuration: the measured peak where run, else the plan (marked `*`).
fn summary(out: &mut String, profiles: &[ConfigProfile]) {
    let _ = writeln!(out, "summary: peak memory per configuration (* = planned only, not run)");
    let label = |p: &ConfigProfile| format!("{} (depth {})", p.name, p.depth);
    let width = profiles.iter().map(|p| label(p).chars().count()).max().unwrap_or(0).max(LABEL);
    let head =
        profiles[0].paths.iter().map(|x| x.path.label().to_string()).chain(["baseline/efficient".into()]);
    row_with(out, width, "configuration", head);
    for p in profiles {
        let cells = p.paths.iter().map(|x| {
            let star = if x.measured.is_some() { " " } else { "*" };
            format!("{}{star}", format_bytes(x.best_bytes()))
        });
        let ratio = p.ratio().map_or("-".into(), |(r, m)| format!("{r:.1}x{}", if m { " " } else { "*" }));
        row_with(out, width, &label(p), cells.chain([ratio]));
    }
}
