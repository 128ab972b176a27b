"""Domain-generalization what-if (leave one domain out): core, CLI and the app page."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import pytest

from core.analysis.dg import leave_one_domain_out, mean_rows, nearest_centroid, rank_settings
from core.cli import main
from core.data.datasets import load_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATASET = "synthetic-pacs:heldout"
N = 8
MODELS = ["domainlens-tiny", "domainlens-cnn"]


def test_leave_one_domain_out_definitions():
    """Three domains shifted far apart, two classes separable within each domain by feature 1."""
    rng = np.random.default_rng(0)
    X, doms, cls = [], [], []
    for d, offset in (("a", 0.0), ("b", 20.0), ("c", 5.0)):
        for c in (0, 1):
            pts = rng.normal(size=(10, 4)) * 0.1
            pts[:, 0] += offset
            pts[:, 1] += 3 * c
            X.append(pts)
            doms += [d] * 10
            cls += [f"k{c}"] * 10
    folds = leave_one_domain_out(np.concatenate(X), doms, cls, seed=0)
    assert [f.domain for f in folds] == ["a", "b", "c"]
    for f in folds:
        assert len(f.train_idx) == 40 and len(f.test_idx) == 20
        assert f.shares.sum() == pytest.approx(1.0) and len(f.shares) == 2  # K = training domains
        assert f.gap == pytest.approx(f.in_domain_acc - f.heldout_acc)
        assert f.aug_delta == pytest.approx(f.heldout_acc_aug - f.heldout_acc)
        np.testing.assert_array_equal(f.pseudo_test, nearest_centroid(np.concatenate(X)[f.test_idx], f.centroids))
        # the pseudo-domains are the two training domains; a held-out domain lands on the nearer one
        assert f.entropy == pytest.approx(0.0) and f.entropy_norm == pytest.approx(0.0)
        assert f.in_domain_acc == 1.0
    landed = [f.pseudo_names[int(np.argmax(f.shares))] for f in folds]
    assert [n.split("(mostly ")[1] for n in landed] == ["c)", "c)", "a)"]
    with pytest.raises(ValueError, match="at least 3 domains"):
        leave_one_domain_out(np.zeros((4, 2)), ["a", "a", "b", "b"], ["x", "y", "x", "y"])


def test_dg_cli_rows_domainbed_files_seed_stability_and_gap(tmp_path, capsys):
    out = tmp_path / "ranking.csv"
    assert main(["dg", "--dataset", DATASET, "--model", ",".join(MODELS), "--blocks", "up_blocks.1",
                 "--timesteps", "50", "--max-per-domain", str(N), "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    assert "top setting" in capsys.readouterr().out
    df = pd.read_csv(out)
    # one row per setting and held-out domain, plus one mean row per setting
    assert len(df) == 2 * (4 + 1)
    assert sorted(df[df["heldout_domain"] != "mean"]["heldout_domain"].unique()) == \
        ["cartoon", "painting", "photo", "sketch"]
    means = df[df["heldout_domain"] == "mean"]
    assert sorted(means["rank_heldout_acc"]) == [1, 2] and sorted(means["rank_gap"]) == [1, 2]
    for (m, b), sub in df.groupby(["model", "block"]):
        per = sub[sub["heldout_domain"] != "mean"]
        mrow = sub[sub["heldout_domain"] == "mean"].iloc[0]
        assert mrow["heldout_acc"] == pytest.approx(per["heldout_acc"].mean(), abs=1e-4)
        np.testing.assert_allclose(per["gap"], per["in_domain_acc"] - per["heldout_acc"], atol=2e-4)
    # DomainBed-ready files of the top setting: one folder per test domain
    top = means.iloc[0]  # ranked by the pseudo-domain gain (the default): the DomainBed files are its
    assert top["rank_pd_gain"] == 1 and sorted(means["rank_pd_gain"]) == [1, 2]
    np.testing.assert_allclose(means["pd_gain"], means["acc_pseudo_domains"] - means["acc_one_domain"], atol=2e-4)
    folder = tmp_path / "ranking-domainbed"
    root = load_dataset(DATASET).root
    envs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert envs == ["test_env_0_cartoon", "test_env_1_painting", "test_env_2_photo", "test_env_3_sketch"]
    a = pd.read_csv(folder / "test_env_2_photo" / "pseudo_domains.csv")
    assert list(a.columns) == ["path", "pseudo_domain"] and len(a) == 3 * N
    assert all((root / p).is_file() if hasattr(root, "joinpath") else os.path.isfile(os.path.join(root, p))
               for p in a["path"]) and not any(p.startswith("photo/") for p in a["path"])
    cent = np.load(folder / "test_env_2_photo" / "centroids.npy", allow_pickle=False)
    assert cent.shape[0] == 6 and set(a["pseudo_domain"]) <= set(range(6))  # K = classes (GUIDE x 1)
    assert '"block": "%s"' % top["block"] in (folder / "setting.json").read_text()

    # another seed (image sample, diffusion noise, k-means, cross-validation): the same top setting
    rank1, _ = rank_settings(DATASET, MODELS, ["up_blocks.1"], [50], max_per_domain=N, seed=1, analysis_seed=1,
                             device="cpu")
    m0, m1 = means.sort_values("rank_heldout_acc").iloc[0], mean_rows(rank1, "heldout_acc").iloc[0]
    assert (m0["model"], m0["block"]) == (m1["model"], m1["block"])

    # the domain shift the features carry: the held-out gap (in-domain minus held-out class accuracy),
    # mean over the 4 held-out domains, is larger for the diffusion model's features (which cluster by
    # domain) than for the supervised CNN's, at both seeds
    for ranking in (df, rank1):
        g = ranking[ranking["heldout_domain"] == "mean"].set_index("model")["gap"]
        assert g["domainlens-tiny"] > g["domainlens-cnn"], g.to_dict()


def test_dg_page_matches_core(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOMAINLENS_MAX_PER_DOMAIN", "6")
    monkeypatch.delenv("DOMAINLENS_DEFAULT_MODEL", raising=False)
    monkeypatch.delenv("DOMAINLENS_DATA_ROOTS", raising=False)
    app = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "app.py")
    at = AppTest.from_file(app, default_timeout=180).run()
    at.switch_page("pages/dg.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.multiselect(key="dg_blocks").value == ["up_blocks.1"] and at.number_input(key="dg_k").value == 6
    rank, results = rank_settings(DATASET, ["domainlens-tiny"], ["up_blocks.1"], [50], max_per_domain=6, seed=0,
                                  analysis_seed=0, n_clusters=6, device="cpu")
    ref = mean_rows(rank).iloc[0]
    shown = at.dataframe[0].value.iloc[0]
    for c in ("pd_gain", "pd_gain_ci95", "pd_homogeneity", "pd_nmi", "heldout_acc", "in_domain_acc", "gap",
              "heldout_acc_aug", "landing_entropy_norm"):
        assert shown[c] == pytest.approx(ref[c]), c
    # the embedded model's own record says it was trained on every domain of the built-in train split
    assert any("was trained on images of the held-out domain" in w.value for w in at.warning)
    fold = results[("domainlens-tiny", "up_blocks.1", 50)].fold("cartoon")
    m = {x.label: x.value for x in at.metric}
    assert m["Held-out class accuracy"] == f"{fold.heldout_acc:.1%}"
    assert m["In-domain accuracy"] == f"{fold.in_domain_acc:.1%}"
    assert m["Gap (domain shift)"] == f"{fold.gap:+.3f}"
    landing = at.dataframe[1].value
    np.testing.assert_allclose(landing.iloc[0, 1:1 + len(fold.shares)].to_numpy(float), fold.shares)
    labels = {b.label for b in at.get("download_button")}
    assert {"ranking (CSV)", "domainbed.zip", "configuration (JSON)"} <= labels
    at.selectbox(key="dg_heldout").select("sketch").run()
    assert not at.exception
    sk = results[("domainlens-tiny", "up_blocks.1", 50)].fold("sketch")
    assert {x.label: x.value for x in at.metric}["Held-out class accuracy"] == f"{sk.heldout_acc:.1%}"
    at.toggle(key="dg_sweep").set_value(True).run()  # K over GUIDE's classes x {1, 3, 5} and training domains
    assert not at.exception
    shown = {tuple(d.value.columns[:2]): d.value for d in at.dataframe}
    assert list(shown[("n_pseudo_domains", "k_asked")]["k_asked"]) == [3, 6, 18, 30]
    assert list(shown[("n_train_domains", "n_pseudo_domains")]["n_train_domains"]) == [2, 3]


# ------------------------------------------------------------------- pseudo-domain quality (issue 17, item 6)


def planted(identity: bool, n: int = 16, seed: int = 0):
    """4 domains x 2 classes. Within a domain the class is feature 1 (gap 2, noise 0.5), but domain i shifts
    feature 1 by 3 i. ``identity``: feature 0 names the domain (30 i, so k-means recovers the domains, and a
    pooled probe leans on it to undo the shift, which fails on a new domain; per-domain normalisation with
    the right domain labels removes the shift instead); otherwise feature 2 holds a strong two-cluster
    structure unrelated to the domain (k-means finds that)."""
    rng = np.random.default_rng(seed)
    X, doms, cls = [], [], []
    for i, d in enumerate("abcd"):
        for c in (0, 1):
            p = rng.normal(size=(n, 4)) * 0.5
            p[:, 1] += 2.0 * c + 3.0 * i
            if identity:
                p[:, 0] += 30 * i
            else:
                p[:, 2] += 30 * rng.integers(0, 2, n)
            X.append(p)
            doms += [d] * n
            cls += [f"k{c}"] * n
    return np.concatenate(X).astype(np.float32), doms, cls


def test_ranking_by_pseudo_domain_gain_finds_the_planted_signal():
    from core.analysis.dg import DGResult, rank_frame, t_halfwidth

    good = leave_one_domain_out(*planted(True), n_clusters=3)
    bad = leave_one_domain_out(*planted(False), n_clusters=3)
    for f in good:  # the pseudo-domains are the training domains: the same learner, the same accuracy
        assert f.agreement["homogeneity"] == pytest.approx(1.0) and f.agreement["purity"] == pytest.approx(1.0)
        assert f.pd_gain == pytest.approx(f.true_gain)
        assert f.pd_gain == pytest.approx(f.acc_pseudo_domains - f.acc_one_domain)
    assert all(f.agreement["homogeneity"] < 0.5 for f in bad)
    assert np.mean([f.pd_gain for f in good]) > 0.1 > np.mean([f.pd_gain for f in bad])
    rank = rank_frame([DGResult("m", "bad", None, bad), DGResult("m", "good", None, good)])
    means = mean_rows(rank)
    assert list(means["block"]) == ["good", "bad"] and list(means["rank_pd_gain"]) == [1, 2]
    g = means.iloc[0]
    per = rank[(rank["block"] == "good") & (rank["heldout_domain"] != "mean")]["pd_gain"]
    assert g["pd_gain_sd"] == pytest.approx(per.std(ddof=1))
    assert g["pd_gain_ci95"] == pytest.approx(3.182446 * per.std(ddof=1) / 2, rel=1e-5)  # t(0.975, 3)
    assert np.isnan(t_halfwidth([0.3]))
    # the group-balanced learner: with one group it is the plain probe
    bal = leave_one_domain_out(*planted(True), n_clusters=3, learner="balanced")
    assert all(f.acc_one_domain == pytest.approx(f.heldout_acc) for f in bal)
    with pytest.raises(ValueError, match="learner must be one of"):
        leave_one_domain_out(*planted(True), learner="dro")
    from core.analysis import dg
    from core.cli import dgaudit

    assert (dgaudit.LEARNERS, dgaudit.LEARNERS[0], dgaudit.RANK_BY) == (dg.LEARNERS, dg.DEFAULT_LEARNER, dg.RANK_BY)


def test_k_sweep_over_guide_choices_and_training_domain_sweep():
    from core.analysis.dg import guide_ks, k_sweep, train_domain_sweep

    X, d, c = planted(True, n=8)
    assert guide_ks(7) == [7, 21, 35]
    ks = k_sweep(X, d, c)  # default: training domains (3) and classes x {1, 3, 5} = 2, 6, 10
    assert list(ks["n_pseudo_domains"]) == [2, 3, 6, 10]
    assert list(ks["k_rule"]) == ["classes x 1", "training domains", "classes x 3", "classes x 5"]
    r = ks.set_index("n_pseudo_domains")
    # past the number of domains every pseudo-domain stays pure (homogeneity 1) while NMI falls
    assert r.loc[3, "pd_nmi"] == pytest.approx(1.0) and r.loc[6, "pd_homogeneity"] == pytest.approx(1.0)
    assert r.loc[10, "pd_homogeneity"] == pytest.approx(1.0) and r.loc[10, "pd_nmi"] < r.loc[6, "pd_nmi"] < 0.9
    assert r.loc[2, "pd_homogeneity"] < 1.0 and (r["n_folds"] == 4).all()
    td = train_domain_sweep(X, d, c, n_clusters=2)
    assert list(td["n_train_domains"]) == [2, 3] and list(td["n_folds"]) == [4 * 3, 4]


def test_trained_on_heldout_comes_from_the_models_own_record():
    from core.analysis.dg import backbone_training_data, heldout_seen

    rec = backbone_training_data("domainlens-tiny")
    assert rec["synthetic-pacs:train"] == ["cartoon", "painting", "photo", "sketch"]
    assert heldout_seen("domainlens-tiny", "synthetic-pacs:heldout", ["photo", "sketch"]) == {"photo": True,
                                                                                              "sketch": True}
    assert heldout_seen("domainlens-tiny", "/data/PACS", ["photo"]) == {"photo": False}  # another dataset
    assert heldout_seen("domainlens-cnn", "rotated-digits", ["rot00"]) == {"rot00": True}  # names only: all
    assert heldout_seen("pixels", "synthetic-pacs", ["photo"]) == {"photo": False}  # no weights: saw nothing
    assert heldout_seen("no/such-model", "synthetic-pacs", ["photo"]) == {"photo": None}  # no record: unknown
