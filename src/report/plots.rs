//! PNG plots for the run report: reliability diagrams, score histograms and line charts.
//!
//! Every plot renders into an in-memory RGB buffer, its text drawn with ab_glyph from DejaVu
//! Sans compiled in (the `dejavu` crate), so the output does not depend on the fonts a machine
//! happens to have. Non-finite values, and finite ones beyond ±[`MAX_PLOTTED`], are skipped, a
//! zero-width range is widened, and every axis range is checked finite before plotters sees it
//! (values spanning ±1e308 made the width infinite, on which plotters' tick placement never
//! ends); a plot left with nothing to draw still comes out, saying so, so that a report is never
//! missing an image.
use ab_glyph::{point, Font, FontRef, Glyph, ScaleFont};
use anyhow::{Context, Result};
use image::ImageEncoder;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{self as pb, BackendColor, BackendCoord as Coord, DrawingErrorKind};
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

const WIDTH: u32 = 800;
const HEIGHT: u32 = 560;
/// The family plotters' text styles name; `Canvas` draws all text in DejaVu Sans regardless.
const FONT: &str = "sans-serif";
/// Tableau 10: distinct from one another and for most colour-blind readers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Opacity of filled areas, low enough that overlapping histograms show through each other.
const FILL_ALPHA: f64 = 0.3;
const NO_DATA: &str = "no finite values to plot";
/// Values of larger magnitude are not drawn, as non-finite ones are not: the width of any range
/// of drawn values, padded, then stays finite.
pub const MAX_PLOTTED: f64 = 1e300;

fn plottable(v: f64) -> bool {
    v.is_finite() && v.abs() <= MAX_PLOTTED
}

type Area<'a> = DrawingArea<Canvas<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, Canvas<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A reliability diagram draws the calibration module's bins.
pub use crate::records::eval::Bin as ReliabilityBin;

/// A named line of a line chart.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

/// Reliability diagram: per bin, the accuracy as a bar, its gap to the mean confidence and the
/// diagonal of perfect calibration; below, the number of predictions per bin. The title gets the ECE.
pub fn reliability_diagram(bins: &[ReliabilityBin], ece: f64, title: &str, path: &Path) -> Result<()> {
    let bins: Vec<&ReliabilityBin> =
        bins.iter().filter(|b| [b.lower, b.upper, b.confidence, b.accuracy].iter().all(|&v| plottable(v)) && b.upper > b.lower).collect();
    let (x0, x1) = bins.iter().fold((0.0f64, 1.0f64), |(lo, hi), b| (lo.min(b.lower), hi.max(b.upper)));
    let max_count = bins.iter().map(|b| b.count).max().unwrap_or(0).max(1) as f64;
    let title = if ece.is_finite() { format!("{title} (ECE {:.2} %)", 100.0 * ece) } else { title.to_string() };
    let legend = [
        ("accuracy", Mark::Fill(PALETTE[0], 0.8)),
        ("gap to mean confidence", Mark::Fill(PALETTE[3], FILL_ALPHA)),
        ("perfect calibration", Mark::Line(BLACK, false)),
    ];
    render(path, &title, &legend, |area| {
        let (top, bottom) = area.split_vertically(area.dim_in_pixel().1 * 2 / 3);
        let mut chart = axes(&top, x0..x1, 0.0..1.0, "", "accuracy")?;
        chart.draw_series(bins.iter().filter(|b| b.count > 0).flat_map(|b| {
            [
                Rectangle::new([(b.lower, 0.0), (b.upper, b.accuracy)], PALETTE[0].mix(0.8).filled()),
                Rectangle::new([(b.lower, b.accuracy), (b.upper, b.confidence)], PALETTE[3].mix(FILL_ALPHA).filled()),
                Rectangle::new([(b.lower, b.accuracy), (b.upper, b.confidence)], PALETTE[3].stroke_width(1)),
            ]
        }))?;
        chart.draw_series(LineSeries::new([(x0, x0), (x1, x1)], BLACK.mix(0.6).stroke_width(2)))?;
        if bins.iter().all(|b| b.count == 0) {
            note(&chart)?;
        }
        let mut chart = axes(&bottom, x0..x1, 0.0..max_count * 1.1, "confidence", "predictions")?;
        chart.draw_series(
            bins.iter().filter(|b| b.count > 0).map(|b| Rectangle::new([(b.lower, 0.0), (b.upper, b.count as f64)], PALETTE[7].mix(0.7).filled())),
        )?;
        Ok(())
    })
}

