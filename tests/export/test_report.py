"""The verdict of each GGUF against the trained model, with the documented thresholds."""

import pytest

from ftcli.export.report import report_summary, verdict


@pytest.mark.parametrize("top1, kl, expected", [(1.0, 0.0, "fine"), (0.9, 0.05, "fine"), (0.89, 0.01, "degraded"),
                                                (0.95, 0.06, "degraded"), (0.6, 0.5, "degraded"),
                                                (0.59, 0.1, "broken"), (0.9, 0.51, "broken")])
def test_verdicts_follow_the_thresholds(top1, kl, expected):
    assert verdict({"top1_agreement": top1, "kl_mean": kl}) == expected


def test_an_unchecked_file_has_no_verdict_and_rows_carry_it():
    assert verdict(None) is None and verdict({"top1_agreement": 0.9}) is None
    rows = report_summary({"files": [{"file": "model-q4_k_m.gguf", "bytes": 1, "fallbacks": [{}, {}],
                                      "parity": {"top1_agreement": 0.73, "kl_mean": 0.2}}]})
    assert rows[0]["verdict"] == "degraded" and rows[0]["fallbacks"] == 2
