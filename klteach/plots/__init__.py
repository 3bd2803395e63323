"""Plotly figures shared by the live widgets and the chapters.

Each kind of plot is a **panel** (:mod:`klteach.plots.panels`): a small class that adds its
traces to one cell of a figure and later replaces their data whole with ``update(...)``. The
``*_figure`` functions (:mod:`klteach.plots.figures`) build a one-panel figure for a chapter;
:func:`dashboard_figure` puts all five panels in *one* figure for the live dashboard. The
explorers' figures are in :mod:`klteach.plots.explorers`; the look (colour-blind-safe palette,
lecture mode) in :mod:`klteach.plots.look`.

=========================  ======================================================  =========
panel                      shows                                                   equations
=========================  ======================================================  =========
:class:`EmbeddingPanel`    embeddings ``z`` and weight vectors ``w_k``: a 3-D        (6)
                           sphere when ``D = 3``, else a 2-D PCA
:class:`ClusterSizePanel`  cluster priors ``π_k`` of student and teacher            (8), (15)
:class:`CollapsePanel`     effective clusters and mean per-sample entropy, both     (8)
                           collapse regions shaded, setting changes marked
:class:`LossPanel`         cross-entropy loss and KL(teacher‖student)               (2), (3)
:class:`QualityPanel`      kNN accuracy and NMI against the true labels
=========================  ======================================================  =========
"""
from .figures import (
                      DASHBOARD_TITLES,
                      bind,
                      cluster_size_figure,
                      collapse_figure,
                      dashboard_figure,
                      embedding_figure,
                      loss_figure,
                      quality_figure,
)
from .look import (
                      FIGURE_HEIGHT,
                      MARGIN,
                      ONE_CLUSTER_COLOUR,
                      PALETTE,
                      SYMBOLS,
                      UNIFORM_COLOUR,
                      Look,
                      cluster_colours,
                      cluster_symbols,
                      current,
                      use_look,
)
from .panels import (
                      ClusterSizePanel,
                      CollapsePanel,
                      EmbeddingPanel,
                      LossPanel,
                      Panel,
                      QualityPanel,
                      event_label,
                      project_embeddings,
                      thin,
)

__all__ = ["Panel", "EmbeddingPanel", "ClusterSizePanel", "CollapsePanel", "LossPanel", "QualityPanel",
           "embedding_figure", "cluster_size_figure", "collapse_figure", "loss_figure", "quality_figure",
           "dashboard_figure", "bind", "project_embeddings", "event_label", "cluster_colours",
           "cluster_symbols", "thin", "PALETTE", "SYMBOLS", "ONE_CLUSTER_COLOUR", "UNIFORM_COLOUR",
           "FIGURE_HEIGHT", "MARGIN", "DASHBOARD_TITLES", "Look", "current", "use_look"]
