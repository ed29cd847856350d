"""Plotly figures for the pages: the map of the models, marks on it (a task, a merge), loss bars, and the diagram
that explains a delta activation. Plain functions: data in, ``go.Figure`` out; nothing here touches Streamlit."""
from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

PALETTE = [c for c in px.colors.qualitative.D3 if c != "#7F7F7F"] + px.colors.qualitative.Pastel  # no grey: it reads as "missing"
WEBGL_FROM = 1500      # points above which the map draws with WebGL (at 50,000: 6x faster to draw than SVG)
MAX_HOVER_LABELS = 8   # labels shown when hovering a point
MAP_HEIGHT = 620
CALLOUT_PX = 42          # how far a mark's label box sits from its point (the task's star, a merge)


@dataclass(frozen=True)
class Mark:
    """A point drawn on top of the models: the task (a star), a merge's predicted or measured position."""

    x: float
    y: float
    label: str
    symbol: str = "star"
    colour: str = "#111111"
    size: int = 22
    text_position: str = "top center"


def as_text(value) -> str:
    """A name or label as plotly shows it: its own characters, never a tag (plotly renders <a href>, <b>, <span>
    in hover text and legends, so a label typed by a visitor or read from a catalog is escaped first)."""
    return html.escape(str(value), quote=False)


