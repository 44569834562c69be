//! SVG charts of runs (plotters, SVG backend only): the latency distribution
//! (percentile on a log scale) and TTFT over time.

use plotters::prelude::*;

use crate::loadgen::recorder::{QuantilePoint, RunSummary};

/// Drawing a chart failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw chart: {0}")]
pub struct ChartError(String);

fn err<E: std::fmt::Display>(e: E) -> ChartError {
    ChartError(e.to_string())
}

/// x coordinate of quantile `q`: `log10(1 / (1 - q))` (0 = p0, 1 = p90,
/// 2 = p99, 3 = p99.9 ...).
pub fn quantile_x(q: f64) -> f64 {
    let tail = (1.0 - q).max(1e-6);
    -tail.log10()
}

fn x_label(x: &f64) -> String {
    match x.round() as i64 {
        0 => "p0".to_owned(),
        1 => "p90".to_owned(),
        2 => "p99".to_owned(),
        3 => "p99.9".to_owned(),
        4 => "p99.99".to_owned(),
        n => format!("1e-{n}"),
    }
}

fn max_of(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0_f64, f64::max)
}

/// Series label of a run: its target, prefixed by the scenario when the
/// chart mixes scenarios.
fn label(run: &RunSummary, mixed: bool) -> String {
    if mixed {
        format!("{} {}", run.scenario, run.target)
    } else {
        run.target.clone()
    }
}

fn dist_points(d: &[QuantilePoint]) -> Vec<(f64, f64)> {
    d.iter().map(|p| (quantile_x(p.q), p.ms)).collect()
}

/// Renders `runs` into one SVG: top, the request latency distribution of
/// each run; bottom, TTFT p50/p99 per second (request latency when no run
/// streamed).
pub fn render_svg(title: &str, runs: &[&RunSummary]) -> Result<String, ChartError> {
    let mixed = runs.windows(2).any(|w| w[0].scenario != w[1].scenario);
    let streams = runs.iter().any(|r| r.ttft.count > 0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 820)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let (top, bottom) = root.split_vertically(390);

        // Latency distribution.
        let values = || {
            runs.iter()
                .flat_map(|r| r.latency_distribution.iter().map(|p| p.ms))
                .filter(|v| *v > 0.0)
        };
        let y_max = max_of(values()).max(0.01);
        let y_min = values().fold(y_max, f64::min);
        let mut chart = ChartBuilder::on(&top)
            .caption(
                "request latency distribution (ms, log scale)",
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..4f64, ((y_min * 0.8)..(y_max * 1.25)).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&x_label)
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        for (i, run) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    dist_points(&run.latency_distribution)
                        .into_iter()
                        .filter(|p| p.1 > 0.0),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(label(run, mixed))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;

        // Over time.
        let pick = |r: &RunSummary| -> Vec<(f64, f64, f64)> {
            r.timeline
                .iter()
                .map(|t| {
                    if streams {
                        (t.t_secs, t.ttft_p50_ms, t.ttft_p99_ms)
                    } else {
                        (t.t_secs, t.latency_p50_ms, t.latency_p99_ms)
                    }
                })
                .collect()
        };
        // With streams, only the runs that streamed have a TTFT line.
        let timed: Vec<&RunSummary> = runs
            .iter()
            .copied()
            .filter(|r| !streams || r.ttft.count > 0)
            .collect();
        let series: Vec<Vec<(f64, f64, f64)>> = timed.iter().map(|r| pick(r)).collect();
        let t_max = max_of(series.iter().flatten().map(|p| p.0 + 1.0));
        let v_max = max_of(series.iter().flatten().map(|p| p.2));
        let what = if streams { "TTFT" } else { "request latency" };
        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                format!("{what} over time, p50 (solid) and p99 (thin), ms"),
                ("sans-serif", 15),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max.max(1.0), 0f64..(v_max * 1.1).max(0.01))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        for (i, (run, points)) in timed.iter().zip(&series).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{} p50", label(run, mixed)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, p.2)),
                    color.mix(0.6).stroke_width(1),
                ))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::loadgen::recorder::{chart_quantiles, TimelinePoint};

    #[test]
    fn quantile_axis() {
        assert_eq!(quantile_x(0.0), 0.0);
        assert!((quantile_x(0.9) - 1.0).abs() < 1e-9);
        assert!((quantile_x(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(x_label(&2.0), "p99");
    }

    #[test]
    fn renders_svg() {
        let run = |target: &str, scale: f64| RunSummary {
            scenario: "s".into(),
            target: target.into(),
            latency_distribution: chart_quantiles()
                .into_iter()
                .map(|q| QuantilePoint {
                    q,
                    ms: scale * (1.0 + quantile_x(q)),
                })
                .collect(),
            timeline: (0..5)
                .map(|t| TimelinePoint {
                    t_secs: f64::from(t),
                    ttft_p50_ms: scale,
                    ttft_p99_ms: scale * 2.0,
                    ..TimelinePoint::default()
                })
                .collect(),
            ..RunSummary::default()
        };
        let (a, b) = (run("direct", 1.0), run("proxy", 1.2));
        let svg = render_svg("test chart", &[&a, &b]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("proxy") && svg.contains("test chart"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // An empty run still renders.
        let empty = RunSummary::default();
        assert!(render_svg("empty", &[&empty]).is_ok());
    }
}