/// Overlaid histograms of several sets (e.g. in-distribution vs OOD scores) over the same bins,
/// each normalised to a density so that sets of different sizes compare.
pub fn histograms(sets: &[(&str, &[f64])], x_label: &str, title: &str, path: &Path) -> Result<()> {
    let finite: Vec<Vec<f64>> = sets.iter().map(|(_, v)| v.iter().copied().filter(|&v| plottable(v)).collect()).collect();
    let range = span(finite.iter().flatten().copied());
    let (lo, hi) = range.unwrap_or((0.0, 1.0));
    // √n bins for the largest set: fine enough to show shape, coarse enough not to be noise.
    let largest = finite.iter().map(Vec::len).max().unwrap_or(0);
    let n_bins = ((largest as f64).sqrt().ceil() as usize).clamp(10, 60);
    let width = (hi - lo) / n_bins as f64;
    let densities: Vec<Vec<f64>> = finite
        .iter()
        .map(|values| {
            let mut counts = vec![0usize; n_bins];
            for v in values {
                counts[(((v - lo) / width) as usize).min(n_bins - 1)] += 1;
            }
            counts.iter().map(|&c| c as f64 / (values.len().max(1) as f64 * width)).collect()
        })
        .collect();
    let top = densities.iter().flatten().fold(0.0f64, |m, &d| m.max(d));
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let edge = |k: usize| lo + k as f64 * width;
    let legend: Vec<(String, Mark)> = sets
        .iter()
        .zip(&finite)
        .enumerate()
        .map(|(i, ((name, _), v))| (format!("{name} (n = {})", v.len()), Mark::Fill(color(i), FILL_ALPHA)))
        .collect();
    render(path, title, &legend, |area| {
        let mut chart = axes(area, lo..hi, 0.0..top, x_label, "density")?;
        for (i, dens) in densities.iter().enumerate() {
            let c = color(i);
            chart.draw_series(
                dens.iter()
                    .enumerate()
                    .filter(|(_, &d)| d > 0.0)
                    .map(|(k, &d)| Rectangle::new([(edge(k), 0.0), (edge(k + 1), d)], c.mix(FILL_ALPHA).filled())),
            )?;
            if finite[i].is_empty() {
                continue;
            }
            // An opaque outline keeps each set's shape readable where the fills overlap.
            let outline = dens.iter().enumerate().flat_map(|(k, &d)| [(edge(k), d), (edge(k + 1), d)]);
            let outline = std::iter::once((lo, 0.0)).chain(outline).chain(std::iter::once((hi, 0.0)));
            chart.draw_series(LineSeries::new(outline, c.stroke_width(2)))?;
        }
        if range.is_none() {
            note(&chart)?;
        }
        Ok(())
    })
}

