"""Metrics: one place that writes metrics.jsonl, TensorBoard events and (optionally) wandb,
and a progress bar that shows the key figures of a long loop."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm.auto import tqdm


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Appends one JSON object per `log` call to `metrics.jsonl`; mirrors scalars to TensorBoard
    and wandb. Only rank 0 should create one (pass `enabled=False` elsewhere)."""

    def __init__(self, run_dir: str | Path, *, stage: str, tensorboard: bool = True,
                 wandb_project: str | None = None, run_name: str | None = None, enabled: bool = True,
                 config: Mapping | None = None):
        self.stage = stage
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fh = (self.run_dir / "metrics.jsonl").open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard not installed: jsonl is the record anyway
                self._tb = None
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, name=run_name, config=dict(config or {}),
                                         reinit=True)
            except ImportError:
                print(f"[metrics] wandb_project={wandb_project!r} set but wandb is not installed; skipping wandb")

    def log(self, step: int, values: Mapping[str, Any]) -> dict:
        record = {"stage": self.stage, "step": step, "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in values.items()})
        if not self.enabled:
            return record
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "time")}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{self.stage}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in scalars.items()}, step=step)
        return record

    def close(self) -> None:
        if not self.enabled:
            return
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path, stage: str | None = None) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if stage is None or r.get("stage") == stage]


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True,
             initial: int = 0):
    """A tqdm bar; call `bar.set_postfix(loss=..., reward=...)` to show the key figures."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, initial=initial, dynamic_ncols=True,
                mininterval=1.0)


def short(values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, str]:
    """A few figures formatted for a progress bar postfix."""
    out = {}
    for k in keys:
        v = values.get(k)
        if isinstance(v, float):
            out[k.split("/")[-1]] = f"{v:.3g}"
        elif v is not None:
            out[k.split("/")[-1]] = str(v)
    return out
