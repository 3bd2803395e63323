"""The dashboard's controls, derived from the settings' metadata (:mod:`klteach.config`).

Which settings get a control, their short labels and the part of each range a lecture explores
are chosen here; what a setting allows, its help (the control's tooltip) and its kind (a restart
setting says so on its control) come from :func:`klteach.config.setting_info`.
"""
from __future__ import annotations

import math
from typing import Any

import ipywidgets as widgets

from .config import setting_info

DATASET_CHOICES = (("toy sphere (3-D)", "toy"), ("digits (8×8)", "digits"),
                   ("CIFAR-10 sample", "cifar10-sample"))
"""The dashboard's dataset menu: (label, ``load_dataset`` name)."""

CONTROLLED = ("dataset", "normaliser", "clusters", "tau_student", "tau_teacher", "lam", "momentum")
"""Settings with a control in the dashboard; what each allows, its help and its kind (a restart
setting says so on its control) come from :func:`klteach.config.setting_info`."""
LABELS = {"dataset": "dataset", "normaliser": "normaliser", "clusters": "K", "tau_student": "τ student",
          "tau_teacher": "τ teacher", "lam": "λ (eq. 14)", "momentum": "EMA momentum"}
"""Short labels of the controls (the full help is their tooltip)."""
SLIDER_SPANS = {"clusters": (2, 64, 1), "tau_student": (0.01, 1.0, 0.05), "tau_teacher": (0.01, 1.0, 0.05),
                "lam": (0.0, 2.0, 0.05), "momentum": (0.0, 0.999, 0.001)}
"""(low, high, step) of each slider: the part of the allowed range a lecture explores (a log slider's
step is in powers of ten). Values set from code beyond it widen the slider."""

LOOKS = (("normal", "normal"), ("lecture", "lecture"), ("dark lecture", "dark"))
"""The dashboard's look toggle: (label, value); see :mod:`klteach.plots.look`."""

def control_for(name: str, value: Any) -> widgets.ValueWidget:
    """The control of setting ``name`` showing ``value``: a menu of its choices, or a slider over
    :data:`SLIDER_SPANS` within the range the setting allows (on a log scale where it says so)."""
    info = setting_info(name)
    label = LABELS.get(name, name) + (" (restarts)" if info.kind == "restart" else "")
    common: dict[str, Any] = dict(description=label, tooltip=info.help, style={"description_width": "initial"},
                                  layout=widgets.Layout(width="300px"))
    if name == "dataset":
        return widgets.Dropdown(options=DATASET_CHOICES, value=value, **common)
    if info.choices is not None:
        return widgets.Dropdown(options=info.choices, value=value, **common)
    low, high, step = SLIDER_SPANS[name]
    low = max(low, info.low) if info.low is not None else low
    high = min(high, info.high) if info.high is not None else high
    common["continuous_update"] = False
    if isinstance(value, int):
        return widgets.IntSlider(value=value, min=int(low), max=max(int(high), value), step=int(step), **common)
    if info.log_scale:
        return widgets.FloatLogSlider(value=value, base=10, min=math.log10(min(low, value)),
                                      max=math.log10(max(high, value)), step=step, readout_format=".3f", **common)
    return widgets.FloatSlider(value=value, min=min(low, value), max=max(high, value), step=step,
                               readout_format=".3f" if step < 0.01 else ".2f", **common)


def widen(control: widgets.ValueWidget, value: Any) -> None:
    """Stretch a slider so that it can show ``value`` (set from code beyond its span)."""
    if isinstance(control, widgets.FloatLogSlider):
        control.min, control.max = min(control.min, math.log10(value)), max(control.max, math.log10(value))
    elif isinstance(control, (widgets.IntSlider, widgets.FloatSlider)):
        control.min, control.max = min(control.min, value), max(control.max, value)


def speed_control(steps_per_second: float) -> widgets.FloatLogSlider:
    """The replay's speed: recorded steps shown per second, 5 to 2000 on a log scale."""
    return widgets.FloatLogSlider(value=steps_per_second, base=10, min=math.log10(5), max=math.log10(2000),
                                  step=0.05, readout_format=".0f", description="speed (steps/s)",
                                  tooltip="recorded training steps shown per second", continuous_update=False,
                                  style={"description_width": "initial"}, layout=widgets.Layout(width="320px"))


__all__ = ["control_for", "widen", "speed_control", "CONTROLLED", "LABELS", "SLIDER_SPANS", "LOOKS",
           "DATASET_CHOICES"]
