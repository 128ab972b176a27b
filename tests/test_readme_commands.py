"""Every ``python -m core ...`` command the README shows, run on small data, so none can rot.

The commands are read from the README itself (fenced and indented code blocks, and inline code spans), so a
command added to the README later is covered without touching this file. Each one is:

* run in-process through ``core.cli.main(argv)`` (a subprocess would start torch again for each, ~3-4 s),
  rewritten to small data: ``--max-per-domain`` capped at :data:`SMALL` (added where the subcommand takes it),
  ``~/data/...`` folders, built-in dataset names and the default dataset replaced by small seeded DomainBed
  folders (no built-in set is generated), ``~/models/...`` and the embedded default
  diffusion model by the tiny random SD model of ``tests/conftest.py`` (the baselines stay), ``--reducer umap``
  by pca (UMAP's numba compile), fewer seeds and draws where a command repeats work (:data:`FEWER`), absolute output or cache folders moved into the test's folder; relative
  outputs land in the test's working folder.
  Every file it writes is checked for offline HTML (no CDN, no ``<script src=http...>``);
* or, for a synopsis line (placeholders, ``[optional]`` parts, ``a | b`` alternatives, ``...``), checked
  option by option against the real parser, so a renamed or removed option fails;
* or, for a training command, parsed by its module's ``main`` with the training itself replaced (training is
  tested in tests/test_train*.py);
* or listed in :data:`NOT_RUN` with the reason.

README rule checked here too: every output a README command writes goes under ``out/`` (gitignored) or
outside the repository, so no example overwrites a tracked file.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SMALL = 6  # images per domain for every run here
OUTPUT_FLAGS = ("--out", "--export", "--domainbed-dir")
# Fewer repeats where a subcommand repeats work (added only where the README command does not set them):
# the code path is the README's, the numbers come from fewer draws.
FEWER = {"stability": ["--noise-seeds", "2", "--ensembles", "1,2", "--kmeans-seeds", "2", "--bootstraps", "2"],
         "report": ["--noise-seeds", "none", "--n-seeds", "1", "--tsne-points", "30"],
         "sweep": ["--n-seeds", "1"], "what-moved": ["--n-seeds", "1"], "prompt-audit": ["--blocks", "up_blocks.1"],
         "cka": ["--blocks", "up_blocks.1,mid_block"]}
CDN_RE = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", re.I)

# Commands the README shows that these tests do not run, each with the reason (matched by prefix).
NOT_RUN = {
    "python -m core report": "a mention in prose; the full report example (Report section) is run",
    "python -m core extract": "a mention in the GPU table; the README's extract examples are run",
    "torchrun": "multi-process launcher; the torchrun CPU path is tested in tests/test_scale.py",
    "accelerate launch": "multi-GPU launcher (needs GPUs)",
    "srun": "Slurm launcher (needs a cluster)",
    "sbatch": "Slurm array (needs a cluster)",
}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.\w+)?(\[.*)?$")  # MODEL, PATH, NAME_OR_PATH, FILE.npz, A[,B]


def _code_texts(text: str) -> list[tuple[str, str]]:
    """(kind, code) for fenced blocks, indented blocks and inline code spans of a markdown text."""
    out, rest = [], []
    fence = None
    indented: list[str] = []
    prev_blank = True
    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                out.append(("block", "\n".join(fence)))
                fence = None
            else:
                fence.append(line)
            continue
        if line.startswith("```"):
            fence = []
            continue
        if line.startswith("    ") and (indented or prev_blank):
            indented.append(line[4:])
            continue
        if indented:
            out.append(("block", "\n".join(indented)))
            indented = []
        rest.append(line)
        prev_blank = not line.strip()
    if indented:
        out.append(("block", "\n".join(indented)))
    out += [("inline", m.group(1)) for m in re.finditer(r"`([^`\n]+)`", "\n".join(rest))]
    return out


_CORE = re.compile(r"(?:^|\s)-m core(?:\.[\w.]+)?(?:\s|$)")


def readme_commands(text: str | None = None) -> list[str]:
    """Every command line of the README that runs ``-m core`` (continuation lines joined, comments dropped)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    cmds = []
    for kind, code in _code_texts(text):
        lines = code.replace("\\\n", " ").splitlines() if kind == "block" else [code]
        for line in lines:
            line = line.strip()
            if line.startswith("#"):
                continue
            if kind == "block":  # a trailing "# comment" (outside quotes)
                line = re.sub(r"\s+#\s.*$", "", line)
            if _CORE.search(line):
                cmds.append(re.sub(r"\s+", " ", line))
    return list(dict.fromkeys(cmds))


