"""Teacher-student pretraining of an encoder in the DINOv2 manner: multi-crop views, an EMA teacher with a
cosine momentum schedule, DINO loss on CLS tokens (centring or Sinkhorn-Knopp, teacher temperature warm-up),
iBOT loss on block-masked patch tokens, VICReg on the global views' embeddings and the KoLeo regulariser.

Runs on the detection engine's skeleton (engine/run.py: torchrun / DDP, seeds, time budget, atomic
checkpoints with RNG states, TensorBoard) with one ``Schedule`` per scheduled scalar."""
from __future__ import annotations

import copy
import csv
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..backbones.encoder_file import ENCODER_FILE, save_encoder
from ..backbones.vit import imagenet_normalise, load_vit
from ..config import PretrainConfig
from ..data.build import ResumableSampler
from ..data.images import list_images, load_image, to_tensor_image
from ..engine.guard import StepGuard, gradient_norm
from ..engine.run import RunContext, RunInterrupted
from ..runtime.checkpoint import load_checkpoint
from ..runtime.device import resolve_num_workers
from ..runtime.distributed import gather_objects
from ..runtime.schedule import Clock, Schedule
from .dino_loss import DINOLoss
from .heads import DINOHead
from .ibot_loss import IBOTPatchLoss
from .koleo import KoLeoLoss
from .masking import batch_masks
from .mim_loss import PixelReconstructionLoss
from .multicrop import MultiCrop, ObjectWindows
from .vicreg import VICRegLoss

log = logging.getLogger(__name__)
SUMMARY_KEYS = ("loss", "dino", "ibot", "mim", "koleo", "vicreg", "embedding_std", "target_entropy")
LAST_FILE = "pretrain_last.pth"
CURVE_FILE = "pretrain_curve.csv"


class UnlabeledImages(Dataset):
    """Images of the given folders as multi-crop views. ``cache``: keep each decoded image (uint8) after its
    first read; decoding a JPEG costs about as much as a tiny encoder's step on its crops."""

    def __init__(self, folders: list[str], crops: MultiCrop, cache: bool = False,
                 windows: ObjectWindows | None = None):
        self.paths = [p for f in folders for p in list_images(f, recursive=True)]  # the config promises sub-folders
        if not self.paths:
            raise ValueError(f"no images found in {folders}")
        self.crops = crops
        self.windows = windows  # object-centric views: crops drawn around one proposal of the image
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.cache is None:
            image = to_tensor_image(load_image(self.paths[i]))
        else:
            if i not in self.cache:
                self.cache[i] = (to_tensor_image(load_image(self.paths[i])) * 255).round().to(torch.uint8)
            image = self.cache[i].float() / 255
        if self.windows is not None:
            image = self.windows.around_an_object(image, self.paths[i])
        return self.crops(image)


def collate_views(batch):
    """[(globals, locals)] -> (list of [B, 3, g, g] per global view, list of [B, 3, l, l] per local view)."""
    globals_, locals_ = zip(*batch)
    return [torch.stack(v) for v in zip(*globals_)], [torch.stack(v) for v in zip(*locals_)]


