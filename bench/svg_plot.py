#!/usr/bin/env python3
"""Minimal line charts as SVG (no plotting library needed): used by bench/converge.sh and the
evaluation report. line_chart(series, ...) returns the SVG text; series = [(label, xs, ys), ...]."""

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    span = hi - lo
    step = 10 ** int(__import__("math").floor(__import__("math").log10(span / n)))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    start = __import__("math").floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + 1e-12:
        if t >= lo - 1e-12:
            ticks.append(round(t, 10))
        t += step
    return ticks


def line_chart(series, title, xlabel, ylabel, width=640, height=400, xlim=None, ylim=None, diagonal=False):
    left, right, top, bottom = 70, 20, 40, 50
    xs_all = [x for _, xs, _ in series for x in xs]
    ys_all = [y for _, _, ys in series for y in ys]
    x0, x1 = xlim or (min(xs_all), max(xs_all))
    y0, y1 = ylim or (min(ys_all), max(ys_all))
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = width - left - right, height - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (width, height),
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>' % (left, title),
           '<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (left, top, pw, ph)]
    for t in _nice_ticks(x0, x1):
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (px(t), top, px(t), top + ph))
        out.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (px(t), top + ph + 16, t))
    for t in _nice_ticks(y0, y1):
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (left, py(t), left + pw, py(t)))
        out.append('<text x="%d" y="%.1f" text-anchor="end">%g</text>' % (left - 6, py(t) + 4, t))
    if diagonal:
        out.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#aaa" stroke-dasharray="4 4"/>' %
                   (px(x0), py(y0), px(x1), py(y1)))
    out.append('<text x="%d" y="%d" text-anchor="middle">%s</text>' % (left + pw // 2, height - 10, xlabel))
    out.append('<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">%s</text>' % (top + ph // 2, top + ph // 2, ylabel))
    for i, (label, xs, ys) in enumerate(series):
        c = COLOURS[i % len(COLOURS)]
        pts = " ".join("%.1f,%.1f" % (px(x), py(min(max(y, y0), y1))) for x, y in zip(xs, ys))
        out.append('<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"/>' % (c, pts))
        out.append('<rect x="%d" y="%d" width="12" height="3" fill="%s"/>' % (left + pw - 200, top + 12 + 16 * i, c))
        out.append('<text x="%d" y="%d">%s</text>' % (left + pw - 184, top + 17 + 16 * i, label))
    out.append("</svg>")
    return "\n".join(out)


def histogram_chart(series, title, xlabel, bins=40, width=640, height=360, lo=None, hi=None):
    """Overlaid histograms (as step lines) of several samples: series = [(label, values), ...]."""
    vals = [v for _, vs in series for v in vs]
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    w = (hi - lo) / bins or 1
    lines = []
    for label, vs in series:
        counts = [0] * bins
        for v in vs:
            counts[min(bins - 1, max(0, int((v - lo) / w)))] += 1
        total = float(len(vs)) or 1
        xs, ys = [], []
        for b, c in enumerate(counts):
            xs += [lo + b * w, lo + (b + 1) * w]
            ys += [c / total, c / total]
        lines.append((label, xs, ys))
    return line_chart(lines, title, xlabel, "fraction of pairs", width, height, xlim=(lo, hi), ylim=(0, max(max(l[2]) for l in lines) * 1.05))
