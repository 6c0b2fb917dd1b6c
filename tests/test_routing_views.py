"""The views of routing: ``routing_summary`` and its explorer widget (notebook 02),
and the utilisation plots."""

import dataclasses
import html

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

import moe_helpers.routing_explorer as routing_explorer_module
from moe_helpers.config import ModelConfig, TrainConfig
from moe_helpers.model import GPT
from moe_helpers.plots import (busiest_expert_share, expert_colors, plot_busiest_share, plot_expert_utilisation,
                               plot_utilisation_over_training, show_token_routing)
from moe_helpers.routing_explorer import (EXPLORER_LOAD_WINDOW, ExplorerSettings, RoutingSummary, explorer_png,
                                          load_steps, routing_explorer, routing_summary, routing_table_html,
                                          trained_explorer_model)
from moe_helpers.train import History, train_phase
from concurrent_changes import change_at_once
from plot_pixels import plot_problems

matplotlib.use("Agg")

SENTENCE = "Once upon a time, a little girl named Lily found a red ball in the park."


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def tiny_moe(tiny):
    """A 2-layer MoE (5 experts, top-2) on the tiny data's vocabulary, trained 3 steps."""
    cfg = ModelConfig(vocab_size=tiny.tokenizer.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=48,
                      max_seq_len=64, num_experts=5, top_k=2)
    torch.manual_seed(0)
    model = GPT(cfg)
    settings = TrainConfig(steps_phase1=3, lr_phase1=3e-3, batch_size=4, seq_len=32, log_every=1, eval_every=100,
                           eval_batches=1, device="cpu")
    history = train_phase(model, tiny, settings, progress=False, verbose=False)
    return model, history


# ------------------------------------------------------------ routing_summary
@pytest.mark.parametrize("num_experts, top_k", [(1, 1), (4, 2), (6, 3)])
def test_routing_summary_loads_sum_to_one_and_experts_are_in_range(tiny, num_experts, top_k):
    summary = routing_summary(num_experts, top_k, 0.01, SENTENCE, steps=2, data=tiny)
    assert isinstance(summary, RoutingSummary)
    num_tokens = len(tiny.tokenizer.encode(SENTENCE))
    assert len(summary.tokens) == len(summary.experts) == len(summary.weights) == num_tokens
    assert "".join(summary.tokens) == SENTENCE
    assert len(summary.load) == len(summary.training_load) == num_experts
    assert sum(summary.load) == pytest.approx(1.0, abs=1e-6)
    assert sum(summary.training_load) == pytest.approx(1.0, abs=1e-6)
    for experts, weights in zip(summary.experts, summary.weights):
        assert len(experts) == len(set(experts)) == top_k
        assert all(0 <= expert < num_experts for expert in experts)
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)               # renormalised top-k
        assert weights == sorted(weights, reverse=True)                    # best expert first
    # the sentence's load is exactly the chosen experts counted and divided by the T*k slots
    counts = np.bincount(np.array(summary.experts).ravel(), minlength=num_experts)
    np.testing.assert_allclose(summary.load, counts / (num_tokens * top_k), atol=1e-6)
    # the training load is the last log record of the model's own history: 2 steps since step 0
    _, history = trained_explorer_model(tiny, ExplorerSettings(num_experts, top_k, 0.01, steps=2))
    assert [r["step"] for r in history.records] == [0, 2]
    assert summary.training_load == history.records[-1]["expert_load"][0]
    assert summary.load_steps == 2 and "the last 2 training steps" in summary.headline()


def test_routing_summary_is_cached_and_repeatable(tiny):
    first = routing_summary(3, 2, 0.05, SENTENCE, steps=2, data=tiny)
    again = routing_summary(3, 2, 0.05, SENTENCE, steps=2, data=tiny)
    assert again == first
    settings = ExplorerSettings(3, 2, 0.05, steps=2)
    assert trained_explorer_model(tiny, settings) is trained_explorer_model(tiny, settings)   # trained once
    other_text = routing_summary(3, 2, 0.05, "The dog ran.", steps=2, data=tiny)
    assert other_text.training_load == first.training_load        # same trained model, new sentence
    assert len(other_text.tokens) == len(tiny.tokenizer.encode("The dog ran."))


