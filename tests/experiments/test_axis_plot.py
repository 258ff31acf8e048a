"""axis.png: the final loss of variants that lie on one axis (`x`), e.g. an allocation sweep."""

import pytest
from tests.cli_helpers import error_line, run_sweep

from extmem.experiments.axis_plot import axis_figure, axis_lines
from extmem.experiments.stats import mean_interval

SWEEP = """
name = "axis"
base = "tiny.toml"
seeds = [0, 1]
baseline = "dense"
steps = 2
x_label = "learning rate"
x_scale = "log"

[[variants]]
name = "dense"
set = ["model.memories=[]"]

[[variants]]
name = "lr-low"
x = 1e-3
set = ["train.lr=1e-3"]

[[variants]]
name = "lr-high"
x = 1e-2
set = ["train.lr=1e-2"]
"""


def test_variants_on_an_axis_get_axis_png(tiny_config, tmp_path, capsys):
    out = tmp_path / "out"
    results = run_sweep(capsys, tiny_config.parent / "axis.toml", SWEEP, out,
                        "train.eval_every=0")
    assert results["x_label"] == "learning rate" and results["x_scale"] == "log"
    rows = {r["variant"]: r for r in results["variants"]}
    assert "x" not in rows["dense"] and rows["lr-low"]["x"] == 1e-3
    assert (out / "axis.png").is_file() and "axis.png" in (out / "results.md").read_text()
    (line,) = axis_lines(results).values()
    assert [r["variant"] for r in line] == ["lr-low", "lr-high"]  # by x
    ax = axis_figure(results).axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate"
    drawn, baseline = ax.get_lines()[0], ax.get_lines()[-1]
    assert list(drawn.get_xdata()) == [1e-3, 1e-2]
    assert list(drawn.get_ydata()) == pytest.approx([rows["lr-low"]["val_loss"]["mean"],
                                                     rows["lr-high"]["val_loss"]["mean"]])
    assert baseline.get_label() == "baseline: dense"
    assert baseline.get_ydata()[0] == pytest.approx(rows["dense"]["val_loss"]["mean"])


def test_mean_interval_is_students_t():
    low, high = mean_interval([1.0, 2.0, 3.0])  # t(0.975, 2) = 4.3027, std 1, n 3
    assert (low + high) / 2 == pytest.approx(2.0)
    assert high - low == pytest.approx(2 * 4.302653 / 3 ** 0.5, rel=1e-5)
    assert mean_interval([5.0]) == (5.0, 5.0)


@pytest.mark.parametrize(("edit", "message"), [
    (("x_label = \"learning rate\"\n", ""), "sweep.x_label: variants ['lr-low', 'lr-high'] give x"),
    (("x = 1e-3", "x = 0.0"), "sweep.x_scale: 'log' needs every variant's x > 0"),
    (("x_scale = \"log\"", "x_scale = \"cubic\""), "sweep.x_scale: 'cubic' is not allowed"),
])
def test_bad_axes_are_one_line_errors(tiny_config, capsys, edit, message):
    path = tiny_config.parent / "bad.toml"
    path.write_text(SWEEP.replace(*edit))
    assert message in error_line(capsys, "compare", str(path))
