"""``lungdr train-segmenter``: train the lung-field U-Net (Ray Train DDP, or ``--local`` in-process) into a bundle."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-segmenter", help="train the lung-field U-Net and write a segmenter bundle")
    p.add_argument("--data", required=True, help="labelled corpus (images/ masks/ labels.csv), folder or s3://")
    p.add_argument("--out", required=True, help="bundle to write (folder or s3:// prefix)")
    p.add_argument("--config", default=None, help="YAML settings (sections preprocess/augment/segmenter)")
    p.add_argument("--size", type=int, default=None, help="U-Net input side (multiple of 16; default 256)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--base", type=int, default=None, help="first-level width (64 in the paper)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default=None)
    p.add_argument("--ema-decay", type=float, default=None, help="ship an EMA of the weights (e.g. 0.995; 0 = off)")
    p.add_argument("--init-weights", default=None,
                   help="start from `lungdr pretrain-segmenter` output (folder or s3://) instead of random weights")
    add_ray_train_flags(p, "lungdr-segmenter")
    p.add_argument("--resume-from", default=None, help="start from this checkpoint directory (folder or s3://)")
    p.add_argument("--pseudo-labels", default=None,
                   help="folder/s3:// of pseudo-masks from `lungdr autolabel` (GrabCut ones are made there from this "
                        "corpus's unmasked images if absent)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--refit-out", default=None,
                   help="also train again on every human mask (validation patients too) and write that bundle here; it "
                        "carries the validated --out bundle's Dice as its estimate (about twice the training time)")
    p.add_argument("--local", action="store_true", help="train in this process without Ray (one CPU/GPU)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run)


def add_ray_train_flags(p: argparse.ArgumentParser, name: str) -> None:
    """Workers, resources, checkpoint storage and resume: the flags every Ray Train command shares."""
    p.add_argument("--workers", type=int, default=1, help="Ray Train DDP workers")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpu", dest="use_gpu", action="store_true", default=None, help="one GPU per worker")
    p.add_argument("--no-gpu", dest="use_gpu", action="store_false")
    p.add_argument("--storage", default=None, help="Ray Train storage (folder or s3://) for checkpoints")
    p.add_argument("--name", default=name, help="run name (resume finds the latest run of this name)")
    p.add_argument("--resume", action="store_true", help="continue the latest run of --name from its last checkpoint")


def settings(args: argparse.Namespace):
    """``(SegmenterConfig, PreprocessConfig, AugmentConfig | None)`` from --config and the flags."""
    from dataclasses import replace

    from lungdr.config import load_config
    from lungdr.segmentation.training import with_overrides

    conf = load_config(args.config)
    cfg = with_overrides(conf.segmenter, size=args.size, epochs=args.epochs, base=args.base,
                         batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                         ema_decay=args.ema_decay, init_weights=args.init_weights)
    pre = replace(conf.preprocess, size=cfg.size)
    return cfg, pre, None if args.no_augment else conf.augment


def run(args: argparse.Namespace) -> int:
    cfg, pre, augment = settings(args)
    if args.local:
        from lungdr.segmentation.training import train_local

        def log(rec: dict) -> None:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)

        result = train_local(args.data, args.out, cfg, pre, augment, args.pseudo_labels, log=log,
                             refit_out=args.refit_out)
        result.pop("history"), result.pop("refit_history", None)
    else:
        from lungdr.scale.session import init_ray
        from lungdr.scale.train_segmenter import train_segmenter

        init_ray(address=args.address)
        result = train_segmenter(args.data, args.out, cfg, pre, augment, workers=args.workers, use_gpu=args.use_gpu,
                                 cpus_per_worker=args.cpus_per_worker, storage=args.storage, name=args.name,
                                 resume=args.resume, resume_from=args.resume_from, pseudo_labels=args.pseudo_labels,
                                 refit_out=args.refit_out)
    print(json.dumps(result, indent=2, default=str))
    return 0