def test_routing_summary_table_lists_every_token(tiny):
    summary = routing_summary(4, 2, 0.01, SENTENCE, steps=0, data=tiny)
    lines = summary.table().splitlines()
    assert len(lines) == 1 + len(summary.tokens)
    assert repr(summary.tokens[0]) in lines[1]


@pytest.mark.parametrize("num_experts, top_k, coef, text", [
    (4, 5, 0.01, SENTENCE),     # top_k > experts
    (1, 2, 0.01, SENTENCE),
    (0, 1, 0.01, SENTENCE),     # no experts
    (4, 0, 0.01, SENTENCE),     # top_k < 1
    (4, 2, -0.1, SENTENCE),     # negative coefficient
    (4, 2, 0.01, ""),           # nothing to route
])
def test_routing_summary_rejects_bad_settings(tiny, num_experts, top_k, coef, text):
    with pytest.raises(ValueError):
        routing_summary(num_experts, top_k, coef, text, steps=0, data=tiny)


# ---------------------------------------------------------------- heatmap
def test_utilisation_heatmap_has_one_cell_per_layer_and_expert():
    loads = [[0.2, 0.2, 0.2, 0.2, 0.2], [0.6, 0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0, 1.0]]
    ax = plot_expert_utilisation(loads)
    image = ax.images[0]
    assert image.get_array().shape == (3, 5)
    np.testing.assert_allclose(image.get_array(), loads)
    labels = [text.get_text() for text in ax.texts]
    assert len(labels) == 15
    assert labels[:5] == ["20%"] * 5 and labels[5] == "60%" and labels[14] == "100%"
    assert image.norm(0.2) == pytest.approx(0.5)          # the uniform share 1/E sits at the centre colour
    assert image.norm(0.6) > 0.5 > image.norm(0.1)
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_utilisation_heatmap_takes_tensors_and_counts_experts_from_the_data():
    loads = [torch.full((11,), 1 / 11), torch.full((11,), 1 / 11)]
    ax = plot_expert_utilisation(loads)
    assert ax.images[0].get_array().shape == (2, 11)
    assert len(ax.texts) == 22
    assert image_center(ax) == pytest.approx(1 / 11)


def image_center(ax):
    return ax.images[0].norm.vcenter


def test_utilisation_heatmap_rejects_ragged_loads():
    with pytest.raises(ValueError):
        plot_expert_utilisation([[0.5, 0.5], [0.2, 0.3, 0.5]])
    with pytest.raises(ValueError):
        plot_expert_utilisation([])


# ------------------------------------------------------ utilisation over time
def _record(phase, step, global_step, expert_load):
    return {"phase": phase, "step": step, "global_step": global_step, "train_loss": 1.0, "val_loss": None,
            "aux_loss": 0.0, "lr": 0.0, "tokens": 0, "seconds": 0.0, "expert_load": expert_load}


