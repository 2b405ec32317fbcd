"""Figures: learning curves and the GeMS trade-off are written as valid PNGs, and only when their data exist."""

import matplotlib.image
import pytest

from slate_rl.errors import SlateRLError
from slate_rl.methods import method_ids
from slate_rl.reporting import (
    RunResult,
    figures,
    plot_learning_curves,
    plot_offline_curves,
    plot_tradeoff,
    tradeoff_points,
    write_figures,
)
from slate_rl.reporting.figures import row_styles
from slate_rl.reporting.names import row_order
from slate_rl.reporting.offline import BehaviourScore, OfflineResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def curve_runs() -> list[RunResult]:
    results = []
    for method, level in (("sac_gems", 300.0), ("slateq", 200.0)):
        for env in ("focused_topdown", "diffuse_divpen"):
            for seed in range(3):
                curve = [(1000 * k, level * k / 10 + seed) for k in range(1, 11)]
                results.append(RunResult(method, env, seed, level + seed, "quick", val_curve=curve))
    results.append(RunResult("random", "focused_topdown", 0, 50.0, "quick"))  # no curve: left out
    return results


def sweep_runs(as_strings: bool = False) -> list[RunResult]:
    results = []
    for dim in (16, 32):
        for beta in (0.1, 0.5, 1.0):
            for lam in (0.5, 1.0):
                for seed in range(2):
                    params = {"latent_dim": dim, "beta": beta, "lambda_click": lam}
                    if as_strings:
                        params = {k: str(v) for k, v in params.items()}
                    value = 100.0 + dim + 10 * beta + 5 * lam + seed
                    results.append(RunResult("sac_gems", "focused_topdown", seed, value, "quick", params=params))
    return results


def test_learning_curves_png(tmp_path):
    path = plot_learning_curves(curve_runs(), tmp_path / "sub" / "curves.png")
    assert path == tmp_path / "sub" / "curves.png"
    assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary file left behind


def test_a_method_keeps_its_colour_whatever_else_a_figure_shows():
    bugs = "reinforce_softmax [reference_bugs=true]"
    grid = row_styles(row_order(["sac_topk_ideal", "reinforce_softmax", bugs, "sac_gems"]))
    assert grid["sac_gems"] == row_styles(["sac_gems"])["sac_gems"] == {"color": "C5", "linestyle": "-"}
    for family in ("online", "offline"):
        styles = row_styles(method_ids((family,)))
        assert len({style["color"] for style in styles.values()}) == len(styles)  # no two methods alike
    assert grid[bugs]["color"] == grid["reinforce_softmax"]["color"]  # a variant: its method's colour, ...
    assert grid["reinforce_softmax"]["linestyle"] == "-" and grid[bugs]["linestyle"] == "--"  # ... its own line


def test_learning_curves_draw_each_method_in_its_colour(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or path)
    plot_learning_curves(curve_runs(), tmp_path / "c.png")
    styles = row_styles(["sac_gems", "slateq"])
    assert [(line.get_color(), line.get_linestyle()) for line in drawn[0].axes[0].get_lines()] == [
        (styles[m]["color"], styles[m]["linestyle"]) for m in ("slateq", "sac_gems")
    ]


def test_learning_curves_need_curves(tmp_path):
    assert plot_learning_curves([RunResult("random", "focused_mix", 0, 1.0, "quick")], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


def test_tradeoff_points_group_by_latent_dim_and_varied_parameter():
    points = tradeoff_points(sweep_runs(as_strings=True), env="focused_topdown", vary="beta")  # λ = 0.5
    assert [(p.latent_dim, p.x) for p in points] == [(d, b) for d in (16, 32) for b in (0.1, 0.5, 1.0)]
    first = points[0]  # d = 16, β = 0.1, λ = 0.5: 100 + 16 + 1 + 2.5 + seed = 119.5 and 120.5
    assert first.summary.n == 2 and first.summary.mean == pytest.approx(120.0)
    by_lambda = tradeoff_points(sweep_runs(), env="focused_topdown", vary="lambda_click", fixed=0.5)
    assert sorted({p.x for p in by_lambda}) == [0.5, 1.0]


def test_tradeoff_png_and_its_absence(tmp_path):
    assert_png(plot_tradeoff(sweep_runs(), tmp_path / "beta.png", vary="beta"))
    assert plot_tradeoff(sweep_runs(), tmp_path / "none.png", env="diffuse_mix") is None
    one_beta = [r for r in sweep_runs() if r.params["beta"] == 1.0]
    assert plot_tradeoff(one_beta, tmp_path / "one.png", vary="beta") is None
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "one.png").exists()


def test_tradeoff_refuses_bad_input():
    params = {"latent_dim": 32, "beta": "high", "lambda_click": 0.5}
    bad = [RunResult("sac_gems", "focused_topdown", 0, 1.0, "quick", params=params)]
    with pytest.raises(SlateRLError, match="beta='high' is not a number"):
        tradeoff_points(bad, env="focused_topdown", vary="lambda_click")
    with pytest.raises(SlateRLError, match="'beta' or 'lambda_click'"):
        tradeoff_points(sweep_runs(), env="focused_topdown", vary="gamma")
    twice = sweep_runs() + sweep_runs()[:1]
    with pytest.raises(SlateRLError, match=r"latent_dim=16, beta=0\.1, lambda_click=0\.5 holds two runs of seed 0"):
        tradeoff_points(twice, env="focused_topdown")


def test_write_figures_writes_what_the_records_allow(tmp_path):
    paths = write_figures(curve_runs() + sweep_runs(), tmp_path)
    assert sorted(p.name for p in paths) == [
        "learning_curves.png",
        "tradeoff_beta_focused_topdown.png",
        "tradeoff_lambda_click_focused_topdown.png",
    ]
    for path in paths:
        assert_png(path)
    assert write_figures([RunResult("random", "focused_mix", 0, 1.0, "quick")], tmp_path / "empty") == []


def test_offline_curves_one_panel_per_dataset_and_only_with_curves(tmp_path):
    results = [
        OfflineResult(
            algorithm, "focused_mix", quality, seed, "paper", 50.0, 40.0, val_curve=((100, 10.0), (200, 40.0 + seed))
        )
        for algorithm in ("bc", "iql")
        for quality in ("expert", "medium", "random")
        for seed in range(2)
    ]
    behaviour = [BehaviourScore("focused_mix", "expert", "run", 100.0)]
    assert_png(plot_offline_curves(results, behaviour, tmp_path / "curves.png"))
    without = [OfflineResult("bc", "focused_mix", "expert", 0, "paper", 50.0, 40.0)]
    assert plot_offline_curves(without, behaviour, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_panel_titles_count_seeds_and_long_legend_labels_take_fewer_columns():
    from slate_rl.reporting import figures

    assert [figures._seed_counts(c) for c in ({1}, {3}, {2, 3}, set())] == [
        "1 seed",
        "3 seeds",
        "2–3 seeds",
        "no seeds",
    ]
    short = figures._panels(1, 3, ["BC", "IQL", "CQL", "TD3+BC"], (4.5, 3.2), hspace=0.3)
    long = figures._panels(1, 3, ["SAC+TopK (ideal) [reference_protocol=true]"] * 4, (4.5, 3.2), hspace=0.3)
    (rows_short, cols_short), (rows_long, cols_long) = short[3:], long[3:]
    assert (rows_short, cols_short) == (1, 4)  # four short entries fit one row of a 4.5-inch figure
    assert cols_long == 1 and rows_long == 4  # a 43-character label needs about 3.8 inches: one per row
    assert long[2] > short[2]  # the figure grows by the legend rows
