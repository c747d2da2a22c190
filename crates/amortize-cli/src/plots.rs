//! Figures, each written as PNG and SVG (atomically: a temporary file, then a rename).

use std::path::{Path, PathBuf};
use std::sync::Once;

use amortize::eval::SpeedReport;
use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

const FONT: &str = "sans-serif";
static REGISTER_FONT: Once = Once::new();

fn register_font() {
    REGISTER_FONT.call_once(|| {
        // The bundled DejaVu Sans (assets/DejaVuSans-LICENSE.txt), so figures need no system fonts.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../assets/DejaVuSans.ttf"),
        );
    });
}

/// Draws the same figure into `<stem>.png` and `<stem>.svg`; returns both paths.
pub fn save_both(
    stem: &Path,
    size: (u32, u32),
    draw_png: impl Fn(DrawingArea<BitMapBackend, Shift>) -> Result<()>,
    draw_svg: impl Fn(DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    register_font();
    let mut out = Vec::new();
    for ext in ["png", "svg"] {
        let path = stem.with_extension(ext);
        let tmp = stem.with_file_name(format!(
            ".{}.tmp-{}.{ext}",
            stem.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        if ext == "png" {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            draw_png(root)?;
        } else {
            let root = SVGBackend::new(&tmp, size).into_drawing_area();
            draw_svg(root)?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

/// Both backends at once: `figure!(stem, size, |root| body)` runs `body` for PNG and SVG.
macro_rules! figure {
    ($stem:expr, $size:expr, |$root:ident| $body:expr) => {
        save_both(
            $stem,
            $size,
            |$root: DrawingArea<BitMapBackend, Shift>| $body,
            |$root: DrawingArea<SVGBackend, Shift>| $body,
        )
    };
}

/// Draws the series legend of `chart` in a white box at `pos`.
macro_rules! legend {
    ($chart:expr, $size:expr, $pos:expr) => {
        $chart
            .configure_series_labels()
            .label_font((FONT, $size))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position($pos)
            .draw()
            .map_err(e)?
    };
}

fn e<T: std::fmt::Debug>(err: T) -> anyhow::Error {
    anyhow!("drawing failed: {err:?}")
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// The learning curve: training loss and held-out objective against the step, with the mean
/// optimum as a reference line when known.
pub fn learning_curve(
    stem: &Path,
    train: &[(usize, f64)],
    eval: &[(usize, f64)],
    optimum: Option<f64>,
) -> Result<Vec<PathBuf>> {
    // A moving average keeps the noisy per-batch loss readable.
    let w = (train.len() / 100).max(1);
    let smooth: Vec<(f64, f64)> = train
        .windows(w)
        .step_by(w.max(1))
        .map(|c| {
            (
                c[c.len() - 1].0 as f64,
                c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64,
            )
        })
        .collect();
    let steps = train.last().map(|p| p.0).unwrap_or(1).max(1) as f64;
    let (lo, hi) = bounds(
        smooth
            .iter()
            .map(|p| p.1)
            .chain(eval.iter().map(|p| p.1))
            .chain(optimum),
    );
    figure!(stem, (900, 560), |root| {
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Learning curve", (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..steps, lo..hi)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc("objective")
            .label_style((FONT, 14))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                smooth.iter().copied(),
                BLUE.stroke_width(2),
            ))
            .map_err(e)?
            .label("training loss (moving average)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                eval.iter().map(|p| (p.0 as f64, p.1)),
                RED.stroke_width(2),
            ))
            .map_err(e)?
            .label("held-out mean objective")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        if let Some(opt) = optimum {
            chart
                .draw_series(LineSeries::new(
                    vec![(0.0, opt), (steps, opt)],
                    BLACK.stroke_width(1),
                ))
                .map_err(e)?
                .label("mean optimum f(y*)")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
        }
        legend!(chart, 14, SeriesLabelPosition::UpperRight);
        root.present().map_err(e)?;
        Ok(())
    })
}

/// Named curves against an iteration axis, the y axis logarithmic (values floored at 1e-12)
/// or linear: the per-layer figures of the sparse-coding runs.
pub fn curves(
    stem: &Path,
    title: &str,
    axes: (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> Result<Vec<PathBuf>> {
    let floor = |v: f64| if log_y { v.max(1e-12) } else { v };
    let ys = || {
        series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|q| floor(q.1)))
    };
    let (lo, hi) = if log_y {
        let (lo, hi) = ys().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if lo.is_finite() && hi > 0.0 {
            (lo / 2.0, hi * 2.0)
        } else {
            (1e-12, 1.0)
        }
    } else {
        bounds(ys())
    };
    let max_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0f64, f64::max);
    let min_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(0.0f64, f64::min);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(axes.0)
                .y_desc(axes.1)
                .x_label_formatter(&|v| tick_label(*v))
                .y_label_formatter(&|v| tick_label(*v))
                .label_style((FONT, 14))
                .draw()
                .map_err(e)?;
            for (i, (name, points)) in series.iter().enumerate() {
                let color = SERIES_COLORS[i % SERIES_COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        points
                            .iter()
                            .filter(|p| p.1.is_finite())
                            .map(|&(x, y)| (x, floor(y))),
                        color.stroke_width(2),
                    ))
                    .map_err(e)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            legend!(chart, 14, SeriesLabelPosition::UpperRight);
        }};
    }
    figure!(stem, (900, 560), |root| {
        root.fill(&WHITE).map_err(e)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70);
        if log_y {
            draw!(builder
                .build_cartesian_2d(min_x..max_x, (lo..hi).log_scale())
                .map_err(e)?);
        } else {
            draw!(builder
                .build_cartesian_2d(min_x..max_x, lo..hi)
                .map_err(e)?);
        }
        root.present().map_err(e)?;
        Ok(())
    })
}