def hover_texts(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """'<b>name</b><br>domain: legal<br>...' per model, skipping empty labels; every value shown as text."""
    shown = [c for c in columns if c in frame.columns][:MAX_HOVER_LABELS]
    texts = []
    for row in frame[["name", *shown]].itertuples(index=False):
        parts = [f"<b>{as_text(row[0])}</b>"] + [f"{as_text(c)}: {as_text(v)}" for c, v in zip(shown, row[1:])
                                                 if str(v) not in ("", "nan")]
        texts.append("<br>".join(parts))
    return texts


def colours_for(values: list[str]) -> dict[str, str]:
    """A stable colour per group; more groups than the palette get evenly spaced hues."""
    groups = list(dict.fromkeys(values))
    if len(groups) <= len(PALETTE):
        return {g: PALETTE[i] for i, g in enumerate(groups)}
    scale = px.colors.sample_colorscale("Turbo", [i / max(len(groups) - 1, 1) for i in range(len(groups))])
    return dict(zip(groups, scale))


def map_figure(frame: pd.DataFrame, embedding: np.ndarray, colour: list[str], colour_title: str,
               hover: list[str] | None = None, focus: list[str] | None = None, marks: list[Mark] | None = None,
               focus_label: str = "selected", hover_columns: list[str] | None = None) -> go.Figure:
    """The scatter of the models: one trace per colour group (the legend), the user's own models as diamonds,
    ``focus`` models ringed, ``marks`` on top. ``customdata[0]`` of every model's point is its name (read back on
    selection).

    ``hover`` gives one ready hover text per model (see ``hover_texts``); without it the hover shows the name and
    the labels of ``hover_columns`` (default: every label of ``frame``), sent once per group where all the group's
    models share a value, so that a map of 50,000 models stays a few megabytes. Above ``WEBGL_FROM`` points the map
    draws with WebGL, in smaller, lighter points."""
    n = len(frame)
    big = n > WEBGL_FROM
    trace = go.Scattergl if big else go.Scatter
    style = point_style(n)
    names = frame["name"].to_numpy(dtype=object)
    mine = (frame["origin"] == "yours").to_numpy() if "origin" in frame.columns else np.zeros(n, bool)
    xy = np.asarray(embedding, dtype=np.float32 if big else np.float64)    # float32 halves what the browser gets
    colour = np.asarray(colour, dtype=object)
    if hover is None:
        shown = [c for c in (hover_columns if hover_columns is not None else frame.columns)
                 if c in frame.columns and c not in ("name", "origin")][:MAX_HOVER_LABELS]
        labels = {c: frame[c].fillna("").astype(str).to_numpy(dtype=object) for c in shown}
        texts = None
    else:
        labels, texts = {}, np.asarray(hover, dtype=object)

    def hover_of(rows: np.ndarray) -> dict:
        if texts is not None:
            return dict(customdata=names[rows, None], hovertext=texts[rows],
                        hovertemplate="%{hovertext}<extra></extra>")
        customdata, template = hover_fields(names[rows], {c: v[rows] for c, v in labels.items()})
        return dict(customdata=customdata, hovertemplate=template)

    sizes = pd.Series(colour).value_counts()           # the biggest groups get the strongest colours
    hues = colours_for(list(sizes.index))
    reading = {group: rank for rank, group in enumerate(sorted(hues, key=_natural), start=1)}
    fig = go.Figure()
    for group in sizes.index:  # the biggest group drawn first, so that small groups stay visible on top of it
        rows = np.flatnonzero(colour == group)
        symbol = np.where(mine[rows], "diamond", "circle") if mine[rows].any() else "circle"
        fig.add_trace(trace(
            x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=as_text(group), legendrank=reading[group], **hover_of(rows),
            marker=dict(color=hues[group], size=style["size"], opacity=style["opacity"], symbol=symbol,
                        line=dict(width=style["line"], color="white")),
        ))
    focus_rows = np.flatnonzero(np.isin(names, list(focus or [])))
    if len(focus_rows):
        ring = go.Scattergl if len(focus_rows) > WEBGL_FROM else go.Scatter
        few = len(focus_rows) <= 50                      # many rings: thinner and see-through, so colours show
        fig.add_trace(ring(
            x=xy[focus_rows, 0], y=xy[focus_rows, 1], mode="markers", name=focus_label, **hover_of(focus_rows),
            marker=dict(size=style["size"] + (10 if few else 4), color="rgba(0,0,0,0)",
                        line=dict(width=2.5 if len(focus_rows) <= 5 else 1.2 if few else 0.7,
                                  color="#111111" if few else "rgba(17,17,17,0.3)")),
        ))
    for mark in marks or []:
        fig.add_trace(go.Scatter(
            x=[mark.x], y=[mark.y], mode="markers", name=as_text(mark.label),
            hovertemplate=f"<b>{as_text(mark.label)}</b><extra></extra>",
            marker=dict(symbol=mark.symbol, size=mark.size, color=mark.colour, line=dict(width=1.5, color="white")),
        ))
        fig.add_annotation(callout(mark))
    fig.update_layout(
        height=MAP_HEIGHT, margin=dict(l=10, r=10, t=30, b=10), legend_title_text=as_text(colour_title),
        legend=dict(itemsizing="constant", orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0),
        hoverlabel=dict(align="left"), plot_bgcolor="#fafafa", hovermode="closest",
        xaxis=dict(visible=False), yaxis=dict(visible=False), clickmode="event+select",
    )
    return fig


def callout(mark: Mark) -> dict:
    """The mark's label in a white box beside it, joined to it by a short line, so that it covers no model's point:
    up or down and left or right as ``mark.text_position`` says ("top center", "bottom left"...)."""
    up = -1 if "top" in mark.text_position else 1 if "bottom" in mark.text_position else 0
    side = -1 if "left" in mark.text_position else 1
    return dict(x=mark.x, y=mark.y, text=as_text(mark.label), showarrow=True, arrowhead=0, arrowwidth=1,
                arrowcolor="#555555", ax=side * CALLOUT_PX, ay=up * CALLOUT_PX, standoff=mark.size / 2,
                bgcolor="rgba(255,255,255,0.9)", bordercolor="#555555", borderwidth=1, borderpad=3,
                font=dict(size=12, color="#111111"))


def point_style(n: int) -> dict:
    """Marker size, opacity and white outline for a map of ``n`` points: big and outlined for a few dozen models,
    small, see-through and bare for tens of thousands (so that dense groups show their density)."""
    if n <= 200:
        return {"size": 10, "opacity": 0.85, "line": 0.5}
    if n <= WEBGL_FROM:
        return {"size": 7, "opacity": 0.85, "line": 0.5}
    if n <= 10_000:
        return {"size": 5, "opacity": 0.7, "line": 0.0}
    return {"size": 3, "opacity": 0.55, "line": 0.0}


def hover_fields(names: np.ndarray, labels: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """customdata [m, 1 + j] and a hovertemplate for m points: the name first (customdata[0]), then each label.
    A label every point shares goes into the template once; a label that differs goes into customdata ('–' where
    a point has none); a label no point has is left out."""
    shown = np.array([as_text(n) for n in names], dtype=object)
    if (shown == names).all():                          # nothing to escape: the name itself is shown
        columns, parts = [names], ["<b>%{customdata[0]}</b>"]
    else:                                               # customdata[0] stays the raw name (read back on selection)
        columns, parts = [names, shown], ["<b>%{customdata[1]}</b>"]
    for column, values in labels.items():
        known = values != ""
        if not known.any():
            continue
        first = as_text(values[0])
        if known.all() and (values == values[0]).all() and "%{" not in first:
            parts.append(f"{as_text(column)}: {first}")
        else:
            parts.append(f"{as_text(column)}: %{{customdata[{len(columns)}]}}")
            columns.append(np.array([as_text(v) if k else "–" for v, k in zip(values, known)], dtype=object))
    customdata = np.empty((len(names), len(columns)), dtype=object)
    for j, values in enumerate(columns):
        customdata[:, j] = values
    return customdata, "<br>".join(parts) + "<extra></extra>"


def _natural(value: str):
    """Sort 'group 2' before 'group 10'."""
    text = str(value)
    digits = "".join(ch for ch in text if ch.isdigit())
    return (text.rstrip("0123456789"), int(digits) if digits else -1, text)


def loss_figure(losses: dict[str, float], title: str = "Loss on your examples (lower is better)") -> go.Figure:
    """One dot per model (base, each ingredient, merged), on an axis from zero, so that a 4% difference looks like
    4%; the merged model stands out."""
    names = list(losses)[::-1]                       # base at the top, merged at the bottom
    values = [losses[n] for n in names]
    colours = ["#9e9e9e" if n == "base" else "#d62728" if n == "merged" else "#1f77b4" for n in names]
    high = max(max(values), 1e-3)
    fig = go.Figure()
    for name, value, colour in zip(names, values, colours):
        fig.add_trace(go.Scatter(x=[0, value], y=[name, name], mode="lines", showlegend=False,
                                 line=dict(color="#dddddd", width=2), hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=values, y=names, mode="markers+text", text=[f"{v:.3f}" for v in values],
                             textposition="middle right", marker=dict(size=16, color=colours), showlegend=False,
                             hovertemplate="%{y}: loss %{x:.4f}<extra></extra>"))
    fig.update_layout(title=title, height=90 + 45 * len(names), margin=dict(l=10, r=10, t=50, b=10),
                      xaxis=dict(range=[0, high * 1.25], title="error on your examples (loss)"),
                      yaxis=dict(type="category"))
    return fig


def losses_curve(losses: list[float]) -> go.Figure:
    fig = go.Figure(go.Scatter(y=losses, x=list(range(1, len(losses) + 1)), mode="lines"))
    fig.update_layout(height=220, margin=dict(l=10, r=10, t=30, b=10), title="Finetuning loss per step",
                      xaxis_title="step", yaxis_title="loss")
    return fig


def delta_diagram() -> go.Figure:
    """A picture of the method: the same five questions go to the base and to the finetuned model; the change in
    their last hidden state, averaged, is the model's vector."""
    fig = go.Figure()
    boxes = [  # x0, y0, x1, y1, text, colour
        (0.0, 0.35, 0.2, 0.65, "5 generic<br>questions<br>(the same<br>for every model)", "#fff3cd"),
        (0.32, 0.62, 0.56, 0.92, "base model", "#e0e0e0"),
        (0.32, 0.08, 0.56, 0.38, "finetuned model", "#cfe2ff"),
        (0.68, 0.62, 0.86, 0.92, "its inner state<br>(last word,<br>last layer)", "#f5f5f5"),
        (0.68, 0.08, 0.86, 0.38, "its inner state<br>(last word,<br>last layer)", "#f5f5f5"),
    ]
    for x0, y0, x1, y1, text, colour in boxes:
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, fillcolor=colour, line=dict(color="#555"))
        fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=text, showarrow=False,
                           font=dict(size=13, color="#222222"))
    arrows = [(0.2, 0.5, 0.32, 0.77), (0.2, 0.5, 0.32, 0.23), (0.56, 0.77, 0.68, 0.77), (0.56, 0.23, 0.68, 0.23),
              (0.86, 0.77, 0.93, 0.55), (0.86, 0.23, 0.93, 0.45)]
    for x0, y0, x1, y1 in arrows:
        fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=3, arrowsize=1.2, arrowwidth=1.6, arrowcolor="#333", text="")
    fig.add_annotation(x=0.965, y=0.5, text="<b>difference</b><br>= the model's<br><b>delta<br>activation</b>",
                       showarrow=False, font=dict(size=13, color="#b02a37"))
    fig.update_layout(height=320, margin=dict(l=0, r=0, t=10, b=0), plot_bgcolor="white",
                      xaxis=dict(visible=False, range=[-0.02, 1.04]), yaxis=dict(visible=False, range=[0, 1]))
    return fig


