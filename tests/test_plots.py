"""Training curves that show a short run: markers, whole-number epochs, the learning rate and watched folders."""

from __future__ import annotations

import math

from PIL import Image

from ferkit.plots import plot_curves


def history(epochs: int) -> list[dict]:
    # Rows as a run written before the compute columns existed has them: only the keys the plot reads.
    return [
        {
            "epoch": e,
            "lr": 1e-3 * (1 + math.cos(math.pi * e / epochs)) / 2 + 1e-6,
            "train_loss": 2 - e / 50,
            "train_acc": 0.2 + e / 200,
            "select_loss": 1.9 - e / 60,
            "select_acc": 0.25 + e / 250,
        }
        for e in range(1, epochs + 1)
    ]


def test_a_one_epoch_run_draws_its_points_on_a_whole_epoch_with_the_learning_rate(tmp_path):
    fig = plot_curves(history(1), tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size == (1400, 400)
    assert [ax.get_title() for ax in fig.axes] == ["Loss", "Accuracy", "Learning rate"]
    for ax in fig.axes:
        assert ax.lines and all(line.get_marker() == "o" for line in ax.lines)
        assert [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]] == [1]
        assert ax.get_xlim() == (0.5, 1.5)
    assert fig.axes[2].get_yscale() == "log" and list(fig.axes[2].lines[0].get_ydata()) == [history(1)[0]["lr"]]


def test_a_long_run_has_whole_number_epoch_ticks(tmp_path):
    fig = plot_curves(history(30), tmp_path / "curves.png")
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert len(ticks) > 3 and all(t == int(t) for t in ticks)
        assert all(len(line.get_xdata()) == 30 for line in ax.lines)


def test_a_watched_folder_is_drawn_beside_the_selection_split_from_its_first_epoch(tmp_path):
    rows = history(4)
    for row in rows[1:]:  # watched from a resume at epoch 2 on; metrics.csv leaves the epoch before it empty
        row.update({"webfaces-dev_acc": 0.5 + row["epoch"] / 100, "webfaces-dev_macro_recall": 0.4})
    rows[0]["webfaces-dev_acc"] = ""
    fig = plot_curves(rows, tmp_path / "curves.png", {"webfaces-dev": "webfaces-dev_acc"})
    accuracy = fig.axes[1]
    assert [line.get_label() for line in accuracy.lines] == ["train", "selection split", "webfaces-dev (watched)"]
    assert list(accuracy.lines[2].get_xdata()) == [2, 3, 4]
    assert list(accuracy.lines[2].get_ydata()) == [0.52, 0.53, 0.54]
    assert len(fig.axes[0].lines) == 2  # recall is no loss: the loss panel is unchanged
