"""The report's statistics and hostile inputs (issue 17: selection without leakage, paired star, LaTeX;
issue 18: one class, one image per domain, markup in folder names), kept as known-answer tests.

docs/RELIABILITY.md ("Second hostile pass (issue 18): report") lists the cases. Reports here skip the t-SNE
panels (``tsne_points=0``: openTSNE dominates a tiny report's time) and use the ``pixels`` baseline except
where a choice between settings needs the tiny diffusion model.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.analysis.metrics import nmi
from core.analysis.report import ReportConfig, build_report, split_folds
from core.figures.report import render_html, render_latex, render_markdown
from core.analysis.stats import Interval, cluster_scores
from core.backbones.registry import load_backbone
from core.cli import main
from core.data.datasets import load_dataset
from core.engine.extract import ExtractionConfig, get_features, select_images
from core.testing import make_domainbed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVIL = "<img src=x onerror=alert(1)>"
LINK = "[x](javascript:alert(1))"


def _digests(paths) -> set[str]:
    return {hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Two folder datasets with markup and LaTeX specials in their names (one with a single class), reported
    with ``pixels`` and an identical twin of it (the same loaded model under a second name)."""
    root = tmp_path_factory.mktemp("report-hostile")
    one = make_domainbed(root / "one_class 100% & co", domains=(EVIL, "photo_2"), classes=("only",), per_cell=4)
    two = make_domainbed(root / "two", domains=("a", "b", LINK), classes=("c", "d"), per_cell=2, seed=1)
    pixels = load_backbone("pixels", "cpu")
    cfg = ReportConfig((str(one), str(two)), ("pixels", "pixels-twin"), n_seeds=2, noise_seeds=(), tsne_points=0,
                       n_boot=50)
    rep = build_report(cfg, device="cpu", cache_dir=str(root / "cache"),
                       models={"pixels": pixels, "pixels-twin": pixels})
    return rep, str(one), str(two)


def test_identical_models_get_no_star_and_the_paired_interval_is_shown(hostile):
    rep, _, two = hostile
    c = rep.comparisons.set_index("dataset").loc[two]
    assert c["diff"] == 0 and c["diff_lo"] <= 0 <= c["diff_hi"] and not c["star"]
    assert not rep.table["best"].any()
    md = render_markdown(rep)
    head = md.split("## Domain AMI")[0]
    assert "| two |" in head and "★" not in "".join(ln for ln in head.splitlines() if ln.startswith("| "))
    row = next(line for line in md.splitlines() if line.startswith("| two | pixels | pixels-twin |"))
    assert "+0.000 [" in row and "no clear winner (interval contains 0)" in row
    assert "no clear winner" in render_latex(rep)


