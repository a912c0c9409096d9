"""``lungdr pretrain-segmenter``: self-supervised U-Net pre-training on unlabelled films (image restoration), on Ray
Train (DDP) or ``--local`` in-process; the output starts ``train-segmenter --init-weights``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    from lungdr.commands.train_segmenter import add_ray_train_flags

    p = sub.add_parser("pretrain-segmenter", help="pre-train the U-Net on unlabelled films (no masks needed)")
    p.add_argument("--data", required=True, action="append",
                   help="corpus or archive of films, folder or s3://; repeat to pool several (each id once)")
    p.add_argument("--out", required=True, help="folder or s3:// prefix for pretrained.pt + pretrain.json")
    p.add_argument("--holdout", default=None,
                   help="masked corpus whose segmentation validation patients are left out (the one train-segmenter "
                        "will validate on)")
    p.add_argument("--config", default=None, help="YAML settings (sections preprocess/segmenter/pretrain)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    add_ray_train_flags(p, "lungdr-pretrain")
    p.add_argument("--local", action="store_true", help="train in this process without Ray (one CPU/GPU)")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lungdr.config import load_config
    from lungdr.errors import ConfigError

    conf = load_config(args.config)
    kw = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v is not None}
    try:
        cfg = replace(conf.pretrain, **kw)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
    pre = replace(conf.preprocess, size=conf.segmenter.size)
    if args.local:
        from lungdr.segmentation.pretrain import pretrain_corpus

        def log(rec: dict) -> None:
            print(json.dumps(rec), flush=True)

        result = pretrain_corpus(args.data, args.out, conf.segmenter, pre, cfg, args.holdout, log=log)
    else:
        from lungdr.scale.pretrain_segmenter import pretrain_segmenter
        from lungdr.scale.session import init_ray

        init_ray(address=args.address)
        result = pretrain_segmenter(args.data, args.out, conf.segmenter, pre, cfg, args.holdout,
                                    workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                                    storage=args.storage, name=args.name, resume=args.resume)
    print(json.dumps(result, indent=2, default=str))
    return 0
