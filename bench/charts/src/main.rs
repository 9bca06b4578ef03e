//! Draws the SVG charts of `BENCHMARKS.md` from the figures that
//! `scripts/bench.py` records in `target/bench/results.json`:
//!
//! - `throughput-hello.svg`, `throughput-realistic.svg`: requests/s of
//!   hello world and of `bench/handlers/realistic.js` on isopod, `deno
//!   serve`, workerd (and bare hyper, for hello world), the median of the
//!   interleaved rounds with their range;
//! - `first-request-cdf.svg`: the latency CDF of first requests of
//!   never-seen apps, small and real, with a spare ready and without;
//! - `rss.svg`: the process's RSS against the number of idle warm apps,
//!   small and real.
//!
//! Usage: `isopod-bench-charts [RESULTS_JSON] [OUT_DIR]` (by default
//! `target/bench/results.json` and `docs/bench`). A chart whose figures are
//! missing from the results is not drawn: the error names the missing key,
//! the other charts are still drawn, and the exit status is 1.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// The series' colours, in order: isopod first.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x8c, 0x56, 0x4b),
];
const SIZE: (u32, u32) = (760, 440);
/// The width of a legend drawn beside a chart.
const LEGEND_WIDTH: u32 = 240;
const FONT: &str = "sans-serif";

/// A chart's file name and the function that draws it.
type Chart = (&'static str, fn(&Value, &Path) -> Result<()>);

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let input = args
        .next()
        .unwrap_or_else(|| "target/bench/results.json".into());
    let out = PathBuf::from(args.next().unwrap_or_else(|| "docs/bench".into()));
    let text = std::fs::read_to_string(&input).with_context(|| format!("reading {input}"))?;
    let results: Value = serde_json::from_str(&text).with_context(|| format!("parsing {input}"))?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let charts: [Chart; 4] = [
        ("throughput-hello.svg", |r, p| {
            throughput(
                r,
                "throughput_hello",
                "hello world, requests/s on one core",
                p,
            )
        }),
        ("throughput-realistic.svg", |r, p| {
            throughput(
                r,
                "throughput_realistic",
                "realistic handler, requests/s on one core",
                p,
            )
        }),
        ("first-request-cdf.svg", first_request_cdf),
        ("rss.svg", rss_against_apps),
    ];
    let mut failed = 0;
    for (name, draw) in charts {
        let path = out.join(name);
        match draw(&results, &path) {
            Ok(()) => println!("wrote {}", path.display()),
            Err(error) => {
                eprintln!("{name} not drawn, from {input}: {error:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} chart(s) not drawn");
        std::process::exit(1);
    }
    Ok(())
}

/// The value at `path` (keys of nested objects), or an error naming the
/// first missing key with the keys before it.
fn at<'a>(value: &'a Value, path: &[&str]) -> Result<&'a Value> {
    let mut here = value;
    for (depth, key) in path.iter().enumerate() {
        here = here
            .get(key)
            .ok_or_else(|| anyhow!("no key `{}`", path[..=depth].join(".")))?;
    }
    Ok(here)
}

/// Each element of `items` (found at `path`) made into a `T`, an error
/// saying which element did not fit.
fn each<T>(items: &[Value], path: &str, make: impl Fn(&Value) -> Result<T>) -> Result<Vec<T>> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| make(item).with_context(|| format!("in `{path}[{i}]`")))
        .collect()
}

fn array<'a>(value: &'a Value, path: &[&str]) -> Result<&'a [Value]> {
    at(value, path)?
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| anyhow!("`{}` is not an array", path.join(".")))
}

fn number(value: &Value, key: &str) -> Result<f64> {
    at(value, &[key])?
        .as_f64()
        .ok_or_else(|| anyhow!("`{key}` is not a number"))
}

fn string<'a>(value: &'a Value, key: &str) -> Result<&'a str> {
    at(value, &[key])?
        .as_str()
        .ok_or_else(|| anyhow!("`{key}` is not a string"))
}