def _is_synopsis(cmd: str) -> bool:
    if "..." in cmd or re.search(r"\s\|\s|\[", cmd):
        return True
    return any(PLACEHOLDER.match(t) for t in shlex.split(cmd)[3:])


def _classify(cmd: str) -> str:
    for prefix in NOT_RUN:
        if cmd == prefix or cmd.startswith(prefix + " ") and not prefix.startswith("python"):
            return "not run"
    toks = cmd.split()
    if not toks[0].endswith(("python", "python3")):
        return "unknown"
    if toks[2:4] == ["core", "download"] and "--list" not in toks:
        return "not run"  # needs the Hub or an HTTP source: tests/test_download.py runs it against local servers
    if toks[2].startswith("core.training."):
        return "training"
    return "synopsis" if _is_synopsis(cmd) else "run"


COMMANDS = readme_commands()


def test_readme_has_the_commands_and_each_is_classified():
    kinds = {c: _classify(c) for c in COMMANDS}
    assert not [c for c, k in kinds.items() if k == "unknown"], "add these README commands to NOT_RUN with a reason"
    runs = [c for c, k in kinds.items() if k == "run"]
    # the README's own examples of the slow research views are among them (they once took 8-26 min)
    for sub in ("stability", "filmstrip", "prompt-audit", "report", "dg", "sweep", "validate"):
        assert any(c.split()[3] == sub for c in runs), (sub, runs)


def test_readme_outputs_stay_out_of_tracked_files():
    """Each output of a README command goes under out/ (gitignored) or outside the repository."""
    assert "/out/" in (REPO / ".gitignore").read_text().split()
    for cmd in COMMANDS:
        if _classify(cmd) not in ("run", "training"):
            continue
        toks = shlex.split(cmd)
        for flag in OUTPUT_FLAGS:
            if flag in toks:
                path = toks[toks.index(flag) + 1]
                ok = path.startswith(("out/", "~", "/", "$"))
                assert ok, f"README command writes {path!r} inside the repository, outside out/: {cmd}"


# ------------------------------------------------------------------------------------------ running them


def _write_domainbed(root: Path, domains: list[str], seed: int) -> Path:
    """A DomainBed folder of SMALL seeded 32 px images per domain (2 classes): each domain its own palette."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for d, domain in enumerate(domains):
        for c, cls in enumerate(("circle", "square")):
            for i in range(SMALL // 2):
                img = rng.integers(0, 80, (32, 32, 3)) + np.array([60 * d, 40 * c, 30 * (3 - d)])
                img[8 + 4 * c:24, 8:24] = 255 - 50 * d  # the "object": where and how bright depends on class and domain
                path = root / domain / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return root


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, Path]:
    """Small DomainBed folders standing in for every dataset a README command names (no built-in set is generated):
    ``~/data/...`` and the first dataset of a command -> a PACS-like folder, the second -> a 3-domain folder."""
    base = tmp_path_factory.mktemp("data")
    return {"first": _write_domainbed(base / "PACS", ["photo", "sketch", "cartoon", "painting"], 0),
            "second": _write_domainbed(base / "rot", ["rot00", "rot30", "rot60"], 1)}


def _small_argv(cmd: str, tiny_model: Path, data: dict[str, Path], tmp: Path) -> list[str]:
    """The README command's arguments after ``python -m core``, rewritten to small data (see the module doc)."""
    from core.cli import build_parser

    toks = shlex.split(cmd)[3:]

    def path(v: str) -> str:
        if v.startswith("~/models/") or v in ("domainlens-tiny",):
            return str(tiny_model)
        if v.startswith("~/data/"):
            return str(data["first"])
        if v.startswith("/"):
            return str(tmp / v.lstrip("/"))
        return v

    out = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t in ("--dataset", "--datasets") and i + 1 < len(toks):  # built-in names and folders: small folders
            out += [t, ",".join(str(data["first" if j == 0 else "second"]) for j, _ in enumerate(toks[i + 1].split(",")))]
            i += 2
            continue
        if t in ("--model", "--models", "--cache-dir") and i + 1 < len(toks):
            out += [t, ",".join(path(v) for v in toks[i + 1].split(","))]
            i += 2
            continue
        if t == "--reducer" and toks[i + 1] == "umap":  # numba compiles UMAP for 5-30 s per process; the
            out += [t, "pca"]                              # layouts themselves are tested in test_views_*.py
            i += 2
            continue
        if t == "--max-per-domain":
            out += [t, str(min(int(toks[i + 1]), SMALL))]
            i += 2
            continue
        out.append(path(t) if t.startswith("~/") else t)
        i += 1
    sub = build_parser()._subparsers._group_actions[0].choices[toks[0]]
    dests = {a.dest for a in sub._actions}
    if "dataset" in dests and "--dataset" not in out and toks[0] != "validate":
        out += ["--dataset", str(data["first"])]  # the default built-in set: the small folder
    if "max_per_domain" in dests and "--max-per-domain" not in out:
        out += ["--max-per-domain", str(SMALL)]
    if "model" in dests and "--model" not in out and toks[0] not in ("models",):
        out += ["--model", str(tiny_model)]  # the embedded default model is real-sized for this test
    extra = FEWER.get(toks[0], [])
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag not in out:
            out += [flag, value]
    if "no_progress" in dests:
        out.append("--no-progress")
    return out


