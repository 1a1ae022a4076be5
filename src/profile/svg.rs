//! SVG plot of peak memory against depth: one line per path through the planned peaks, on a
//! logarithmic memory axis (baseline grows quadratically, efficient linearly: a log axis keeps
//! both readable). Filled markers were measured (and equal the plan); hollow markers are
//! planned only. The baseline/efficient training ratio is written above each baseline point.

use super::{ConfigProfile, PathKind, format_bytes};
use std::fmt::Write;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 100.0;
/// Right edge of the plot area; the legend sits to its right, clear of the data.
const RIGHT: f64 = 730.0;
const TOP: f64 = 76.0;
const BOTTOM: f64 = HEIGHT - 70.0;

/// Drawing order and style of each path: (path, colour, dash pattern).
const SERIES: [(PathKind, &str, &str); 3] = [
    (PathKind::BaselineTraining, "#d62728", ""),
    (PathKind::EfficientTraining, "#1f77b4", ""),
    (PathKind::EfficientInference, "#2ca02c", "6 4"),
];

/// The plot for `profiles` (at least one), sorted by depth.
pub fn render(profiles: &[ConfigProfile]) -> String {
    let mut ps: Vec<&ConfigProfile> = profiles.iter().collect();
    ps.sort_by_key(|p| p.depth);
    let values: Vec<f64> = ps.iter().flat_map(|p| p.paths.iter().map(|x| x.planned_bytes as f64)).collect();
    let y = LogAxis::spanning(&values);
    let x = LinearAxis::spanning(ps.iter().map(|p| p.depth as f64));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="30" font-size="19" font-weight="bold" text-anchor="middle">Peak memory vs depth: memory-efficient DenseNet vs baseline</text>"#,
        WIDTH / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="54" font-size="13" text-anchor="middle" fill="#444">{}</text>"##,
        WIDTH / 2.0,
        escape(&subtitle(&ps))
    );

    // Grid, ticks and tick labels.
    for (v, major) in y.ticks() {
        let py = y.map(v);
        let (stroke, width) = if major { ("#bbb", 1.0) } else { ("#e4e4e4", 0.8) };
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            py + 4.0,
            tick_label(v)
        );
    }
    for p in &ps {
        let px = x.map(p.depth as f64);
        let _ = writeln!(s, r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{BOTTOM}" stroke="#eee"/>"##);
        let _ = writeln!(
            s,
            r#"<line x1="{px:.1}" y1="{BOTTOM}" x2="{px:.1}" y2="{:.1}" stroke="black"/>"#,
            BOTTOM + 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{px:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            BOTTOM + 20.0,
            p.depth
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">depth (layers with weights)</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 48.0
    );
    let mid = (TOP + BOTTOM) / 2.0;
    let _ = writeln!(
        s,
        r#"<text x="24" y="{mid:.1}" font-size="14" text-anchor="middle" transform="rotate(-90 24 {mid:.1})">peak memory (log scale, 1 MB = 10⁶ bytes)</text>"#
    );

    // Series: lines through the planned peaks (a measured peak equals its plan, and every
    // configuration has a plan), markers filled where measured.
    for (kind, colour, dash) in SERIES {
        let points: Vec<(f64, f64, bool)> = ps
            .iter()
            .filter_map(|p| p.path(kind).map(|x| (x.planned_bytes, p.depth, x.measured.is_some())))
            .map(|(bytes, depth, measured)| (x.map(depth as f64), y.map(bytes as f64), measured))
            .collect();
        let line: Vec<String> = points.iter().map(|(px, py, _)| format!("{px:.1},{py:.1}")).collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2.2" stroke-dasharray="{dash}"/>"#,
            line.join(" ")
        );
        for (px, py, measured) in points {
            let fill = if measured { colour } else { "white" };
            let _ = writeln!(
                s,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="5" fill="{fill}" stroke="{colour}" stroke-width="2"/>"#
            );
        }
    }
    for p in &ps {
        if let (Some((ratio, _)), Some(baseline)) = (p.ratio(), p.path(PathKind::BaselineTraining)) {
            let (px, py) = (x.map(p.depth as f64), y.map(baseline.planned_bytes as f64));
            let _ = writeln!(
                s,
                r##"<text x="{px:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#d62728">{ratio:.1}×</text>"##,
                py - 11.0
            );
        }
    }
    legend(&mut s);
    s.push_str("</svg>\n");
    s
}

/// What the profiles have in common (model family, growth, batch, size, precision, backend).
fn subtitle(ps: &[&ConfigProfile]) -> String {
    let first = ps[0];
    let same = |f: &dyn Fn(&ConfigProfile) -> String| ps.iter().all(|p| f(p) == f(first));
    let mut parts = Vec::new();
    if ps.iter().all(|p| p.name.starts_with("densenet-bc-")) {
        parts.push("DenseNet-BC".to_string());
    } else if ps.len() == 1 {
        parts.push(first.name.clone());
    }
    if same(&|p| p.growth.to_string()) {
        parts.push(format!("growth {}", first.growth));
    }
    if same(&|p| p.batch.to_string()) {
        parts.push(format!("batch {}", first.batch));
    }
    if same(&|p| format!("{}x{}", p.height, p.width)) {
        parts.push(format!("{}×{}", first.height, first.width));
    }
    parts.push(format!("{}, {} backend", first.precision.name(), first.backend));
    parts.join(", ")
}

fn legend(s: &mut String) {
    let (x0, y0) = (RIGHT + 20.0, TOP);
    let _ = writeln!(s, r##"<rect x="{x0}" y="{y0}" width="240" height="164" fill="white" stroke="#999"/>"##);
    for (i, (kind, colour, dash)) in SERIES.iter().enumerate() {
        let y = y0 + 22.0 + 22.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2.2" stroke-dasharray="{dash}"/>"#,
            x0 + 10.0,
            x0 + 42.0
        );
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{y:.1}" r="5" fill="{colour}" stroke="{colour}" stroke-width="2"/>"#,
            x0 + 26.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="13">{}</text>"#,
            x0 + 52.0,
            y + 4.5,
            kind.label()
        );
    }
    for (i, (fill, text)) in
        [("#555", "measured (= planned)"), ("white", "planned only (not run)")].iter().enumerate()
    {
        let y = y0 + 98.0 + 22.0 * i as f64;
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{y:.1}" r="5" fill="{fill}" stroke="#555" stroke-width="2"/>"##,
            x0 + 26.0
        );
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" font-size="13">{text}</text>"#, x0 + 52.0, y + 4.5);
    }
    let y = y0 + 146.0;
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{y:.1}" font-size="12" text-anchor="middle" fill="#d62728">n×</text>"##,
        x0 + 26.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{y:.1}" font-size="13">baseline / efficient training</text>"#,
        x0 + 52.0
    );
}

