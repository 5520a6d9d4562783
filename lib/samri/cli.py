"""``samri`` command line: sample data, offline segmentation, embedding precompute, benchmarks.

Requests use the same JSON schema as the MONAI Label app (``foreground``, ``background``, ``roi``,
``slice``), so a request logged by the server can be replayed offline with ``samri segment``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from samri.errors import SamriInputError

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "SAMRI_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$SAMRI_CACHE_DIR``, else ``$XDG_CACHE_HOME/samri/embeddings`` (``~/.cache`` by default)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "samri" / "embeddings"


def read_params(text: str) -> dict[str, Any]:
    """``--params``: a JSON object, or the path of a file holding one."""
    source = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise SamriInputError("params", text, "neither a JSON object nor an existing file")
        source = path.read_text()
    try:
        params = json.loads(source)
    except json.JSONDecodeError as exc:
        raise SamriInputError("params", text, f"invalid JSON ({exc})") from exc
    if not isinstance(params, dict):
        raise SamriInputError("params", params, "must be a JSON object")
    return params


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="registry name (see `samri models`); default: the registry's")
    parser.add_argument("--checkpoint", default=None, help="full SAM/SAMRI checkpoint (.pth) for the model")
    parser.add_argument("--decoder", default=None, help="decoder-only checkpoint published by the SAMRI trainer")
    parser.add_argument("--cache-dir", default=None, type=Path,
                        help=f"embedding cache folder (default ${CACHE_DIR_ENV} or ~/.cache/samri/embeddings)")
    parser.add_argument("--no-disk-cache", action="store_true", help="keep embeddings in memory only")


def build_segmenter(args: argparse.Namespace):
    """(registry, Segmenter) from the common model options."""
    from samri.config import load_registry
    from samri.inference.embeddings import EmbeddingCache
    from samri.inference.segmenter import Segmenter
    from samri.model.builders import load_model

    registry = load_registry()
    model = load_model(registry.spec(args.model), checkpoint=args.checkpoint, decoder=args.decoder)
    cache_dir = None if args.no_disk_cache else (args.cache_dir or default_cache_dir())
    return registry, Segmenter(model, EmbeddingCache(cache_dir=cache_dir))


# --- commands -----------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from samri.config import load_registry

    registry = load_registry()
    for name, spec in registry.models.items():
        mark = "*" if name == registry.default_model else " "
        weights = spec.checkpoint or "(checkpoint path required)"
        print(f"{mark} {name:12s} {spec.preprocessing.input_size:5d}px  {weights}\n    {spec.description}")
    return 0


def cmd_sample_data(args: argparse.Namespace) -> int:
    from samri.sample_data import write_sample_studies

    sources = args.sources.split(",") if args.sources else None
    studies = write_sample_studies(args.dir, sources=sources, overwrite=args.overwrite)
    for study in studies:
        print(f"{study.study_id}: {study.image} ({len(study.label_names)} labels) <- {study.source}")
    return 0


def cmd_cohort(args: argparse.Namespace) -> int:
    from samri.cohorts import CohortRecipe, write_cohort

    extra = {"contrasts": tuple(c.strip() for c in args.contrasts.split(",") if c.strip())} if args.contrasts else {}
    if args.min_voxels is not None:
        extra["min_voxels"] = args.min_voxels
    recipe = CohortRecipe(seed=args.seed, subjects=args.subjects, annotate=args.annotate, domain=args.domain, **extra)
    manifest = write_cohort(args.out, recipe, mricron_dir=args.mricron_dir)
    for sid, spec in manifest["subjects"].items():
        print(f"{sid}: {spec['split']} ({spec['contrast']}, seed {spec['seed']})")
    print(f"{len(manifest.get('structures', {}))} structures; manifest {Path(args.out) / 'cohort.json'}")
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from samri.config import load_registry
    from samri.inference.prompts import parse_request
    from samri.inference.request import run_request
    from samri.volume import load_image, prepare_volume, save_label

    params = read_params(args.params)
    image = load_image(args.image)
    volume = prepare_volume(image, load_registry().window)
    parse_request(params, volume.shape, args.axis)  # fail on a bad request before loading a model
    registry, segmenter = build_segmenter(args)
    result = run_request(segmenter, volume, params, mode=args.mode, axis=args.axis)
    save_label(args.output, result.mask, image.affine)
    print(json.dumps({"output": str(args.output), **result.summary()}))
    return 0


def cmd_precompute(args: argparse.Namespace) -> int:
    from samri.inference.embeddings import get_embeddings
    from samri.volume import load_image, prepare_volume

    registry, segmenter = build_segmenter(args)
    axes = [0, 1, 2] if args.axis == "all" else [int(a) for a in args.axis.split(",")]
    for path in args.images:
        volume = prepare_volume(load_image(path), registry.window)
        for axis in axes:
            get_embeddings(segmenter.model, volume, segmenter.cache, axis, range(volume.shape[axis]),
                           batch_size=args.batch_size, progress=True)
        print(f"{path}: axes {axes} cached in {segmenter.cache.cache_dir} ({segmenter.cache.stats})")
    return 0


def cmd_default_decoder(args: argparse.Namespace) -> int:
    from samri.train.recipe import train_default_decoder

    summary = train_default_decoder(out=args.out, work_dir=args.work_dir,
                                    cache_dir=args.cache_dir or default_cache_dir(),
                                    config=args.config, init_decoder=args.init_decoder,
                                    validation_cohort=args.validation_cohort,
                                    validation_labels=[n for n in args.validation_labels.split(",") if n])
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from samri.bench.inprocess import run_benchmarks, write_markdown

    if args.clients < 0 or (args.clients and not args.http):
        raise SamriInputError("clients", args.clients, "a positive count, with --http (they click on a live server)")
    if args.volume and not (args.backend or args.backends_only):
        raise SamriInputError("volume", True, "the whole-volume figures are per backend: add --backend")
    if args.device != "cpu":
        return _bench_device(args)
    if args.backend or args.backends_only or args.contention:
        return _bench_backends(args)
    report = run_benchmarks(model_name=args.model, checkpoint=args.checkpoint, decoder=args.decoder,
                            studies=args.studies, repeats=args.repeats, http=args.http,
                            train=not args.no_train, clients=args.clients)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    if args.markdown:
        write_markdown(report, args.markdown)
    print(text)
    return 0


def _bench_device(args: argparse.Namespace) -> int:
    """``samri bench --device cuda``: the PyTorch CUDA path (`samri.bench.gpu`); its own docs section."""
    import shlex
    import sys

    from samri.bench.backends import update_section
    from samri.bench.gpu import SECTION_TITLE, check_cuda, cuda_figures, cuda_markdown
    from samri.io import write_text

    if args.backend or args.backends_only or args.contention or args.volume or args.http:
        raise SamriInputError("device", args.device, "measured alone: drop --backend/--contention/--volume/--http")
    check_cuda(args.device)
    report = cuda_figures(device=args.device, model_name=args.model, checkpoint=args.checkpoint,
                          decoder=args.decoder, studies=args.studies, repeats=args.repeats, train=not args.no_train)
    report["command"] = "samri " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    text = json.dumps(report, indent=2)
    if args.json:
        write_text(args.json, text + "\n")
    if args.markdown:
        update_section(args.markdown, cuda_markdown(report, report["command"]), SECTION_TITLE)
    print(text)
    return 0


def _bench_backends(args: argparse.Namespace) -> int:
    """``samri bench --backend A --backend B [--backends-only]``: backends side by side (`samri.bench.backends`)."""
    import shlex
    import sys

    from samri.bench.backends import backend_figures, backends_markdown, section_title, update_section
    from samri.bench.inprocess import run_benchmarks, write_markdown

    def measure() -> dict:
        return backend_figures(args.backend or ["torch", "auto"], model_name=args.model, checkpoint=args.checkpoint,
                               decoder=args.decoder, studies=args.studies, repeats=args.repeats,
                               export_dir=args.export_dir, random_weights=args.random_weights,
                               volume_figures=volume)

    volume = args.volume
    serving = None
    if not args.backends_only:  # first: its peak RSS of serving then excludes the backend runs
        serving = run_benchmarks(model_name=args.model, checkpoint=args.checkpoint, decoder=args.decoder,
                                 studies=args.studies, repeats=args.repeats, http=args.http,
                                 train=not args.no_train, clients=args.clients)
    figures = measure()
    command = "samri " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    figures["command"] = command
    busy = None
    if args.contention:
        from samri.bench.contention import busy_process

        volume = False  # the whole-volume figures once, on the quiet machine
        with busy_process():
            busy = measure()
    if args.backends_only:
        report = figures
        if busy is not None:
            report["contention"] = busy
        if args.markdown:
            update_section(args.markdown, backends_markdown(figures, command), section_title(figures))
            if busy is not None:
                update_section(args.markdown, backends_markdown(busy, command, contention=True),
                               section_title(busy, contention=True))
    else:
        report = serving
        report["backends"] = figures.pop("backends")
        report["backends_run"] = figures
        if busy is not None:
            report["contention"] = busy
        if args.markdown:
            write_markdown(report, args.markdown)
            update_section(args.markdown, backends_markdown({**figures, "backends": report["backends"]}, command),
                           section_title(figures))
            if busy is not None:
                update_section(args.markdown, backends_markdown(busy, command, contention=True),
                               section_title(busy, contention=True))
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


def cmd_al_sim(args: argparse.Namespace) -> int:
    """Simulated annotation loop (`samri.activelearning.sim.loop`); figure, CSV, JSON and report.md in ``--out``."""
    import shlex

    from samri.activelearning.sim.loop import load_sim_config, run_simulation
    from samri.activelearning.sim.report import write_report

    config = load_sim_config(args.config, rounds=args.rounds, strategies=args.strategies, seed=args.seed)
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    results = run_simulation(config, work, progress=True)
    command = args.command_text or "samri " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write_report(results, args.out, command=command)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


def cmd_al_effort(args: argparse.Namespace) -> int:
    """Strategies by annotator clicks (`samri.activelearning.sim.effort`); summary.json, report.md, PNG in ``--out``."""
    import shlex

    from samri.activelearning.sim.effort import load_effort_config, run_effort
    from samri.activelearning.sim.effort_report import render_effort, write_effort_figure
    from samri.io import write_json, write_text

    config = load_effort_config(args.config, cohort=args.cohort, strategies=args.strategies, seeds=args.seeds)
    command = args.command_text or "samri " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    record = run_effort(config, args.work_dir, progress=True,
                        on_run=lambda partial: write_json(args.out / "summary.json", partial))
    write_json(args.out / "summary.json", record)
    write_effort_figure(record, args.out / "al_effort.png")
    write_text(args.out / "report.md", render_effort(record, command=command))
    print(json.dumps({"out": str(args.out), "seconds": record["seconds"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samri", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model registry")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("sample-data", help="write MONAI Label studies (images + labels/final) from offline MRI")
    p.add_argument("dir", type=Path)
    p.add_argument("--sources", default=None, help="comma list of mni152,colin27 (default: all installed)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("cohort", help="write a held-out test cohort (deformed MNI152, JHU + Harvard-Oxford labels)")
    p.add_argument("out", type=Path, help="datastore folder (images, labels/final, label_names.json, cohort.json)")
    p.add_argument("--subjects", type=int, default=4, help="pseudo-subjects (default 4)")
    p.add_argument("--annotate", type=int, default=0, help="how many of them to mark 'annotate'; the rest are 'test'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", choices=["human", "macaque"], default="human",
                   help="human: MNI152 + JHU/Harvard-Oxford (the test split); macaque: INIA19 + NeuroMaps "
                        "(the adaptation domain of adapt-sim)")
    p.add_argument("--contrasts", default=None,
                   help="comma list, subject k gets the k-th (cyclic): t1, t2like, inverted+bias, lowres+noise")
    p.add_argument("--min-voxels", type=int, default=None, help="drop smaller structures (default 200)")
    p.add_argument("--mricron-dir", type=Path, default=None,
                   help="mricron-data templates (default $SAMRI_MRICRON_DIR or /usr/share/mricron/templates)")
    p.set_defaults(func=cmd_cohort)

    p = sub.add_parser("segment", help="run one request (MONAI Label schema) offline and write the label")
    p.add_argument("image", type=Path)
    p.add_argument("--params", required=True, help="JSON object or file: foreground, background, roi, slice")
    p.add_argument("--mode", choices=["2d", "3d"], default="2d")
    p.add_argument("--axis", type=int, choices=[0, 1, 2], default=2, help="slicing axis of the voxel grid")
    p.add_argument("-o", "--output", type=Path, required=True, help="label file (.nii.gz, .nrrd)")
    add_model_args(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("precompute", help="fill the embedding cache for whole volumes")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--axis", default="2", help="axis, comma list, or 'all' (default 2)")
    p.add_argument("--batch-size", type=int, default=4)
    add_model_args(p)
    p.set_defaults(func=cmd_precompute)

    p = sub.add_parser("train", help="two-stage decoder fine-tuning on annotated studies")
    from samri.train.cli import add_train_arguments, train_from_args

    add_train_arguments(p)
    p.set_defaults(func=train_from_args)

    from samri.evaluation.cli import add_evaluate_parser

    add_evaluate_parser(sub)

    from samri.adaptation.cli import add_adapt_parser

    add_adapt_parser(sub)

    from samri.dicomweb.cli import add_dicom_parser

    add_dicom_parser(sub)

    p = sub.add_parser("default-decoder", help="train the shipped samri_lite decoder (reproducible recipe)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "assets" / "samri_lite_decoder.pt")
    p.add_argument("--work-dir", type=Path, default=Path("data/default-decoder"))
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--init-decoder", type=Path, default=None,
                   help="start from this decoder-only checkpoint (the recipe's second stage)")
    p.add_argument("--validation-cohort", type=Path, default=None,
                   help="also validate on this cohort's studies (make val-split's folder)")
    p.add_argument("--validation-labels", default="",
                   help="comma list: the cohort's validation structures (python -m samri.evaluation.splits)")
    p.set_defaults(func=cmd_default_decoder)

    p = sub.add_parser("bench", help="speed figures: encoder, cached/uncached click, 3D, memory")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--markdown", type=Path, default=None, help="also render docs/BENCHMARKS.md here")
    p.add_argument("--studies", type=Path, default=Path("data/studies"), help="sample studies folder")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--http", action="store_true", help="also time clicks through a live monailabel server")
    p.add_argument("--clients", type=int, default=0,
                   help="with --http: also N clients clicking at once (--repeats clicks each) while one more runs "
                        "a 3D request; per-client latency, throughput vs one client, /info/ latency, correctness")
    p.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    p.add_argument("--model", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--decoder", default=None)
    p.add_argument("--backend", action="append", default=[],
                   help="inference backend to measure side by side, repeatable: torch, openvino, openvino:fp32, "
                        "openvino:bf16, auto (torch is always measured: the reference); JSON under backends.<name>")
    p.add_argument("--backends-only", action="store_true",
                   help="only the backend comparison (--markdown then updates just its section)")
    p.add_argument("--export-dir", type=Path, default=None,
                   help="export cache of the optimized backends (default $SAMRI_BACKEND_CACHE or ~/.cache/samri)")
    p.add_argument("--random-weights", action="store_true",
                   help="with --backend: the model with random weights (speed only, e.g. SAM ViT-B without its file)")
    p.add_argument("--volume", action="store_true",
                   help="with --backend: also 3D propagation into uncached slices and the whole axial stack "
                        "encoded from an empty cache (JSON backends.<name>.volume)")
    p.add_argument("--device", default="cpu",
                   help="cuda (or cuda:N): the PyTorch CUDA path on a GPU instead (encoder throughput, clicks, "
                        "3D, whole stack, training steps, SAM ViT-B); its own section of --markdown")
    p.add_argument("--contention", action="store_true",
                   help="measure the backends again while a second process keeps every core busy (JSON under "
                        "contention.backends.<name>)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("al-sim", help="simulated annotation loop: active-learning strategies vs random")
    p.add_argument("--config", type=Path, default=None, help="YAML with a 'simulation' section "
                   "(default configs/activelearning.yaml)")
    p.add_argument("--out", type=Path, default=Path("docs/al-sim"), help="figure, CSV, JSON and report.md")
    p.add_argument("--work-dir", type=Path, default=Path("data/al-sim"), help="pool studies and embedding cache")
    p.add_argument("--rounds", type=int, default=None, help="studies added after the start one")
    p.add_argument("--strategies", default=None, help="comma list (random,first,samri_uncertainty,...)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--command-text", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_al_sim)

    p = sub.add_parser("al-effort", help="active-learning strategies compared by annotator clicks on a new domain")
    p.add_argument("--config", type=Path, default=None, help="YAML with an 'effort' section "
                   "(default configs/activelearning.yaml)")
    p.add_argument("--cohort", default=None, help="samri cohort folder (default: the config's)")
    p.add_argument("--out", type=Path, default=Path("docs/al-effort"), help="summary.json, report.md, al_effort.png")
    p.add_argument("--work-dir", type=Path, default=Path("data/al-effort"),
                   help="embedding cache and the memo of decoders and figures (a rerun resumes)")
    p.add_argument("--strategies", default=None, help="comma list (random,samri_uncertainty,...)")
    p.add_argument("--seeds", default=None, help="comma list of seeds")
    p.add_argument("--command-text", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_al_effort)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except SamriInputError as exc:
        print(f"samri {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
