"""The `codanet` command line.  Bad input exits with code 2 and one clear line, no traceback."""
from __future__ import annotations

import argparse
import errno
import os
import sys


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codanet", description="Convolutional Dynamic Alignment Networks")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_bench, _add_train, _add_evaluate, _add_experiment, _add_explain, _add_small_commands):
        add(sub)
    return p


def _add_bench(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks (print a table, write JSON)")
    bsub = b.add_subparsers(dest="bench", required=True)
    bl = bsub.add_parser("layers", help="the nine coda_s layers: efficient vs materialised reference")
    bl.add_argument("--batch", type=int, default=64)
    bl.add_argument("--repeats", type=int, default=3)
    bl.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    bl.add_argument("--json", help="write the results here")
    bm = bsub.add_parser("models", help="whole-model training/inference speed and explanation cost")
    bm.add_argument("--repeats", type=int, default=5)
    bm.add_argument("--no-reference", action="store_true", help="skip the (slow) materialised reference model")
    bm.add_argument("--glibc-defaults", action="store_true",
                    help="measure with malloc's defaults instead of keep_freed_memory() (page faults every step)")
    bm.add_argument("--json", help="write the results here")
    bt = bsub.add_parser("training", help="the CPU preset's training loop: data loading, overlap, torch.compile")
    bt.add_argument("--steps", type=int, default=40, help="steps per measured loop")
    bt.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement (~1-2 min)")
    bt.add_argument("--json", help="write the results here")

    be = bsub.add_parser("explain", help="ms per explained image (one class, all classes), s per 100 video frames")
    be.add_argument("--repeats", type=int, default=5)
    be.add_argument("--json", help="write the results here")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train.config import describe_keys
    t = sub.add_parser("train", help="train a CoDA-Net from a config file (configs/*.json)",
                       epilog="config keys (--set KEY=VALUE):\n" + describe_keys(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", help="JSON config file or the name of a shipped one (codanet/configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set epochs=5 --set lr=1e-3")
    t.add_argument("--from", dest="init_from", metavar="WEIGHTS",
                   help="start from shipped weights (coda_cpu:fashion_mnist) or a checkpoint: the same as "
                        "--set init_from=WEIGHTS (docs/finetuning.md)")
    t.add_argument("--out", help="output folder (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="accuracy (default), localisation, pixel-removal or the sanity check "
                       "(cascading randomisation) of a checkpoint",
                       usage="codanet evaluate [accuracy|localisation|pixel-removal|sanity] CHECKPOINT [options]")
    e.add_argument("what", nargs="+", metavar="[METRIC] CHECKPOINT")
    e.add_argument("--data-dir", default=None, help="override the dataset folder")
    e.add_argument("--dataset", default=None, help="evaluate on another (compatible) dataset")
    e.add_argument("--json", help="write the result here (a PNG figure is written beside it)")
    e.add_argument("--methods", default=None,
                   help="comma-separated: CoDA,Grad,AbsGrad,IxG,IntGrad,DeepLIFT,GradCAM,Occ5,Occ9,RISE,LIME, "
                   "or 'all' (default: all but RISE, LIME and AbsGrad)")
    e.add_argument("--grids", type=int, default=100, help="localisation: number of grids")
    e.add_argument("--grid-size", type=int, default=3, help="localisation: grid size n (n x n images)")
    e.add_argument("--selection", default="most_confident", choices=("most_confident", "random"),
                   help="localisation: grid images from the most confident (the paper's protocol) or drawn at "
                   "random among the correctly and confidently classified")
    e.add_argument("--images", type=int, default=256, help="pixel removal, sanity: number of test images")
    e.add_argument("--steps", type=int, default=128, help="pixel removal: removal steps up to 25 %%")
    e.add_argument("--most-first", action="store_true", help="pixel removal: most important first")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA when available (as training picks its device)")


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("experiment", help="the paper's DAU experiments on MNIST digits (Fig. 2, Fig. 3)")
    xsub = x.add_subparsers(dest="experiment", required=True)
    xe = xsub.add_parser("eigenvectors", help="Fig. 3: eigenvectors of AB of a rank-3 DAU encode the digits")
    xe.add_argument("--out", default="runs/eigenvectors")
    xe.add_argument("--samples", type=int, default=3072, help="noisy samples")
    xe.add_argument("--noise", type=float, default=1.0, help="std of the Gaussian noise (pixels in [0, 1])")
    xe.add_argument("--digits", default="0,1,2", help="indices of 3 digits in MNIST-5k's train split")
    xe.add_argument("--steps", type=int, default=400)
    xe.add_argument("--seed", type=int, default=0)
    xd = xsub.add_parser("digits", help="Fig. 2: weights of a DAU layer and a 5-layer net on noisy digits")
    xd.add_argument("--out", default="runs/digits")
    xd.add_argument("--noise", type=float, default=0.3, help="std of the Gaussian noise before clipping to [0, 1]")
    xd.add_argument("--epochs-single", type=int, default=20)
    xd.add_argument("--epochs-deep", type=int, default=4)
    xd.add_argument("--seed", type=int, default=0)
    studies = dict(temperature=("Fig. 4 / Fig. 6 right: train coda_cpu at several temperatures T",
                                "49,100,250,500,1000,2500"),
                   lam=("train coda_cpu at several lambda of eq. 10 (at --temperature)", "0,0.1,0.25,0.5,1"))
    for setting, (text, values) in studies.items():
        xt = xsub.add_parser(setting, help=text + "; accuracy, localisation (95 %% CI), pixel removal and Gini of "
                             "each model. Finished models are skipped, an interrupted one resumes")
        xt.add_argument("--out", default=f"runs/demo/{setting}", help="folder (codanet report runs/demo shows it)")
        xt.add_argument("--values", default=values, help=f"comma-separated values (default {values})")
        xt.add_argument("--epochs", type=int, default=4, help="training epochs per model (a fixed amount of work)")
        xt.add_argument("--grids", type=int, default=250)
        xt.add_argument("--images", type=int, default=256)
        xt.add_argument("--dataset", default=None, help="data set of every model (default: the demo's, fashion_mnist)")
        xt.add_argument("--data-dir", default=None)
        if setting == "lam":
            xt.add_argument("--temperature", type=float, default=500.0, help="T of every model of the study")


def _add_explain(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser("explain", help="contribution maps of images, folders of images and videos",
                        description="Explain images (PNG, JPEG, BMP, TIFF, WebP), folders of them and "
                                    "videos (MP4, GIF, animated PNG) with a CoDA-Net: a figure, the raw maps "
                                    "and explanations.json per run; for a video an MP4 with the map beside "
                                    "each frame.")
    ex.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, video files")
    ex.add_argument("--model", default="coda_cpu:fashion_mnist",
                    help="NAME:WEIGHTS of shipped weights (codanet models) or a checkpoint file "
                         "(default coda_cpu:fashion_mnist)")
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--target", help="explain this class (index or name) instead of the prediction")
    which.add_argument("--top", type=int, default=1, help="explain the K most probable classes (default 1)")
    which.add_argument("--all-classes", action="store_true", help="explain every class")
    ex.add_argument("--layer", type=int, default=0,
                    help="contributions of DAU layer L's output (0: the input pixels, default)")
    ex.add_argument("--out", default="runs/explain", help="output folder (default runs/explain)")
    ex.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ex.add_argument("--resize", default="fit", choices=("fit", "none"),
                    help="fit: shorter side to the model's input size, centre crop (default); "
                         "none: keep the image's size (the model is fully convolutional)")
    ex.add_argument("--batch-size", type=int, default=32, help="video frames per batch")
    ex.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_small_commands(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="write RUN_DIR/report.html (accuracy, maps, metrics, costs); for a folder "
                                      "of evaluation JSONs only (scripts/comparison.py's output): their tables")
    r.add_argument("run_dir")

    m = sub.add_parser("models", help="list the registered models and their shipped weights")
    m.add_argument("--counts", action="store_true", help="also build each model to count its parameters")

    sv = sub.add_parser("serve", help="an interactive viewer of explanations in the browser (Gradio)")
    sv.add_argument("--model", default="coda_cpu:fashion_mnist",
                    help="NAME:WEIGHTS of shipped weights or a checkpoint file (default coda_cpu:fashion_mnist)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=7860)

    d = sub.add_parser("demo", help="the main job: train the CPU preset on Fashion-MNIST, explain, report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after this many minutes (default: no limit, the config's 3 epochs)")


def _train(args) -> int:
    from .train import load_config_file, make_config, parse_set, train
    overrides = parse_set(args.set)
    if args.init_from is not None:
        overrides["init_from"] = args.init_from
    cfg = make_config(overrides, base=load_config_file(args.config))
    out = args.out or os.path.join("runs", cfg["run_name"])
    if args.resume and not os.path.isdir(out):
        raise FileNotFoundError(f"--resume: run folder {out} does not exist")
    summary = train(cfg, out, resume=args.resume, progress=not args.quiet)
    if summary.get("stopped_by") == "signal":
        return 130
    print(f"test accuracy {summary['test_accuracy']:.4f} (top-5 {summary['test_top5']:.4f}) after "
          f"{summary['epochs']:.2f} epochs, {summary['train_seconds']:.0f} s; results in {out}")
    return 0


def _evaluate(args) -> int:
    kinds = ("accuracy", "localisation", "pixel-removal", "sanity")
    if len(args.what) == 1:
        kind, checkpoint = "accuracy", args.what[0]
    elif len(args.what) == 2 and args.what[0] in kinds:
        kind, checkpoint = args.what
    else:
        raise UsageError(f"expected [{'|'.join(kinds)}] CHECKPOINT, got {' '.join(args.what)}")
    args.checkpoint = checkpoint
    from .data import DATASETS
    if args.dataset is not None and args.dataset not in DATASETS:
        raise UsageError(f"--dataset: unknown data set {args.dataset!r}; known: {', '.join(sorted(DATASETS))}")
    if kind != "accuracy":
        return _evaluate_metric(kind, args)
    from .evaluate.runner import checkpoint_test_split
    from .train import evaluate_accuracy
    from .train.setup import select_device
    from .utils.io import write_json
    device = select_device(args.device)
    model, _, test = checkpoint_test_split(args.checkpoint, args.dataset, args.data_dir, device)
    metrics = evaluate_accuracy(model, test, device=device, progress=True)
    result = dict(checkpoint=args.checkpoint, dataset=test.name, images=len(test), **metrics)
    print(f"{test.name} test: top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} ({len(test)} images)")
    if args.json:
        write_json(args.json, result)
    return 0


EVALUATE_BOUNDS = dict(grids=100_000, grid_size=10, images=1_000_000, steps=4_096)


def check_output_file(path: str) -> None:
    """Before any work: `path` must be a writable file path (not a folder)."""
    if os.path.isdir(path):
        raise UsageError(f"--json {path} is a folder; give a file name such as {os.path.join(path, 'result.json')}")
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise UsageError(f"--json {path}: cannot write into {probe}")


def _evaluate_metric(kind, args) -> int:
    from .evaluate.runner import ALL_METHODS, format_sanity_table, format_table, run, run_sanity
    for name, high in EVALUATE_BOUNDS.items():
        if not 1 <= getattr(args, name) <= high:
            raise UsageError(f"--{name.replace('_', '-')} must lie in [1, {high:,}], got {getattr(args, name)}")
    if args.grid_size < 2:
        raise UsageError(f"--grid-size must be >= 2, got {args.grid_size}")
    if args.json:
        check_output_file(args.json)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    if methods == ["all"]:
        methods = list(ALL_METHODS)
    if kind == "sanity":
        summary = run_sanity(args.checkpoint, methods, images=args.images, out=args.json, seed=args.seed,
                             device=args.device, dataset=args.dataset, data_dir=args.data_dir)
        print(format_sanity_table(summary))
        if args.json:
            print(f"wrote {args.json} and {', '.join(summary['figures'])}")
        return 0
    summary = run(kind, args.checkpoint, methods, grid_size=args.grid_size, grids=args.grids, images=args.images,
                  steps=args.steps, most_first=args.most_first, dataset=args.dataset, data_dir=args.data_dir,
                  out=args.json, seed=args.seed, device=args.device, selection=args.selection)
    if os.environ.get("RANK", "0") != "0":       # under torchrun, rank 0 reports
        return 0
    print(format_table(summary))
    if args.json:
        print(f"wrote {args.json} and {summary['figure']}")
    return 0


def _explain(args) -> int:
    import torch

    from .explain.explain_files import ExplainOptions, explain_inputs
    from .train import load_model
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, _ = load_model(args.model, device=args.device)
    target = args.target
    if target is not None:
        target = int(target) if target.lstrip("-").isdigit() else target
        model.resolve_targets(target, 1)                  # an unknown class: one line, exit 2
    if not 1 <= args.top <= model.num_classes:
        raise UsageError(f"--top must lie in [1, {model.num_classes}], got {args.top}")
    model.check_layer(args.layer)
    opts = ExplainOptions(target=target, top=args.top, all_classes=args.all_classes, layer=args.layer,
                          resize=args.resize, batch_size=args.batch_size)
    result = explain_inputs(model, args.inputs, opts, args.out, args.device, progress=not args.quiet,
                            log=lambda line: print(line, file=sys.stderr if line.startswith("error") else sys.stdout))
    print(f"explained {len(result['inputs'])} input(s), {len(result['errors'])} error(s); "
          f"{os.path.join(args.out, 'explanations.json')}")
    return 2 if result["errors"] else 0


def _models(args) -> int:
    from . import create_model, list_models
    from .models.pretrained import available_weights, model_card
    weights = available_weights()
    for name in list_models():
        line = name
        if args.counts:
            line += f"\t{create_model(name).num_parameters() / 1e6:.2f} M"
        cards = {w: model_card(name, w) for w in weights.get(name, [])}
        shipped = [f"{name}:{w} ({c['dataset']}, top-1 {100 * c['test_top1']:.2f} %)" for w, c in cards.items()]
        print(line + ("\tweights: " + ", ".join(shipped) if shipped else ""))
    return 0


def _experiment(args) -> int:
    from .utils.io import write_json
    os.makedirs(args.out, exist_ok=True)
    if args.experiment == "eigenvectors":
        from .experiments import eigenvectors as ev
        try:
            idx = tuple(int(v) for v in args.digits.split(","))
        except ValueError:
            raise UsageError(f"--digits expects comma-separated integers, got {args.digits!r}") from None
        if len(idx) != 3 or min(idx) < 0 or max(idx) >= 4000:
            raise UsageError(f"--digits expects 3 indices in [0, 3999], got {args.digits!r}")
        if args.samples < 3 or args.noise < 0 or args.steps < 1:
            raise UsageError("--samples must be >= 3, --noise >= 0 and --steps >= 1")
        result = ev.run(idx, args.samples, args.noise, args.steps, args.seed)
        fig = ev.plot(result, os.path.join(args.out, "eigenvectors.png"))
        public = ev.public(result)
        write_json(os.path.join(args.out, "eigenvectors.json"), public)
        print(f"best |cos| per digit: {', '.join(f'{c:.3f}' for c in public['best_cosine'])}; principal-angle "
              f"cosines: {', '.join(f'{c:.3f}' for c in public['principal_angle_cosines'])}; wrote {fig}")
        return 0
    if args.experiment == "digits":
        from .experiments import digits
        if args.noise < 0 or args.epochs_single < 1 or args.epochs_deep < 1:
            raise UsageError("--noise must be >= 0 and the epoch counts >= 1")
        result = digits.run(args.noise, args.seed, args.epochs_single, args.epochs_deep, args.out)
        write_json(os.path.join(args.out, "digits.json"), result)
        for key in ("single_layer", "five_layer"):
            r = result[key]
            print(f"{key}: test accuracy {r['accuracy']:.4f}; cos(w_label, x) correct {r['cos_w_input_correct']:.3f} "
                  f"vs misclassified {r['cos_w_input_misclassified']:.3f}; cos(w_label, clean) {r['cos_w_clean']:.3f} "
                  f"vs cos(w_label, noise) {r['cos_w_noise']:.3f}")
        return 0
    if args.experiment in ("temperature", "lam"):
        from .experiments import study
        try:
            values = [float(t) for t in args.values.split(",")]
        except ValueError:
            raise UsageError(f"--values expects comma-separated numbers, got {args.values!r}") from None
        low = 0 if args.experiment == "lam" else 1e-12
        if not values or min(values) < low or args.epochs < 1 or args.grids < 1 or args.images < 1:
            raise UsageError(f"--values must be {'>= 0' if low == 0 else 'positive'}; --epochs, --grids and "
                             "--images positive")
        base = {key: value for key, value in (("dataset", args.dataset), ("data_dir", args.data_dir)) if value}
        if args.experiment == "lam":
            base["temperature"] = args.temperature
        result = study.run(args.experiment, values, args.out, args.epochs, args.grids, args.images, base)
        print(study.format_table(result))
        return 0
    return 2


def _bench(args: argparse.Namespace) -> int:
    import importlib
    return int(importlib.import_module(f".bench.{args.bench}", __package__).main(args))


def _report(args: argparse.Namespace) -> int:
    from .report import build_report
    if not os.path.isdir(args.run_dir):
        raise FileNotFoundError(f"run folder {args.run_dir} does not exist")
    print(f"wrote {build_report(args.run_dir)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must lie in [1, 65535], got {args.port}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError("codanet serve needs Gradio: pip install -e '.[app]' (make setup does)") from None
    from .serve import serve
    serve(args.model, args.host, args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main
    return demo_main(args)


COMMANDS = dict(bench=_bench, train=_train, evaluate=_evaluate, experiment=_experiment, report=_report,
                models=_models, explain=_explain, serve=_serve, demo=_demo)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's mistake prints one line and returns 2."""
    args = _parser().parse_args(argv)
    from .utils.perf import keep_freed_memory
    if not getattr(args, "glibc_defaults", False):
        keep_freed_memory()          # a CLI process may set process-wide allocator options
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        print(f"codanet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        print(f"codanet {args.command}: error: {e.strerror or e}"
              + (f" ({e.filename})" if e.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"codanet {args.command}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return 130
    finally:
        from .train.distributed import teardown
        teardown()