/// Line chart of named series (e.g. robust accuracy against ε, or a training curve), with a
/// marker on every point; `y_range` is the y extent shown (e.g. (0, 1) for an accuracy) unless
/// the data go beyond it.
pub fn line_chart(series: &[Series], x_label: &str, y_label: &str, title: &str, y_range: Option<(f64, f64)>, path: &Path) -> Result<()> {
    let finite: Vec<Vec<(f64, f64)>> =
        series.iter().map(|s| s.points.iter().copied().filter(|&(x, y)| plottable(x) && plottable(y)).collect()).collect();
    let xs = span(finite.iter().flatten().map(|p| p.0));
    let (x0, x1) = xs.map(|r| pad(r, 0.03)).unwrap_or((0.0, 1.0));
    let (y0, y1) = y_axis(y_range, span(finite.iter().flatten().map(|p| p.1)));
    let legend: Vec<(String, Mark)> = series.iter().enumerate().map(|(i, s)| (s.name.to_string(), Mark::Line(color(i), true))).collect();
    render(path, title, &legend, |area| {
        let mut chart = axes(area, x0..x1, y0..y1, x_label, y_label)?;
        for (i, points) in finite.iter().enumerate() {
            let c = color(i);
            chart.draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?;
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        if xs.is_none() {
            note(&chart)?;
        }
        Ok(())
    })
}

/// How a legend entry looks: a filled box, or a line with or without a point marker.
#[derive(Clone, Copy)]
enum Mark {
    Fill(RGBColor, f64),
    Line(RGBColor, bool),
}

fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// Draws a plot: white background, title, a legend in rows under the title (outside the axes,
/// so it never hides data), then `draw` on what is left; encodes the PNG and writes it atomically.
fn render<N>(path: &Path, title: &str, legend: &[(N, Mark)], draw: impl FnOnce(&Area) -> Result<()>) -> Result<()>
where
    N: AsRef<str>,
{
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = Canvas(BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT))).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, (FONT, 24))?;
        let style = TextStyle::from((FONT, 16)).pos(Pos::new(HPos::Left, VPos::Center));
        // Entries flow left to right and wrap; each row is centred.
        let (swatch, gap, row_h) = (28, 24, 26);
        let mut rows: Vec<Vec<(String, Mark, i32)>> = vec![];
        let mut row_w = 0;
        for (name, mark) in legend {
            let name = shorten(name.as_ref());
            let w = swatch + 6 + root.estimate_text_size(&name, &style)?.0 as i32;
            if rows.is_empty() || row_w + gap + w > WIDTH as i32 - 40 {
                rows.push(vec![]);
                row_w = -gap;
            }
            row_w += gap + w;
            rows.last_mut().unwrap().push((name, *mark, w));
        }
        for (r, row) in rows.iter().enumerate() {
            let y = row_h / 2 + row_h * r as i32;
            let mut x = (WIDTH as i32 - (row.iter().map(|e| e.2 + gap).sum::<i32>() - gap)) / 2;
            for (name, mark, w) in row {
                match *mark {
                    Mark::Fill(c, alpha) => {
                        root.draw(&Rectangle::new([(x, y - 8), (x + swatch, y + 8)], c.mix(alpha).filled()))?;
                        root.draw(&Rectangle::new([(x, y - 8), (x + swatch, y + 8)], c.stroke_width(2)))?;
                    }
                    Mark::Line(c, marker) => {
                        root.draw(&PathElement::new([(x, y), (x + swatch, y)], c.stroke_width(2)))?;
                        if marker {
                            root.draw(&Circle::new((x + swatch / 2, y), 4, c.filled()))?;
                        }
                    }
                }
                root.draw(&Text::new(name.as_str(), (x + swatch + 6, y), style.clone()))?;
                x += w + gap;
            }
        }
        let (_, plot) = root.split_vertically(row_h * rows.len() as i32 + 4);
        draw(&plot)?;
        plot.present()?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .context("cannot encode the plot as PNG")?;
    crate::store::atomic::write_atomic(path, &png)
}

/// Axes with labelled ticks and a light grid over the given ranges.
fn axes<'a, 'b>(area: &'a Area<'b>, x: Range<f64>, y: Range<f64>, x_desc: &str, y_desc: &str) -> Result<Chart<'a, 'b>> {
    let (x, y) = (drawable(x), drawable(y));
    let mut chart = ChartBuilder::on(area)
        .margin_top(8)
        .margin_left(8)
        .margin_right(24)
        .x_label_area_size(if x_desc.is_empty() { 28 } else { 52 })
        .y_label_area_size(76)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 15))
        // About one y label per 40 px, so the short count panel is not crowded.
        .y_labels((area.dim_in_pixel().1 as usize / 40).clamp(3, 10))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()?;
    Ok(chart)
}