def _sided(root: Path, per_cell: int = 5) -> Path:
    """Two domains told apart only by WHERE a bright patch sits (left or right half): the downsampled
    ``pixels`` see it, a spatially pooled CNN hardly does."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for d in ("left", "right"):
        for c in ("x", "y"):
            (root / d / c).mkdir(parents=True)
            for i in range(per_cell):
                a = rng.integers(0, 60, size=(64, 64, 3), dtype=np.uint8)
                y0, x0 = rng.integers(16, 24), rng.integers(0, 8) + (0 if d == "left" else 32)
                a[y0:y0 + 24, x0:x0 + 24] = rng.integers(150, 256, size=(24, 24, 3))
                Image.fromarray(a).save(root / d / c / f"{i}.png")
    return root


def test_star_only_where_the_paired_interval_excludes_zero(tmp_path):
    # positive control for the identical-twin case above
    root = str(_sided(tmp_path / "sided"))
    cfg = ReportConfig((root,), ("pixels", "domainlens-cnn"), n_seeds=2, noise_seeds=(), tsne_points=0, n_boot=100)
    rep = build_report(cfg, device="cpu")
    c = rep.comparisons.iloc[0]
    assert c["best"] == "pixels" and c["runner_up"] == "domainlens-cnn" and c["diff_lo"] > 0 and c["star"]
    assert rep.row(root, "pixels")["best"] and not rep.row(root, "domainlens-cnn")["best"]
    md = render_markdown(rep)
    head = next(line for line in md.splitlines() if line.startswith("| sided |"))
    assert head.count("★") == 1 and head.split("|")[2].strip().endswith("★")
    assert Interval(c["diff"], c["diff_lo"], c["diff_hi"]).format(3, signed=True) in md
    assert re.search(r"\$\^\{\\star(\\dagger)?\}\$", render_latex(rep))


def test_one_class_is_undefined_not_zero(hostile):
    rep, one, _ = hostile
    r = rep.row(one, "pixels")
    assert not r["class_defined"] and np.isnan(r["class_nmi"]) and r["domain_defined"]
    md, page, tex = render_markdown(rep), html.unescape(render_html(rep)), render_latex(rep)
    cell = next(line for line in md.splitlines() if line.startswith("| one_class 100% &amp; co |")).split("|")[2]
    assert cell.split(" / ")[1].strip() == "undefined (1 class)"
    assert "undefined (1 class)" in page
    row = next(line for line in tex.splitlines() if line.startswith("one\\_class 100\\% \\& co &"))
    assert row.split(" & ")[2] == "n/a"


def test_markdown_and_html_carry_no_markup_from_folder_names(hostile):
    rep, _, _ = hostile
    md, page = render_markdown(rep), render_html(rep)
    for text in (md, page):
        assert EVIL not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert LINK not in md and "[x]\\(javascript:alert(1))" in md  # no markdown link either
    cells = "\n".join(ln for ln in md.splitlines() if ln.startswith("| ") and "one_class" in ln)
    assert "one_class 100% &amp; co" in cells and "&" not in re.sub(r"&(lt|gt|amp);", "", cells)


def test_latex_is_compile_shaped(hostile):
    rep, one, two = hostile
    tex = render_latex(rep)
    body = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))
    bare = re.sub(r"\\[{}%&_$#]", "", body)
    assert bare.count("{") == bare.count("}")
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):  # environments nest properly
        if kind == "begin":
            stack.append(env)
        else:
            assert stack.pop() == env
    assert not stack
    assert not re.search(r"(?<!\\)[%_#]", re.sub(r"\$[^$]*\$", "", body))  # specials escaped outside math
    assert "one\\_class 100\\% \\& co" in body and "one_class 100% & co" not in body
    tables = body.split("\\begin{table}")[1:]
    assert len(tables) == 3 and all("\\toprule" in t and "\\bottomrule" in t for t in tables)
    number = r"(\$-\$)?\d\.\d{3} \[(\$-\$)?\d\.\d{3}, (\$-\$)?\d\.\d{3}\](\$\^\{[^}]*\}\$)?"
    for t in tables[:2]:  # NMI, AMI: one row per dataset, every number with its interval
        rows = t.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
        assert len(rows) == len(rep.config.datasets) == 2
        for row in rows:
            cells = row.removesuffix("\\\\").strip().split(" & ")
            assert len(cells) == 1 + 2 * len(rep.config.models)
            assert all(c == "n/a" or re.fullmatch(number, c) for c in cells[1:]), cells
    assert "deviation" not in tables[0]  # select=default: the paper's protocol, said in the caption
    assert "default layer (the paper's protocol)" in tables[0]


def test_best_selection_chooses_on_fold_a_and_reports_fold_b(tmp_path):
    root = make_domainbed(tmp_path / "folds", domains=("a", "b", "c"), classes=("x", "y"), per_cell=2, seed=3)
    cache = str(tmp_path / "cache")
    blocks, ts = ["up_blocks.1", "mid_block"], [50]
    cfg = ReportConfig((str(root),), ("domainlens-tiny",), blocks=tuple(blocks), timesteps=tuple(ts), n_seeds=2,
                       noise_seeds=(), select="best", tsne_points=0, n_boot=50)
    rep = build_report(cfg, device="cpu", cache_dir=cache)
    sp = rep.splits[str(root)]
    # the two folds: disjoint, together every selected image, each domain in both
    ds = load_dataset(str(root))
    recs = select_images(ExtractionConfig(dataset=str(root)), ds)[1]
    assert set(sp.select_ids).isdisjoint(sp.report_ids)
    assert set(sp.select_ids) | set(sp.report_ids) == {r.id for r in recs}
    sel, rep_paths = rep.selection_images[str(root)], rep.report_images[str(root)]
    assert set(sel).isdisjoint(rep_paths) and _digests(sel).isdisjoint(_digests(rep_paths))
    assert len(rep_paths) == rep.value(str(root), "domainlens-tiny", "n_images") == 6
    # the choice is the argmax over the selection fold alone (re-computed here from the features)
    model = load_backbone("domainlens-tiny", "cpu")
    scores, feats = {}, {}
    for t in ts:
        fs = get_features(ExtractionConfig(dataset=str(root), model="domainlens-tiny", timestep=t), blocks,
                          device="cpu", cache_dir=cache, model=model)
        a = np.array([p in set(sel) for p in fs.paths])
        b = np.array([p in set(rep_paths) for p in fs.paths])
        for blk in blocks:
            X, y = fs.features[blk], np.array(fs.domains)
            scores[(blk, t)] = nmi(X[a], y[a], n_seeds=2)[0]
            feats[(blk, t)] = (X[b], y[b])
    assert rep.chosen["domainlens-tiny"] == max(scores, key=scores.get)
    # the reported number comes from fold B alone
    X, y = feats[rep.chosen["domainlens-tiny"]]
    assert rep.value(str(root), "domainlens-tiny", "domain_nmi") == pytest.approx(cluster_scores(X, y, 2).nmi_mean)
    md, tex = render_markdown(rep), render_latex(rep)
    assert "chosen on fold A (6 images" in md and "reported on the disjoint fold B (6 images)" in md
    assert "deviation from the paper" in tex.lower() and "fold B" in tex
    # the table the choice ranks: every cell with its interval and AMI, on the selection images only
    grid = md.split("## Per model")[1].split("## Stability")[0]
    assert "On the selection images (disjoint from the reported ones)" in grid
    assert len(re.findall(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]( †)? · AMI -?\d\.\d{3}", grid)) == len(scores)


def test_split_folds_are_stratified_and_seeded():
    from core.data.datasets import ImageRecord

    recs = [ImageRecord(f"{d}/{c}/{i}.png", "", d, c) for d in "ab" for c in "xyz" for i in range(4)]
    a, b = split_folds(recs, 0)
    assert set(a).isdisjoint(b) and len(a) == len(b) == 12
    for d in "ab":
        for c in "xyz":
            assert sum(x.startswith(f"{d}/{c}/") for x in a) == 2
    assert split_folds(recs, 0) == (a, b) and split_folds(recs, 1) != (a, b)


def test_builtin_heldout_is_chosen_on_the_train_split(tmp_path, monkeypatch):
    home = tmp_path / "home"
    for split, seed in (("train", 11), ("heldout", 22)):  # two tiny stand-ins with distinct images
        d = make_domainbed(home / "synthetic-pacs-v1" / split, domains=("cartoon", "photo"), classes=("star",),
                           per_cell=2, seed=seed)
        (d / ".complete").write_text(json.dumps({"split": split}))
    monkeypatch.setenv("DOMAINLENS_DATA_HOME", str(home))
    cfg = ReportConfig(("synthetic-pacs",), ("pixels",), n_seeds=1, noise_seeds=(), select="best", tsne_points=0,
                       n_boot=20)
    rep = build_report(cfg, device="cpu")
    sp = rep.splits["synthetic-pacs"]
    assert sp.select_on == "synthetic-pacs:train" and sp.select_ids is None and sp.report_ids is None
    sel, rep_paths = rep.selection_images["synthetic-pacs"], rep.report_images["synthetic-pacs"]
    assert all("/train/" in p for p in sel) and all("/heldout/" in p for p in rep_paths) and len(rep_paths) == 4
    assert _digests(sel).isdisjoint(_digests(rep_paths))
    assert "chosen on synthetic-pacs:train, reported on synthetic-pacs:heldout" in render_markdown(rep)


def test_too_few_images_per_domain_is_a_clear_error(tmp_path, capsys):
    root = make_domainbed(tmp_path / "tiny", domains=("a", "b", "c"), classes=("x",), per_cell=1)
    rc = main(["report", "--datasets", str(root), "--models", "pixels", "--noise-seeds", "none", "--tsne-points", "0",
               "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "Number of labels" not in err
    assert "'a' (1 image), 'b' (1 image), 'c' (1 image) have fewer than 2 selected images" in err
    three = make_domainbed(tmp_path / "three", domains=("a", "b"), classes=("x",), per_cell=3)
    rc = main(["report", "--datasets", str(three), "--models", "pixels", "--select", "best", "--tsne-points", "0",
               "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert rc == 2 and "fewer than 4 selected images" in err and "--select default reports all of them" in err
    assert not (tmp_path / "r.md").exists()


def test_report_config_and_split_errors_say_what_to_do():
    from core.analysis.report import plan_split
    from core.data.datasets import ImageRecord

    with pytest.raises(ValueError, match="a model is named twice in --models pixels,pixels; name each once"):
        ReportConfig(("d",), ("pixels", "pixels"))
    with pytest.raises(ValueError, match="a dataset is named twice"):
        ReportConfig(("d", "d"), ("pixels",))
    with pytest.raises(ValueError, match=r"n_boot \(bootstrap draws\) must be >= 20"):
        ReportConfig(("d",), ("pixels",), n_boot=5)
    with pytest.raises(ValueError, match=r"tsne_points must be 0 \(no t-SNE panels\) or >= 10"):
        ReportConfig(("d",), ("pixels",), tsne_points=5)
    one = [ImageRecord(f"only/c/{i}.png", "", "only", "c") for i in range(5)]
    with pytest.raises(ValueError, match=r"1 domain\(s\) among the selected images \('only'\); domain NMI needs at "
                                         "least 2 domains"):
        plan_split("folder", one, "default", 0)