/// A short axis label: 4 significant digits at most, in scientific notation below 10⁻³ and
/// from 10⁵ (a log axis's 10⁻⁵ tick is 9.99…e-6 in f64, printed in full by default).
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.2e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exponent}");
    }
    let digits = (3 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

/// Ten distinguishable series colours (the "tab10" palette), so that up to ten curves, such as
/// the seven QP classes of `run rlqp`, never share one.
const SERIES_COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(214, 39, 40),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The tutorial's speed figures: each baseline's mean objective against iterations and against
/// wall-clock seconds, with the amortized level (down to the mean optimum) as a band.
pub fn speed(stem: &Path, report: &SpeedReport, optimum: Option<f64>) -> Result<Vec<PathBuf>> {
    let amortized = report.amortized_mean_objective;
    let band_lo = optimum.unwrap_or(amortized).min(amortized);
    let (lo, hi) = bounds(
        report
            .baselines
            .iter()
            .flat_map(|b| b.curve.mean_objective.iter().copied())
            .chain([amortized, band_lo]),
    );
    let max_it = report
        .baselines
        .iter()
        .map(|b| b.curve.iters.len())
        .max()
        .unwrap_or(2) as f64;
    let max_s = report
        .baselines
        .iter()
        .filter_map(|b| b.curve.seconds.last().copied())
        .fold(report.prediction_seconds * 10.0, f64::max);
    let min_s = (report.prediction_seconds * 0.5).max(1e-7);
    figure!(stem, (1300, 520), |root| {
        root.fill(&WHITE).map_err(e)?;
        let (left, right) = root.split_horizontally(650);
        for (panel, area) in [(0, left), (1, right)] {
            let x_desc = if panel == 0 {
                "solver iterations"
            } else {
                "wall-clock seconds"
            };
            let caption = if panel == 0 {
                "Objective vs iterations"
            } else {
                "Objective vs time"
            };
            let x_range = if panel == 0 {
                (1.0, max_it)
            } else {
                (min_s, max_s)
            };
            let mut chart = ChartBuilder::on(&area)
                .caption(caption, (FONT, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d((x_range.0..x_range.1).log_scale(), lo..hi)
                .map_err(e)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc("mean objective")
                .label_style((FONT, 13))
                .draw()
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x_range.0, band_lo), (x_range.1, amortized)],
                    RGBColor(84, 153, 255).mix(0.25).filled(),
                )))
                .map_err(e)?
                .label("amortized level (band down to the optimum)")
                .legend(|(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 20, y + 5)],
                        RGBColor(84, 153, 255).mix(0.4).filled(),
                    )
                });
            if panel == 1 {
                let p = report.prediction_seconds;
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (p, amortized),
                        6,
                        BLACK.filled(),
                    )))
                    .map_err(e)?
                    .label(format!("amortized prediction ({:.3} ms)", p * 1e3))
                    .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
            }
            for (i, b) in report.baselines.iter().enumerate() {
                let color = SERIES_COLORS[i % SERIES_COLORS.len()];
                let pts: Vec<(f64, f64)> = b
                    .curve
                    .iters
                    .iter()
                    .zip(&b.curve.seconds)
                    .zip(&b.curve.mean_objective)
                    .filter(|((it, _), _)| **it > 0)
                    .map(|((it, s), f)| {
                        if panel == 0 {
                            (*it as f64, *f)
                        } else {
                            (s.max(min_s), *f)
                        }
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(e)?
                    .label(b.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            legend!(chart, 13, SeriesLabelPosition::UpperRight);
        }
        root.present().map_err(e)?;
        Ok(())
    })
}

