"""``deepfake-serving train``: faces from labelled data → the variant trained with its recipe → a
checkpoint ``archive --checkpoint`` loads, an evaluation report of the validation files, and an MLflow run.

Everything is written into ``<out>.partial/`` and renamed to ``<out>`` at the end, so ``--out`` never holds
half a run. An interrupted run resumes from its last finished epoch (``<out>.partial/checkpoints/last.pt``,
read weights-only) when started again with the same options: every epoch draws its order, sampling and
augmentation from ``(seed, epoch)``, so a resumed run ends with the weights an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn import metrics
from torch import nn

from deepfake_serving.builder.engine_choice import has_bf16_units
from deepfake_serving.evaluation.report import per_picture, write_report
from deepfake_serving.training import build
from deepfake_serving.training.data import (
    DataError,
    Extracted,
    Face,
    FaceExtractor,
    check_classes,
    discover,
    extract,
    split_by_source,
)
from deepfake_serving.training.init_weights import load_init_weights
from deepfake_serving.training.tracking import Tracker, check_reachable, default_uri
from deepfake_serving.variants import Variant, create_model, get_variant
from deepfake_serving.variants.recipes import Phase, Recipe

STATE_FORMAT = 1
DEFAULT_CACHE = Path.home() / ".cache" / "deepfake-serving" / "faces"
EVAL_BATCH = 32


@dataclass
class TrainOptions:
    variant: str
    data: Path
    out: Path
    recipe: Recipe | None = None  # default: the variant's own
    epochs: int | None = None  # the recipe's epochs cut or stretched to this many (phases in proportion)
    batch_size: int | None = None
    lr: float | None = None  # the first phase's rate; the others keep their ratio to it
    init_weights: Path | None = None
    seed: int = 0
    validation: float = 0.2
    synthesize: str | None = None  # "sbi": self-blended fakes from every real face
    cache: Path = DEFAULT_CACHE
    tracking_uri: str | None = None  # default: ./mlruns/mlflow.db
    device: str = "auto"
    precision: str = "auto"  # "auto": mixed (fp16 on CUDA, bf16 on a CPU with bf16 units), else "fp32"
    threads: int | None = None
    shuffle_labels: bool = False  # a control: labels permuted among the training files
    augment: bool = True  # the recipe's augmentations (off: a network far from any pretraining, tiny data)
    progress: bool = True

    def resolved_recipe(self) -> Recipe:
        recipe = self.recipe or get_variant(self.variant).recipe
        if recipe is None:
            raise DataError(f"variant {self.variant} has no training recipe")
        if self.epochs is not None:
            recipe = recipe.with_epochs(self.epochs)
        if self.batch_size is not None:
            recipe = dataclasses.replace(recipe, batch_size=self.batch_size)
        if self.lr is not None:
            factor = self.lr / recipe.phases[0].lr
            recipe = dataclasses.replace(recipe, phases=tuple(dataclasses.replace(
                p, lr=p.lr * factor, backbone_lr=None if p.backbone_lr is None else p.backbone_lr * factor)
                for p in recipe.phases))
        return recipe

    def fingerprint(self) -> str:
        """What decides the weights: a resumed run must have been started with the same."""
        decisive = {k: str(v) for k, v in dataclasses.asdict(self).items()
                    if k not in ("out", "progress", "threads", "tracking_uri", "cache")}
        decisive["recipe"] = json.dumps(dataclasses.asdict(self.resolved_recipe()), sort_keys=True, default=str)
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


@dataclass
class TrainResult:
    out: Path
    checkpoint: Path
    report: dict
    history: list[dict]
    run_id: str


def _seeded(seed: int, epoch: int) -> np.random.Generator:
    torch.manual_seed(seed * 100_003 + epoch)
    random.seed(seed * 100_003 + epoch)
    return np.random.default_rng([seed, epoch])


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The mixed-precision type training runs its forward pass in (weights and optimiser stay fp32)."""
    if precision == "fp32":
        return None
    if precision != "auto":
        raise DataError(f"precision {precision!r}: auto or fp32")
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and has_bf16_units() else None


def _save_atomically(obj: object, path: Path) -> None:
    staging = path.with_name(path.name + ".tmp")
    torch.save(obj, staging)
    os.replace(staging, path)