class Student(torch.nn.Module):
    """Encoder + the projection head of the DINO (CLS) loss and that of the iBOT (patch) loss: one shared head
    (iBOT's choice), or two (``separate_heads``, DINOv2's option), so that the patch tokens, hundreds per
    image, do not decide the prototypes the CLS token is scored on. With ``mim_weight`` > 0 a linear pixel head
    (SimMIM's) predicts each patch's pixels from its token."""

    def __init__(self, encoder: torch.nn.Module, method):
        super().__init__()
        self.encoder = encoder
        head = dict(out_dim=method.out_dim, hidden_dim=method.head_hidden_dim, bottleneck_dim=method.head_bottleneck_dim,
                    norm=method.head_norm)
        self.head = DINOHead(encoder.config.hidden_size, **head)
        self.patch_head = DINOHead(encoder.config.hidden_size, **head) if method.separate_heads else None
        self.prefix = 1 + getattr(encoder.config, "num_register_tokens", 0)
        patch = encoder.config.patch_size
        self.pixel_head = (torch.nn.Linear(encoder.config.hidden_size, patch * patch * 3)
                           if method.mim_weight > 0 else None)

    def forward(self, pixels: torch.Tensor, masks: torch.Tensor | None = None, patch_logits: bool = True):
        """pixels [N, 3, s, s] normalised, masks [N, T] -> (CLS embedding [N, D], CLS logits [N, K], patch logits
        [N, T, K] or None when not ``patch_logits``, predicted pixels [N, T, p * p * 3] of every patch, or None
        without masks or pixel head). The patch head runs on every patch token of a view, so
        views that no patch loss scores (local crops, or all views without iBOT) skip it."""
        tokens = self.encoder(pixel_values=pixels, bool_masked_pos=masks).last_hidden_state
        cls, patches = tokens[:, 0], tokens[:, self.prefix:]
        reconstructed = self.pixel_head(patches) if self.pixel_head is not None and masks is not None else None
        patch_out = (self.patch_head or self.head)(patches) if patch_logits else None
        return cls, self.head(cls), patch_out, reconstructed


def schedules(cfg: PretrainConfig, total_steps: int, budget_s: float) -> dict[str, Schedule]:
    """lr (warm-up, then cosine to min_lr), teacher momentum (cosine to 1), teacher temperature (linear warm-up
    by epochs) and weight decay (cosine to weight_decay_end, or constant)."""
    o, m = cfg.optim, cfg.method
    length = dict(total_steps=total_steps, budget_s=budget_s)
    wd_end = o.weight_decay_end
    return {
        "lr": Schedule(base=o.lr, kind="cosine", final=o.min_lr, warmup_fraction=o.warmup_epochs / max(o.epochs, 1),
                       **length),
        "momentum": Schedule(base=m.momentum_teacher, kind="cosine", final=1.0, **length),
        "teacher_temp": Schedule(base=m.teacher_temp, warmup_start=m.warmup_teacher_temp,
                                 warmup_epochs=m.warmup_teacher_temp_epochs, **length),
        "weight_decay": Schedule(base=o.weight_decay, kind="constant" if wd_end is None else "cosine",
                                 final=o.weight_decay if wd_end is None else wd_end, **length),
    }


