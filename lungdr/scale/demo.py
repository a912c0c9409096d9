"""The demo: every stage of lungdr on the packaged real sample (24 paediatric chest X-rays, pneumonia — not
tuberculosis), on a local Ray. Each step prints what it did; figures on 24 images are a smoke check, not results."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lungdr.config import PreprocessConfig
from lungdr.sample import sample_dir
from lungdr.scale.session import init_ray


def _say(msg: str) -> None:
    print(f"[lungdr demo] {msg}", flush=True)


def step_ingest(data: str, size: int) -> dict:
    from lungdr.scale.data import ingest

    t0 = time.perf_counter()
    rows = ingest(data, cfg=PreprocessConfig(size=size), masks=True).take_all()
    errors = [r for r in rows if r["error"]]
    labels = [int(r["label"]) for r in rows]
    summary = {
        "images": len(rows),
        "errors": len(errors),
        "normal": labels.count(0),
        "abnormal_pneumonia": labels.count(1),
        "preprocessed_shape": list(rows[0]["image"].shape) if rows else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _say(f"ingested + preprocessed (grayscale, letterbox {size}px, histogram equalization): {json.dumps(summary)}")
    return summary


def run_demo(out: str = "lungdr-demo", size: int = 128, address: str | None = None) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = str(sample_dir())
    _say(f"packaged sample: {data} (real Kermany paediatric X-rays; abnormal = pneumonia, not TB)")
    resources = init_ray(address=address)
    _say(f"Ray resources: {json.dumps({k: v for k, v in resources.items() if k in ('CPU', 'GPU')})}")
    results = {"ingest": step_ingest(data, size)}
    (out_dir / "demo_summary.json").write_text(json.dumps(results, indent=2))
    _say(f"summary written to {out_dir / 'demo_summary.json'}")
    return results
