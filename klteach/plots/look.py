"""The look of every klteach figure: a colour-blind-safe palette, and a lecture mode.

The palette is Okabe & Ito's (2008), safe for the common colour-vision deficiencies; where a
colour alone would carry meaning (which cluster a point belongs to, which curve is which) the
figures also vary the marker symbol, the line dash or the bar pattern. **Lecture mode** makes
every text at least 18 px, readable from the back of a room, optionally on a dark background.

``use_look(lecture=True, dark=False)`` (or :func:`klteach.course.lecture_mode`) applies to every
figure drawn afterwards: it sets plotly's default template, which chapters' own figures take
too. Importing this module makes the palette plotly's default unless you chose another template.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#999999")
"""Okabe–Ito's colour-blind-safe colours (their black replaced by grey, which also shows on a
dark background), ordered so that the first few contrast most."""
PALETTE = OKABE_ITO
"""Colours of clusters and curves (cycled, with :data:`SYMBOLS`, when there are more)."""
SYMBOLS = ("circle", "square", "diamond", "cross", "x")
"""Marker symbols of clusters (all also drawn in 3-D): with 8 colours and 5 symbols, the first 40
clusters all differ."""
LECTURE_FONT_PX = 18
"""The smallest text in lecture mode."""
FIGURE_HEIGHT = 320
"""Height of a one-panel figure (px; larger in lecture mode, see :meth:`Look.scaled`)."""
MARGIN = dict(l=50, r=20, t=50, b=40)


@dataclass(frozen=True)
class Look:
    """Font sizes and colours of one look (``lecture``: large text; ``dark``: dark background)."""

    lecture: bool = False
    dark: bool = False

    @property
    def font(self) -> int:
        """Size of ordinary text (axes, legends), px."""
        return LECTURE_FONT_PX if self.lecture else 12

    @property
    def small(self) -> int:
        """Size of annotations (band labels, setting changes), px."""
        return LECTURE_FONT_PX if self.lecture else 10

    @property
    def title(self) -> int:
        return 24 if self.lecture else 16

    @property
    def template(self) -> str:
        """Plotly template name (plotly's own, with this look's palette and fonts on top)."""
        return ("plotly_dark" if self.dark else "plotly") + ("+klteach_lecture" if self.lecture else "+klteach")

    @property
    def ink(self) -> str:
        """Colour of lines and text drawn over the plot (markers of setting changes)."""
        return "rgba(230,230,230,0.85)" if self.dark else "rgba(60,60,60,0.8)"

    @property
    def legend_background(self) -> str:
        return "rgba(17,17,17,0.7)" if self.dark else "rgba(255,255,255,0.7)"

    @property
    def one_cluster_band(self) -> str:
        """Fill of the one-cluster collapse band (vermillion)."""
        return "rgba(213,94,0,0.30)" if self.dark else "rgba(213,94,0,0.15)"

    @property
    def uniform_band(self) -> str:
        """Fill of the uniform collapse band (orange)."""
        return "rgba(230,159,0,0.30)" if self.dark else "rgba(230,159,0,0.18)"

    def scaled(self, pixels: int) -> int:
        """A figure size in px, larger in lecture mode so that the larger text still fits."""
        return round(pixels * 1.3) if self.lecture else pixels


ONE_CLUSTER_COLOUR = Look().one_cluster_band
UNIFORM_COLOUR = Look().uniform_band

pio.templates["klteach"] = go.layout.Template(layout=dict(colorway=list(PALETTE)))
pio.templates["klteach_lecture"] = go.layout.Template(layout=dict(
    colorway=list(PALETTE), font=dict(size=LECTURE_FONT_PX), title=dict(font=dict(size=24)),
    legend=dict(font=dict(size=LECTURE_FONT_PX)), hoverlabel=dict(font=dict(size=LECTURE_FONT_PX))))

_current = Look()
if pio.templates.default == "plotly":           # plotly's own default: the user chose nothing
    pio.templates.default = _current.template


def current() -> Look:
    """The look figures are drawn in now."""
    return _current


def use_look(lecture: bool = False, dark: bool = False) -> Look:
    """Draw every figure made afterwards (klteach's and plotly's) in this look; returns it."""
    global _current
    _current = Look(lecture=lecture, dark=dark)
    pio.templates.default = _current.template
    return _current


def cluster_colours(indices: Sequence[int] | np.ndarray) -> list[str]:
    """One palette colour per cluster index."""
    return [PALETTE[int(k) % len(PALETTE)] for k in np.asarray(indices).ravel()]


def cluster_symbols(indices: Sequence[int] | np.ndarray) -> list[str]:
    """One marker symbol per cluster index, so that clusters differ by more than colour."""
    return [SYMBOLS[int(k) % len(SYMBOLS)] for k in np.asarray(indices).ravel()]


__all__ = ["Look", "current", "use_look", "cluster_colours", "cluster_symbols", "PALETTE", "OKABE_ITO",
           "SYMBOLS", "ONE_CLUSTER_COLOUR", "UNIFORM_COLOUR", "LECTURE_FONT_PX", "FIGURE_HEIGHT", "MARGIN"]