/// A tick label as short as its value allows: "0.5" and "9000" rather than "0.50" and "9000.0".
fn tick(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Writes the no-data note in the middle of a chart's plotting area, on white so that
/// reference lines do not run through it.
fn note(chart: &Chart) -> Result<()> {
    let area = chart.plotting_area().strip_coord_spec();
    let (w, h) = area.dim_in_pixel();
    let (cx, cy) = (w as i32 / 2, h as i32 / 2);
    let grey = BLACK.mix(0.6);
    let style = TextStyle::from((FONT, 20)).color(&grey).pos(Pos::new(HPos::Center, VPos::Center));
    let (tw, th) = area.estimate_text_size(NO_DATA, &style)?;
    let (tw, th) = (tw as i32 / 2 + 12, th as i32 / 2 + 8);
    area.draw(&Rectangle::new([(cx - tw, cy - th), (cx + tw, cy + th)], WHITE.filled()))?;
    area.draw(&Text::new(NO_DATA, (cx, cy), style))?;
    Ok(())
}

/// Legend names past this many characters are cut so the legend cannot eat the plot.
fn shorten(name: &str) -> String {
    const MAX: usize = 40;
    if name.chars().count() <= MAX {
        name.to_string()
    } else {
        name.chars().take(MAX - 1).chain(['…']).collect()
    }
}

/// [min, max] of the plottable values, None if there are none. A zero-width range (one point,
/// or all values equal, or a width below 1e-100 on which bins of histograms would divide by
/// nothing) is widened around its value, since an axis needs a width.
fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.filter(|&v| plottable(v)).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    if hi - lo > 1e-9 * lo.abs().max(hi.abs()) && hi - lo > 1e-100 {
        return Some((lo, hi));
    }
    let mid = 0.5 * (lo + hi);
    let half = if mid == 0.0 { 1.0 } else { (0.1 * mid.abs()).max(1e-100) };
    Some((mid - half, mid + half))
}

/// `r` if plotters can draw an axis over it (finite ends and width, end after start), else [0, 1].
fn drawable(r: Range<f64>) -> Range<f64> {
    let ok = r.start.is_finite() && r.end.is_finite() && (r.end - r.start).is_finite() && r.end > r.start;
    if ok {
        r
    } else {
        0.0..1.0
    }
}

/// The y axis of a line chart: the given range if it is one, widened to the data if they go
/// beyond it (plotters would draw such points on the edge, misstating them), else the data's.
fn y_axis(given: Option<(f64, f64)>, data: Option<(f64, f64)>) -> (f64, f64) {
    let given = given.filter(|&(a, b)| plottable(a) && plottable(b) && a < b);
    match (given, data) {
        (Some((a, b)), Some((lo, hi))) if lo < a || hi > b => pad((lo.min(a), hi.max(b)), 0.05),
        (Some(r), _) => r,
        (None, data) => data.map(|r| pad(r, 0.05)).unwrap_or((0.0, 1.0)),
    }
}

/// Widens a range by `frac` of its width on each side, so markers at the ends are not cut.
fn pad((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    let d = (hi - lo) * frac;
    (lo - d, hi + d)
}

/// The bitmap backend with text drawn here rather than by plotters: plotters' own ab_glyph text
/// (0.3.7) ignores each glyph's side bearing, which mis-spaces letters ("SAD A- JEM"), and puts
/// rotated axis titles half outside the image. Everything else goes to the bitmap backend.
struct Canvas<'a>(BitMapBackend<'a>);

fn font() -> &'static FontRef<'static> {
    static DEJAVU: OnceLock<FontRef<'static>> = OnceLock::new();
    DEJAVU.get_or_init(|| FontRef::try_from_slice(dejavu::sans::regular()).expect("the bundled DejaVu Sans parses"))
}