class Trainer:
    def __init__(self, options: TrainOptions, log: Callable[[str], None] = print):
        self.options = options
        self.log = log
        self.variant: Variant = get_variant(options.variant)
        self.recipe = options.resolved_recipe()
        self.out = Path(options.out)
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.device = _device(options.device)
        self.autocast = _autocast_dtype(self.device, options.precision)
        self.tracking_uri = options.tracking_uri or default_uri()

    # -- preparing -----------------------------------------------------------------------------------
    def check_destinations(self) -> None:
        if self.out.exists() and any(self.out.iterdir()):
            raise DataError(f"{self.out} is not empty: give a new --out")
        check_reachable(self.tracking_uri)

    def prepare(self) -> tuple[list[Face], list[Face], Extracted]:
        """The faces of the data, split by file: both classes must have files with a face."""
        sources, skipped = discover(self.options.data, (0,) if self.options.synthesize else (0, 1))
        extractor = FaceExtractor(self.variant, self.options.cache, threads=self.options.threads)
        progress = self._bar(len(sources), "file", "faces") if self.options.progress else None
        extracted = extract(sources, extractor, Path(self.options.data),
                            (lambda done, total: progress.update(1)) if progress else None)
        if progress:
            progress.close()
        extracted.unreadable = skipped + extracted.unreadable
        check_classes([f.label for f in extracted.faces], f"{self.options.data} (files with a face)",
                      (0,) if self.options.synthesize else (0, 1))
        train, validation = split_by_source(extracted.faces, self.options.validation, self.options.seed)
        if self.options.synthesize:  # each real face's self-blended fake, on its file's side of the split
            train += [f.self_blended() for f in train if f.label == 0]
            validation += [f.self_blended() for f in validation if f.label == 0]
        if self.options.shuffle_labels:
            train = self._shuffled_labels(train)
        return train, validation, extracted

    def _shuffled_labels(self, faces: list[Face]) -> list[Face]:
        """Labels permuted among the training files (a file keeps one label for all its faces)."""
        names = sorted({f.source for f in faces})
        labels = [next(f.label for f in faces if f.source == n) for n in names]
        random.Random(self.options.seed + 1).shuffle(labels)
        relabelled = dict(zip(names, labels))
        return [dataclasses.replace(f, label=relabelled[f.source]) for f in faces]

    def _bar(self, total: int, unit: str, desc: str = ""):
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=desc, leave=False, dynamic_ncols=True)

    # -- training ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        # Everything that can be refused is, before any weight moves: the output, the tracking store, the
        # initial weights, then the data (both classes, faces in both).
        self.check_destinations()
        model = build.trainable(create_model(self.variant.name, seed=self.options.seed))
        initial = "random (no --init-weights)"
        if self.options.init_weights:  # before the faces are cut: a wrong file is refused at once
            initial = f"{load_init_weights(model, self.variant, self.options.init_weights)} from " \
                      f"{Path(self.options.init_weights).name}"
        train, validation, extracted = self.prepare()
        model.to(self.device)
        state = self._resume_state()
        self.partial.mkdir(mode=0o700, parents=True, exist_ok=True)  # faces, scores naming every file: owner only
        self.partial.chmod(0o700)
        (self.partial / "checkpoints").mkdir(parents=True, exist_ok=True)
        tracker = Tracker(self.tracking_uri, state.get("run_id"))
        tracker.params(self._params(train, validation, initial))
        if state:
            model.load_state_dict(state["model"])
            self.log(f"resuming {self.partial} after epoch {state['epoch']} (run {tracker.run_id})")
        try:
            return self._train(model, train, validation, extracted, state, tracker, initial)
        except Exception:
            tracker.finish("FAILED")  # a rerun resumes it
            raise

    def _train(self, model, train, validation, extracted: Extracted, state: dict, tracker: Tracker,
               initial: str) -> TrainResult:
        history: list[dict] = list(state.get("history", []))
        best = {"loss": state.get("best_loss", float("inf")), "epoch": state.get("best_epoch", 0)}
        epoch = state.get("epoch", 0)
        weights = build.class_weights([f.label for f in train])
        loss_fn = build.loss_for(self.recipe, sum(f.label for f in train) / len(train))
        start_phase = state.get("phase", 0)
        for index, phase in enumerate(self.recipe.phases):
            if index < start_phase:
                continue
            optimizer = build.optimizer_for(self.recipe, build.apply_phase(model, self.variant, phase))
            steps = -(-len(train) // self.recipe.batch_size)
            scheduler = build.scheduler_for(self.recipe, optimizer, phase.epochs, steps)
            done_in_phase, stale = 0, 0
            if state and index == start_phase:
                optimizer.load_state_dict(state["optimizer"])
                if scheduler is not None and state.get("scheduler"):
                    scheduler.load_state_dict(state["scheduler"])
                done_in_phase, stale = state["phase_epoch"], state["stale"]
            while done_in_phase < phase.epochs:
                if self.recipe.early_stopping and stale >= self.recipe.early_stopping:
                    self.log(f"phase {index + 1}: no better validation loss for {stale} epochs: stopping early")
                    break
                rng = _seeded(self.options.seed, epoch)
                seed = int(rng.integers(2**31))
                augment = build.augmentation_for(self.recipe, seed) if self.options.augment else (lambda crop: crop)
                started = time.perf_counter()
                train_loss = self._epoch(model, phase, train, optimizer, scheduler, loss_fn, weights, augment, rng, epoch)
                seconds = time.perf_counter() - started
                self.recompute_batchnorm(model, phase, train)
                scores = self.scores(model, validation)
                val_loss = float(loss_fn(torch.tensor(scores, dtype=torch.float32),
                                         torch.tensor([f.label for f in validation], dtype=torch.float32)))
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(val_loss)
                elif scheduler is not None and not build.steps_per_batch(self.recipe):
                    scheduler.step()
                epoch += 1
                done_in_phase += 1
                labels = [f.label for f in validation]
                row = {"epoch": epoch, "phase": index + 1, "train_loss": train_loss, "val_loss": val_loss,
                       "val_auc": float(metrics.roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None,
                       "lr": float(optimizer.param_groups[0]["lr"]), "train_faces_per_s": len(train) / seconds}
                history.append(row)
                tracker.metrics({k: v for k, v in row.items() if k not in ("epoch",)}, step=epoch)
                self.log(f"epoch {epoch}: train loss {train_loss:.4f}, validation loss {val_loss:.4f}, "
                         f"AUC {row['val_auc'] if row['val_auc'] is None else round(row['val_auc'], 4)}, "
                         f"{row['train_faces_per_s']:.1f} faces/s")
                if val_loss < best["loss"]:
                    best = {"loss": val_loss, "epoch": epoch}
                    stale = 0
                    _save_atomically(model.state_dict(), self.partial / "checkpoints" / "best.pt")
                else:
                    stale += 1
                _save_atomically({
                    "format": STATE_FORMAT, "fingerprint": self.options.fingerprint(), "run_id": tracker.run_id,
                    "epoch": epoch, "phase": index, "phase_epoch": done_in_phase, "stale": stale,
                    "best_loss": best["loss"], "best_epoch": best["epoch"], "history": history,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                }, self.partial / "checkpoints" / "last.pt")
            state = {}
        return self._finish(model, validation, extracted, history, best, tracker, initial)

    def _epoch(self, model, phase: Phase, train: Sequence[Face], optimizer, scheduler, loss_fn, weights, augment,
               rng: np.random.Generator, epoch: int) -> float:
        """One pass (``len(train)`` faces): drawn by class weight with replacement (``balance: sampler``) or
        shuffled with the loss weighted per class (``balance: loss``)."""
        labels = np.array([f.label for f in train])
        if self.recipe.balance == "sampler":
            p = np.array([weights[int(y)] for y in labels], dtype=np.float64)
            order = rng.choice(len(train), size=len(train), replace=True, p=p / p.sum())
        else:
            order = rng.permutation(len(train))
        build.set_train_mode(model, self.variant, phase)
        scaler = torch.amp.GradScaler("cuda") if self.autocast == torch.float16 else None
        total, count = 0.0, 0
        batches = [order[i:i + self.recipe.batch_size] for i in range(0, len(order), self.recipe.batch_size)]
        bar = self._bar(len(batches), "batch", f"epoch {epoch + 1}") if self.options.progress else None
        for batch in batches:
            if len(batch) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                                      for m in model.modules()):
                continue  # BatchNorm cannot train on one face
            crops = [augment(train[i].pixels(rng)) for i in batch]
            x = self._input(crops)
            y = torch.tensor(labels[batch], dtype=torch.float32, device=self.device)
            w = torch.tensor([weights[int(v)] for v in labels[batch]], dtype=torch.float32, device=self.device) \
                if self.recipe.balance == "loss" else None
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                p_fake = self.variant.fake_probability(model(x)).float()
            loss = loss_fn(p_fake, y, w)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if self.recipe.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), self.recipe.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if scheduler is not None and build.steps_per_batch(self.recipe):
                scheduler.step()
            total += loss.item() * len(batch)
            count += len(batch)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
        if bar:
            bar.close()
        return total / max(count, 1)

    def _input(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(self.variant.preprocessing.tensor(crops)).to(self.device)

    @torch.no_grad()
    def recompute_batchnorm(self, model: nn.Module, phase: Phase, train: Sequence[Face]) -> None:
        """The statistics of every BatchNorm layer that trained, measured again on the training faces with the
        epoch's final weights (precise BatchNorm, Wu & Johnson 2021). Not ``torch.optim.swa_utils.update_bn``:
        it resets every BatchNorm, a frozen backbone's too, whose statistics must stay. The running averages
        trail weights that move fast (a network far from any pretraining): evaluated with them, validation and
        serving see activations the network never trained on."""
        build.set_train_mode(model, self.variant, phase)
        training = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if not training:
            return
        saved = {m: m.momentum for m in training}
        for m in training:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
        for i in range(0, len(train), self.recipe.batch_size):
            batch = train[i:i + self.recipe.batch_size]
            if len(batch) > 1:
                model(self._input([f.pixels() for f in batch]))
        for m, momentum in saved.items():
            m.momentum = momentum

    @torch.no_grad()
    def scores(self, model: nn.Module, faces: Sequence[Face]) -> list[float]:
        """P(fake) of each face, in eval mode (as served, without augmentation)."""
        model.eval()
        out: list[float] = []
        for i in range(0, len(faces), EVAL_BATCH):
            x = self._input([f.pixels() for f in faces[i:i + EVAL_BATCH]])
            out += self.variant.fake_probability(model(x)).float().cpu().tolist()
        return out

    # -- resuming and finishing ------------------------------------------------------------------------
    def _resume_state(self) -> dict:
        last = self.partial / "checkpoints" / "last.pt"
        if not last.is_file():
            if self.partial.exists():
                shutil.rmtree(self.partial)  # an attempt that ended before its first epoch
            return {}
        try:
            state = torch.load(last, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several kinds for a damaged file
            raise DataError(f"{last} cannot be read to resume ({type(err).__name__}): remove {self.partial}") from None
        if state.get("format") != STATE_FORMAT or state.get("fingerprint") != self.options.fingerprint():
            raise DataError(f"{self.partial} holds an interrupted run started with other options: resume it with "
                            "the same variant, data, recipe and seed, or remove it")
        return state

    def _params(self, train: Sequence[Face], validation: Sequence[Face], initial: str) -> dict:
        recipe = dataclasses.asdict(self.recipe)
        return {"variant": self.variant.name, "data": str(self.options.data), "seed": self.options.seed,
                "initial_weights": initial, "synthesize": self.options.synthesize or "none",
                "train_faces": len(train), "validation_faces": len(validation),
                "train_files": len({f.source for f in train}), "validation_files": len({f.source for f in validation}),
                "shuffled_labels": self.options.shuffle_labels, "device": str(self.device),
                "autocast": str(self.autocast).removeprefix("torch.") if self.autocast else "none",
                **{f"recipe.{k}": v for k, v in recipe.items()}}

    def _finish(self, model, validation, extracted: Extracted, history, best, tracker: Tracker, initial: str) -> TrainResult:
        best_path = self.partial / "checkpoints" / "best.pt"
        if best_path.is_file():
            model.load_state_dict(torch.load(best_path, map_location=self.device, weights_only=True))
        checkpoint = self.partial / "checkpoint.pt"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, checkpoint)
        scores = self.scores(model, validation)
        items = per_picture((f.source, f.label, f.frame, s) for f, s in zip(validation, scores))
        report = write_report(items, self.partial / "report", self.variant.threshold, f"{Path(self.options.data).name} "
                              "(validation files)", [f"{name}: {why}" for name, why in extracted.unreadable])
        report.update({"initial_weights": initial, "best_epoch": best["epoch"], "no_face": extracted.no_face,
                       "run_id": tracker.run_id})
        (self.partial / "report" / "report.json").write_text(json.dumps(report, indent=2))
        (self.partial / "history.json").write_text(json.dumps(history, indent=2))
        (self.partial / "run.json").write_text(json.dumps({
            "run_id": tracker.run_id, "tracking_uri": self.tracking_uri, "variant": self.variant.name,
            "initial_weights": initial, "best_epoch": best["epoch"]}, indent=2))
        tracker.metrics({f"final_{k}": v for k, v in report.items() if isinstance(v, float)}, step=len(history))
        tracker.artifacts(self.partial / "report", "report")
        checkpoint_dir = self.partial / "checkpoints"
        shutil.rmtree(checkpoint_dir)  # resumable state: not needed once the run has ended
        staging = self.partial / "artifact"
        staging.mkdir()
        shutil.copy2(checkpoint, staging / "checkpoint.pt")
        tracker.artifacts(staging, "checkpoint")
        shutil.rmtree(staging)
        tracker.finish()
        if self.out.exists():
            self.out.rmdir()  # empty (checked before training)
        self.partial.rename(self.out)
        return TrainResult(self.out, self.out / "checkpoint.pt", report, history, tracker.run_id)