class Pretrainer:
    """``Pretrainer(cfg, on_curve=...).fit()`` -> the encoder file. ``on_curve(rows, path)`` is called with the
    loss curve (a row per logged step, also in ``pretrain_curve.csv``) whenever a checkpoint is written,
    and at the end: the command draws it (pretrain_curves.png)."""

    def __init__(self, cfg: PretrainConfig, on_curve: Callable[[list[dict]], None] | None = None):
        self.cfg = cfg
        self.on_curve = on_curve
        self.curve: list[dict] = []  # {"step", loss terms, embedding_std} every log_frequency steps
        r = cfg.run
        self.run = RunContext(device=r.device, seed=r.seed, output_dir=r.output_dir,
                              time_budget_min=cfg.optim.time_budget_min, log_dir=r.log_dir)
        self.device = self.run.device
        if self.run.is_main:
            cfg.save(self.run.out / "pretrain_config.yaml")
        c = cfg.crops
        self.crops = MultiCrop(global_size=c.global_size, local_size=c.local_size, n_local=c.n_local,
                               global_scale=tuple(c.global_scale), local_scale=tuple(c.local_scale),
                               jitter=tuple(c.color_jitter), grayscale_p=c.grayscale_p,
                               view_region=1.0 if c.object_views else c.view_region)
        windows = (ObjectWindows.of(cfg.data.images, self.run.out, boxes=c.object_boxes, context=c.object_context)
                   if c.object_views else None)
        self.data = UnlabeledImages(cfg.data.images, self.crops, cfg.data.cache_images, windows)
        encoder = load_vit(cfg.model.arch, pretrained=cfg.model.pretrained)
        self.patch = encoder.config.patch_size
        self.student = Student(encoder, cfg.method).to(self.device)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.ddp = (DistributedDataParallel(self.student, find_unused_parameters=cfg.method.ibot_weight == 0)
                    if self.run.dist.world_size > 1 else self.student)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.dino_loss = DINOLoss(cfg.method.out_dim, cfg.method.student_temp).to(self.device)
        self.ibot_loss = IBOTPatchLoss(cfg.method.out_dim, cfg.method.student_temp).to(self.device)
        self.mim_loss = PixelReconstructionLoss(self.patch)
        self.koleo, self.vicreg = KoLeoLoss(), VICRegLoss()
        self.mask_generator = torch.Generator().manual_seed(r.seed + self.run.dist.rank)
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.guard = StepGuard(cfg.optim.max_bad_steps, "pretraining run")
        self.progress: dict | None = None  # the part of an epoch a checkpoint written mid-epoch trained
        if r.resume:
            self._resume(load_checkpoint(r.resume, kind="pretrain checkpoint", required=("model", "teacher")))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return imagenet_normalise(x.to(self.device, non_blocking=True))

    # ------------------------------------------------------------------ one step
    def training_step(self, globals_: list, locals_: list, values: dict[str, float]) -> dict[str, float] | None:
        """One optimisation step at the scheduled ``values`` (lr, momentum, teacher_temp, weight_decay); None
        when it was skipped for a non-finite loss or gradient (no student, teacher or centre update)."""
        m, o = self.cfg.method, self.cfg.optim
        g = torch.cat([self._normalise(v) for v in globals_])
        grid = self.cfg.crops.global_size // self.patch
        masks = None
        if m.ibot_weight > 0 or m.mim_weight > 0:
            masks = batch_masks(g.shape[0], grid, grid, tuple(m.mask_ratio), m.mask_probability,
                                self.mask_generator).to(self.device)
        temp = values["teacher_temp"]
        ibot = m.ibot_weight > 0
        with torch.no_grad():
            _, t_cls, t_patch, _ = self.teacher(g, patch_logits=ibot)
            if m.centering == "sinkhorn":
                t_probs = self.dino_loss.sinkhorn_knopp(t_cls, temp)
            else:
                t_probs = self.dino_loss.teacher_probs(t_cls, temp)
            t_patch_probs = self.ibot_loss.teacher_probs(t_patch, temp) if ibot else None
        s_emb, s_cls, s_patch, s_pixels = self.ddp(g, masks, patch_logits=ibot)
        student_logits = list(s_cls.chunk(2))
        if locals_:
            _, l_cls, _, _ = self.ddp(torch.cat([self._normalise(v) for v in locals_]), patch_logits=False)
            student_logits += list(l_cls.chunk(len(locals_)))
        terms = {"dino": self.dino_loss(student_logits, list(t_probs.chunk(2)))}
        if ibot:
            terms["ibot"] = self.ibot_loss(s_patch, t_patch_probs, masks)
        if m.mim_weight > 0:
            terms["mim"] = self.mim_loss(s_pixels, g, masks)
        if m.koleo_weight > 0:
            terms["koleo"] = sum(self.koleo(e) for e in s_emb.chunk(2)) / 2
        if m.vicreg_weight > 0:
            terms["vicreg"], vic = self.vicreg(*s_emb.chunk(2))
            terms.update({f"vicreg_{k}": v.detach() for k, v in vic.items()})
        weights = {"dino": m.dino_weight, "ibot": m.ibot_weight, "mim": m.mim_weight, "koleo": m.koleo_weight,
                   "vicreg": m.vicreg_weight}
        loss = sum(terms[k] * w for k, w in weights.items() if k in terms)
        for group in self.optimizer.param_groups:
            group["lr"], group["weight_decay"] = values["lr"], values["weight_decay"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # on every process, finite or not: DDP's gradient all-reduce is a collective
        if o.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.student.parameters(), o.grad_clip))
        else:
            grad_norm = gradient_norm(self.student.parameters())
        # the gradients are all-reduced, so a NaN on one process makes every process skip this step
        losses = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in terms.items()}}
        if self.guard.skip(losses, grad_norm, step=self.step, epoch=self.epoch):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        with torch.no_grad():
            t_params, s_params = list(self.teacher.parameters()), list(self.student.parameters())
            torch._foreach_lerp_(t_params, s_params, 1.0 - values["momentum"])
            self.dino_loss.update_center(t_cls)
            if masks is not None and ibot:
                self.ibot_loss.update_center(t_patch, masks)
            # collapse monitor: per-dimension std of the L2-normalised embeddings (0 when collapsed,
            # about 1/sqrt(D) when spread out)
            spread = torch.nn.functional.normalize(s_emb.detach(), dim=-1).std(0).mean()
            # entropy of the DINO targets: ln K when the teacher says nothing (uniform), the collapse to watch
            entropy = torch.special.entr(t_probs).sum(-1).mean()
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update(loss=float(loss.detach()), embedding_std=float(spread), target_entropy=float(entropy), **values)
        return out

    # ------------------------------------------------------------------ the run
    def fit(self) -> Path:
        cfg, run = self.cfg, self.run
        sampler = ResumableSampler(self.data, run.dist.world_size, run.dist.rank, shuffle=True, seed=cfg.run.seed,
                                   drop_last=True)
        workers = resolve_num_workers(cfg.data.num_workers, self.device)
        loader = DataLoader(self.data, cfg.optim.batch_size, sampler=sampler, collate_fn=collate_views,
                            num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(cfg.run.seed))
        if len(loader) == 0:
            raise ValueError(f"{len(self.data)} images are fewer than one batch of {cfg.optim.batch_size} per process")
        scheduled = schedules(cfg, cfg.optim.epochs * len(loader), run.budget_s)
        log.info("pretraining %s on %d images: %d epochs of %d steps", cfg.model.arch, len(self.data),
                 cfg.optim.epochs, len(loader))
        with run.stop_requests:  # SIGTERM / SIGINT: finish the step, save pretrain_last.pth, stop
            self._epochs(loader, sampler, scheduled)
        self.write_curve()
        path = run.out / ENCODER_FILE
        if run.is_main:  # the teacher's encoder: the averaged, smoother one (as DINO evaluates)
            save_encoder(self.teacher.encoder, cfg.model.arch, path, {"steps": self.step, "epochs": self.epoch})
            log.info("encoder written to %s after %d steps (%.1f min)", path, self.step, self.elapsed / 60)
        run.close()
        return path

    def _epochs(self, loader, sampler: ResumableSampler, scheduled: dict) -> None:
        cfg, run = self.cfg, self.run
        stop = False
        while self.epoch < cfg.optim.epochs and not stop:
            sampler.set_epoch(self.epoch)
            loader.generator.manual_seed(cfg.run.seed + self.epoch)
            # resumed mid-epoch: the rest of it
            progress = sampler.resume_within(self.progress, self.epoch, "batches", cfg.optim.batch_size) or {
                "epoch": self.epoch, "batches": 0, "sums": {}, "steps": 0}
            self.progress = None
            started, sums = time.time(), progress["sums"]
            bar = tqdm(loader, desc=f"pretrain {self.epoch + 1}/{cfg.optim.epochs}", leave=False, dynamic_ncols=True,
                       disable=not run.is_main)
            for globals_, locals_ in bar:
                clock = Clock(self.step, self.epoch, self.elapsed + time.time() - started)
                values = self.training_step(globals_, locals_, {k: s(clock) for k, s in scheduled.items()})
                self.step += 1
                progress["batches"] += 1
                if values is not None:
                    progress["steps"] += 1
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    bar.set_postfix(loss=f"{values['loss']:.3f}", std=f"{values['embedding_std']:.3f}")
                    if self.step % cfg.run.log_frequency == 0:
                        run.logger.scalars(values, self.step, "pretrain")
                        self.curve.append({"step": self.step, **{k: round(values[k], 5) for k in SUMMARY_KEYS
                                                                  if k in values}})
                halt = run.should_stop(self.elapsed + time.time() - started)
                if halt.signum is not None:
                    self.elapsed += time.time() - started
                    self.save(run.out / LAST_FILE, progress=progress)
                    raise RunInterrupted(halt.signum, run.out / LAST_FILE, resume_flag="--resume")
                if halt:
                    stop = True
                    break
            self.elapsed += time.time() - started
            means = {k: v / max(1, progress["steps"]) for k, v in sums.items()}
            log.info("pretrain epoch %d: %s (%.0f s)", self.epoch + 1,
                     " ".join(f"{k} {means[k]:.4f}" for k in SUMMARY_KEYS if k in means), self.elapsed)
            self.epoch += 1
            if stop or self.epoch % cfg.run.checkpoint_every == 0 or self.epoch == cfg.optim.epochs:
                self.save(run.out / LAST_FILE)

    def save(self, path: Path, progress: dict | None = None) -> None:
        """``epoch``: the epochs finished; ``progress``: how far the next one got (a mid-epoch stop)."""
        self.run.save(path, {"model": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                             "optimizer": self.optimizer.state_dict(), "dino_center": self.dino_loss.center,
                             "ibot_center": self.ibot_loss.center, "epoch": self.epoch, "step": self.step,
                             "elapsed": self.elapsed, "bad_steps": self.guard.state(), "progress": progress,
                             "mask_rng": gather_objects(self.mask_generator.get_state()),  # one per process
                             "curve": self.curve, "metadata": {"arch": self.cfg.model.arch}})
        self.guard.last_checkpoint = str(path)
        self.write_curve()

    def write_curve(self) -> None:
        """``pretrain_curve.csv`` (and the command's chart) from the curve so far; process 0 only."""
        if not self.run.is_main or not self.curve:
            return
        columns = list(dict.fromkeys(k for row in self.curve for k in row))
        with (self.run.out / CURVE_FILE).open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.curve)
        if self.on_curve is not None:
            self.on_curve(self.curve)

    def _resume(self, ckpt: dict) -> None:
        try:
            self.student.load_state_dict(ckpt["model"])
        except RuntimeError as err:  # a missing or unexpected head, or another width
            detail = str(err).strip().splitlines()[-1].strip()
            raise ValueError(f"{self.cfg.run.resume} was written with other head settings than these (out_dim, "
                             "head_*, separate_heads, mim_weight); resume with the settings in that run's "
                             f"pretrain_config.yaml ({detail})") from None
        self.teacher.load_state_dict(ckpt["teacher"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.dino_loss.center.copy_(ckpt["dino_center"])
        self.ibot_loss.center.copy_(ckpt["ibot_center"])
        self.epoch, self.step, self.elapsed = ckpt["epoch"], ckpt["step"], ckpt["elapsed"]
        self.guard.load(ckpt.get("bad_steps"))
        self.progress = ckpt.get("progress")
        self.curve = list(ckpt.get("curve", []))
        masks = ckpt.get("mask_rng")
        if masks is not None and len(masks) == self.run.dist.world_size:  # this process's iBOT mask draws
            self.mask_generator.set_state(masks[self.run.dist.rank])
        self.run.restore_rng(ckpt["rng"])
        log.info("resumed pretraining at epoch %d, step %d", self.epoch + 1, self.step)
