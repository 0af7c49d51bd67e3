"""Teacher-student pretraining of an encoder in the DINOv2 manner: multi-crop views, an EMA teacher with a
cosine momentum schedule, DINO loss on CLS tokens (centring or Sinkhorn-Knopp, teacher temperature warm-up),
iBOT loss on block-masked patch tokens, VICReg on the global views' embeddings and the KoLeo regulariser.

Uses the detection engine's pieces: torchrun / DDP, atomic checkpoints with RNG states, TensorBoard."""
from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from ..backbones.dino import imagenet_normalise, load_vit
from ..backbones.encoder_file import ENCODER_FILE, save_encoder
from ..data.build import resolve_num_workers
from ..data.images import list_images, load_image, to_tensor_image
from ..engine.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from ..engine.distributed import gather_objects, init_distributed, sum_across_processes
from ..engine.logging import RunLogger
from ..engine.trainer import resolve_device, seed_everything
from .config import PretrainConfig
from .dino_loss import DINOLoss
from .heads import DINOHead
from .ibot_loss import IBOTPatchLoss
from .koleo import KoLeoLoss
from .masking import batch_masks
from .multicrop import MultiCrop
from .vicreg import VICRegLoss

log = logging.getLogger(__name__)


class UnlabeledImages(Dataset):
    """Images of the given folders as multi-crop views. ``cache``: keep each decoded image (uint8) after its
    first read; decoding a JPEG costs about as much as a tiny encoder's step on its crops."""

    def __init__(self, folders: list[str], crops: MultiCrop, cache: bool = False):
        self.paths = [p for f in folders for p in list_images(f)]
        if not self.paths:
            raise ValueError(f"no images found in {folders}")
        self.crops = crops
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self.cache is None:
            return self.crops(to_tensor_image(load_image(self.paths[i])))
        if i not in self.cache:
            self.cache[i] = (to_tensor_image(load_image(self.paths[i])) * 255).round().to(torch.uint8)
        return self.crops(self.cache[i].float() / 255)


def collate_views(batch):
    """[(globals, locals)] -> (list of [B, 3, g, g] per global view, list of [B, 3, l, l] per local view)."""
    globals_, locals_ = zip(*batch)
    return [torch.stack(v) for v in zip(*globals_)], [torch.stack(v) for v in zip(*locals_)]


class Student(torch.nn.Module):
    """Encoder + one projection head shared by the DINO (CLS) and iBOT (patch) losses."""

    def __init__(self, encoder: torch.nn.Module, cfg: PretrainConfig):
        super().__init__()
        self.encoder = encoder
        self.head = DINOHead(encoder.config.hidden_size, cfg.out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim)
        self.prefix = 1 + getattr(encoder.config, "num_register_tokens", 0)

    def forward(self, pixels: torch.Tensor, masks: torch.Tensor | None = None):
        """pixels [N, 3, s, s] normalised -> (CLS embedding [N, D], CLS logits [N, K], patch logits [N, T, K])."""
        tokens = self.encoder(pixel_values=pixels, bool_masked_pos=masks).last_hidden_state
        cls, patches = tokens[:, 0], tokens[:, self.prefix:]
        return cls, self.head(cls), self.head(patches)


def cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Pretrainer:
    def __init__(self, cfg: PretrainConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.dist = init_distributed(self.device.type)
        seed_everything(cfg.seed + self.dist.rank)
        self.out = Path(cfg.output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "pretrain_config.yaml")
        self.crops = MultiCrop(cfg.global_size, cfg.local_size, cfg.n_local, tuple(map(float, cfg.global_scale)),
                               tuple(map(float, cfg.local_scale)), tuple(map(float, cfg.color_jitter)),
                               grayscale_p=cfg.grayscale_p)
        self.data = UnlabeledImages(cfg.images, self.crops, cfg.cache_images)
        encoder = load_vit(cfg.arch, cfg.pretrained)
        self.patch = encoder.config.patch_size
        self.student = Student(encoder, cfg).to(self.device)
        self.teacher = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.ddp = (DistributedDataParallel(self.student, find_unused_parameters=cfg.ibot_weight == 0)
                    if self.dist.world_size > 1 else self.student)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.dino_loss = DINOLoss(cfg.out_dim, cfg.student_temp).to(self.device)
        self.ibot_loss = IBOTPatchLoss(cfg.out_dim, cfg.student_temp).to(self.device)
        self.koleo, self.vicreg = KoLeoLoss(), VICRegLoss()
        self.mask_generator = torch.Generator().manual_seed(cfg.seed + self.dist.rank)
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        if cfg.resume:
            self._resume(load_checkpoint(cfg.resume))
        self.logger = RunLogger(cfg.log_dir or self.out / "tensorboard", enabled=self.dist.is_main)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return imagenet_normalise(x.to(self.device, non_blocking=True))

    # ------------------------------------------------------------------ one step
    def training_step(self, globals_: list, locals_: list, progress: float, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        g = torch.cat([self._normalise(v) for v in globals_])
        b = globals_[0].shape[0]
        grid = cfg.global_size // self.patch
        masks = None
        if cfg.ibot_weight > 0:
            masks = batch_masks(g.shape[0], grid, grid, tuple(map(float, cfg.mask_ratio)), cfg.mask_probability,
                                self.mask_generator).to(self.device)
        temp = (cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) *
                min(1.0, epoch / max(1, cfg.warmup_teacher_temp_epochs)))
        with torch.no_grad():
            _, t_cls, t_patch = self.teacher(g)
            if cfg.centering == "sinkhorn":
                t_probs = self.dino_loss.sinkhorn_knopp(t_cls, temp)
            else:
                t_probs = self.dino_loss.teacher_probs(t_cls, temp)
            t_patch_probs = self.ibot_loss.teacher_probs(t_patch, temp)
        s_emb, s_cls, s_patch = self.ddp(g, masks)
        student_logits = list(s_cls.chunk(2))
        if locals_:
            _, l_cls, _ = self.ddp(torch.cat([self._normalise(v) for v in locals_]))
            student_logits += list(l_cls.chunk(len(locals_)))
        terms = {"dino": self.dino_loss(student_logits, list(t_probs.chunk(2)))}
        if cfg.ibot_weight > 0:
            terms["ibot"] = self.ibot_loss(s_patch, t_patch_probs, masks)
        if cfg.koleo_weight > 0:
            terms["koleo"] = sum(self.koleo(e) for e in s_emb.chunk(2)) / 2
        if cfg.vicreg_weight > 0:
            terms["vicreg"], vic = self.vicreg(*s_emb.chunk(2))
            terms.update({f"vicreg_{k}": v.detach() for k, v in vic.items()})
        weights = {"dino": cfg.dino_weight, "ibot": cfg.ibot_weight, "koleo": cfg.koleo_weight,
                   "vicreg": cfg.vicreg_weight}
        loss = sum(terms[k] * w for k, w in weights.items() if k in terms)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss is {loss.item()} at step {self.step}")
        lr = cosine(cfg.lr, cfg.min_lr, progress) * min(1.0, progress * cfg.epochs / max(cfg.warmup_epochs, 1e-9))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.optimizer.step()
        momentum = cosine(cfg.momentum_teacher, 1.0, progress)
        with torch.no_grad():
            t_params, s_params = list(self.teacher.parameters()), list(self.student.parameters())
            torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
            self.dino_loss.update_center(t_cls)
            if masks is not None:
                self.ibot_loss.update_center(t_patch, masks)
            # collapse monitor: per-dimension std of the L2-normalised embeddings (0 when collapsed,
            # about 1/sqrt(D) when spread out)
            spread = torch.nn.functional.normalize(s_emb.detach(), dim=-1).std(0).mean()
        values = {k: float(v.detach()) for k, v in terms.items()}
        values.update(loss=float(loss), teacher_temp=temp, momentum=momentum, lr=lr, embedding_std=float(spread))
        return values

    # ------------------------------------------------------------------ the run
    def fit(self) -> Path:
        cfg = self.cfg
        sampler = DistributedSampler(self.data, self.dist.world_size, self.dist.rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        workers = resolve_num_workers(cfg.num_workers, self.device)
        loader = DataLoader(self.data, cfg.batch_size, sampler=sampler, collate_fn=collate_views,
                            num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(cfg.seed))
        if len(loader) == 0:
            raise ValueError(f"{len(self.data)} images are fewer than one batch of {cfg.batch_size} per process")
        total = cfg.epochs * len(loader)
        budget = cfg.time_budget_min * 60
        log.info("pretraining %s on %d images: %d epochs of %d steps", cfg.arch, len(self.data), cfg.epochs,
                 len(loader))
        stop = False
        while self.epoch < cfg.epochs and not stop:
            sampler.set_epoch(self.epoch)
            loader.generator.manual_seed(cfg.seed + self.epoch)
            started, first_step = time.time(), self.step
            sums: dict[str, float] = {}
            bar = tqdm(loader, desc=f"pretrain {self.epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True,
                       disable=not self.dist.is_main)
            for globals_, locals_ in bar:
                progress = self.step / total
                if budget > 0:
                    progress = max(progress, (self.elapsed + time.time() - started) / budget)
                values = self.training_step(globals_, locals_, progress, self.epoch)
                self.step += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{values['loss']:.3f}", std=f"{values['embedding_std']:.3f}")
                if self.step % cfg.log_frequency == 0:
                    self.logger.scalars(values, self.step, "pretrain")
                if budget > 0 and sum_across_processes([float(self.elapsed + time.time() - started >= budget)],
                                                        self.device)[0] > 0:
                    stop = True
                    break
            self.elapsed += time.time() - started
            steps = max(1, self.step - first_step)
            means = {k: v / steps for k, v in sums.items()}
            log.info("pretrain epoch %d: %s (%.0f s)", self.epoch + 1,
                     " ".join(f"{k} {means[k]:.4f}" for k in ("loss", "dino", "ibot", "koleo", "vicreg",
                                                              "embedding_std") if k in means), self.elapsed)
            self.epoch += 1
            if stop or self.epoch % cfg.checkpoint_every == 0 or self.epoch == cfg.epochs:
                self.save(self.out / "pretrain_last.pth")
        path = self.out / ENCODER_FILE
        if self.dist.is_main:  # the teacher's encoder: the averaged, smoother one (as DINO evaluates)
            save_encoder(self.teacher.encoder, cfg.arch, path, {"steps": self.step, "epochs": self.epoch})
            log.info("encoder written to %s after %d steps (%.1f min)", path, self.step, self.elapsed / 60)
        self.logger.close()
        return path

    def save(self, path: Path) -> None:
        rng = gather_objects(rng_state())
        if self.dist.is_main:
            save_atomic({"model": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "dino_center": self.dino_loss.center,
                         "ibot_center": self.ibot_loss.center, "epoch": self.epoch, "step": self.step,
                         "elapsed": self.elapsed, "rng": rng, "metadata": {"arch": self.cfg.arch}}, path)

    def _resume(self, ckpt: dict) -> None:
        self.student.load_state_dict(ckpt["model"])
        self.teacher.load_state_dict(ckpt["teacher"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.dino_loss.center.copy_(ckpt["dino_center"])
        self.ibot_loss.center.copy_(ckpt["ibot_center"])
        self.epoch, self.step, self.elapsed = ckpt["epoch"], ckpt["step"], ckpt["elapsed"]
        if len(ckpt["rng"]) == self.dist.world_size:
            set_rng_state(ckpt["rng"][self.dist.rank])
        log.info("resumed pretraining at epoch %d, step %d", self.epoch + 1, self.step)
