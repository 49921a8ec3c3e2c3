"""Profiles: parameter counts and FLOPs as the common counters count them and as they are."""

from __future__ import annotations

import json

import pytest
import torch

import harness  # noqa: F401
from harness.cli import main
from harness.profiling import profile_method
from test_methods_models import one_torch_thread  # noqa: F401  (autouse fixture)



@pytest.fixture(scope="module")
def uniad_paper():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield profile_method("uniad", "paper", with_backbone=False)
    torch.set_num_threads(threads)


def test_uniad_paper_profile_matches_the_fact_sheet(uniad_paper):
    assert uniad_paper["params"]["reconstruction"] == 7_717_392
    assert uniad_paper["params"]["reconstruction_thop_style"] == 4_355_088
    macs = uniad_paper["macs"]["reconstruction"]
    assert 2 * macs["common"] == pytest.approx(3.18e9, rel=0.03)  # calflops
    assert macs["true"] == pytest.approx(1.71e9, rel=0.03)
    assert macs["masked_qk"] == 12 * 196 * 196 * 256  # QK^T of the 12 masked attentions


def test_moead_paper_profile():
    profile = profile_method("moead", "paper", with_backbone=False)
    assert profile["params"]["reconstruction"] == 4_935_704
    assert profile["macs"]["reconstruction"]["true"] == pytest.approx(2.24e9, rel=0.03)


def test_unilead_paper_profile_and_its_reported_numbers():
    profile = profile_method("unilead", "paper", with_backbone=False)
    assert 2 * profile["macs"]["reconstruction"]["common"] == pytest.approx(1.93e9, rel=0.03)
    assert profile["params"]["reconstruction"] == 4_616_496  # the true count, beside the paper's 1.42M
    assert profile["reported"]["params_m"]["value"] == pytest.approx(1.42)
    assert profile["macs"]["reconstruction"]["true"] > profile["macs"]["reconstruction"]["common"]


def test_rd4ad_paper_profile_counts_the_official_module_with_its_unused_conv4():
    profile = profile_method("rd4ad", "paper", with_backbone=False)
    assert profile["params"]["trainable"] == 92_195_328  # OCBE 67,277,824 (conv4/bn4 8,392,704 included) + decoder 24,917,504
    assert profile["macs"]["reconstruction"]["true"] == pytest.approx(18.45e9, rel=0.01)  # + WRN-50-2 to layer 3: fvcore's 30.5 G


@pytest.mark.parametrize("gra_form", ["block_linear", "elementwise"])
def test_thop_style_count_with_se_r4_reproduces_the_papers_1_42m(gra_form):
    # thop sees neither the GRA's raw W and b nor its gate, so both forms count the same
    profile = profile_method("unilead", "paper", {"se_reduction": 4, "gra_form": gra_form}, with_backbone=False)
    assert profile["params"]["reconstruction_thop_style"] == 1_416_624


def test_unilead_gra_forms_cost_what_the_docs_say():
    """Common-counter GFLOPs (2 x MACs): elementwise 1.912, block_linear 1.924, full linear 1.981."""
    flops = {
        form: 2 * profile_method("unilead", "paper", {"gra_form": form}, with_backbone=False)["macs"]["reconstruction"]["common"]
        for form in ("elementwise", "block_linear", "linear")
    }
    block_macs = 8 * 196 * 16 * 240  # 8 mixtures x 196 tokens x 16 x (16 + 32 + 64 + 128)
    full_macs = 8 * 196 * (16**2 + 32**2 + 64**2 + 128**2)
    assert flops["block_linear"] - flops["elementwise"] == 2 * block_macs
    assert flops["linear"] - flops["elementwise"] == 2 * full_macs
    assert flops["block_linear"] == pytest.approx(1.93e9, rel=0.01)


def test_profile_with_random_backbone_adds_backbone_parameters_and_macs():
    profile = profile_method("uniad", "cpu")
    p = profile["params"]
    assert p["backbone"] > 0 and p["with_backbone"] == p["trainable"] + p["backbone"]
    m = profile["macs"]
    assert m["with_backbone"]["true"] == m["reconstruction"]["true"] + m["backbone"]["true"]
    assert m["backbone"]["masked_qk"] == 0


def test_cli_bottlenecks_row_prints_ours_beside_the_paper(capsys):
    assert main(["profile", "--method", "unilead", "--bottlenecks", "16,32", "--no-backbone", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["overrides"] == {"bottlenecks": [16, 32]}
    assert profile["reported"]["params_m"]["value"] == pytest.approx(1.16)
    assert profile["reported"]["flops_g"]["value"] == pytest.approx(1.67)
    assert profile["params"]["reconstruction"] < 4_616_496


def test_cli_errors_and_list(capsys):
    assert main(["profile", "--method", "unilead", "--set", "not_a_key=1", "--no-backbone"]) == 2
    assert "not_a_key" in capsys.readouterr().err
    assert main(["profile", "--list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"uniad", "moead", "unilead", "unimmad", "anomalymoe"} <= {row["method"] for row in listing["methods"]}


def test_dinomaly_paper_profile_counts_61_4m_trainable(capsys):
    assert main(["profile", "--method", "dinomaly", "--preset", "paper", "--no-backbone", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["params"]["trainable"] == profile["params"]["reconstruction"] == 61_425_408
    assert profile["token_grid"] == [28, 28]
    assert profile["macs"]["reconstruction"]["true"] == pytest.approx(48.7e9, rel=0.01)  # spec 4.6: about 49 GMACs per patch expert


def test_unimmad_paper_profile_reports_194_8m_trainable_and_the_prior_generator_apart(capsys):
    assert main(["profile", "--method", "unimmad", "--preset", "paper", "--json"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["params"]["trainable"] == 194_811_660 and round(profile["params"]["trainable"] / 1e6, 1) == 194.8
    assert profile["params"]["apart"] == {"prior_generator": 66_834_240}  # spec 3.8: the frozen prior WRN-50-2
    assert profile["params"]["reconstruction"] == 23_034_466 + 23_362_658 + 24_019_042  # the three C-MoEs
    assert profile["macs"]["with_backbone"]["true"] > 100e9  # encoder, FCM, priors of two modalities, C-MoEs at 256 px


def test_anomalymoe_paper_profile_reports_452_5m_trainable_with_estimator_and_encoder_apart(capsys):
    assert main(["profile", "--method", "anomalymoe", "--preset", "paper", "--json", "--no-macs"]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["params"]["trainable"] == 452_454_610 and round(profile["params"]["trainable"] / 1e6, 1) == 452.5
    assert profile["params"]["apart"] == {"club_estimator": 2_365_440, "encoder": 86_580_480}  # spec 4.6
    assert profile["macs"] == {}


@pytest.mark.parametrize("method", ["unimmad", "anomalymoe"])
def test_a_sweep_cell_of_an_image_method_gets_its_efficiency_columns(method):
    """What every sweep cell's runs row records (harness.sweep.outcome); the reconstruction share is inside the whole."""
    from harness.sweep.outcome import efficiency_columns

    columns = efficiency_columns(method, "cpu", {})
    assert 0 < columns["params_reconstruction"] <= columns["params_trainable"] < columns["params_total"]
    assert 0 < columns["macs_reconstruction_g"] < columns["macs_total_g"]
    assert columns["flops_total_g"] == pytest.approx(2 * columns["macs_total_g"])