RUNS = [c for c in COMMANDS if _classify(c) == "run"]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("cmd", RUNS, ids=[" ".join(c.split()[3:6]) for c in RUNS])
def test_readme_command_runs_on_small_data(cmd, tiny_sd_dir, small_data, tmp_path, monkeypatch, capsys):
    from threadpoolctl import threadpool_limits

    from core.cli import main
    from core.figures.offline import CDN_HOSTS

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative outputs (out/...) land here
    argv = _small_argv(cmd, tiny_sd_dir, small_data, tmp_path)
    with threadpool_limits(1):  # BLAS threads spinning on 2 busy cores made the probes 5x slower
        rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, f"{cmd}\n  ran as: {shlex.join(argv)}\n{captured.err[-2000:]}"
    if argv[0] in ("filmstrip", "cka", "stability", "prompt-audit"):  # the cost, said before the work
        assert re.search(r"\d+ images .* = at most [\d,]+ image passes through the model", captured.err), captured.err
    for f in work.rglob("*.html"):  # offline: plotly.js inlined, nothing from a CDN
        text = f.read_text(encoding="utf-8")
        assert not CDN_RE.search(text), f"{f.name} loads a script from the network"
        assert not [h for h in CDN_HOSTS if h in text], f"{f.name} names a CDN host"
        assert "plotly-gz" in text or "Plotly" in text


SYNOPSES = [c for c in COMMANDS if _classify(c) == "synopsis"]


@pytest.mark.parametrize("cmd", SYNOPSES, ids=[" ".join(c.split()[3:5]) for c in SYNOPSES])
def test_readme_synopsis_options_exist(cmd):
    """A synopsis line's subcommands and ``--options`` are the parser's."""
    from core.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    toks = shlex.split(cmd.replace("[", " ").replace("]", " ").replace("|", " | "))[3:]
    subs = [toks[0]] + [toks[i + 1] for i, t in enumerate(toks[:-1]) if t == "|" and toks[i + 1] in choices]
    assert toks[0] in choices, f"unknown subcommand in README: {cmd}"
    known = {o for s in subs for a in choices[s]._actions for o in a.option_strings}
    if "(same" in cmd:  # "sweep (same options)": the extract options
        known |= {o for a in choices["extract"]._actions for o in a.option_strings}
    flags = [t.split("=")[0] for t in toks if t.startswith("--")]
    assert flags or len(toks) <= 3, cmd
    assert not [f for f in flags if f not in known], f"README names options {cmd!r} does not have"


TRAINING = [c for c in COMMANDS if _classify(c) == "training"]


@pytest.mark.parametrize("cmd", TRAINING, ids=[c.split()[2] for c in TRAINING])
def test_readme_training_command_parses(cmd, monkeypatch):
    import importlib

    toks = shlex.split(cmd)
    mod = importlib.import_module(toks[2])
    calls = []
    for name in ("train_baseline", "train_default", "train_default_dit"):
        if hasattr(mod, name):
            monkeypatch.setattr(mod, name, lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)
    assert mod.main(toks[3:]) == 0, cmd
    assert len(calls) == 1


def test_views_sample_by_default_and_say_so_in_help():
    """The research views read VIEW_MAX_PER_DOMAIN images per domain unless told (0 = every image)."""
    from core.cli import build_parser
    from core.cli.views import NAMES, VIEW_MAX_PER_DOMAIN, _config

    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    for name in NAMES:
        action = next(a for a in choices[name]._actions if a.dest == "max_per_domain")
        assert action.default == VIEW_MAX_PER_DOMAIN and f"default {VIEW_MAX_PER_DOMAIN}" in action.help, name
    assert choices["sweep"].get_default("max_per_domain") is None  # extract / sweep keep "every image"
    args = parser.parse_args(["stability", "--out", "x"])
    assert _config(args, 50).max_per_domain == VIEW_MAX_PER_DOMAIN
    args = parser.parse_args(["stability", "--out", "x", "--max-per-domain", "0"])
    assert _config(args, 50).max_per_domain is None