/// The glyphs of `text` at `size` px on a baseline one ascent below y = 0, and the text's box.
fn layout(text: &str, size: f64) -> (Vec<Glyph>, (u32, u32)) {
    let font = font().as_scaled(size as f32);
    let (mut x, mut prev, mut glyphs) = (0.0f32, None, vec![]);
    for c in text.chars() {
        let id = font.glyph_id(c);
        x += prev.map_or(0.0, |p| font.kern(p, id));
        glyphs.push(id.with_scale_and_position(size as f32, point(x, font.ascent())));
        x += font.h_advance(id);
        prev = Some(id);
    }
    (glyphs, (x.ceil() as u32, (font.ascent() - font.descent()).ceil() as u32))
}

type BitMapError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;
type BackendResult<T = ()> = std::result::Result<T, DrawingErrorKind<BitMapError>>;

impl DrawingBackend for Canvas<'_> {
    type ErrorType = BitMapError;

    fn draw_text<S: pb::BackendTextStyle>(&mut self, text: &str, style: &S, pos: Coord) -> BackendResult {
        let (glyphs, (w, h)) = layout(text, style.size());
        let (w, h) = (w as i32, h as i32);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -w / 2,
            HPos::Right => -w,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -h / 2,
            VPos::Bottom => -h,
        };
        let (color, turn) = (style.color(), style.transform());
        for glyph in glyphs {
            let Some(outline) = font().outline_glyph(glyph) else { continue }; // a space
            let min = outline.px_bounds().min;
            let mut pixels = vec![];
            outline.draw(|x, y, coverage| pixels.push((min.x as i32 + x as i32, min.y as i32 + y as i32, coverage)));
            for (x, y, coverage) in pixels {
                let (x, y) = turn.transform(x + dx, y + dy);
                let c = BackendColor { alpha: color.alpha * coverage.min(1.0) as f64, rgb: color.rgb };
                self.0.draw_pixel((pos.0 + x, pos.1 + y), c)?;
            }
        }
        Ok(())
    }

    fn estimate_text_size<S: pb::BackendTextStyle>(&self, text: &str, style: &S) -> BackendResult<(u32, u32)> {
        Ok(layout(text, style.size()).1)
    }

    // The rest is the bitmap backend's own.
    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> BackendResult {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> BackendResult {
        self.0.present()
    }
    fn draw_pixel(&mut self, p: Coord, c: BackendColor) -> BackendResult {
        self.0.draw_pixel(p, c)
    }
    fn draw_line<S: pb::BackendStyle>(&mut self, a: Coord, b: Coord, s: &S) -> BackendResult {
        self.0.draw_line(a, b, s)
    }
    fn draw_rect<S: pb::BackendStyle>(&mut self, a: Coord, b: Coord, s: &S, fill: bool) -> BackendResult {
        self.0.draw_rect(a, b, s, fill)
    }
    fn draw_path<S: pb::BackendStyle, I: IntoIterator<Item = Coord>>(&mut self, path: I, s: &S) -> BackendResult {
        self.0.draw_path(path, s)
    }
    fn draw_circle<S: pb::BackendStyle>(&mut self, c: Coord, r: u32, s: &S, fill: bool) -> BackendResult {
        self.0.draw_circle(c, r, s, fill)
    }
    fn fill_polygon<S: pb::BackendStyle, I: IntoIterator<Item = Coord>>(&mut self, vert: I, s: &S) -> BackendResult {
        self.0.fill_polygon(vert, s)
    }
    fn blit_bitmap(&mut self, p: Coord, size: (u32, u32), src: &[u8]) -> BackendResult {
        self.0.blit_bitmap(p, size, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    use std::collections::HashSet;

    fn normal(mean: f64, std: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        Normal::new(mean, std).unwrap().sample_iter(&mut rng).take(n).collect()
    }

    /// Decodes the PNG, checks its size, and that more than a few colours were drawn.
    fn decode(path: &Path) -> image::RgbImage {
        let img = image::open(path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 20, "{}: only {} colours", path.display(), colours.len());
        img
    }

    /// Whether `c` appears left of `x_max`, i.e. in the axes rather than in the legend strip.
    fn drawn(img: &image::RgbImage, c: RGBColor, x_max: u32) -> bool {
        img.enumerate_pixels().any(|(x, _, p)| x < x_max && p.0 == [c.0, c.1, c.2])
    }

    fn bin(k: usize, count: usize, accuracy: f64) -> ReliabilityBin {
        let lower = k as f64 / 10.0;
        ReliabilityBin { lower, upper: lower + 0.1, count, confidence: lower + 0.05, accuracy }
    }

    #[test]
    fn reliability_diagram_draws_bars_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rel.png");
        let bins: Vec<_> = (0..10).map(|k| bin(k, 10 * k * k + 3, (k as f64 / 10.0 + 0.02).min(1.0))).collect();
        reliability_diagram(&bins, 0.031, "test set", &p).unwrap();
        let img = decode(&p);
        // The count panel's bars are the only grey of that shade.
        let grey = PALETTE[7].mix(0.7);
        assert!(img.pixels().any(|px| px.0.iter().zip([grey.0, grey.1, grey.2]).all(|(a, b)| a.abs_diff(b) <= 2)));
    }

    #[test]
    fn histograms_overlay_each_set_in_its_own_colour() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hist.png");
        let (a, b) = (normal(0.0, 1.0, 2000, 1), normal(2.5, 0.7, 500, 2));
        histograms(&[("CIFAR-10", &a), ("SVHN", &b)], "log p(x)", "scores", &p).unwrap();
        let img = decode(&p);
        assert!(drawn(&img, PALETTE[0], 560) && drawn(&img, PALETTE[1], 560));
        assert!(!drawn(&img, PALETTE[2], WIDTH));
    }

    #[test]
    fn line_chart_draws_each_series_in_its_own_colour() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("line.png");
        let eps = [0.0, 1.0, 2.0, 4.0, 8.0];
        let linf: Vec<_> = eps.iter().map(|&e| (e, 0.95 * (-e / 3.0f64).exp())).collect();
        let l2: Vec<_> = eps.iter().map(|&e| (e, 0.95 * (-e / 6.0f64).exp())).collect();
        let series = [Series { name: "L∞", points: &linf }, Series { name: "L2", points: &l2 }];
        line_chart(&series, "ε (/255)", "robust accuracy", "PGD-20", Some((0.0, 1.0)), &p).unwrap();
        let img = decode(&p);
        assert!(drawn(&img, PALETTE[0], 560) && drawn(&img, PALETTE[1], 560));
        assert!(!drawn(&img, PALETTE[2], WIDTH));
    }

    /// Empty, single, equal and non-finite inputs give a chart (with a note where nothing is
    /// left to draw), never a panic or an error.
    #[test]
    fn degenerate_inputs_still_give_a_chart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.png");
        let nan = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        let check = |r: Result<()>| {
            r.unwrap();
            image::open(&p).unwrap();
        };
        check(reliability_diagram(&[], f64::NAN, "none", &p));
        check(reliability_diagram(&[bin(3, 0, 0.0)], 0.0, "empty bins", &p));
        let nan_bin = ReliabilityBin { lower: f64::NAN, ..bin(9, 5, 1.0) };
        check(reliability_diagram(&[nan_bin, bin(9, 5, 1.0)], 0.05, "nan", &p));
        check(histograms(&[], "x", "no sets", &p));
        check(histograms(&[("a", &[]), ("b", &nan)], "x", "no values", &p));
        check(histograms(&[("a", &[3.0; 7]), ("b", &[3.0])], "x", "all equal", &p));
        check(histograms(&[("a", &[0.0, 1.0, f64::NAN, 2.0])], "x", "some nan", &p));
        fn one(points: &[(f64, f64)]) -> [Series<'_>; 1] {
            [Series { name: "a", points }]
        }
        check(line_chart(&[], "x", "y", "no series", None, &p));
        check(line_chart(&one(&[]), "x", "y", "empty", None, &p));
        check(line_chart(&one(&[(f64::NAN, 1.0), (2.0, f64::INFINITY)]), "x", "y", "nan", None, &p));
        check(line_chart(&one(&[(1.0, 0.5)]), "x", "y", "one point", None, &p));
        check(line_chart(&one(&[(0.0, 0.0), (1.0, 0.0)]), "x", "y", "flat", None, &p));
        check(line_chart(&one(&[(0.0, 0.3)]), "x", "y", "bad range", Some((1.0, f64::NAN)), &p));
    }

    #[test]
    fn span_widens_degenerate_ranges_and_skips_non_finite() {
        assert_eq!(span([1.0, f64::NAN, 3.0, f64::INFINITY].into_iter()), Some((1.0, 3.0)));
        assert_eq!(span([f64::NAN].into_iter()), None);
        assert_eq!(span([0.0, 0.0].into_iter()), Some((-1.0, 1.0)));
        let (lo, hi) = span([5.0].into_iter()).unwrap();
        assert!(lo < 5.0 && hi > 5.0);
    }

    #[test]
    fn a_given_y_range_is_kept_unless_the_data_go_beyond_it() {
        assert_eq!(y_axis(Some((0.0, 1.0)), Some((0.2, 0.9))), (0.0, 1.0));
        assert_eq!(y_axis(Some((0.0, 1.0)), None), (0.0, 1.0));
        let (lo, hi) = y_axis(Some((0.0, 1.0)), Some((0.5, 1.5)));
        assert!(lo < 0.0 && hi > 1.5);
        let (lo, hi) = y_axis(Some((1.0, f64::NAN)), Some((2.0, 4.0)));
        assert!(lo < 2.0 && lo > 1.8 && hi > 4.0 && hi < 4.2);
        assert_eq!(y_axis(Some((f64::NEG_INFINITY, 1.0)), None), (0.0, 1.0));
        assert_eq!(y_axis(None, None), (0.0, 1.0));
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing/line.png");
        let e = line_chart(&[], "x", "y", "t", None, &p).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
    }

    /// Finite values spanning ±1e308 made report and compare hang; these all finish, each in
    /// its own thread under a deadline (a hang fails the test instead of stopping it).
    #[test]
    fn extreme_ranges_finish() {
        let cases: Vec<Vec<f64>> = vec![
            vec![-1e308, 1e308],
            vec![f64::MAX, -f64::MAX, 0.0],
            vec![1e300, -1e300],
            vec![0.0, 5e-324],
            vec![1e-320, 2e-320],
            vec![1e-250, 2e-250, 3e-250],
            vec![1e15, 1e15 + 0.25],
            vec![-1e308],
            vec![1.0, 1e308, f64::NAN],
        ];
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, v) in cases.iter().enumerate() {
            let (tx, v, p) = (tx.clone(), v.clone(), dir.path().join(format!("{i}.png")));
            std::thread::spawn(move || {
                let points: Vec<(f64, f64)> = v.iter().enumerate().map(|(k, &y)| (y, k as f64)).collect();
                let flipped: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (y, x)).collect();
                let r = line_chart(&[Series { name: "a", points: &points }], "x", "y", "t", None, &p)
                    .and_then(|_| line_chart(&[Series { name: "a", points: &flipped }], "x", "y", "t", Some((0.0, 1.0)), &p))
                    .and_then(|_| histograms(&[("a", &v), ("b", &[0.0])], "x", "t", &p))
                    .map(|_| image::open(&p).is_ok());
                let _ = tx.send((i, r.map_err(|e| e.to_string())));
            });
        }
        for _ in &cases {
            let (i, r) = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a plot hung");
            assert_eq!(r, Ok(true), "case {i}: {:?}", cases[i]);
        }
        assert_eq!(drawable(f64::NEG_INFINITY..1.0), 0.0..1.0);
        assert_eq!(drawable(-f64::MAX..f64::MAX), 0.0..1.0);
        assert_eq!(drawable(2.0..1.0), 0.0..1.0);
    }
}
