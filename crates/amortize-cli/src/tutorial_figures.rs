//! The tutorial's illustrations that are functions rather than experiments: `amortize figure`.

use std::path::{Path, PathBuf};

use amortize::train::{smoothed_1d, write_atomic};
use anyhow::{Context, Result};

use crate::plots;

/// The reproducible figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Figure 5: f(y) = −y³ − 10y and the iMAML-penalised f(y) + λ/2 (y − ŷ⁰)² (eq. 14) for
    /// λ ∈ {0, 4, 8, 12}, ŷ⁰ = 0.
    ImamlPenalty,
    /// Figure 7: L(y) = cos y + 0.2|y − π/2| and its Gaussian smoothing (eq. 15) for
    /// σ ∈ {1, 1.5, 2.5}.
    Smoothing,
}

/// Named curves of (y, value) points.
type Series = Vec<(String, Vec<(f64, f64)>)>;

/// Writes the figure's PNG, SVG and CSV into `dir`; returns their paths.
pub fn write(which: Which, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let grid: Vec<f64> = (0..=400).map(|i| -4.0 + 8.0 * i as f64 / 400.0).collect();
    let (name, title, series): (&str, &str, Series) = match which {
        Which::ImamlPenalty => {
            let f = |y: f64| -y.powi(3) - 10.0 * y;
            let series = [0.0, 4.0, 8.0, 12.0]
                .iter()
                .map(|&lambda| {
                    let label = if lambda == 0.0 {
                        "f(y) = -y^3 - 10y".to_string()
                    } else {
                        format!("f(y) + {lambda}/2 y^2")
                    };
                    let pts = grid
                        .iter()
                        .map(|&y| (y, f(y) + 0.5 * lambda * y * y))
                        .collect();
                    (label, pts)
                })
                .collect();
            (
                "imaml-penalty",
                "Eq. (14): a proximal penalty around the initial iterate (Figure 5)",
                series,
            )
        }
        Which::Smoothing => {
            let grid: Vec<f64> = (0..=400).map(|i| -10.0 + 20.0 * i as f64 / 400.0).collect();
            let loss = |y: f64| y.cos() + 0.2 * (y - std::f64::consts::FRAC_PI_2).abs();
            let mut series = vec![(
                "L(y) = cos y + 0.2|y - pi/2|".to_string(),
                grid.iter().map(|&y| (y, loss(y))).collect(),
            )];
            for sigma in [1.0, 1.5, 2.5] {
                series.push((
                    format!("smoothed, sigma = {sigma}"),
                    grid.iter()
                        .map(|&y| (y, smoothed_1d(loss, y, sigma, 2001)))
                        .collect(),
                ));
            }
            (
                "smoothing",
                "Eq. (15): Gaussian smoothing of a loss (Figure 7)",
                series,
            )
        }
    };
    let mut csv = String::from("y");
    for (label, _) in &series {
        csv.push_str(&format!(",\"{label}\""));
    }
    csv.push('\n');
    for i in 0..series[0].1.len() {
        csv.push_str(&series[0].1[i].0.to_string());
        for (_, pts) in &series {
            csv.push_str(&format!(",{}", pts[i].1));
        }
        csv.push('\n');
    }
    let csv_path = dir.join(format!("{name}.csv"));
    write_atomic(&csv_path, csv.as_bytes())?;
    let mut out = plots::curves(&dir.join(name), title, ("y", "value"), &series, false)?;
    out.push(csv_path);
    Ok(out)
}
