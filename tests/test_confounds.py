"""Confound checks (issue 17, item 7) on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.analysis.confounds import class_only_accuracy, confounds, majority_share


def _blobs(cells, dims: int = 8, n: int = 12, seed: int = 0, by: str = "class"):
    """``cells``: (domain, class) pairs; each gets ``n`` points around a centre set by its class (``by="class"``)
    or its domain (``by="domain"``)."""
    rng = np.random.default_rng(seed)
    names = sorted({c[1] if by == "class" else c[0] for c in cells})
    X, d, c = [], [], []
    for dom, cls in cells:
        p = rng.normal(size=(n, dims))
        p[:, names.index(cls if by == "class" else dom)] += 6.0
        X.append(p)
        d += [dom] * n
        c += [cls] * n
    return np.concatenate(X), d, c


def test_domain_fully_confounded_with_class():
    """Each class lives in one domain and the features encode only the class: the domain probe looks perfect,
    the class alone explains it, a leave-class-out probe cannot name the domain, no within-class score exists."""
    cells = [(f"D{k // 2}", f"c{k}") for k in range(6)]
    r = confounds(*_blobs(cells))
    assert r.class_only_acc == 1.0 and r.accuracy >= 0.95
    assert r.lco_accuracy < 0.5 and r.lco_balanced < 0.5
    assert np.isnan(r.within_nmi) and "fully confounded" in r.notes[0]
    assert r.confusion.shape == (3, 3) and np.allclose(r.confusion.sum(1), 1.0)


def test_domain_in_the_features_crossed_with_class():
    cells = [(f"D{i}", f"c{k}") for i in range(3) for k in range(3)]
    r = confounds(*_blobs(cells, by="domain"))
    assert r.class_only_acc == pytest.approx(1 / 3)  # every class in every domain: the class says nothing
    assert r.lco_accuracy == 1.0 and r.within_nmi == pytest.approx(1.0) and r.within_ami == pytest.approx(1.0)
    assert r.per_class["n_domains"].tolist() == [3, 3, 3]
    assert np.allclose(np.diag(r.confusion.to_numpy()), 1.0)


def test_chance_levels_with_unequal_domains():
    """TerraIncognita-like shares (40/20/20/20 %) and features with no domain information: plain accuracy's
    chance is the largest share (0.4), balanced accuracy's 1 / 4."""
    rng = np.random.default_rng(1)
    d = ["L100"] * 40 + ["L38"] * 20 + ["L43"] * 20 + ["L46"] * 20
    c = list(rng.choice(["a", "b"], size=100))
    r = confounds(rng.normal(size=(100, 5)), d, c, n_seeds=1)
    assert r.majority_share == pytest.approx(0.4) == majority_share(d) and r.balanced_chance == 0.25
    assert r.balanced_accuracy < 0.45 and r.accuracy < 0.6
    s = r.summary().set_index("statistic")
    assert s.loc["domain probe accuracy", "chance"] == pytest.approx(0.4)
    assert s.loc["domain probe balanced accuracy", "chance"] == pytest.approx(0.25)
    assert class_only_accuracy(["x", "x", "y"], ["a", "a", "a"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least 2 domains"):
        confounds(np.zeros((4, 2)), ["x"] * 4, ["a", "b"] * 2)


def test_confounds_cli_writes_tables(tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "conf"
    assert main(["confounds", "--model", "pixels", "--dataset", "synthetic-pacs:heldout", "--max-per-domain", "12",
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "confounds.csv")
    assert "domain probe balanced accuracy" in set(summary["statistic"])
    assert len(pd.read_csv(out / "confusion.csv")) == 4 and len(pd.read_csv(out / "per_class.csv")) == 6
    assert "python -m core confounds" in (out / "config.json").read_text()
    per = pd.read_csv(out / "per_class.csv")
    assert (per["n_domains"] == 4).all() and per["within_nmi"].notna().all()  # 2 images per (class, domain)


def test_explore_shows_the_confounds_of_its_features(monkeypatch):
    """One line in Explore: the expander's numbers are core's on the same features."""
    import os

    from streamlit.testing.v1 import AppTest

    from core.analysis.confounds import confounds_of
    from core.engine.extract import ExtractionConfig, get_features

    monkeypatch.setenv("DOMAINLENS_DEFAULT_MODEL", "pixels")
    monkeypatch.setenv("DOMAINLENS_MAX_PER_DOMAIN", "8")
    monkeypatch.delenv("DOMAINLENS_DATA_ROOTS", raising=False)
    app = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app.py")
    at = AppTest.from_file(app, default_timeout=120).run()
    at.switch_page("pages/explore.py").run()
    at.toggle(key="confounds_on").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    fs = get_features(ExtractionConfig(dataset="synthetic-pacs:heldout", model="pixels", max_per_domain=8),
                      ["pixels"], device="cpu")
    ref = confounds_of(fs, "pixels", seed=0)
    shown = next(d.value for d in at.dataframe if "statistic" in getattr(d.value, "columns", []))
    np.testing.assert_allclose(shown["value"].to_numpy(float), ref.summary()["value"].to_numpy(float))
