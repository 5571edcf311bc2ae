// Small SVG charts drawn by this page itself (no library, nothing from elsewhere). Every text is a text node.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 480, H = 160, L = 56, R = 10, T = 20, B = 22;

  function el(tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function day(t) {
    const d = new Date(t * 1000);
    return d.toISOString().slice(5, 16).replace("T", " ");
  }

  // points: [{t: unix seconds, y: number, bad: bool}]; opts: {title, format(y)}. A line over time, a dot a point.
  function line(points, opts) {
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title });
    svg.appendChild(el("text", { x: 8, y: 13, class: "title" }, opts.title));
    if (!points.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no backups to draw"));
      return svg;
    }
    points = points.slice().sort((a, b) => a.t - b.t);
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const y1 = Math.max(...points.map(p => p.y)) || 1;
    const x = t => L + (t1 === t0 ? (W - L - R) / 2 : (t - t0) / (t1 - t0) * (W - L - R));
    const y = v => H - B - v / y1 * (H - T - B);
    svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    svg.appendChild(el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    svg.appendChild(el("text", { x: L - 4, y: T + 4, "text-anchor": "end" }, opts.format(y1)));
    svg.appendChild(el("text", { x: L - 4, y: H - B, "text-anchor": "end" }, opts.format(0)));
    svg.appendChild(el("text", { x: L, y: H - 6 }, day(t0)));
    if (t1 !== t0) svg.appendChild(el("text", { x: W - R, y: H - 6, "text-anchor": "end" }, day(t1)));
    if (points.length > 1) {
      svg.appendChild(el("polyline", { class: "line",
        points: points.map(p => `${x(p.t).toFixed(1)},${y(p.y).toFixed(1)}`).join(" ") }));
    }
    const step = Math.max(1, Math.floor(points.length / 200));  // at most some 200 dots
    points.forEach((p, i) => {
      if (i % step && i !== points.length - 1) return;
      const dot = el("circle", { cx: x(p.t).toFixed(1), cy: y(p.y).toFixed(1), r: 2.5, class: p.bad ? "dot failed" : "dot" });
      dot.appendChild(el("title", {}, `${day(p.t)}: ${opts.format(p.y)}`));
      svg.appendChild(dot);
    });
    return svg;
  }

  window.Charts = { line };
})();
