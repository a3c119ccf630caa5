"""``python -m workers.training COMMAND``: make data, train models, write a pack."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from workers.pipeline.pack import write_manifest

REPO = Path(__file__).resolve().parents[2]


TESSERACT_OCR = {
    "backend": "tesserocr",
    "languages": "eng",
    "psm": 7,
    "allow": "0123456789.*",
    "pattern": r"\d+(?:\.\d+)*",
    "timeout_ms": 500,
    "threads": 2,
}


def reference_manifest(name: str, version: str, readers: tuple[str, ...] = ("reader.pt",)) -> dict:
    """The settings of the reference pack; a user's pack may change any of them.

    OCR is the pack's own line reader (``ctc``) with the weights in ``readers``, two or
    more read as one, their probabilities averaged; with no readers it is Tesseract
    (``tesserocr``, no weights of ours).
    """
    from workers.pipeline.numbering import READ_TOGETHER, Numbering
    from workers.pipeline.ocr import SecondLook
    from workers.training import train_classifier, train_detector, train_reader

    reader = {
        "backend": "ctc",
        "arch": "line_reader",
        "format": "state_dict",
        "file": readers[0] if len(readers) == 1 else list(readers),
        "alphabet": train_reader.ALPHABET,
        "pattern": r"\d+(?:\.\d+)*",
        "min_confidence": 80.0,
        # An unsure reading is kept when the crop stretched and squeezed reads the same.
        "second_look": asdict(SecondLook()),
        # An unsure reading between sure ones is checked against the number the
        # sequence expects there.
        "numbering": asdict(Numbering() if len(readers) == 1 else READ_TOGETHER),
    }

    return {
        "name": name,
        "version": version,
        "description": "Problem numbers (3.14, 12.7, 215) on photos of problem-book pages.",
        "classify": {
            "backend": "torchvision",
            "arch": "resnet8",
            "format": "state_dict",
            "file": "classifier.pt",
            "classes": train_classifier.CLASSES,
            "relevant": ["page"],
            "input_size": 192,
            "threshold": 0.5,
        },
        "detect": {
            "backend": "torchvision",
            "arch": "fasterrcnn_tiny",
            "format": "state_dict",
            "file": "detector.pt",
            "classes": train_detector.CLASSES,
            "image_size": 800,
            "score_threshold": 0.9,
            "max_regions": 100,
        },
        "crop": dict(train_reader.CROP),
        "ocr": reader if readers else dict(TESSERACT_OCR),
    }


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def cmd_generate(args: argparse.Namespace) -> None:
    from workers.training.dataset import generate

    t0 = time.perf_counter()
    generate(Path(args.out), args.split, args.pages, args.negatives, args.workers)
    seconds = time.perf_counter() - t0
    print(f"rendered {args.pages} pages, {args.negatives} negatives in {seconds:.0f} s")


def cmd_train_classifier(args: argparse.Namespace) -> None:
    from workers.training.train_classifier import train

    print(json.dumps(train(Path(args.data), Path(args.out), epochs=args.epochs, seed=args.seed)))


def cmd_train_detector(args: argparse.Namespace) -> None:
    from workers.training.train_detector import train

    if args.hard_share and not args.init:
        raise SystemExit("train-detector: --hard-share needs --init (the weights to mine with)")

    stats = train(
        Path(args.data),
        Path(args.out),
        iterations=args.iterations,
        batch=args.batch,
        crop=args.crop,
        seed=args.seed,
        lr=args.lr,
        init=Path(args.init) if args.init else None,
        hard_share=args.hard_share,
    )
    print(json.dumps(stats))


def cmd_train_reader(args: argparse.Namespace) -> None:
    from workers.training.train_reader import train

    stats = train(
        Path(args.data),
        Path(args.out),
        steps=args.steps,
        batch=args.batch,
        copies=args.copies,
        seed=args.seed,
        negative_share=args.negative_share,
        init=Path(args.init) if args.init else None,
        lr=args.lr,
        heavy_blur=args.heavy_blur,
    )
    print(json.dumps(stats))


def cmd_blend_readers(args: argparse.Namespace) -> None:
    from workers.training.train_reader import blend

    print(json.dumps(blend(Path(args.first), Path(args.second), args.share, Path(args.out))))


def cmd_pack(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    staged: list[tuple[Path, Path]] = []

    def put(source: str, name: str) -> None:
        # A new pack may keep a model of the pack it replaces, in place. Every file is
        # copied before any is replaced, so sources in `out` are read as they were.
        target = out / name
        if not (target.exists() and os.path.samefile(source, target)):
            part = out / f".{name}.part"
            shutil.copyfile(source, part)
            staged.append((part, target))

    put(args.classifier, "classifier.pt")
    put(args.detector, "detector.pt")
    files = ["classifier.pt", "detector.pt"]
    readers = [
        "reader.pt" if k == 0 else f"reader-{k + 1}.pt" for k in range(len(args.reader or []))
    ]
    for source, name in zip(args.reader or [], readers, strict=True):
        put(source, name)
    files += readers
    for part, target in staged:
        os.replace(part, target)
    manifest = reference_manifest(args.name, args.version, tuple(readers))
    path = write_manifest(out, manifest, files)
    print(f"wrote {path}")


def cmd_reference(args: argparse.Namespace) -> None:
    """Everything that makes the reference pack, start to finish."""
    data = Path(args.data)
    work = data / "weights"
    log: dict[str, object] = {"hardware": hardware(), "torch": torch.__version__}
    steps = [
        (
            "generate",
            [
                "generate",
                "--split",
                "train",
                "--pages",
                str(args.pages),
                "--negatives",
                str(args.negatives),
                "--out",
                str(data / "train"),
            ],
        ),
        (
            "train-classifier",
            [
                "train-classifier",
                "--data",
                str(data / "train"),
                "--out",
                str(work / "classifier.pt"),
            ],
        ),
        (
            "train-detector",
            [
                "train-detector",
                "--data",
                str(data / "train"),
                "--out",
                str(work / "detector.pt"),
                "--iterations",
                str(args.iterations),
            ],
        ),
        (
            "fine-tune-detector",
            [
                "train-detector",
                "--data",
                str(data / "train"),
                "--out",
                str(work / "detector-ft.pt"),
                "--init",
                str(work / "detector.pt"),
                "--lr",
                str(args.finetune_lr),
                "--iterations",
                str(args.finetune_iterations),
                "--hard-share",
                str(args.hard_share),
            ],
        ),
        (
            "train-reader",
            [
                "train-reader",
                "--data",
                str(data / "train"),
                "--out",
                str(work / "reader.pt"),
                "--steps",
                str(args.reader_steps),
            ],
        ),
        (
            "pack",
            [
                "pack",
                "--classifier",
                str(work / "classifier.pt"),
                "--detector",
                str(work / "detector-ft.pt"),
                "--reader",
                str(work / "reader.pt"),
                "--out",
                args.out,
                "--name",
                args.name,
                "--version",
                args.version,
            ],
        ),
    ]
    for name, argv in steps:
        t0 = time.perf_counter()
        print(f"== {name}: python -m workers.training {' '.join(argv)}", flush=True)
        main(argv)
        log[name] = {"argv": argv, "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out, "training.json").write_text(json.dumps(log, indent=2) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers.training", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="render a data set of page photos and negatives")
    g.add_argument(
        "--split",
        choices=["train", "val", "heldout"],
        required=True,
        help="train: to train on; val: to choose thresholds on; heldout: to measure on",
    )
    g.add_argument("--pages", type=int, default=1500)
    g.add_argument("--negatives", type=int, default=1500)
    g.add_argument("--out", required=True)
    g.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("train-classifier", help="train the page-or-not ResNet-8")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--epochs", type=int, default=12)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_train_classifier)

    d = sub.add_parser("train-detector", help="train the number detector")
    d.add_argument("--data", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--iterations", type=int, default=3000)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--crop", type=int, default=384)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--lr", type=float, default=2e-3)
    d.add_argument("--init", help="start from these weights (fine-tune) instead of from scratch")
    d.add_argument(
        "--hard-share",
        type=float,
        default=0.0,
        help="with --init: this share of the crops on what the initial weights wrongly "
        "took for a number (hard negatives, mined before training)",
    )
    d.set_defaults(func=cmd_train_detector)

    t = sub.add_parser("train-reader", help="train the number reader (OCR)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=6000)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--copies", type=int, default=3, help="crops per number, boxes jittered")
    t.add_argument(
        "--negative-share",
        type=float,
        default=0.0,
        help="share of each batch that is crops without a number, read as no text",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--lr", type=float, default=2e-3, help="the one-cycle schedule's peak")
    t.add_argument("--init", help="start from these weights (fine-tune) instead of from scratch")
    t.add_argument(
        "--heavy-blur",
        type=float,
        default=0.0,
        help="share of the crops blurred again, harder (sigma 1-2.5), as out-of-focus photos",
    )
    t.set_defaults(func=cmd_train_reader)

    b = sub.add_parser(
        "blend-readers", help="average two readers' weights (a reader and its fine-tune)"
    )
    b.add_argument("first")
    b.add_argument("second")
    b.add_argument("--share", type=float, required=True, help="the second's weight, 0 to 1")
    b.add_argument("--out", required=True)
    b.set_defaults(func=cmd_blend_readers)

    k = sub.add_parser("pack", help="write a model pack from trained weights")
    k.add_argument("--classifier", required=True)
    k.add_argument("--detector", required=True)
    k.add_argument(
        "--reader",
        action="append",
        help="the trained reader; give it twice or more for readers read as one (their "
        "probabilities averaged); without it the pack reads with Tesseract",
    )
    k.add_argument("--out", required=True)
    k.add_argument("--name", default="reference")
    k.add_argument("--version", default="1.0.0")
    k.set_defaults(func=cmd_pack)

    r = sub.add_parser("reference", help="make the reference pack from nothing")
    r.add_argument("--data", default=str(REPO / "data" / "synth"))
    r.add_argument("--out", default=str(REPO / "models" / "reference"))
    r.add_argument("--pages", type=int, default=1500)
    r.add_argument("--negatives", type=int, default=1500)
    r.add_argument("--iterations", type=int, default=3000)
    r.add_argument("--finetune-iterations", type=int, default=1000)
    r.add_argument("--finetune-lr", type=float, default=5e-4)
    r.add_argument("--hard-share", type=float, default=0.3)
    r.add_argument("--reader-steps", type=int, default=10000)
    r.add_argument("--name", default="reference")
    r.add_argument("--version", default="1.2.3")
    r.set_defaults(func=cmd_reference)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
