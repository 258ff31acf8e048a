"""curves.png / quality.png of `extmem compare`: log loss axis, the baseline drawn in black on
top and named in the legend, +-std bands kept, the legend outside the axes, the second half
of training zoomed, titles that say what is shown."""

from __future__ import annotations

from matplotlib.collections import PolyCollection

from extmem.experiments.plots import (
    BASELINE_COLOR,
    BASELINE_WIDTH,
    curves_figure,
    plot_curves,
    plot_quality,
)


def results(points: int = 10) -> dict:
    steps = [10 * (i + 1) for i in range(points)]
    def curve(floor):
        return {"steps": steps, "mean": [floor + 5.0 / (1 + s / 20) for s in steps],
                "std": [0.05] * points}
    rows = [{"variant": name, "curve": curve(floor), "val_loss": {"mean": floor, "std": 0.05},
             "params": {"total": 1000 + i}, "flops_per_token": {"total": 500 + i}}
            for i, (name, floor) in enumerate((("pkm", 3.0), ("dense", 3.1), ("token", 3.05)))]
    return {"sweep": "tiny", "seeds": [0, 1, 2], "baseline": "dense", "variants": rows}


def test_curves_log_axis_marked_baseline_bands_and_zoom():
    fig = curves_figure(results())
    whole, zoom = fig.axes
    assert whole.get_yscale() == "log" and zoom.get_yscale() == "linear"
    baseline = [line for line in whole.get_lines() if line.get_label() == "baseline: dense"]
    assert len(baseline) == 1
    assert baseline[0].get_color() == BASELINE_COLOR
    assert baseline[0].get_linewidth() == BASELINE_WIDTH
    others = [line for line in whole.get_lines() if line.get_label() in ("pkm", "token")]
    assert len(others) == 2 and all(line.get_linewidth() < BASELINE_WIDTH for line in others)
    assert baseline[0].get_zorder() > max(line.get_zorder() for line in others)  # on top
    assert sum(isinstance(c, PolyCollection) for c in whole.collections) == 3  # std bands
    assert zoom.get_xlim() == (50.0, 100.0)  # second half of training
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert [t.get_text() for t in legend.get_texts()] == ["baseline: dense", "pkm", "token"]
    assert legend.get_bbox_to_anchor().x0 > zoom.get_window_extent().x1  # outside the axes
    assert "validation loss" in fig._suptitle.get_text()


def test_one_panel_when_there_is_nothing_to_zoom_on(tmp_path):
    fig = curves_figure(results(points=1))
    assert len(fig.axes) == 1 and fig.axes[0].get_yscale() == "log"
    plot_curves(results(), tmp_path / "curves.png")
    plot_quality(results(), tmp_path / "quality.png")
    for name in ("curves.png", "quality.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