def arrows_figure(points: dict[str, tuple[float, float]], sums: dict[str, tuple[float, float]] | None = None) -> go.Figure:
    """Vectors as arrows from the origin (a 2-D picture of similarity: same direction = similar change)."""
    fig = go.Figure()
    hues = colours_for(list(points))
    for name, (x, y) in points.items():
        fig.add_annotation(x=x, y=y, ax=0, ay=0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=3, arrowwidth=2.5, arrowcolor=hues[name], text="")
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="text", text=[f"<b>{name}</b>"], showlegend=False,
                                 textposition="top center" if y >= 0 else "bottom center", hoverinfo="skip",
                                 textfont=dict(color=hues[name], size=13)))
    for name, (x, y) in (sums or {}).items():
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[name], textposition="bottom center",
                                 marker=dict(symbol="x", size=12, color="#111"), showlegend=False, hoverinfo="skip"))
    coords = np.array([*points.values(), *(sums or {}).values(), (0.0, 0.0)], dtype=float)  # [m, 2]
    low, high = coords.min(0), coords.max(0)
    pad = 0.25 * max(float((high - low).max()), 1e-9)
    fig.update_layout(height=340, margin=dict(l=0, r=0, t=10, b=0), plot_bgcolor="white",
                      xaxis=dict(range=[low[0] - pad, high[0] + pad], zeroline=True, showgrid=False,
                                 showticklabels=False),
                      yaxis=dict(range=[low[1] - pad, high[1] + pad], zeroline=True, showgrid=False,
                                 showticklabels=False, scaleanchor="x"))
    return fig
