//! A minimal SVG line plot (no dependency): two stacked panels sharing the x axis, one line per
//! series, dashed vertical markers (phase shifts).

pub struct Series {
    pub name: String,
    pub color: String,
    pub points: Vec<(f64, f64)>,
}

pub struct Plot {
    pub y_label: String,
    pub series: Vec<Series>,
}

const W: f64 = 900.0;
const PANEL_H: f64 = 230.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const GAP: f64 = 50.0;

/// An SVG document with `top` above `bottom`.
pub fn two_panels(title: &str, top: Plot, bottom: Plot, x_label: &str, markers: &[f64]) -> String {
    let xs = top.series.iter().chain(&bottom.series).flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = bounds(xs, false);
    let h = TOP + 2.0 * PANEL_H + GAP + 50.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    for (i, p) in [top, bottom].iter().enumerate() {
        out += &panel(p, TOP + i as f64 * (PANEL_H + GAP), (x0, x1), markers, i == 0);
    }
    out += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n</svg>\n",
        LEFT + (W - LEFT - RIGHT) / 2.0,
        h - 12.0,
        escape(x_label)
    );
    out
}

fn panel(p: &Plot, y_top: f64, (x0, x1): (f64, f64), markers: &[f64], legend: bool) -> String {
    let (y0, y1) = bounds(p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1)), true);
    let pw = W - LEFT - RIGHT;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| y_top + PANEL_H - (y - y0) / (y1 - y0) * PANEL_H;
    let mut out = format!(
        "<rect x=\"{LEFT}\" y=\"{y_top}\" width=\"{pw}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#999\"/>\n\
         <text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
        y_top + PANEL_H / 2.0,
        escape(&p.y_label)
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let (right, py, lx, label) = (LEFT + pw, sy(y), LEFT - 6.0, tick(y));
        out += &format!(
            "<line x1=\"{LEFT}\" x2=\"{right}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/>\
             <text x=\"{lx}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
            py + 4.0
        );
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let (px, ty, label) = (sx(x), y_top + PANEL_H + 16.0, tick(x));
        out += &format!("<text x=\"{px:.1}\" y=\"{ty}\" text-anchor=\"middle\">{label}</text>\n");
    }
    for &m in markers {
        out += &format!(
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{y_top}\" y2=\"{1}\" stroke=\"#888\" stroke-dasharray=\"5,4\"/>\n",
            sx(m),
            y_top + PANEL_H
        );
    }
    for (i, s) in p.series.iter().enumerate() {
        let pts: Vec<String> = s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
            s.color,
            pts.join(" ")
        );
        if legend {
            let ly = y_top + 14.0 + 18.0 * i as f64;
            out += &format!(
                "<line x1=\"{0}\" x2=\"{1}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{2}\" stroke-width=\"2\"/><text x=\"{3}\" y=\"{4}\">{5}</text>\n",
                W - RIGHT + 12.0,
                W - RIGHT + 36.0,
                s.color,
                W - RIGHT + 42.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
    }
    out
}

/// Axis range of the values (from zero when `from_zero`), never empty.
fn bounds(v: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = v.filter(|x| x.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
        hi *= 1.1;
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
    }
    (lo, hi)
}

fn tick(v: f64) -> String {
    if v.abs() >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_is_well_formed_and_scales_points_into_the_panels() {
        let s = |name: &str, k: f64| Series {
            name: name.into(),
            color: "#000".into(),
            points: (1..=5).map(|i| (i as f64 * 10.0, k * i as f64)).collect(),
        };
        let svg = two_panels(
            "a <b>",
            Plot { y_label: "tau".into(), series: vec![s("x", 1.0), s("y", 2.0)] },
            Plot { y_label: "tok/s".into(), series: vec![s("x", 3.0)] },
            "requests",
            &[25.0],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("stroke-dasharray").count(), 2); // the marker in both panels
        // every point lies inside the plot area
        for poly in svg.split("points=\"").skip(1) {
            for pt in poly.split('"').next().unwrap().split(' ') {
                let (x, y) = pt.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=W - RIGHT).contains(&x), "x {x}");
                assert!((TOP..=TOP + 2.0 * PANEL_H + GAP).contains(&y), "y {y}");
            }
        }
    }
}