/// Maps a value in [0, 1] to the light-to-dark purple of the tutorial's sphere figure, in
/// `levels` filled-contour steps.
fn purples(t: f64, levels: usize) -> RGBColor {
    let q = ((t.clamp(0.0, 1.0) * levels as f64).floor() / levels as f64).min(1.0);
    let (a, b) = ((252.0, 251.0, 253.0), (63.0, 0.0, 125.0));
    RGBColor(
        (a.0 + (b.0 - a.0) * q) as u8,
        (a.1 + (b.1 - a.1) * q) as u8,
        (a.2 + (b.2 - a.2) * q) as u8,
    )
}

/// A raster of filled contours: `value(x, y)` on a `cols × rows` grid over the chart's
/// ranges, drawn as runs of equal colour (few rectangles, small SVGs). `None` leaves a cell
/// blank.
fn raster(
    cols: usize,
    rows: usize,
    x: (f64, f64),
    y: (f64, f64),
    value: impl Fn(f64, f64) -> Option<f64>,
) -> Vec<Rectangle<(f64, f64)>> {
    let levels = 10;
    let dx = (x.1 - x.0) / cols as f64;
    let dy = (y.1 - y.0) / rows as f64;
    let mut grid = vec![None; cols * rows];
    for r in 0..rows {
        for c in 0..cols {
            grid[r * cols + c] = value(x.0 + (c as f64 + 0.5) * dx, y.0 + (r as f64 + 0.5) * dy);
        }
    }
    let (lo, hi) = bounds(grid.iter().flatten().copied());
    let mut rects = Vec::new();
    for r in 0..rows {
        let mut c = 0;
        while c < cols {
            let Some(v) = grid[r * cols + c] else {
                c += 1;
                continue;
            };
            let color = purples((v - lo) / (hi - lo), levels);
            let start = c;
            while c < cols
                && grid[r * cols + c]
                    .is_some_and(|w| purples((w - lo) / (hi - lo), levels) == color)
            {
                c += 1;
            }
            rects.push(Rectangle::new(
                [
                    (x.0 + start as f64 * dx, y.0 + r as f64 * dy),
                    (x.0 + c as f64 * dx, y.0 + (r + 1) as f64 * dy),
                ],
                color.filled(),
            ));
        }
    }
    rects
}

