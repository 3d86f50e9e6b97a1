// Small SVG charts drawn by the page itself (no library may be loaded: the CSP allows only this
// origin, and the dashboard needs just two shapes). Each chart is an `<svg role="img">` with a
// `<title>` and a `<desc>` summarising the data for screen readers, axis labels, a legend, and a
// `<title>` on every bar / point for pointer users. Charts are drawn at the width they are shown
// at (the caller redraws on resize), so text stays at a readable size on a tablet and on 1280 px.

import { s } from "./dom.js";

let idCounter = 0;
const FONT = 12;

function frame({ width, height, title, desc }) {
  const id = `chart-${++idCounter}`;
  const svg = s("svg", {
    class: "chart", role: "img", width, height, viewBox: `0 0 ${width} ${height}`,
    "aria-labelledby": `${id}-title ${id}-desc`,
  },
  s("title", { id: `${id}-title` }, title),
  s("desc", { id: `${id}-desc` }, desc));
  return svg;
}

function legend(svg, items, x, y) {
  let cx = x;
  for (const item of items) {
    const mark = item.shape === "point"
      ? s("circle", { class: `point ${item.cls}`, cx: cx + 6, cy: y - 4, r: 4.5 })
      : s("rect", { class: `bar ${item.cls} legend-mark`, x: cx, y: y - 10, width: 12, height: 12, rx: 2 });
    svg.append(mark, s("text", { x: cx + 18, y, class: "legend" }, item.label));
    cx += 18 + textWidth(item.label) + 22;
  }
}

/** A rough text width for layout (CJK characters are about one em, Latin about half). */
export function textWidth(str, size = FONT) {
  let w = 0;
  for (const ch of String(str)) w += ch.charCodeAt(0) > 0x2e80 ? size : size * 0.58;
  return w;
}

function clip(str, maxWidth) {
  const text = String(str);
  if (textWidth(text) <= maxWidth) return text;
  let out = "";
  for (const ch of text) {
    if (textWidth(out + ch + "…") > maxWidth) break;
    out += ch;
  }
  return out + "…";
}

/** 0, step, 2·step … ≥ max with a 1-2-5 step, about `count` ticks. */
export function countTicks(max, count = 4) {
  const raw = Math.max(max, 1) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw));
  const ticks = [];
  for (let v = 0; v < max + step; v += step) ticks.push(v);
  if (ticks.length < 2) ticks.push(step);
  return ticks;
}

const DURATION_STEPS = [10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3,
  900e3, 1800e3, 3600e3, 7200e3, 3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 24 * 3600e3, 48 * 3600e3];

/** Ticks for a duration axis at steps people read (seconds, minutes, hours). */
export function durationTicks(max, count = 4) {
  const step = DURATION_STEPS.find((v) => max / v <= count) || Math.ceil(max / count / 86400e3) * 86400e3;
  const ticks = [];
  for (let v = 0; v < max + step; v += step) ticks.push(v);
  if (ticks.length < 2) ticks.push(step);
  return ticks;
}

/**
 * Bars over time with points on top: `points` = [{ at, bar, point, tip }], one per slot.
 * `xTick(at, index)` gives the label under a slot or null.
 */
export function timeChart({ width, height = 230, title, desc, points, bar, point, xAxis, yAxis, xTick }) {
  const svg = frame({ width, height, title, desc });
  const m = { top: 30, right: 14, bottom: 46, left: 52 };
  const w = Math.max(10, width - m.left - m.right);
  const ph = height - m.top - m.bottom;
  const max = Math.max(1, ...points.map((p) => Math.max(p.bar, p.point)));
  const ticks = countTicks(max);
  const top = ticks[ticks.length - 1];
  const y = (v) => m.top + ph - (v / top) * ph;
  const band = w / Math.max(1, points.length);
  legend(svg, [{ label: bar, cls: "series-0" }, { label: point, cls: "series-1", shape: "point" }], m.left, 16);

  const grid = s("g", { class: "grid" });
  for (const v of ticks) {
    grid.append(s("line", { x1: m.left, x2: m.left + w, y1: y(v), y2: y(v) }),
      s("text", { x: m.left - 8, y: y(v) + 4, class: "tick", "text-anchor": "end" }, String(v)));
  }
  svg.append(grid);

  const bars = s("g", { class: "bars" });
  const labels = s("g", { class: "x-ticks" });
  const line = [];
  const dots = s("g", { class: "points" });
  points.forEach((p, i) => {
    const x0 = m.left + i * band;
    const cx = x0 + band / 2;
    if (p.bar > 0) {
      const bw = Math.max(1.5, band * 0.7);
      bars.append(s("rect", {
        class: "bar series-0", x: cx - bw / 2, y: y(p.bar), width: bw, height: m.top + ph - y(p.bar), rx: Math.min(3, bw / 3),
      }, s("title", {}, p.tip)));
    }
    line.push(`${cx.toFixed(1)},${y(p.point).toFixed(1)}`);
    if (p.point > 0) dots.append(s("circle", { class: "point series-1", cx, cy: y(p.point), r: band > 8 ? 4 : 3 }, s("title", {}, p.tip)));
    const label = xTick(p.at, i);
    if (label) {
      labels.append(s("line", { class: "tick-mark", x1: x0, x2: x0, y1: m.top + ph, y2: m.top + ph + 5 }),
        s("text", { x: x0, y: m.top + ph + 18, class: "tick", "text-anchor": i === 0 ? "start" : "middle" }, label));
    }
  });
  svg.append(bars, labels);
  if (points.length > 1) svg.append(s("polyline", { class: "line series-1", points: line.join(" ") }));
  svg.append(dots,
    s("line", { class: "axis", x1: m.left, x2: m.left + w, y1: m.top + ph, y2: m.top + ph }),
    s("text", { class: "axis-title", x: m.left + w / 2, y: height - 6, "text-anchor": "middle" }, xAxis),
    s("text", { class: "axis-title", transform: `translate(14 ${m.top + ph / 2}) rotate(-90)`, "text-anchor": "middle" }, yAxis));
  return svg;
}

