//! The comparison as an SVG chart: publish and end-to-end throughput, and p99 latency,
//! one bar per broker on a logarithmic axis (the embedded broker is orders of magnitude
//! faster than a networked one).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Row;

type Failure = Box<dyn std::error::Error>;

/// Writes the chart of the rows that ran to `path`.
pub fn write(path: &Path, rows: &[Row], messages: usize) -> Result<(), Failure> {
    let measured: Vec<(&str, &crate::workload::Measured)> = rows
        .iter()
        .filter_map(|r| r.measured().map(|m| (r.broker.as_str(), m)))
        .collect();
    if measured.is_empty() {
        return Err("no broker ran, nothing to chart".into());
    }
    let names: Vec<String> = measured.iter().map(|(n, _)| n.to_string()).collect();
    let panels: [(&str, Vec<f64>, RGBColor); 3] = [
        (
            "publish msg/s",
            measured.iter().map(|(_, m)| m.publish_per_sec).collect(),
            RGBColor(0x1f, 0x77, 0xb4),
        ),
        (
            "end-to-end msg/s",
            measured.iter().map(|(_, m)| m.end_to_end_per_sec).collect(),
            RGBColor(0x2c, 0xa0, 0x2c),
        ),
        (
            "p99 latency, ms",
            measured.iter().map(|(_, m)| m.p99_ms).collect(),
            RGBColor(0xd6, 0x27, 0x28),
        ),
    ];

    let root = SVGBackend::new(path, (1280, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let not_run: Vec<&str> = rows
        .iter()
        .filter(|r| r.measured().is_none())
        .map(|r| r.broker.as_str())
        .collect();
    let mut title = format!("anybroker compare: {messages} AlarmToLog messages per broker");
    if !not_run.is_empty() {
        title.push_str(&format!(" (not run: {})", not_run.join(", ")));
    }
    let root = root.titled(&title, ("sans-serif", 22))?;
    for (area, (title, values, color)) in root.split_evenly((1, 3)).iter().zip(panels) {
        draw_panel(area, title, &names, &values, color)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    names: &[String],
    values: &[f64],
    color: RGBColor,
) -> Result<(), Failure> {
    // A log axis cannot hold zero: a zero figure (nothing delivered) sits on the floor.
    let positive = values.iter().copied().filter(|v| *v > 0.0);
    let low = positive.clone().fold(f64::INFINITY, f64::min);
    let high = positive.fold(0.0, f64::max);
    let (floor, ceiling) = if high > 0.0 {
        (low / 4.0, high * 4.0)
    } else {
        (0.1, 10.0)
    };
    // An integer range includes its end, so 0..last has one segment per broker (a lone
    // broker gets an empty neighbour: a range must not be empty).
    let last = (names.len() as u32 - 1).max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0..last).into_segmented(), (floor..ceiling).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_max_light_lines(0)
        .y_labels(8)
        .x_labels(names.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| compact(*v))
        .draw()?;
    chart.draw_series(values.iter().enumerate().map(|(i, v)| {
        let i = i as u32;
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), floor),
                (SegmentValue::Exact(i + 1), v.max(floor)),
            ],
            color.filled(),
        );
        bar.set_margin(0, 0, 10, 10);
        bar
    }))?;
    chart.draw_series(values.iter().enumerate().map(|(i, v)| {
        Text::new(
            compact(*v),
            (SegmentValue::CenterOf(i as u32), v.max(floor) * 1.05),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    Ok(())
}

/// 1234567 -> "1.2M", 45000 -> "45k", 3.2 -> "3.2".
fn compact(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
