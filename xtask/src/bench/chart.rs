//! The chart README shows: per job, nbdd's throughput relative to each
//! reference server (one panel per table), drawn as SVG with plotters.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One panel: bars per job, one series per (nbdd variant, reference).
pub struct Panel {
    pub title: String,
    pub jobs: Vec<&'static str>,
    /// (legend, ratio per job; `None` where a run failed)
    pub series: Vec<(String, Vec<Option<f64>>)>,
}

const WIDTH: u32 = 960;
const PANEL_HEIGHT: u32 = 320;

/// The SVG document.
///
/// # Errors
/// If plotters fails to draw (it reports backend errors only).
pub fn render(panels: &[Panel]) -> Result<String, String> {
    let mut out = String::new();
    {
        let height = PANEL_HEIGHT * u32::try_from(panels.len().max(1)).unwrap_or(1);
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (area, p) in areas.iter().zip(panels) {
            panel(area, p).map_err(|e| format!("chart {}: {e}", p.title))?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Res<'a> = Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>;

fn panel<'a>(area: &Area<'a>, p: &Panel) -> Res<'a> {
    let n = p.jobs.len();
    let k = p.series.len().max(1);
    let top = p
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied())
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(44)
        // Headroom above the tallest bar for its label and the legend.
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top * 1.4)?;
    let jobs = p.jobs.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(n)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                jobs.get(i as usize)
                    .map_or_else(String::new, |s| (*s).to_owned())
            } else {
                String::new()
            }
        })
        .y_desc("nbdd / reference")
        .label_style(("sans-serif", 12))
        .draw()?;
    let width = 0.8 / k as f64;
    for (si, (name, vals)) in p.series.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let x0 = |j: usize| j as f64 - 0.4 + si as f64 * width;
        let bars = vals.iter().enumerate().filter_map(|(j, v)| {
            v.map(|v| Rectangle::new([(x0(j), 0.0), (x0(j) + width * 0.92, v)], color.filled()))
        });
        chart
            .draw_series(bars)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let style = TextStyle::from(("sans-serif", 11)).pos(Pos::new(HPos::Center, VPos::Bottom));
        let labels = vals.iter().enumerate().filter_map(|(j, v)| {
            v.map(|v| Text::new(format!("{v:.2}"), (x0(j) + width * 0.46, v), style.clone()))
        });
        chart.draw_series(labels)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)],
            BLACK.stroke_width(1),
        )))?
        .label("parity (1.0)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_one_bar_per_value_and_the_labels() {
        let p = Panel {
            title: "memory".into(),
            jobs: vec!["4k rr QD1", "1M read"],
            series: vec![
                ("nbdd / nbdkit".into(), vec![Some(0.72), Some(1.31)]),
                ("nbdd-t2 / nbdkit".into(), vec![None, Some(2.5)]),
            ],
        };
        let svg = render(&[p]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "memory",
            "4k rr QD1",
            "1M read",
            "0.72",
            "1.31",
            "2.50",
            "nbdd-t2 / nbdkit",
            "parity",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // The failed run draws nothing: exactly one "2.50" and no "0.00" bar label.
        assert!(!svg.contains(">0.00<"));
    }
}
