"""The views of routing: ``routing_summary`` and its widget, and the utilisation plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from moe_helpers.config import ModelConfig, TrainConfig  # noqa: E402
from moe_helpers.model import GPT  # noqa: E402
from moe_helpers.plots import (expert_colors, plot_expert_utilisation,  # noqa: E402
                               plot_utilisation_over_training, show_token_routing)
from moe_helpers.train import History, train_phase  # noqa: E402
from moe_helpers.widgets import RoutingSummary, routing_explorer, routing_summary  # noqa: E402

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
    assert 1 / num_experts - 1e-6 <= summary.max_share <= 1.0


def test_routing_summary_is_cached_and_repeatable(tiny):
    first = routing_summary(3, 2, 0.05, SENTENCE, steps=2, data=tiny)
    again = routing_summary(3, 2, 0.05, SENTENCE, steps=2, data=tiny)
    assert again == first
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
    # layer 1 exists only in phase 2
    assert len(plot_utilisation_over_training(history, layer=1).get_lines()) >= 4
    with pytest.raises(ValueError):
        plot_utilisation_over_training(history, layer=2)


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


def test_routing_explorer_refuses_impossible_settings(tiny):
    with pytest.raises(ValueError):
        routing_explorer(num_experts=2, top_k=3, steps=0, data=tiny)
    with pytest.raises(ValueError):
        routing_explorer(num_experts=17, top_k=1, steps=0, data=tiny)