/// Mollweide projection of a point on S² (longitude λ = atan2(y, x), latitude φ = asin z).
pub fn mollweide(p: [f64; 3]) -> (f64, f64) {
    let n = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt().max(1e-300);
    let lat = (p[2] / n).clamp(-1.0, 1.0).asin();
    let lon = p[1].atan2(p[0]);
    let target = std::f64::consts::PI * lat.sin();
    let half_pi = std::f64::consts::FRAC_PI_2;
    // Newton on 2t + sin 2t = π sin φ; near the poles the derivative vanishes, so every step is
    // kept inside [−π/2, π/2], where the answer lies.
    let mut t = lat;
    for _ in 0..50 {
        let denom = 2.0 + 2.0 * (2.0 * t).cos();
        if denom < 1e-12 {
            break;
        }
        let next = (t - (2.0 * t + (2.0 * t).sin() - target) / denom).clamp(-half_pi, half_pi);
        let done = (next - t).abs() < 1e-12;
        t = next;
        if done {
            break;
        }
    }
    let s2 = std::f64::consts::SQRT_2;
    (
        2.0 * s2 / std::f64::consts::PI * lon * t.cos(),
        s2 * t.sin(),
    )
}

/// The inverse of [`mollweide`]; `None` outside the map's ellipse.
pub fn mollweide_inverse(x: f64, y: f64) -> Option<[f64; 3]> {
    let s2 = std::f64::consts::SQRT_2;
    if x * x / 8.0 + y * y / 2.0 > 1.0 {
        return None;
    }
    let t = (y / s2).clamp(-1.0, 1.0).asin();
    let lat = ((2.0 * t + (2.0 * t).sin()) / std::f64::consts::PI)
        .clamp(-1.0, 1.0)
        .asin();
    let lon = std::f64::consts::PI * x / (2.0 * s2 * t.cos().max(1e-12));
    if lon.abs() > std::f64::consts::PI {
        return None;
    }
    Some([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()])
}

/// One panel of the sphere figure.
pub struct SpherePanel {
    /// f on the sphere for this context.
    pub value: Box<dyn Fn([f64; 3]) -> f64>,
    /// The exact minimiser y*.
    pub optimum: [f64; 3],
    /// The model's predictions along training, first to last.
    pub trajectory: Vec<[f64; 3]>,
}

/// The tutorial's Figure 12: Mollweide maps of f's contours with y* (star) and the predictions
/// along training (dotted path, final prediction circled), one panel per tracked context.
pub fn sphere_map(stem: &Path, panels: &[SpherePanel]) -> Result<Vec<PathBuf>> {
    let cols = 2usize;
    let rows = panels.len().div_ceil(cols).max(1);
    let (pw, ph) = (520u32, 290u32);
    let s2 = std::f64::consts::SQRT_2;
    figure!(stem, (pw * cols as u32, ph * rows as u32 + 40), |root| {
        root.fill(&WHITE).map_err(e)?;
        let root = root
            .titled(
                "f(y; x) contours, optimum y* (red star), predictions over training (blue)",
                (FONT, 18),
            )
            .map_err(e)?;
        let areas = root.split_evenly((rows, cols));
        for (panel, area) in panels.iter().zip(areas) {
            let mut chart = ChartBuilder::on(&area)
                .margin(6)
                .build_cartesian_2d(-2.0 * s2..2.0 * s2, -s2..s2)
                .map_err(e)?;
            chart
                .draw_series(raster(140, 70, (-2.0 * s2, 2.0 * s2), (-s2, s2), |x, y| {
                    mollweide_inverse(x, y).map(|p| (panel.value)(p))
                }))
                .map_err(e)?;
            let outline: Vec<(f64, f64)> = (0..=200)
                .map(|i| {
                    let a = i as f64 / 200.0 * std::f64::consts::TAU;
                    (2.0 * s2 * a.cos(), s2 * a.sin())
                })
                .collect();
            chart
                .draw_series(LineSeries::new(outline, BLACK.mix(0.6)))
                .map_err(e)?;
            // The path, broken where it wraps around the map's edge.
            let pts: Vec<(f64, f64)> = panel.trajectory.iter().map(|p| mollweide(*p)).collect();
            // Consecutive points closer than half a pixel are dropped (zero-length segments).
            let mut path: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
            for p in &pts {
                if path
                    .last()
                    .is_none_or(|q| (p.0 - q.0).hypot(p.1 - q.1) > 5e-3)
                {
                    path.push(*p);
                }
            }
            let blue = RGBColor(84, 153, 255);
            // One element per segment: joined wide polylines grow long miter spikes at sharp
            // turns in the bitmap backend. Segments that wrap around the map's edge are skipped.
            chart
                .draw_series(
                    path.windows(2)
                        .filter(|w| (w[1].0 - w[0].0).abs() <= 2.0)
                        .map(|w| PathElement::new(vec![w[0], w[1]], blue.stroke_width(2))),
                )
                .map_err(e)?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 2, blue.filled())))
                .map_err(e)?;
            if let Some(last) = pts.last() {
                chart
                    .draw_series(std::iter::once(Circle::new(*last, 6, blue.stroke_width(2))))
                    .map_err(e)?;
            }
            let o = mollweide(panel.optimum);
            chart
                .draw_series(std::iter::once(Text::new(
                    "\u{2605}",
                    o,
                    (FONT, 26).into_font().color(&RGBColor(170, 0, 0)).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Center,
                        ),
                    ),
                )))
                .map_err(e)?;
        }
        root.present().map_err(e)?;
        Ok(())
    })
}