def test_utilisation_over_training_draws_one_line_per_expert_across_phases():
    history = History([
        _record(1, 0, 0, []), _record(1, 10, 10, []),                           # dense phase: skipped
        _record(2, 0, 10, [[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]]),
        _record(2, 10, 20, [[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]),
        _record(3, 0, 20, [[0.7, 0.1, 0.1, 0.1]]),
    ])
    ax = plot_utilisation_over_training(history, layer=0)
    expert_lines = [line for line in ax.lines if line.get_label().startswith("expert")]
    assert len(expert_lines) == 4
    np.testing.assert_allclose(expert_lines[0].get_xdata(), [10, 20, 20])
    np.testing.assert_allclose(expert_lines[0].get_ydata(), [25, 40, 70])
    uniform = [line for line in ax.lines if line.get_label() == "uniform 1/E"]
    assert len(uniform) == 1 and set(uniform[0].get_ydata()) == {25.0}
    phase_marks = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert sorted(line.get_xdata()[0] for line in phase_marks) == [10, 20]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    # layer 1 exists only in phase 2: its two log steps
    layer_1 = [line for line in plot_utilisation_over_training(history, layer=1).lines
               if line.get_label().startswith("expert")]
    assert len(layer_1) == 4
    np.testing.assert_allclose(layer_1[3].get_xdata(), [10, 20])
    np.testing.assert_allclose(layer_1[3].get_ydata(), [40, 40])
    with pytest.raises(ValueError):
        plot_utilisation_over_training(history, layer=2)


def test_busiest_share_is_the_layer_mean_of_each_layers_largest_share():
    runs = {
        "a": History([_record(1, 0, 0, [[0.25, 0.25, 0.25, 0.25], [0.1, 0.2, 0.3, 0.4]]),
                      _record(1, 10, 10, [[0.7, 0.1, 0.1, 0.1], [0.9, 0.1, 0.0, 0.0]])]),
        "b": History([_record(1, 0, 0, [[0.5, 0.5, 0.0, 0.0]]), _record(1, 10, 10, [[0.25] * 4])]),
    }
    assert busiest_expert_share(runs["a"].records[1]) == pytest.approx(0.8)
    ax = plot_busiest_share(runs)
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(lines["a"].get_ydata(), [32.5, 80.0])
    np.testing.assert_allclose(lines["b"].get_ydata(), [50.0, 25.0])
    np.testing.assert_allclose(lines["uniform 1/E = 1/4"].get_ydata(), [25.0, 25.0])
    with pytest.raises(ValueError, match="routing"):
        busiest_expert_share(_record(1, 0, 0, []))


def test_utilisation_over_training_reads_a_real_history(tiny_moe):
    model, history = tiny_moe
    ax = plot_utilisation_over_training(history, layer=1)
    expert_lines = [line for line in ax.lines if line.get_label().startswith("expert")]
    assert len(expert_lines) == model.cfg.num_experts
    shares = np.array([line.get_ydata() for line in expert_lines])          # (E, log steps)
    np.testing.assert_allclose(shares.sum(axis=0), 100.0, atol=1e-4)


# ------------------------------------------------------------ token routing
def test_token_routing_draws_one_box_per_token_coloured_by_its_top1_expert(tiny, tiny_moe):
    model, _ = tiny_moe
    was_training = model.training
    ax = show_token_routing(tiny.tokenizer, model, SENTENCE, layer=1)
    assert model.training == was_training
    num_tokens = len(tiny.tokenizer.encode(SENTENCE))
    assert len(ax.patches) == num_tokens
    model.eval()
    with torch.no_grad():
        top1 = model(torch.tensor([tiny.tokenizer.encode(SENTENCE)])).routing[1].top1_expert.tolist()
    colors = expert_colors(model.cfg.num_experts)
    for patch, expert in zip(ax.patches, top1):
        np.testing.assert_allclose(patch.get_facecolor()[:3], to_rgba(colors[expert])[:3])
    legend_labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert len(legend_labels) == model.cfg.num_experts
    assert sum(int(label.split(":")[1]) for label in legend_labels) == num_tokens
    assert legend_labels[top1[0]].startswith(f"expert {top1[0]}:")


def test_token_routing_rejects_a_layer_the_model_lacks(tiny, tiny_moe):
    model, _ = tiny_moe
    with pytest.raises(ValueError):
        show_token_routing(tiny.tokenizer, model, SENTENCE, layer=2)


# ------------------------------------------------------------------ widget
def test_load_steps_follow_the_log_records():
    assert EXPLORER_LOAD_WINDOW == 10
    assert [load_steps(steps) for steps in (0, 2, 10, 40, 45)] == [0, 2, 10, 10, 5]


def test_headline_says_what_the_load_covers():
    summary = RoutingSummary(num_experts=3, top_k=1, aux_loss_coef=0.0, steps=40, load_steps=load_steps(40), layer=0,
                             tokens=["a"], experts=[[0]], weights=[[1.0]], load=[1.0, 0.0, 0.0],
                             training_load=[0.5, 0.25, 0.25], final_loss=2.5)
    assert summary.headline().splitlines() == [
        "training loss after 40 steps: 2.500 nats/token",
        "busiest expert: 50% of the token slots over the last 10 training steps (uniform: 1/3 = 33%)"]
    untrained = dataclasses.replace(summary, steps=0, load_steps=load_steps(0))
    assert "over one batch before training" in untrained.headline()


def test_routing_table_has_one_row_per_token_and_k_chips_per_row(tiny):
    summary = routing_summary(4, 2, 0.01, SENTENCE, steps=0, data=tiny)
    table = routing_table_html(summary)
    assert table.count("<tr>") == 1 + len(summary.tokens)
    assert table.count('class="expert-chip"') == 2 * len(summary.tokens)
    first_expert, first_weight = summary.experts[0][0], summary.weights[0][0]
    assert f"{first_expert}: {first_weight:.2f}</span>" in table
    assert html.escape(repr(summary.tokens[0])) in table


def test_explorer_png_is_a_complete_plot(tiny):
    for num_experts, top_k in [(1, 1), (16, 4)]:
        png = explorer_png(routing_summary(num_experts, top_k, 0.01, SENTENCE, steps=0, data=tiny))
        assert plot_problems(png, expected_axes=1) == []


def test_routing_explorer_keeps_top_k_within_the_number_of_experts(tiny):
    explorer = routing_explorer(num_experts=4, top_k=2, steps=0, data=tiny)
    assert (explorer.experts.min, explorer.experts.max) == (1, 16)
    assert explorer.top_k.max == 4
    explorer.experts.value = 3
    assert explorer.top_k.max == 3 and explorer.top_k.value == 2
    explorer.experts.value = 1
    assert explorer.top_k.max == 1 and explorer.top_k.value == 1
    explorer.top_k.value = 5                    # beyond the maximum: the slider clamps it
    assert explorer.top_k.value == 1
    explorer.experts.value = 6
    explorer.top_k.value = 6
    assert explorer.top_k.max == 6 and explorer.top_k.value == 6
    summary = explorer.summary()
    assert (summary.num_experts, summary.top_k) == (6, 6)
    assert all(len(row) == 6 for row in summary.experts)
    assert explorer.wait()


def test_routing_explorer_refuses_impossible_settings(tiny):
    with pytest.raises(ValueError):
        routing_explorer(num_experts=2, top_k=3, steps=0, data=tiny)
    with pytest.raises(ValueError):
        routing_explorer(num_experts=17, top_k=1, steps=0, data=tiny)


def test_routing_explorer_sliders_act_on_release(tiny):
    explorer = routing_explorer(steps=0, data=tiny)
    assert not any(control.continuous_update for control in
                   (explorer.experts, explorer.top_k, explorer.aux_loss_coef, explorer.steps, explorer.text))
    assert explorer.wait()


def shows(explorer, summary) -> bool:
    """Whether the explorer's report and picture are those of ``summary``."""
    return (explorer.report.value.startswith(f"<pre>{html.escape(summary.headline())}</pre>")
            and explorer.report.value.endswith(routing_table_html(summary))
            and explorer.image.value == explorer_png(summary))


@pytest.mark.slow
def test_a_burst_of_slider_ticks_trains_at_most_two_models(tiny, monkeypatch):
    trained = []
    train = routing_explorer_module.train_explorer_model

    def counting_train(data, settings):
        trained.append(settings.num_experts)
        return train(data, settings)

    monkeypatch.setattr(routing_explorer_module, "train_explorer_model", counting_train)
    explorer = routing_explorer(num_experts=4, top_k=2, aux_loss_coef=0.37, steps=10, data=tiny)
    assert explorer.wait()
    assert trained == [4]
    for num_experts in range(5, 12):            # dragging experts from 4 to 11, one tick at a time
        explorer.experts.value = num_experts
    assert explorer.wait()
    assert 1 <= len(trained) - 1 <= 2 and trained[-1] == 11     # the first tick, perhaps, and the last
    assert shows(explorer, routing_summary(11, 2, 0.37, SENTENCE, steps=10, data=tiny))
    assert explorer.status.value.startswith("ready")


@pytest.mark.slow
def test_routing_explorer_changed_from_two_threads_at_once_shows_the_final_state(tiny):
    explorer = routing_explorer(num_experts=4, top_k=2, aux_loss_coef=0.01, steps=0, data=tiny)
    assert explorer.wait()
    failures = change_at_once([(explorer.experts, [6, 3, 5]),
                               (explorer.aux_loss_coef, [0.2, 0.0, 0.5])])
    assert explorer.wait()
    assert failures == []
    assert (explorer.experts.value, explorer.top_k.value, explorer.aux_loss_coef.value) == (5, 2, 0.5)
    assert shows(explorer, routing_summary(5, 2, 0.5, SENTENCE, steps=0, data=tiny))


def test_routing_explorer_explains_an_empty_text_and_hides_the_picture(tiny):
    explorer = routing_explorer(steps=0, data=tiny)
    explorer.text.value = ""
    assert explorer.wait()
    assert explorer.report.value == "cannot route: text is empty: type a sentence to route"
    assert explorer.image.layout.display == "none"