/**
 * Horizontal bars in labelled groups: `groups` = [{ label, rows: [{ label, sub, values: [..] }] }],
 * one bar per `series` entry in each row (null = no value). `format` writes a value,
 * `ticks(max)` gives the axis, `empty` is written in a row without values.
 */
export function barList({ width, title, desc, groups, series, format, ticks, axis, empty }) {
  const m = { top: 30, right: 16, bottom: 44, left: Math.min(190, Math.max(110, width * 0.24)) };
  const valueRoom = 78;
  const barH = 12;
  const rowH = 8 + series.length * (barH + 3) + 6;
  const headH = 24;
  const bodyH = groups.reduce((sum, g) => sum + headH + Math.max(1, g.rows.length) * rowH, 0);
  const height = m.top + bodyH + m.bottom;
  const svg = frame({ width, height, title, desc });
  const w = Math.max(10, width - m.left - m.right - valueRoom);
  const max = Math.max(0, ...groups.flatMap((g) => g.rows.flatMap((r) => r.values.filter((v) => v !== null))));
  const axisTicks = ticks(max || 1);
  const top = axisTicks[axisTicks.length - 1];
  const x = (v) => m.left + (v / top) * w;
  legend(svg, series.map((label, i) => ({ label, cls: `series-${i}` })), m.left, 16);

  const grid = s("g", { class: "grid" });
  for (const v of axisTicks) {
    grid.append(s("line", { x1: x(v), x2: x(v), y1: m.top, y2: m.top + bodyH }),
      s("text", { x: x(v), y: m.top + bodyH + 16, class: "tick", "text-anchor": "middle" }, v === 0 ? "0" : format(v)));
  }
  svg.append(grid);

  let yPos = m.top;
  for (const g of groups) {
    svg.append(s("text", { x: 4, y: yPos + 16, class: "group-title" }, g.label));
    yPos += headH;
    if (!g.rows.length) {
      svg.append(s("text", { x: m.left + 6, y: yPos + rowH / 2 + 4, class: "empty" }, empty));
      yPos += rowH;
    }
    for (const r of g.rows) {
      const labelY = yPos + rowH / 2 + (r.sub ? -2 : 4);
      svg.append(s("text", { x: m.left - 10, y: labelY, class: "row-label", "text-anchor": "end" },
        clip(r.label, m.left - 24), s("title", {}, r.label)));
      if (r.sub) svg.append(s("text", { x: m.left - 10, y: labelY + 15, class: "row-sub", "text-anchor": "end" }, r.sub));
      if (r.values.every((v) => v === null)) {
        svg.append(s("text", { x: m.left + 6, y: yPos + rowH / 2 + 4, class: "empty" }, empty));
      }
      r.values.forEach((v, i) => {
        if (v === null) return;
        const by = yPos + 7 + i * (barH + 3);
        svg.append(s("rect", { class: `bar series-${i}`, x: m.left, y: by, width: Math.max(2, x(v) - m.left), height: barH, rx: 2 },
          s("title", {}, `${r.label} · ${series[i]}: ${format(v)}`)),
        s("text", { x: Math.max(m.left + 2, x(v)) + 6, y: by + barH - 2, class: "value" }, format(v)));
      });
      yPos += rowH;
    }
  }
  svg.append(s("line", { class: "axis", x1: m.left, x2: m.left, y1: m.top, y2: m.top + bodyH }),
    s("text", { class: "axis-title", x: m.left + w / 2, y: height - 6, "text-anchor": "middle" }, axis));
  return svg;
}