fn numbers(value: &Value, key: &str) -> Result<Vec<f64>> {
    at(value, &[key])?
        .as_array()
        .ok_or_else(|| anyhow!("`{key}` is not an array"))?
        .iter()
        .map(|n| {
            n.as_f64()
                .ok_or_else(|| anyhow!("`{key}` holds something other than numbers"))
        })
        .collect()
}

/// Bars of the median requests/s of each runtime in section `key`'s
/// `summary`, with a whisker from the slowest round to the fastest.
fn throughput(results: &Value, key: &str, title: &str, path: &Path) -> Result<()> {
    let summary = array(results, &["sections", key, "summary"])?;
    let bars = each(summary, &format!("sections.{key}.summary"), |row| {
        Ok((
            string(row, "runtime")?.to_owned(),
            number(row, "median")?,
            number(row, "min")?,
            number(row, "max")?,
        ))
    })?;
    if bars.is_empty() {
        bail!("sections.{key}.summary is empty");
    }
    let top = bars.iter().map(|bar| bar.3).fold(1.0, f64::max) * 1.15;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        // A range of integers has both ends as values: one segment per bar.
        .build_cartesian_2d((0..bars.len() - 1).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("requests/s (median of rounds, bar: min to max)")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map_or_else(String::new, |bar| bar.0.clone()),
            _ => String::new(),
        })
        .label_style((FONT, 14))
        .light_line_style(TRANSPARENT)
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, bar)| {
        let colour = COLOURS[i % COLOURS.len()];
        let mut rect = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), bar.1),
            ],
            colour.mix(0.8).filled(),
        );
        rect.set_margin(0, 0, 24, 24);
        rect
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, bar)| {
        PathElement::new(
            vec![
                (SegmentValue::CenterOf(i), bar.2),
                (SegmentValue::CenterOf(i), bar.3),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, bar)| {
        Text::new(
            thousands(bar.1),
            (SegmentValue::CenterOf(i), bar.3 + top * 0.02),
            TextStyle::from((FONT, 14)).pos(Pos::new(HPos::Center, VPos::Bottom)),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// The share of first requests answered within x milliseconds, one line per
/// case of section `first_request` (log scale: small and real apps differ
/// tenfold), with the targets as vertical lines.
fn first_request_cdf(results: &Value, path: &Path) -> Result<()> {
    let cases = array(results, &["sections", "first_request", "cases"])?;
    let lines = each(cases, "sections.first_request.cases", |case| {
        let mut samples = numbers(case, "samples_ms")?;
        samples.retain(|ms| ms.is_finite() && *ms > 0.0);
        samples.sort_by(f64::total_cmp);
        Ok((string(case, "label")?.to_owned(), samples))
    })?;
    let all = lines
        .iter()
        .flat_map(|(_, samples)| samples.iter().copied());
    let (low, high) = all.fold((f64::INFINITY, 0.0f64), |(lo, hi), ms| {
        (lo.min(ms), hi.max(ms))
    });
    if !low.is_finite() {
        bail!("sections.first_request.cases holds no samples");
    }
    // Keep the targets (1 ms and 5 ms) in view.
    let (low, high) = (low.min(1.0) * 0.8, high.max(5.0) * 1.25);

    // The legend goes beside the plot: the lines fill every corner of it.
    let root = SVGBackend::new(path, (SIZE.0 + LEGEND_WIDTH, SIZE.1)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, side) = root.split_horizontally(SIZE.0);
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "first request of a never-seen app, client's latency CDF",
            (FONT, 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((low..high).log_scale(), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("request sent to response received (ms, log scale)")
        .y_desc("% of first requests")
        .x_labels(30)
        .x_label_formatter(&|ms| milliseconds(*ms))
        .y_label_formatter(&|share| format!("{share:.0}"))
        .label_style((FONT, 14))
        .light_line_style(TRANSPARENT)
        .draw()?;
    let mut legend = Vec::new();
    for (i, (label, samples)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()].stroke_width(2);
        let count = samples.len() as f64;
        let points = samples
            .iter()
            .enumerate()
            .map(|(rank, ms)| (*ms, 100.0 * (rank + 1) as f64 / count));
        chart.draw_series(LineSeries::new(points, colour))?;
        legend.push((label.clone(), colour));
    }
    for (ms, label) in [
        (1.0, "target, small: p99 < 1 ms"),
        (5.0, "target, real: p99 < 5 ms"),
    ] {
        let dashed = DashedLineSeries::new(vec![(ms, 0.0), (ms, 100.0)], 4, 4, BLACK.into());
        chart.draw_series(dashed)?;
        legend.push((format!("{label} (dashed)"), BLACK.into()));
    }
    for (i, (label, style)) in legend.into_iter().enumerate() {
        let y = 60 + 24 * i32::try_from(i)?;
        side.draw(&PathElement::new(vec![(0, y), (22, y)], style))?;
        let text = TextStyle::from((FONT, 13)).pos(Pos::new(HPos::Left, VPos::Center));
        side.draw(&Text::new(label, (30, y), text))?;
    }
    root.present()?;
    Ok(())
}

/// A whole number with commas between its thousands: 68,339.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    if value < -0.5 {
        out.insert(0, '-');
    }
    out
}

/// A millisecond axis label for 1, 2 and 5 times a power of ten (the log
/// axis marks every digit), with the decimals its size needs.
fn milliseconds(ms: f64) -> String {
    let digit = (ms / 10f64.powf(ms.log10().floor())).round();
    if ![1.0, 2.0, 5.0, 10.0].contains(&digit) {
        String::new()
    } else if ms >= 0.95 {
        format!("{ms:.0}")
    } else if ms >= 0.095 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// The process's RSS at each count of idle warm apps, one line per kind of
/// app in section `memory`, with the target per instance drawn as a dashed
/// line from the process's RSS before the first app.
fn rss_against_apps(results: &Value, path: &Path) -> Result<()> {
    let kinds = array(results, &["sections", "memory", "kinds"])?;
    let lines = each(kinds, "sections.memory.kinds", |kind| {
        let points = each(array(kind, &["points"])?, "points", |point| {
            Ok((number(point, "apps")?, number(point, "rss_mib")?))
        })?;
        let label = string(kind, "label")?.to_owned();
        Ok((
            label,
            number(kind, "base_mib")?,
            number(kind, "target_mib")?,
            points,
        ))
    })?;
    let most_apps = lines
        .iter()
        .flat_map(|line| line.3.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let most_rss = lines
        .iter()
        .flat_map(|line| line.3.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    if most_apps <= 0.0 {
        bail!("sections.memory.kinds holds no points");
    }
    let targets_top = lines
        .iter()
        .map(|line| line.1 + line.2 * most_apps)
        .fold(0.0, f64::max);
    let top = most_rss.max(targets_top) * 1.1;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("isopod serve's RSS against idle warm apps", (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..most_apps * 1.05, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("apps deployed, each asked once, then idle past the 2 s shrink")
        .y_desc("process RSS (MiB)")
        .x_label_formatter(&|apps| format!("{apps:.0}"))
        .y_label_formatter(&|mib| format!("{mib:.0}"))
        .label_style((FONT, 14))
        .light_line_style(TRANSPARENT)
        .draw()?;
    for (i, (label, base, target, points)) in lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|point| Circle::new(*point, 3, colour.filled())),
        )?;
        let goal = vec![(0.0, *base), (most_apps, base + target * most_apps)];
        chart
            .draw_series(DashedLineSeries::new(goal, 6, 4, colour.mix(0.6).into()))?
            .label(format!("target for {label}: {target} MiB per instance"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.mix(0.6)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()?;
    root.present()?;
    Ok(())
}