/// A tick value (1, 2 or 5 × 10ᵉ bytes) without trailing zeros: `500 kB`, `2 MB`, `10 GB`.
fn tick_label(v: f64) -> String {
    let text = format_bytes(v.round() as usize);
    match text.split_once(' ') {
        Some((number, unit)) if number.contains('.') => {
            format!("{} {unit}", number.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => text,
    }
}

/// A linear axis over data values, padded so that end points do not sit on the frame.
struct LinearAxis {
    lo: f64,
    hi: f64,
}

impl LinearAxis {
    fn spanning(values: impl Iterator<Item = f64>) -> Self {
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
        let pad = ((hi - lo) * 0.06).max(10.0);
        LinearAxis { lo: lo - pad, hi: hi + pad }
    }

    fn map(&self, v: f64) -> f64 {
        LEFT + (v - self.lo) / (self.hi - self.lo) * (RIGHT - LEFT)
    }
}

/// A log₁₀ axis from the decade below the smallest value to the decade above the largest.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    fn spanning(values: &[f64]) -> Self {
        let positive = values.iter().copied().filter(|&v| v > 0.0);
        let (min, max) = positive.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
        let (min, max) = if min.is_finite() { (min, max) } else { (1.0, 10.0) };
        let lo = min.log10().floor();
        let hi = max.log10().ceil().max(lo + 1.0);
        LogAxis { lo, hi }
    }

    fn map(&self, v: f64) -> f64 {
        BOTTOM - (v.max(1.0).log10() - self.lo) / (self.hi - self.lo) * (BOTTOM - TOP)
    }

    /// Ticks at 1, 2 and 5 × 10ᵉ (1 × 10ᵉ major); with many decades only the majors.
    fn ticks(&self) -> Vec<(f64, bool)> {
        let mantissas: &[f64] = if self.hi - self.lo > 4.0 { &[1.0] } else { &[1.0, 2.0, 5.0] };
        let mut out = Vec::new();
        for e in self.lo as i32..=self.hi as i32 {
            for &m in mantissas {
                let v = m * 10f64.powi(e);
                if v.log10() <= self.hi + 1e-9 {
                    out.push((v, m == 1.0));
                }
            }
        }
        out
    }
}

/// Escapes text for an SVG text node.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
