//! Percentile plots as hand-written SVG (no fonts to bundle, no plotting crate).
//!
//! Latency by percentile, HdrHistogram style: the x axis is 1/(1−p) on a log scale, so
//! 90 %, 99 %, 99.9 %, … are evenly spaced; the y axis is latency in milliseconds on a
//! log scale (a stall would flatten everything else on a linear one). One line per
//! operation type and report; in open-loop reports the raw (service time) curve is
//! drawn dashed beside the corrected one. Pure: builds a string, never writes files.

use std::fmt::Write as _;

use crate::stats::{PercentilePoint, Report};

/// One line of the plot.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub points: Vec<PercentilePoint>,
    pub dashed: bool,
}

/// The series of a set of reports: corrected curve per op type, raw too in open loop.
/// `labels` name the reports (e.g. file stems); with one report they are omitted.
pub fn series_from_reports(reports: &[(String, Report)]) -> Vec<Series> {
    let mut out = Vec::new();
    for (label, report) in reports {
        let prefix = if reports.len() > 1 {
            format!("{label} ")
        } else {
            String::new()
        };
        for op in report.ops.iter().filter(|o| o.count > 0) {
            out.push(Series {
                label: format!("{prefix}{}", op.op),
                points: op.corrected.percentiles.clone(),
                dashed: false,
            });
            if report.open_loop {
                out.push(Series {
                    label: format!("{prefix}{} (raw)", op.op),
                    points: op.raw.percentiles.clone(),
                    dashed: true,
                });
            }
        }
    }
    out
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Quantiles beyond 1 − 10^-6 (and the final 1.0 point) are not drawn.
const X_DECADES_MAX: i32 = 6;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn x_of(q: f64) -> Option<f64> {
    if !(0.0..1.0).contains(&q) {
        return None;
    }
    let x = (1.0 / (1.0 - q)).log10();
    (x <= f64::from(X_DECADES_MAX)).then_some(x)
}

fn percent_label(decade: i32) -> String {
    match decade {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        d => format!("99.{}%", "9".repeat((d - 2) as usize)),
    }
}

fn ms_label(exp: i32) -> String {
    let v = 10f64.powi(exp);
    if exp < 0 {
        format!("{v:.*}", (-exp) as usize)
    } else {
        format!("{v:.0}")
    }
}

/// Render the plot. `title` goes on top.
pub fn render_svg(title: &str, series: &[Series]) -> String {
    // Ranges from the data: x in decades of 1/(1-p), y in decades of ms.
    let mut x_max: f64 = 2.0;
    let mut y_min = f64::INFINITY;
    let mut y_max = f64::NEG_INFINITY;
    for s in series {
        for p in &s.points {
            if let Some(x) = x_of(p.quantile) {
                x_max = x_max.max(x);
                let y = (p.value_us.max(1) as f64 / 1000.0).log10();
                y_min = y_min.min(y);
                y_max = y_max.max(y);
            }
        }
    }
    if !y_min.is_finite() {
        y_min = -3.0;
        y_max = 0.0;
    }
    let x_top = x_max.ceil().clamp(1.0, f64::from(X_DECADES_MAX)) as i32;
    let y_lo = y_min.floor() as i32;
    let y_hi = (y_max.ceil() as i32).max(y_lo + 1);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / f64::from(x_top) * plot_w;
    let py = |y: f64| TOP + plot_h - (y - f64::from(y_lo)) / f64::from(y_hi - y_lo) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and ticks.
    for d in 0..=x_top {
        let x = px(f64::from(d));
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            percent_label(d)
        );
    }
    for e in y_lo..=y_hi {
        let y = py(f64::from(e));
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            ms_label(e)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>"#,
        TOP + plot_h / 2.0
    );
    // Lines and legend.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter_map(|p| {
                let x = x_of(p.quantile)?;
                let y = (p.value_us.max(1) as f64 / 1000.0).log10();
                Some(format!("{:.1},{:.1}", px(x), py(y)))
            })
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        if !points.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                points.join(" ")
            );
        }
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_polyline_per_series_and_escapes_labels() {
        let points = vec![
            PercentilePoint {
                quantile: 0.0,
                value_us: 100,
            },
            PercentilePoint {
                quantile: 0.99,
                value_us: 5000,
            },
            PercentilePoint {
                quantile: 1.0,
                value_us: 9000,
            },
        ];
        let series = vec![
            Series {
                label: "read <a>".into(),
                points: points.clone(),
                dashed: false,
            },
            Series {
                label: "update".into(),
                points,
                dashed: true,
            },
        ];
        let svg = render_svg("t", &series);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("read &lt;a&gt;"));
        assert!(svg.contains("99%"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