/// The tutorial's Figure 1: the landscape f(y; x) over (x, y) with y*(x) and ŷθ(x).
pub fn landscape_1d(
    stem: &Path,
    x_range: (f64, f64),
    y_range: (f64, f64),
    value: &dyn Fn(f64, f64) -> f64,
    optimum: &[(f64, f64)],
    prediction: &[(f64, f64)],
) -> Result<Vec<PathBuf>> {
    figure!(stem, (900, 600), |root| {
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("f(y; x) with y*(x) and the amortized ŷθ(x)", (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
            .map_err(e)?;
        chart
            .draw_series(raster(180, 120, x_range, y_range, |x, y| Some(value(x, y))))
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("context x")
            .y_desc("solution y")
            .label_style((FONT, 14))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                optimum.iter().copied(),
                BLACK.stroke_width(3),
            ))
            .map_err(e)?
            .label("y*(x)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3)));
        let blue = RGBColor(84, 153, 255);
        chart
            .draw_series(LineSeries::new(
                prediction.iter().copied(),
                blue.stroke_width(3),
            ))
            .map_err(e)?
            .label("ŷθ(x)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(3))
            });
        legend!(chart, 14, SeriesLabelPosition::UpperLeft);
        root.present().map_err(e)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short() {
        let cases = [
            (10f64.powi(-5), "1e-5"),
            (9.999999999e-6, "1e-5"),
            (2.5e-7, "2.5e-7"),
            (0.001, "0.001"),
            (0.1, "0.1"),
            (1.0, "1"),
            (0.30000000000000004, "0.3"),
            (12.5, "12.5"),
            (1234.5678, "1235"),
            (-0.02, "-0.02"),
            (2e6, "2e6"),
            (0.0, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(tick_label(v), want, "{v}");
        }
    }

    #[test]
    fn mollweide_round_trips() {
        for p in [
            [1.0f64, 0.0, 0.0],
            [0.3, -0.5, 0.7],
            [-0.2, 0.1, -0.9],
            [0.01, 0.02, 0.999],
            [-3e-3, 1e-3, -1.0],
        ] {
            let n = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
            let p = [p[0] / n, p[1] / n, p[2] / n];
            let (x, y) = mollweide(p);
            assert!(
                x * x / 8.0 + y * y / 2.0 <= 1.0 + 1e-9,
                "{p:?} maps outside the map"
            );
            let q = mollweide_inverse(x, y).unwrap();
            for k in 0..3 {
                assert!((p[k] - q[k]).abs() < 1e-8, "{p:?} vs {q:?}");
            }
        }
        assert!(mollweide_inverse(2.9, 0.0).is_none());
    }
}
